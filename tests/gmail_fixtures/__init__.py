"""Gmail-like pages for the bookmarklet's browser tests, served from an origin of their own with
the headers Gmail sends (a nonce-based CSP enforcing Trusted Types, and COOP).

The pages hold no script at all: anything a test needs in the page (the caret, a listener) is
set up from Playwright. They use only selectors that do not change with Gmail's language (the
README's bookmarklet section lists them).
`{{ name }}` in a page is replaced by the (HTML-escaped) value the test put in `values`; pages
the test writes at run time go into `pages`, keyed by their path.
"""

import html
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def gmail_headers(nonce):
    """The security headers of mail.google.com, with this response's own nonce."""
    return {
        "Content-Security-Policy": (
            f"script-src 'nonce-{nonce}' 'strict-dynamic' https: 'unsafe-eval'; "
            "object-src 'none'; base-uri 'self'; require-trusted-types-for 'script'"
        ),
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def render(text, values):
    """`text` with its {{ name }} placeholders filled in; a placeholder without a value raises."""
    return PLACEHOLDER.sub(lambda match: html.escape(str(values[match.group(1)])), text)


class GmailFixtures:
    """A running fixture server on 127.0.0.1: `url` is its origin."""

    def __init__(self):
        self.values = {}
        self.pages = {}
        fixtures = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = fixtures.answer(self.path.split("?", 1)[0])
                self.send_response(status)
                for name, value in gmail_headers(secrets.token_urlsafe(18)).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path):
        """(status, body bytes) for a path."""
        if path in self.pages:
            return 200, self.pages[path].encode()
        name = path.lstrip("/")
        file = HERE / name
        if not name.endswith(".html") or "/" in name or not file.is_file():
            return 404, b"<!doctype html><title>Not found</title>"
        try:
            return 200, render(file.read_text(encoding="utf-8"), self.values).encode()
        except KeyError as missing:
            return 500, f"<!doctype html><title>no value for {missing}</title>".encode()

    def template(self, name, **values):
        """A fixture file rendered with `values` (on top of the server's), for `pages`."""
        return render((HERE / name).read_text(encoding="utf-8"), {**self.values, **values})

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
