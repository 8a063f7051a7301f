"""In real Chromium: a page on another origin mints a pixel through the CORS API, as the
bookmarklet does from Gmail, puts the returned <img> in the page, and the fetch is recorded."""

import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import unavailable

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
SHOW_IMAGE = """async (url) => {
  const img = document.createElement("img");
  img.src = url;
  document.body.appendChild(img);
  await img.decode();
}"""
# Without these, Chromium keeps trying to reach Google's services, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Pages served at https://mail.google.com call the test server on 127.0.0.1: in real use the
    # server is a public HTTPS domain, so Chromium's private-network checks stay out of it.
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
    "PrivateNetworkAccessSendPreflights",
]

COMPOSE_PAGE = """<!doctype html>
<html><body><div id="body" contenteditable="true">Hello Bob, the invoice is attached.</div>
</body></html>"""

# What the bookmarklet does: mint with fetch (Bearer token, no cookies), then build the image
# with createElement, never with innerHTML (Gmail enforces Trusted Types).
MINT_AND_INSERT = """async ([server, token]) => {
  const response = await fetch(server + "/api/pixels", {
    method: "POST",
    credentials: "omit",
    headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    body: JSON.stringify({subject: "Invoice #42", recipients: ["bob@example.com"]}),
  });
  const body = await response.json();
  const img = document.createElement("img");
  img.src = body.url;
  img.width = 1;
  img.height = 1;
  img.alt = "";
  document.getElementById("body").appendChild(img);
  await img.decode();
  return {status: response.status, id: body.id, html: body.html,
          width: img.naturalWidth, height: img.naturalHeight};
}"""


class ComposePage(BaseHTTPRequestHandler):
    def do_GET(self):
        body = COMPOSE_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def compose_origin():
    """A real page server on another port: another origin, as Gmail is. (A page Playwright
    fulfils itself counts as public, and Chromium then refuses its requests to loopback.)"""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ComposePage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@contextmanager
def launched_chromium():
    """Debian's Chromium driven by Playwright, never a downloaded browser; unavailable (a skip,
    or a failure under CI=true) when either is missing."""
    if not Path(CHROMIUM).exists():
        unavailable(f"Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def chromium():
    with launched_chromium() as browser:
        yield browser


def test_cross_origin_mint_and_real_image_fetch(gunicorn, chromium, compose_origin):
    server = gunicorn()
    server.openreceipt(
        "user", "add", "ada@example.com", "--password-stdin", input="long password 1\n"
    )
    token = server.openreceipt("token", "new", "ada@example.com", "--name", "browser")

    context = chromium.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    page.goto(f"{compose_origin}/compose")
    result = page.evaluate(MINT_AND_INSERT, [server.url, token])
    context.close()

    assert result["status"] == 201
    assert (result["width"], result["height"]) == (1, 1)  # a real GIF, decoded by the browser
    assert 'width="1" height="1" alt=""' in result["html"]

    auth = {"Authorization": f"Bearer {token}"}
    detail = json.loads(server.request("GET", f"/api/pixels/{result['id']}", headers=auth)[2])
    # The sender's own browser showed the draft: the pixel is in the message, nothing more.
    assert (detail["state"], detail["counts"]["open"]) == ("inserted", 0)
    [preview] = detail["events"]
    assert (preview["kind"], preview["source"], preview["ip"]) == ("preview", "direct", "127.0.0.0")
    assert preview["client"] == "Chrome 131, Linux"

    # Sent; then the recipient's mail program, another browser engine, shows the message.
    assert server.request("POST", f"/api/pixels/{result['id']}/sent", {}, auth)[0] == 200
    reader = chromium.new_context(user_agent=FIREFOX_UA)
    page = reader.new_page()
    page.goto(f"{compose_origin}/inbox")
    page.evaluate(SHOW_IMAGE, result["html"].split('"')[1])
    reader.close()

    detail = json.loads(server.request("GET", f"/api/pixels/{result['id']}", headers=auth)[2])
    assert (detail["state"], detail["counts"]["open"]) == ("opened", 1)
    opened = detail["events"][1]
    assert (opened["kind"], opened["source"], opened["client"]) == (
        "open",
        "direct",
        "Firefox 133, Linux",
    )


def test_browser_without_a_token_is_told_why(gunicorn, chromium, compose_origin):
    server = gunicorn()
    page = chromium.new_page()
    page.goto(f"{compose_origin}/compose")
    answer = page.evaluate(
        """async (server) => {
          const response = await fetch(server + "/api/pixels", {method: "POST",
            headers: {"Authorization": "Bearer or_revoked", "Content-Type": "application/json"},
            body: "{}"});
          return {status: response.status, body: await response.json()};
        }""",
        server.url,
    )
    page.close()
    # The CORS headers are on the error too, so the page can read the explanation.
    assert answer == {
        "status": 401,
        "body": {"error": "this API token is unknown or has been revoked"},
    }
