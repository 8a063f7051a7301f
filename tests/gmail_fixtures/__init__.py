"""Gmail-like pages for the bookmarklet's browser tests, served at https://mail.google.com through
Playwright's request routing, with the headers Gmail sends (a nonce-based CSP enforcing Trusted
Types, and COOP), so the bookmarklet runs on the origin it runs on in real use.

Each page's structure comes from the public Gmail toolkits (InboxSDK, gmail.js); its opening
comment names the sources, and docs/gmail.md the files, lines and commits. The pages hold no
script: `draft_model.js`, injected by the tests, plays Gmail's part in keeping the draft (Send
sends the body as last saved, never the live page).
`{{ name }}` in a page is replaced by the (HTML-escaped) value the test put in `values`; pages
the test writes at run time go into `pages`, keyed by their path.
"""

import html
import re
import secrets
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
GMAIL = "https://mail.google.com"
DRAFT_MODEL = (HERE / "draft_model.js").read_text(encoding="utf-8")


def gmail_headers(nonce):
    """The security headers of mail.google.com, with this response's own nonce: Trusted Types
    as Google announced them for Gmail, COOP as enforced since January 2026 (docs/gmail.md)."""
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
    """The fixture pages, answered for https://mail.google.com/<name> in a browser context."""

    url = GMAIL

    def __init__(self):
        self.values = {}
        self.pages = {}

    def serve(self, context):
        """Answer the context's requests to Gmail's origin with the fixtures."""
        context.route(f"{GMAIL}/**", self._fulfil)

    def _fulfil(self, route):
        path = route.request.url.removeprefix(GMAIL).split("?", 1)[0].split("#", 1)[0]
        status, body = self.answer(path)
        kind = "text/css" if path.endswith(".css") else "text/html"
        route.fulfill(
            status=status,
            headers={
                **gmail_headers(secrets.token_urlsafe(18)),
                "Content-Type": f"{kind}; charset=utf-8",
                "Cache-Control": "no-store",
            },
            body=body,
        )

    def answer(self, path):
        """(status, body bytes) for a path."""
        if path in self.pages:
            return 200, self.pages[path].encode()
        name = path.lstrip("/")
        file = HERE / name
        if not name.endswith((".html", ".css")) or "/" in name or not file.is_file():
            return 404, b"<!doctype html><title>Not found</title>"
        try:
            return 200, render(file.read_text(encoding="utf-8"), self.values).encode()
        except KeyError as missing:
            return 500, f"<!doctype html><title>no value for {missing}</title>".encode()

    def template(self, name, **values):
        """A fixture file rendered with `values` (on top of the server's), for `pages`."""
        return render((HERE / name).read_text(encoding="utf-8"), {**self.values, **values})
