"""The bookmarklet in real Chromium, on Gmail-like pages (tests/gmail_fixtures, each built from the
structure the public Gmail toolkits document) served at https://mail.google.com with Gmail's CSP
(Trusted Types enforced) and COOP, against a real openreceipt server.

The built bookmarklet's code runs in the page as the bookmarks bar would run it. Every test fails
on a `securitypolicyviolation` event, an uncaught exception or a console error it did not expect,
and checks where the image went in the DOM, what the server stored and, where the message is
sent, what Gmail would send: the draft as last saved (gmail_fixtures/draft_model.js).
"""

import html.parser
import http.client
import json
import re
import secrets
import sqlite3
import time
import urllib.parse
from collections import namedtuple
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from web.bookmarklet import VERSION, build_bookmarklet

from .gmail_fixtures import DRAFT_MODEL, GMAIL, GmailFixtures
from .servers import Gunicorn, free_port, start_gunicorn
from .test_browser import CHROME_UA, launched_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EMAIL = "ada@example.com"
PASSWORD = "a long password for the browser tests"
GMAIL_PROXY_UA = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
# How Gmail's image proxy rewrites an image's src: the original URL survives after the "#".
GMAIL_PROXY = "https://ci3.googleusercontent.com/meips/ADKq_Nb{}=s0-d-e1-ft#{}"
GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)

BODY = '[g_editable="true"][contenteditable][role="textbox"]'
# Every fixture's message bodies, whatever else marks them, in the order of their composes.
BODIES = 'div[contenteditable="true"]'
POPUP_RECIPIENTS = ["bob@example.com", "carol@example.com", "dave@example.org"]
POPUP_ADDED = "Receipt added — Invoice #42 to bob@example.com, carol@example.com, dave@example.org"

# Injected before any page script, outside the page's CSP: what the tests watch for.
WATCH = """
window.__test = {violations: [], inputs: []};
document.addEventListener("securitypolicyviolation", (event) => {
  window.__test.violations.push({directive: event.violatedDirective,
    blocked: event.blockedURI, sample: event.sample});
});
document.addEventListener("input", (event) => {
  const target = event.target;
  const compose = target.closest ? target.closest("div.M9") : null;
  window.__test.inputs.push({
    body: !!(target.matches && target.matches('[g_editable="true"]')),
    compose: compose ? [...document.querySelectorAll("div.M9")].indexOf(compose) : -1,
  });
}, true);
"""

# The page without the notice, to check that nothing else changed.
SNAPSHOT = """() => {
  const copy = document.body.cloneNode(true);
  copy.querySelectorAll("[data-openreceipt-notice]").forEach((notice) => notice.remove());
  return copy.outerHTML;
}"""

# Where this server's images are in body number `index` (BODIES), and where the only one
# outside the quoted history sits relative to the text, the signature and the quote.
PLACEMENT = """async ([index, origin, bodies]) => {
  const body = document.querySelectorAll(bodies)[index];
  const ours = [...body.querySelectorAll("img")]
    .filter((img) => (img.getAttribute("src") || "").includes(origin + "/p/"));
  const outside = ours.filter((img) => !img.closest(".gmail_quote"));
  const report = {inBody: ours.length, outsideQuote: outside.length,
                  bodyHTML: body.outerHTML};
  if (outside.length !== 1) return report;
  const img = outside[0];
  await img.decode().catch(() => null);
  const before = document.createRange();
  before.setStart(body, 0);
  before.setEndBefore(img);
  const after = document.createRange();
  after.setStartAfter(img);
  after.setEnd(body, body.childNodes.length);
  const follows = (node) => node ? !!(img.compareDocumentPosition(node)
    & Node.DOCUMENT_POSITION_FOLLOWING) : null;
  return Object.assign(report, {
    src: img.getAttribute("src"),
    attributes: Object.fromEntries([...img.attributes].map((a) => [a.name, a.value])),
    display: getComputedStyle(img).display,
    loaded: img.complete && img.naturalWidth === 1 && img.naturalHeight === 1,
    textBefore: before.toString(),
    textAfter: after.toString(),
    parent: img.parentElement === body ? "body" : img.parentElement.outerHTML,
    next: img.nextSibling ? img.nextSibling.outerHTML || img.nextSibling.data : null,
    inSignature: !!img.closest(".gmail_signature, .gmail_signature_prefix"),
    beforeSignature: follows(body.querySelector(".gmail_signature")),
    beforeQuote: follows(body.querySelector(".gmail_quote")),
  });
}"""

Notice = namedtuple("Notice", "kind text")


@dataclass
class Receipts:
    """The module's openreceipt server, its user, the key of a bookmarklet (`token`, which can
    only add receipts) and a full API token for the tests' own checks (`admin`)."""

    server: Gunicorn
    token: str
    admin: str

    @property
    def url(self):
        return self.server.url

    def api(self, method, path, body=None, token=None):
        status, _, raw = self.server.request(
            method, path, body, {"Authorization": f"Bearer {token or self.admin}"}
        )
        return status, json.loads(raw) if raw else None

    def mint(self, **body):
        status, answer = self.api("POST", "/api/pixels", body)
        assert status == 201, answer
        return answer

    def pixel(self, public_id):
        status, answer = self.api("GET", f"/api/pixels/{public_id}")
        assert status == 200, answer
        return answer

    def all_pixels(self):
        status, answer = self.api("GET", "/api/pixels?per_page=100")
        assert status == 200, answer
        return answer["pixels"]

    def pixel_ids(self):
        return {pixel["id"] for pixel in self.all_pixels()}

    def new_pixels(self, before):
        """The pixels made since `before` (a set of ids from pixel_ids())."""
        return [pixel for pixel in self.all_pixels() if pixel["id"] not in before]

    def fetch_as_gmail_proxy(self, url):
        path = "/p/" + url.split("/p/", 1)[1]
        status, headers, _ = self.server.request(
            "GET", path, headers={"User-Agent": GMAIL_PROXY_UA}
        )
        assert (status, headers["Content-Type"]) == (200, "image/gif")

    def revoked_token(self):
        """A token of the user's, revoked with the command line."""
        name = f"revoked {secrets.token_hex(3)}"
        token = self.server.openreceipt("token", "new", EMAIL, "--name", name)
        [row] = [
            line
            for line in self.server.openreceipt("token", "list", EMAIL).splitlines()
            if name in line
        ]
        self.server.openreceipt("token", "revoke", row.split("\t")[0])
        return token


@pytest.fixture(scope="module")
def receipts(tmp_path_factory, geoip_path):
    """One real gunicorn for the module, OPENRECEIPT_PUBLIC_URL unset: its own URL is the origin."""
    tmp_path = tmp_path_factory.mktemp("bookmarklet-server")
    server = start_gunicorn(
        tmp_path, {"DATA_DIR": tmp_path / "data", "GEOIP_DATABASE": geoip_path, "MX_LOOKUP": "off"}
    )
    try:
        server.openreceipt("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
        bookmarklet = server.openreceipt("bookmarklet", EMAIL, "--name", "Chromium (tests)")
        yield Receipts(
            server,
            token=re.search(r"var%20TOKEN=%22(or_[A-Za-z0-9_-]+)%22", bookmarklet).group(1),
            admin=server.openreceipt("token", "new", EMAIL, "--name", "tests"),
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    """test_browser.py's `chromium` fixture (Debian's Chromium, same flags, never a download),
    launched once for the module instead of once a test."""
    with launched_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def fixtures():
    return GmailFixtures()


class GmailTab:
    """A browser tab on the fixture origin, watching for policy violations and errors."""

    def __init__(self, browser, fixtures, receipts):
        self.fixtures = fixtures
        self.receipts = receipts
        self.context = browser.new_context(
            user_agent=CHROME_UA, viewport={"width": 1280, "height": 800}
        )
        # Gmail's image proxy, for images whose src it rewrote: the test answers for it.
        self.context.route(
            "https://*.googleusercontent.com/**",
            lambda route: route.fulfill(status=200, content_type="image/gif", body=GIF),
        )
        fixtures.serve(self.context)
        self.page = self.context.new_page()
        self.page.add_init_script(WATCH)
        self.page.add_init_script(DRAFT_MODEL)
        self.console_errors = []
        self.page_errors = []
        self.expected_errors = []
        self.api_requests = []
        self.checked = False
        self.page.on(
            "console",
            lambda message: message.type == "error" and self.console_errors.append(message.text),
        )
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("request", self._note_request)

    def _note_request(self, request):
        if request.url.startswith(self.receipts.url + "/api/") and request.method != "OPTIONS":
            self.api_requests.append(request)

    def requests_to(self, suffix):
        return [r for r in self.api_requests if urllib.parse.urlsplit(r.url).path.endswith(suffix)]

    def open(self, name):
        response = self.page.goto(f"{GMAIL}/{name}")
        assert response.status == 200, response.text()
        headers = response.headers
        assert "require-trusted-types-for 'script'" in headers["content-security-policy"]
        assert headers["cross-origin-opener-policy"] == "same-origin"
        return self.page

    def click_bookmarklet(self, url=None, **build):
        """Run the bookmarklet as the bookmarks bar does; it returns at once, working on."""
        url = url or build_bookmarklet(
            build.pop("origin", self.receipts.url), build.pop("token", self.receipts.token), **build
        )
        assert url.startswith("javascript:") and len(url) < 60_000
        self.page.evaluate(
            """() => document.querySelectorAll("[data-openreceipt-notice]")
                 .forEach((notice) => notice.setAttribute("data-test-seen", ""))"""
        )
        self.page.evaluate(urllib.parse.unquote(url.removeprefix("javascript:")))

    def notice(self):
        """The notice the last click showed (the only one on the page): its kind and what it
        says, without its buttons' labels."""
        element = self.page.wait_for_selector(
            "[data-openreceipt-notice]:not([data-test-seen])", timeout=10_000
        )
        assert element.get_attribute("role") == "status"
        assert self.page.locator("[data-openreceipt-notice]").count() == 1
        text = element.evaluate(
            """(box) => {
              const copy = box.cloneNode(true);
              copy.querySelectorAll("button").forEach((button) => button.remove());
              return copy.textContent;
            }"""
        )
        return Notice(element.get_attribute("data-openreceipt-notice"), text)

    def snapshot(self):
        return self.page.evaluate(SNAPSHOT)

    def placement(self, compose=0):
        return self.page.evaluate(PLACEMENT, [compose, self.receipts.url, BODIES])

    def input_events(self, compose):
        """The input events fired on the body of compose number `compose`."""
        inputs = self.page.evaluate("window.__test.inputs")
        return [event for event in inputs if event["body"] and event["compose"] == compose]

    def expect_console_error(self, pattern):
        self.expected_errors.append(pattern)

    def check(self):
        """No policy violation, no uncaught exception, no console error but the expected ones."""
        self.checked = True
        violations = self.page.evaluate("window.__test.violations")
        assert violations == [], f"Content-Security-Policy violations: {violations}"
        assert self.page_errors == [], f"uncaught exceptions: {self.page_errors}"
        unexpected = [
            text
            for text in self.console_errors
            if not any(re.search(pattern, text) for pattern in self.expected_errors)
        ]
        assert unexpected == [], f"console errors: {unexpected}"

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser, fixtures, receipts):
    tab = GmailTab(browser, fixtures, receipts)
    yield tab
    try:
        if not tab.checked:
            tab.check()
    finally:
        tab.close()


def mint_request(tab):
    [request] = tab.requests_to("/api/pixels")
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {tab.receipts.token}"
    assert request.headers["x-openreceipt-bookmarklet"] == str(VERSION)
    assert "cookie" not in request.headers
    return request.post_data_json


def assert_pixel_image(placement, receipts, pixel):
    """The one image is the pixel the server made, a real 1x1 image the browser shows."""
    assert placement["outsideQuote"] == 1, placement["bodyHTML"]
    assert placement["src"] == pixel["url"]
    assert placement["src"].startswith(f"{receipts.url}/p/") and placement["src"].endswith(".gif")
    assert placement["attributes"] == {
        "src": pixel["url"],
        "width": "1",
        "height": "1",
        "alt": "",
    }
    assert placement["display"] != "none" and placement["loaded"]


def assert_at_end_of_own_text(placement, own_text, signature=None):
    """After the user's own text, before the signature and its "-- " line."""
    assert not placement["inSignature"] and placement["beforeSignature"] is not False
    assert placement["beforeQuote"] is not False
    assert placement["textBefore"].rstrip().endswith(own_text), placement["bodyHTML"]
    if signature:
        assert placement["textAfter"].startswith("-- " + signature), placement["bodyHTML"]


def place_caret(page, selector, text_index, offset, compose_index=0):
    """Focus body number `compose_index` and put a collapsed caret at `offset` in text node number
    `text_index` of its element `selector` (of the body itself if None)."""
    page.evaluate(
        """([bodies, index, selector, textIndex, offset]) => {
          const body = document.querySelectorAll(bodies)[index];
          body.focus();
          const walker = document.createTreeWalker(
            selector ? body.querySelector(selector) : body, NodeFilter.SHOW_TEXT);
          let node = walker.nextNode();
          for (let i = 0; i < textIndex; i++) node = walker.nextNode();
          const range = document.createRange();
          range.setStart(node, offset);
          range.collapse(true);
          const selection = document.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
        }""",
        [BODIES, compose_index, selector, text_index, offset],
    )


# -- The fixtures are Gmail's policies -----------------------------------------------------------


def test_fixture_pages_enforce_trusted_types_and_the_watch_sees_violations(tab):
    page = tab.open("popup.html")
    blocked = page.evaluate(
        """() => { try { document.body.innerHTML = "<b>x</b>"; return "allowed"; }
                   catch (error) { return error.name; } }"""
    )
    assert blocked == "TypeError"
    tab.expect_console_error("TrustedHTML")
    with pytest.raises(AssertionError, match="require-trusted-types-for"):
        tab.check()


# -- Adding the receipt ---------------------------------------------------------------------------


def test_popup_compose_gets_the_pixel_at_the_end_of_the_text_before_the_signature(tab, receipts):
    before = receipts.pixel_ids()
    tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)

    # Chips only: lower-case, each once, and nothing from the open autocomplete list.
    assert mint_request(tab) == {"subject": "Invoice #42", "recipients": POPUP_RECIPIENTS}
    [pixel] = receipts.new_pixels(before)
    assert (pixel["subject"], pixel["recipients"]) == ("Invoice #42", POPUP_RECIPIENTS)

    placement = tab.placement()
    assert_pixel_image(placement, receipts, pixel)
    assert_at_end_of_own_text(placement, "Kind regards, Ada", signature="Ada Lovelace")
    assert placement["beforeSignature"] is True
    assert tab.input_events(compose=0), "no input event on the body for its other listeners"
    assert tab.page.evaluate("typeof window.__openreceipt") == "object"
    # The browser showed the draft's image: the server saw the sender's own preview.
    assert receipts.pixel(pixel["id"])["state"] == "inserted"
    tab.check()


def write_database(receipts, sql, *parameters):
    """Change the module's server's database as the server would (Settings, the notify job)."""
    database = Path(receipts.server.env["OPENRECEIPT_DATA_DIR"]) / "openreceipt.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(sql, parameters)


def default_reminder(receipts, days):
    """The user's reminder for new receipts, as Settings -> Notifications saves it."""
    write_database(receipts, 'UPDATE "user" SET remind_after_days = ?', days)


def test_the_notice_tells_of_the_reminder_the_user_chose_for_new_receipts(tab, receipts):
    default_reminder(receipts, 3)
    try:
        before = receipts.pixel_ids()
        tab.open("popup.html")
        tab.click_bookmarklet()
        reminded = POPUP_ADDED + " You will be told if it is not opened within 3 days."
        assert tab.notice() == ("added", reminded)
        [pixel] = receipts.new_pixels(before)
        assert receipts.pixel(pixel["id"])["reminder"]["after_days"] == 3
    finally:
        default_reminder(receipts, None)
    tab.check()


def test_caret_in_the_middle_of_a_text_node(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    place_caret(page, None, 0, len("Hello Bob,"))
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)

    [pixel] = receipts.new_pixels(before)
    placement = tab.placement()
    assert_pixel_image(placement, receipts, pixel)
    assert placement["textBefore"] == "Hello Bob,"
    assert placement["textAfter"].startswith(" the invoice is attached.Kind regards, Ada")
    assert placement["parent"].startswith("<div>Hello Bob,<img ")  # split where the caret was
    assert placement["beforeSignature"] is True
    assert tab.input_events(compose=0)
    tab.check()


def test_two_composes_the_one_holding_the_caret_gets_it(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("two_composes.html")
    first = page.locator(BODY).nth(0).evaluate("body => body.outerHTML")
    page.get_by_text("the signed contract is attached.").click()
    page.keyboard.press("End")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", "Receipt added — Signed contract to carol@example.com")

    [pixel] = receipts.new_pixels(before)
    assert (pixel["subject"], pixel["recipients"]) == ("Signed contract", ["carol@example.com"])
    placement = tab.placement(compose=1)
    assert_pixel_image(placement, receipts, pixel)
    assert placement["textBefore"] == "Dear Carol,the signed contract is attached."
    assert placement["textAfter"] == "Best, Ada"
    assert page.locator(BODY).nth(0).evaluate("body => body.outerHTML") == first
    assert tab.input_events(compose=1) and not tab.input_events(compose=0)
    tab.check()


def test_two_composes_the_last_focused_one_gets_it_when_the_selection_left(tab, receipts):
    page = tab.open("two_composes.html")
    page.get_by_text("the signed contract is attached.").click()
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"

    before = receipts.pixel_ids()
    page.get_by_text("are you free for lunch on Friday?").click()
    page.locator("h1").click()  # the selection leaves the compose; it was the last focused
    assert page.evaluate("document.getSelection().anchorNode.parentElement.tagName") == "H1"
    tab.click_bookmarklet()
    assert tab.notice() == ("added", "Receipt added — Lunch on Friday? to bob@example.com")

    [pixel] = receipts.new_pixels(before)
    assert (pixel["subject"], pixel["recipients"]) == ("Lunch on Friday?", ["bob@example.com"])
    placement = tab.placement(compose=0)
    assert_pixel_image(placement, receipts, pixel)
    assert_at_end_of_own_text(placement, "are you free for lunch on Friday?")
    assert placement["textAfter"].strip() == ""
    assert tab.placement(compose=1)["outsideQuote"] == 1  # the other one kept its own, only
    tab.check()


def test_two_composes_and_neither_focused_is_ambiguous(tab, receipts):
    before = receipts.pixel_ids()
    tab.open("two_composes.html")
    page_before = tab.snapshot()
    tab.click_bookmarklet()
    assert tab.notice().kind == "ambiguous"
    assert tab.snapshot() == page_before
    assert tab.api_requests == [] and receipts.new_pixels(before) == []
    tab.check()


def test_inline_reply_skips_the_quote_and_removes_old_pixels_quoted_in_it(tab, receipts, fixtures):
    old, old_proxied = receipts.mint(subject="Invoice #41"), receipts.mint(subject="Invoice #40")
    fixtures.values["old_pixel"] = old["url"]
    fixtures.values["old_proxied_pixel"] = GMAIL_PROXY.format(
        secrets.token_urlsafe(24), old_proxied["url"]
    )
    before = receipts.pixel_ids()
    page = tab.open("reply.html")
    # The caret is in the quoted history: the pixel must not go there.
    place_caret(page, "blockquote blockquote", 0, len("Hello Bob,"))
    tab.click_bookmarklet()
    assert tab.notice() == ("added", "Receipt added — Re: Invoice #41 to bob@example.com")

    [pixel] = receipts.new_pixels(before)
    assert (pixel["subject"], pixel["recipients"]) == ("Re: Invoice #41", ["bob@example.com"])
    placement = tab.placement()
    assert placement["inBody"] == 1, "an old pixel is still in the quoted history"
    assert_pixel_image(placement, receipts, pixel)
    assert_at_end_of_own_text(
        placement, "Thanks Bob, I will pay on Friday.", signature="Ada Lovelace"
    )
    assert placement["beforeSignature"] is True and placement["beforeQuote"] is True
    quote = page.locator(f"{BODY} > div.gmail_quote")
    assert quote.locator("img").evaluate_all("imgs => imgs.map(img => img.alt)") == ["Bob's logo"]
    assert "Hello Bob, invoice #41 is attached." in quote.text_content()
    assert tab.input_events(compose=0)
    tab.check()


# -- Recipients as Gmail has them ------------------------------------------------------------------


def test_older_interface_reads_the_hidden_inputs_of_the_chips(tab, receipts):
    """Each chip a .vR with "Name <address>" in a hidden input, in the row of textarea.vO;
    neither the address being typed nor the open suggestions."""
    before = receipts.pixel_ids()
    tab.open("popup_old.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    assert mint_request(tab) == {"subject": "Invoice #42", "recipients": POPUP_RECIPIENTS}
    [pixel] = receipts.new_pixels(before)
    assert pixel["recipients"] == POPUP_RECIPIENTS
    assert_pixel_image(tab.placement(), receipts, pixel)
    tab.check()


@pytest.mark.parametrize(
    ("fixture", "subject", "recipients"),
    [
        ("popup.html", "Invoice #42", POPUP_RECIPIENTS),
        ("popup_old.html", "Invoice #42", POPUP_RECIPIENTS),
        ("fullscreen.html", "Offer letter", ["frank@example.org"]),
        ("reply.html", "Re: Invoice #41", ["bob@example.com"]),
        ("forward.html", "Fwd: Invoice #41", ["erin@example.net"]),
    ],
)
def test_every_compose_kind_mints_with_its_subject_and_recipients(
    tab, receipts, fixtures, fixture, subject, recipients
):
    quoted_pixels(receipts, fixtures)
    tab.open(fixture)
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    assert mint_request(tab) == {"subject": subject, "recipients": recipients}
    tab.check()


# -- What Gmail sends: the draft as last saved ---------------------------------------------------


def quoted_pixels(receipts, fixtures):
    """Earlier receipts, as quoted in the reply and forward fixtures; returns their URLs."""
    old, old_proxied = receipts.mint(subject="Invoice #41"), receipts.mint(subject="Invoice #40")
    fixtures.values["old_pixel"] = old["url"]
    fixtures.values["old_proxied_pixel"] = GMAIL_PROXY.format(
        secrets.token_urlsafe(24), old_proxied["url"]
    )
    return old["url"], old_proxied["url"]


def sent_messages(page, count=1):
    """What Gmail sent (the fixtures' draft model), once `count` messages went out."""
    page.wait_for_function(
        "(count) => window.__gmail.sent.length >= count", arg=count, timeout=10_000
    )
    return page.evaluate("window.__gmail.sent")


def our_pixels_in(html, receipts):
    """The URLs of this server's images in an HTML body, with Gmail's proxy prefix removed."""
    return [
        src.split("#", 1)[-1]
        for src in re.findall(r'<img [^>]*src="([^"]+)"', html)
        if f"{receipts.url}/p/" in src
    ]


SEND = "div.M9 .IZ .Up div > div[role='button']:not([aria-haspopup])"
COMPOSE_KINDS = ["popup.html", "popup_old.html", "fullscreen.html", "reply.html", "forward.html"]


def send_message(tab, button=SEND):
    """Press Send; once the bookmarklet's sent marker is answered, what Gmail sent."""
    with tab.page.expect_response(lambda response: response.url.endswith("/sent")):
        tab.page.locator(button).click()
    [sent] = sent_messages(tab.page)
    return sent


def click_with_the_mint_held(tab):
    """Click the bookmarklet and hold its mint request back; returns the held request's route."""
    held = []
    tab.context.route(f"{tab.receipts.url}/api/pixels", lambda route: held.append(route))
    tab.click_bookmarklet()
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        tab.page.wait_for_timeout(20)
    assert held, "the mint request never left"
    return held[0]


@pytest.mark.parametrize("fixture", COMPOSE_KINDS)
def test_the_sent_message_carries_exactly_one_pixel(tab, receipts, fixtures, fixture):
    old_urls = quoted_pixels(receipts, fixtures)
    before = receipts.pixel_ids()
    tab.open(fixture)
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    [pixel] = receipts.new_pixels(before)
    sent = send_message(tab)
    assert our_pixels_in(sent["html"], receipts) == [pixel["url"]], sent["html"]
    assert not set(old_urls) & set(our_pixels_in(sent["html"], receipts))
    assert receipts.pixel(pixel["id"])["sent_at"] is not None
    tab.check()


@pytest.mark.parametrize("fixture", COMPOSE_KINDS)
def test_send_pressed_while_the_receipt_is_on_its_way_waits_for_it(
    tab, receipts, fixtures, fixture
):
    """Send right after the click: the mint's answer is held back until Send was pressed; the
    message goes out once the receipt is in, with it."""
    quoted_pixels(receipts, fixtures)
    before = receipts.pixel_ids()
    page = tab.open(fixture)
    mint = click_with_the_mint_held(tab)

    page.locator(SEND).click()
    assert tab.notice().kind == "waiting"
    assert page.evaluate("window.__gmail.sent") == []  # held, not sent without the receipt
    mint.continue_()

    [sent] = sent_messages(page)
    [pixel] = receipts.new_pixels(before)
    assert our_pixels_in(sent["html"], receipts) == [pixel["url"]], sent["html"]
    page.wait_for_function(
        "(url) => performance.getEntriesByType('resource').some((e) => e.name.endsWith(url))",
        arg="/sent",
    )
    tab.check()


def test_a_change_made_through_the_dom_and_an_input_event_are_not_sent(tab):
    """The draft model is Gmail's, not the page's: an image put in without the key events Gmail's
    change detection sees does not go out, even with the input event the bookmarklet also fires
    (no public source says Gmail saves on one; gmail_fixtures/draft_model.js). So the tests
    above prove the bookmarklet's key events."""
    page = tab.open("popup.html")
    page.evaluate(
        """() => {
          const body = document.querySelector('[g_editable="true"]');
          const img = document.createElement("img");
          img.src = "https://ci3.googleusercontent.com/meips/unsaved=s0-d-e1-ft";
          body.appendChild(img);
          body.dispatchEvent(new InputEvent("input",
            {bubbles: true, inputType: "insertReplacementText"}));
        }"""
    )
    assert page.evaluate("window.__gmail.saves") == 0
    page.locator(SEND).click()
    [sent] = sent_messages(page)
    assert "unsaved" not in sent["html"] and "Kind regards, Ada" in sent["html"]
    tab.check()


@pytest.mark.parametrize("send_at", ["after-the-notice", "while-minting"])
@pytest.mark.parametrize("key_event", ["keydown", "keypress", "keyup"])
def test_the_pixel_is_sent_whichever_key_event_gmail_saves_on(tab, receipts, key_event, send_at):
    """Which of keydown, keypress and keyup Gmail's change detection listens to is not public:
    with the draft model saving on one of them only, the sent message still has the pixel, when
    Send comes after the notice and when it comes while the receipt is on its way."""
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    page.evaluate("(type) => { window.__gmail.saveOn = [type]; }", key_event)
    if send_at == "after-the-notice":
        tab.click_bookmarklet()
        assert tab.notice().kind == "added"
        sent = send_message(tab)
    else:
        mint = click_with_the_mint_held(tab)
        page.locator(SEND).click()
        assert tab.notice().kind == "waiting"
        mint.continue_()
        [sent] = sent_messages(page)
    [pixel] = receipts.new_pixels(before)
    assert our_pixels_in(sent["html"], receipts) == [pixel["url"]], sent["html"]
    assert page.evaluate("window.__gmail.saves") >= 1
    tab.check()


def test_the_save_key_comes_after_the_insertion_as_gmail_needs(tab, receipts):
    """InboxSDK's draft-save nudge: keydown, keypress and keyup of "." (keyCode 190, no
    character) on the body, after a zero-delay timer, and no character typed."""
    page = tab.open("popup.html")
    page.evaluate(
        """() => {
          window.__keys = [];
          for (const type of ["keydown", "keypress", "keyup"]) {
            document.addEventListener(type, (event) => {
              if (!event.target.matches('[g_editable="true"]')) return;
              const img = event.target.querySelector('img[src*="/p/"]');
              window.__keys.push([type, event.keyCode, event.charCode, !!img]);
            });
          }
        }"""
    )
    text_before = page.locator(BODY).inner_text()
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    page.wait_for_function("() => window.__keys.length >= 3")
    assert page.evaluate("window.__keys") == [
        ["keydown", 190, 0, True],
        ["keypress", 190, 0, True],
        ["keyup", 190, 0, True],
    ]
    assert page.locator(BODY).inner_text() == text_before
    tab.check()


# -- Gmail's page as the toolkits' sources show it -------------------------------------------------

# Send in a compose that has no div.M9.
ANY_SEND = ".IZ .Up div > div[role='button']:not([aria-haspopup])"
REPLY_TEXT = "Thanks Bob, I will pay on Friday."
REPLY_ADDED = "Receipt added — Re: Invoice #41 to bob@example.com"


def test_a_wrapped_draft_gets_the_pixel_after_the_users_text(tab, receipts):
    """Gmail's own draft HTML: one <div dir="ltr"> around the whole message, the signature in a
    <div> of its own after <br clear="all"> (popup_wrapped.html). The pixel goes at the end of
    the user's last line, not at the start of the body."""
    before = receipts.pixel_ids()
    tab.open("popup_wrapped.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)

    [pixel] = receipts.new_pixels(before)
    placement = tab.placement()
    assert_pixel_image(placement, receipts, pixel)
    assert placement["textBefore"] == "Hello Bob, the invoice is attached.Kind regards, Ada"
    assert placement["textAfter"] == "Ada LovelaceAnalytical Engines Ltd"
    assert placement["beforeSignature"] is True and not placement["inSignature"]
    assert placement["parent"].startswith('<div dir="ltr"><div>Hello Bob,')
    assert placement["next"] == '<br clear="all">'
    assert our_pixels_in(send_message(tab)["html"], receipts) == [pixel["url"]]
    tab.check()


# The signature and its "-- " line taken out of reply_wrapped.html: the body is then exactly the
# shape of InboxSDK's sync-compose-processor-20220909.test.ts L28, <br> and the quote after the
# user's text.
QUOTE_ONLY = """() => {
  const own = document.querySelector('[gmail_original="1"]');
  while (!own.nextSibling.matches(".gmail_quote")) own.nextSibling.remove();
  own.after(document.createElement("br"));
}"""


@pytest.mark.parametrize(
    ("shape", "text_after"),
    [("with-signature", "-- Ada Lovelace"), ("quote-only", "On Mon, 3 Mar 2025 at 09:12, Bob")],
)
def test_a_wrapped_reply_gets_the_pixel_after_the_users_text(
    tab, receipts, fixtures, shape, text_after
):
    old_urls = quoted_pixels(receipts, fixtures)
    before = receipts.pixel_ids()
    page = tab.open("reply_wrapped.html")
    if shape == "quote-only":
        page.evaluate(QUOTE_ONLY)
        assert page.locator(".gmail_signature, .gmail_signature_prefix").count() == 0
    tab.click_bookmarklet()
    assert tab.notice() == ("added", REPLY_ADDED)

    [pixel] = receipts.new_pixels(before)
    placement = tab.placement()
    assert placement["inBody"] == 1, "an old pixel is still in the quoted history"
    assert_pixel_image(placement, receipts, pixel)
    assert placement["textBefore"] == REPLY_TEXT
    assert placement["textAfter"].startswith(text_after), placement["bodyHTML"]
    assert placement["beforeQuote"] is True and not placement["inSignature"]
    sent = send_message(tab)
    assert our_pixels_in(sent["html"], receipts) == [pixel["url"]]
    assert not set(old_urls) & set(our_pixels_in(sent["html"], receipts))
    tab.check()


@pytest.mark.parametrize(
    ("fixture", "caret_in", "own_text", "text_after"),
    [
        ("popup.html", ".gmail_signature_prefix", "Kind regards, Ada", "-- Ada Lovelace"),
        ("popup.html", ".gmail_signature", "Kind regards, Ada", "-- Ada Lovelace"),
        ("popup_wrapped.html", ".gmail_signature", "Kind regards, Ada", "Ada Lovelace"),
        ("reply_wrapped.html", ".gmail_signature_prefix", REPLY_TEXT, "-- Ada Lovelace"),
    ],
)
def test_a_caret_in_the_signature_or_its_dash_line_is_not_where_the_pixel_goes(
    tab, receipts, fixtures, fixture, caret_in, own_text, text_after
):
    quoted_pixels(receipts, fixtures)
    page = tab.open(fixture)
    place_caret(page, caret_in, 0, 1)
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"

    placement = tab.placement()
    assert placement["outsideQuote"] == 1 and not placement["inSignature"]
    assert placement["textBefore"].endswith(own_text), placement["bodyHTML"]
    assert placement["textAfter"].startswith(text_after), placement["bodyHTML"]
    assert placement["beforeSignature"] is True
    tab.check()


def test_the_visible_subject_is_read_before_an_empty_hidden_one(tab, receipts):
    """gmail.js's subject(): input[name=subjectbox] first, the hidden input[name=subject] only
    when that is empty (popup_two_subjects.html has the hidden one first, and empty)."""
    page = tab.open("popup_two_subjects.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    assert mint_request(tab) == {"subject": "Invoice #42", "recipients": POPUP_RECIPIENTS}

    with page.expect_response(lambda response: response.url.endswith("/sent")) as marker:
        page.locator(SEND).click()
    assert marker.value.request.post_data_json["subject"] == "Invoice #42"
    tab.check()


@pytest.mark.parametrize("fixture", ["popup_body_classes.html", "popup_body_editable.html"])
def test_a_body_without_g_editable_is_found(tab, receipts, fixture):
    """The body as gmail.js selects it (div[contenteditable=true]), with Gmail's classes
    (div.Am.Al.editable) or without: the pixel goes in, is sent, and is no self-view."""
    before = receipts.pixel_ids()
    tab.open(fixture)
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    assert mint_request(tab) == {"subject": "Invoice #42", "recipients": POPUP_RECIPIENTS}

    [pixel] = receipts.new_pixels(before)
    placement = tab.placement()
    assert_pixel_image(placement, receipts, pixel)
    assert_at_end_of_own_text(placement, "Kind regards, Ada", signature="Ada Lovelace")
    assert our_pixels_in(send_message(tab)["html"], receipts) == [pixel["url"]]
    assert tab.requests_to("/self-view") == []  # the draft's own image, in its body
    tab.check()


def test_an_editable_div_outside_any_compose_is_no_body(tab, receipts):
    """gmail.js's wide body selector counts only inside a compose."""
    page = tab.open("inbox.html")
    page.evaluate(
        """() => {
          const box = document.createElement("div");
          box.contentEditable = "true";
          box.textContent = "a note, not a message";
          document.querySelector('div.nH[role="main"]').appendChild(box);
        }"""
    )
    page_before = tab.snapshot()
    tab.click_bookmarklet()
    assert tab.notice().kind == "no-compose"
    assert tab.snapshot() == page_before and tab.api_requests == []
    tab.check()


def test_a_compose_known_only_by_its_ad_container(tab, receipts):
    """No [role=dialog], no div.M9: gmail.js's compose can be the div.AD itself."""
    before = receipts.pixel_ids()
    tab.open("popup_ad_only.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    assert mint_request(tab) == {"subject": "Invoice #42", "recipients": POPUP_RECIPIENTS}

    [pixel] = receipts.new_pixels(before)
    placement = tab.placement()
    assert_pixel_image(placement, receipts, pixel)
    assert_at_end_of_own_text(placement, "Kind regards, Ada", signature="Ada Lovelace")
    assert our_pixels_in(send_message(tab, ANY_SEND)["html"], receipts) == [pixel["url"]]
    tab.check()


@pytest.mark.parametrize(
    ("click_on", "index", "added"),
    [(REPLY_TEXT, 0, REPLY_ADDED), ("Kind regards, Ada", 1, POPUP_ADDED)],
    ids=["inline-reply", "ad-popup"],
)
def test_an_inline_reply_and_an_ad_popup_are_told_apart(tab, receipts, click_on, index, added):
    """reply_and_popup.html: an inline reply (.AO … .ip.adB > div.M9) and a popup known only by
    its div.AD. The one holding the caret gets the pixel; the other is left as it was."""
    page = tab.open("reply_and_popup.html")
    other = page.locator(BODIES).nth(1 - index)
    other_before = other.evaluate("body => body.outerHTML")
    page.get_by_text(click_on).click()
    page.keyboard.press("End")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", added)

    placement = tab.placement(compose=index)
    assert placement["outsideQuote"] == 1
    assert placement["textBefore"].endswith(click_on), placement["bodyHTML"]
    assert other.evaluate("body => body.outerHTML") == other_before
    tab.check()


def test_an_inline_reply_and_an_ad_popup_neither_focused_is_ambiguous(tab, receipts):
    tab.open("reply_and_popup.html")
    page_before = tab.snapshot()
    tab.click_bookmarklet()
    assert tab.notice().kind == "ambiguous"
    assert tab.snapshot() == page_before and tab.api_requests == []
    tab.check()


def test_a_chip_address_on_an_element_inside_the_option_is_read(tab, receipts):
    """gmail.js reads div[data-hovercard-id] under the field: the address can be on an element
    inside the role=option chip (popup_hovercard_child.html). Still nothing from the
    suggestions, which carry data-hovercard-id too."""
    page = tab.open("popup_hovercard_child.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    assert mint_request(tab) == {"subject": "Invoice #42", "recipients": POPUP_RECIPIENTS}

    with page.expect_response(lambda response: response.url.endswith("/sent")) as marker:
        page.locator(SEND).click()
    assert marker.value.request.post_data_json["recipients"] == POPUP_RECIPIENTS
    tab.check()


# -- Tracking the message's links ----------------------------------------------------------------

PAY = "https://pay.example.com/invoices/41?via=mail"
TERMS = "http://example.com/terms"
OWN_LINKS = [PAY, TERMS]  # the user's http(s) links in reply_links.html, each once, in order
LINKS_OFFER = "Track its 2 links too"
TRACK = "[data-openreceipt-action='track-links']"
DECLINE = "[data-openreceipt-action='dismiss']"

# Every link on the page, in document order: where it is, its href, its other attributes and
# what it holds.
ANCHORS = """() => [...document.querySelectorAll("a")].map((a) => ({
  where: a.closest(".gmail_quote") ? "quote" : a.closest(".gmail_signature") ? "signature"
    : a.closest('[contenteditable="true"]') ? "body" : "page",
  href: a.getAttribute("href"),
  attributes: Object.fromEntries([...a.attributes].filter((attribute) => attribute.name !== "href")
    .map((attribute) => [attribute.name, attribute.value])),
  text: a.textContent,
  children: [...a.children].map((child) => child.tagName),
}))"""

# The links in the body that hold this server's pixel: what each holds and how big it is drawn.
HONEYPOTS = """async ([origin, bodies]) => {
  const body = document.querySelector(bodies);
  const found = [];
  for (const a of body.querySelectorAll("a")) {
    const img = a.querySelector("img");
    if (!img || !(img.getAttribute("src") || "").startsWith(origin + "/p/")) continue;
    await img.decode().catch(() => null);
    const box = a.getBoundingClientRect();
    const image = img.getBoundingClientRect();
    found.push({href: a.getAttribute("href"), text: a.textContent,
                children: [...a.childNodes].map((node) => node.nodeName), src: img.src,
                width: box.width, image: [image.width, image.height],
                display: getComputedStyle(img).display,
                loaded: img.complete && img.naturalWidth === 1});
  }
  return found;
}"""


class LinksIn(html.parser.HTMLParser):
    """The links of an HTML body as (where, href): in the quoted history, the signature or the
    user's own text."""

    VOID = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self, text):
        super().__init__()
        self.open, self.links = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            classes = " ".join(self.open)
            where = "quote" if "gmail_quote" in classes else "signature"
            where = where if where == "quote" or "gmail_signature" in classes else "body"
            self.links.append((where, attrs.get("href")))
        if tag not in self.VOID:
            self.open.append(attrs.get("class") or "")

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.open:
            self.open.pop()


def open_links_fixture(tab, receipts, fixtures):
    """reply_links.html, with a link an earlier receipt tracks already; its URL."""
    earlier = receipts.mint(subject="Invoice #40")
    status, answer = receipts.api(
        "POST", f"/api/pixels/{earlier['id']}/links", {"links": ["https://example.org/statement"]}
    )
    assert status == 200, answer
    fixtures.values["tracked_link"] = answer["links"][0]["url"]
    page = tab.open("reply_links.html")
    return page, fixtures.values["tracked_link"]


def add_receipt_with_links_offer(tab, receipts, offer=LINKS_OFFER):
    """Click the bookmarklet in reply_links.html: the receipt's notice offers to track links."""
    before = receipts.pixel_ids()
    tab.click_bookmarklet()
    notice = tab.notice()
    assert notice.kind == "added" and notice.text.startswith(REPLY_ADDED), notice
    assert tab.page.locator(TRACK).text_content() == offer
    assert tab.page.locator(DECLINE).text_content() == "No thanks"
    [pixel] = receipts.new_pixels(before)
    return pixel


def redirect_of(receipts, url):
    """(status, Location) of a GET of one of the server's /l/ URLs, the redirect not followed."""
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == receipts.url and parts.path.startswith("/l/")
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", parts.path, headers={"User-Agent": CHROME_UA})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def test_tracking_the_links_rewrites_the_users_own_and_each_redirects(tab, receipts, fixtures):
    page, tracked_before = open_links_fixture(tab, receipts, fixtures)
    original = page.evaluate(ANCHORS)
    pixel = add_receipt_with_links_offer(tab, receipts)
    assert page.evaluate(ANCHORS) == original  # nothing changes before the user says so

    with page.expect_response(lambda response: response.url.endswith("/links")) as answer:
        page.locator(TRACK).click()
    assert tab.notice() == ("links", "Tracking 2 links in this message.")
    [request] = tab.requests_to("/links")
    assert request.url == f"{receipts.url}/api/pixels/{pixel['id']}/links"
    assert request.headers["authorization"] == f"Bearer {receipts.token}"
    assert request.post_data_json == {"links": OWN_LINKS}  # as the DOM has them, each once
    tracked = answer.value.json()
    urls = {link["destination"]: link["url"] for link in tracked["links"]}
    assert list(urls) == OWN_LINKS
    assert receipts.pixel(pixel["id"])["links"] == tracked["links"]

    # The user's http(s) links now point at the returned URLs, with their text and other
    # attributes; mailto:, the link tracked already, the signature, the quoted history and the
    # message shown above the reply are as they were.
    page.wait_for_function("() => window.__gmail.saves > 0")
    after = page.evaluate(ANCHORS)
    expected = [
        {**link, "href": urls[link["href"]]}
        if link["where"] == "body" and link["href"] in urls
        else link
        for link in original
    ]
    assert [link for link in after if link["href"] != tracked["honeypot"]] == expected
    assert [link["href"] for link in after if link["where"] == "body"] == [
        urls[PAY],
        urls[TERMS],
        tracked_before,
        urls[PAY],
        "mailto:billing@example.com",
        tracked["honeypot"],
    ]
    for destination, url in urls.items():
        assert url.startswith(f"{receipts.url}/l/")
        assert redirect_of(receipts, url) == (302, destination)

    # The honeypot wraps the receipt's own image and nothing else: no text, one pixel wide (an
    # inline link is as tall as its line), holding the transparent 1x1 GIF, drawn (not
    # display:none, which could have Gmail drop it).
    [honeypot] = page.evaluate(HONEYPOTS, [receipts.url, BODY])
    assert honeypot["href"] == tracked["honeypot"] and honeypot["src"] == pixel["url"]
    assert honeypot["children"] == ["IMG"] and honeypot["text"] == ""
    assert honeypot["width"] <= 1 and honeypot["image"] == [1, 1]
    assert honeypot["display"] != "none" and honeypot["loaded"]
    assert tracked["honeypot"] not in [link["url"] for link in tracked["links"]]

    # What Gmail sends, the draft as last saved, carries the tracked links.
    sent = send_message(tab)
    assert LinksIn(sent["html"]).links == [
        ("body", urls[PAY]),
        ("body", urls[TERMS]),
        ("body", tracked_before),
        ("body", urls[PAY]),
        ("body", "mailto:billing@example.com"),
        ("body", tracked["honeypot"]),
        ("signature", "https://engines.example.com/"),
        ("quote", "mailto:bob@example.com"),
        ("quote", PAY),
    ]
    assert our_pixels_in(sent["html"], receipts) == [pixel["url"]]
    tab.check()


def test_declining_the_links_offer_leaves_every_link_untouched(tab, receipts, fixtures):
    """The offer outlives the notice's usual seconds, and "No thanks" changes nothing."""
    page, _ = open_links_fixture(tab, receipts, fixtures)
    original = page.evaluate(ANCHORS)
    page.clock.install()
    add_receipt_with_links_offer(tab, receipts)
    page.clock.run_for(120_000)
    assert page.locator(TRACK).is_visible()

    page.locator(DECLINE).click()
    assert page.locator("[data-openreceipt-notice]").count() == 0
    assert page.evaluate(ANCHORS) == original
    sent = send_message(tab)
    assert tab.requests_to("/links") == []
    assert [href for where, href in LinksIn(sent["html"]).links if where == "body"] == [
        link["href"] for link in original if link["where"] == "body"
    ]
    tab.check()


def test_the_links_offer_goes_when_its_message_is_sent(tab, receipts, fixtures):
    """Sent without an answer: the offer goes with the message, and the links went as written."""
    page, _ = open_links_fixture(tab, receipts, fixtures)
    original = page.evaluate(ANCHORS)
    add_receipt_with_links_offer(tab, receipts)
    sent = send_message(tab)
    page.wait_for_selector("[data-openreceipt-notice]", state="detached")
    assert tab.requests_to("/links") == []
    assert [href for where, href in LinksIn(sent["html"]).links if where == "body"] == [
        link["href"] for link in original if link["where"] == "body"
    ]
    tab.check()


def test_a_refusal_of_the_links_shows_the_servers_error_and_changes_no_link(
    tab, receipts, fixtures
):
    page, _ = open_links_fixture(tab, receipts, fixtures)
    page.evaluate(
        """(body) => {
          const line = document.createElement("div");
          for (let i = 0; i < 19; i++) {
            const a = document.createElement("a");
            a.href = "https://example.net/page/" + i;
            a.textContent = "page " + i;
            line.append(a, " ");
          }
          document.querySelector(body).prepend(line);
        }""",
        BODY,
    )
    original = page.evaluate(ANCHORS)
    pixel = add_receipt_with_links_offer(tab, receipts, offer="Track its 21 links too")

    tab.expect_console_error(r"status of 400")
    page.locator(TRACK).click()
    notice = tab.notice()
    assert notice == ("refused", "openreceipt: at most 20 links a receipt"), notice
    assert page.evaluate(ANCHORS) == original
    assert page.evaluate(HONEYPOTS, [receipts.url, BODY]) == []
    assert receipts.pixel(pixel["id"])["links"] == []
    tab.check()


def test_send_pressed_while_the_links_are_on_their_way_waits_for_them(tab, receipts, fixtures):
    page, _ = open_links_fixture(tab, receipts, fixtures)
    pixel = add_receipt_with_links_offer(tab, receipts)
    held = []
    tab.context.route(
        f"{receipts.url}/api/pixels/{pixel['id']}/links", lambda route: held.append(route)
    )
    page.locator(TRACK).click()
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert held, "the links request never left"

    page.locator(SEND).click()
    notice = tab.notice()
    assert notice == ("waiting", "openreceipt: tracking the links, then sending…")
    assert page.evaluate("window.__gmail.sent") == []
    held[0].continue_()
    [sent] = sent_messages(page)
    tracked = receipts.pixel(pixel["id"])["links"]
    assert [link["destination"] for link in tracked] == OWN_LINKS
    body_links = [href for where, href in LinksIn(sent["html"]).links if where == "body"]
    assert [link["url"] for link in tracked] == [body_links[0], body_links[1]]
    assert PAY not in body_links and TERMS not in body_links
    tab.check()


def test_a_pixel_put_inside_a_link_leaves_it_before_the_honeypot_wraps_it(tab, receipts, fixtures):
    """The caret in a link's text puts the pixel in that link; a link cannot hold the
    honeypot's, so the image moves to just after it."""
    page, _ = open_links_fixture(tab, receipts, fixtures)
    place_caret(page, "a[title]", 0, len("the pay"))
    pixel = add_receipt_with_links_offer(tab, receipts)
    assert page.locator(f"{BODY} a[title] img").count() == 1
    page.locator(TRACK).click()
    assert tab.notice().kind == "links"
    [honeypot] = page.evaluate(HONEYPOTS, [receipts.url, BODY])
    assert honeypot["src"] == pixel["url"] and honeypot["children"] == ["IMG"]
    assert page.locator(f"{BODY} a[title]").text_content() == "the payment page"
    assert page.locator(f"{BODY} a[title] img").count() == 0
    assert page.locator(f"{BODY} a[title] + a > img").count() == 1
    tab.check()


# -- A reminder for this message ------------------------------------------------------------------

REMIND = "[data-openreceipt-action='reminder']"
REMIND_3_DAYS = "Remind me if not opened in 3 days"
REMINDED_3 = " You will be told if it is not opened within 3 days."


def buttons(tab):
    """The notice's buttons, in order, as (action, label)."""
    found = tab.page.locator("[data-openreceipt-notice] button").evaluate_all(
        "(buttons) => buttons.map((b) => [b.dataset.openreceiptAction, b.textContent])"
    )
    return [tuple(button) for button in found]


def message_state(tab):
    """The message body as the page has it, how often Gmail saved the draft and how many input
    events there were: once the receipt's own save came, a reminder changes none of them."""
    tab.page.wait_for_function("() => window.__gmail.saves > 0")
    return tab.page.evaluate(
        """(body) => ({html: document.querySelector(body).outerHTML,
                      saves: window.__gmail.saves, inputs: window.__test.inputs.length})""",
        BODY,
    )


def click_reminder(tab, status=200):
    """Press the notice's reminder button; the server's answer."""
    with tab.page.expect_response(lambda response: response.url.endswith("/reminder")) as answer:
        tab.page.locator(REMIND).click()
    assert answer.value.status == status, answer.value.text()
    return answer.value.json()


def test_the_notice_sets_a_reminder_for_this_message_and_leaves_the_message_alone(tab, receipts):
    """No default reminder: the notice offers one of 3 days, and stays until answered. Once the
    reminder is set it says so, and goes after its usual seconds. Only the server changes."""
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    page.clock.install()
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    assert buttons(tab) == [("reminder", REMIND_3_DAYS), ("dismiss", "No thanks")]
    [pixel] = receipts.new_pixels(before)
    assert receipts.pixel(pixel["id"])["reminder"] is None
    page.clock.run_for(120_000)
    assert page.locator(REMIND).is_visible()
    message = message_state(tab)

    assert click_reminder(tab) == {"id": pixel["id"], "after_days": 3}
    [request] = tab.requests_to("/reminder")
    assert request.url == f"{receipts.url}/api/pixels/{pixel['id']}/reminder"
    assert request.headers["authorization"] == f"Bearer {receipts.token}"
    assert request.post_data_json == {"after_days": 3}
    page.wait_for_selector(REMIND, state="detached")
    assert tab.notice() == ("added", POPUP_ADDED + REMINDED_3)
    assert buttons(tab) == []
    reminder = receipts.pixel(pixel["id"])["reminder"]
    assert (reminder["after_days"], reminder["reminded_at"]) == (3, None)
    assert message_state(tab) == message

    page.clock.run_for(8_000)  # NOTICE_SECONDS, now that nothing is left to answer
    assert page.locator("[data-openreceipt-notice]").count() == 0
    sent = send_message(tab)
    assert our_pixels_in(sent["html"], receipts) == [pixel["url"]]
    assert receipts.pixel(pixel["id"])["reminder"]["due_at"] is not None  # counted from sending
    tab.check()


def test_with_a_default_reminder_the_notice_offers_none_for_this_message(tab, receipts):
    default_reminder(receipts, 5)
    try:
        before = receipts.pixel_ids()
        tab.open("popup.html")
        tab.click_bookmarklet()
        reminded = POPUP_ADDED + " You will be told if it is not opened within 5 days."
        assert tab.notice() == ("added", reminded)
        assert buttons(tab) == [("reminder", "No reminder"), ("dismiss", "OK")]
        [pixel] = receipts.new_pixels(before)
        assert receipts.pixel(pixel["id"])["reminder"]["after_days"] == 5
        message = message_state(tab)

        assert click_reminder(tab) == {"id": pixel["id"], "after_days": None}
        [request] = tab.requests_to("/reminder")
        assert request.post_data_json == {"after_days": None}
        tab.page.wait_for_selector(REMIND, state="detached")
        assert tab.notice() == ("added", POPUP_ADDED + " No reminder for this message.")
        assert receipts.pixel(pixel["id"])["reminder"] is None
        assert message_state(tab) == message
    finally:
        default_reminder(receipts, None)
    tab.check()


def test_the_reminder_and_the_links_offer_share_the_notice(tab, receipts, fixtures):
    """Setting the reminder leaves the links offered, for as long as before; either answer is
    kept."""
    page, _ = open_links_fixture(tab, receipts, fixtures)
    original = page.evaluate(ANCHORS)
    page.clock.install()
    pixel = add_receipt_with_links_offer(tab, receipts)
    assert buttons(tab) == [
        ("track-links", LINKS_OFFER),
        ("reminder", REMIND_3_DAYS),
        ("dismiss", "No thanks"),
    ]
    message = message_state(tab)

    click_reminder(tab)
    page.wait_for_selector(REMIND, state="detached")
    notice = tab.notice()
    assert notice.kind == "added" and notice.text.startswith(REPLY_ADDED + REMINDED_3), notice
    assert buttons(tab) == [("track-links", LINKS_OFFER), ("dismiss", "No thanks")]
    page.clock.run_for(120_000)
    assert page.locator(TRACK).is_visible()
    assert page.evaluate(ANCHORS) == original and message_state(tab) == message

    with page.expect_response(lambda response: response.url.endswith("/links")):
        page.locator(TRACK).click()
    assert tab.notice() == ("links", "Tracking 2 links in this message.")
    detail = receipts.pixel(pixel["id"])
    assert detail["reminder"]["after_days"] == 3
    assert [link["destination"] for link in detail["links"]] == OWN_LINKS
    tab.check()


def test_a_refusal_of_the_reminder_shows_the_servers_error_and_the_button_stays(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice() == ("added", POPUP_ADDED)
    [pixel] = receipts.new_pixels(before)
    # The notify job sent a reminder meanwhile: it can no longer change (409).
    write_database(
        receipts,
        "UPDATE pixel SET remind_after_days = 2, reminded_at = ? WHERE public_id = ?",
        "2024-05-01 09:00:00",
        pixel["id"],
    )
    message = message_state(tab)

    tab.expect_console_error(r"status of 409")
    assert click_reminder(tab, status=409) == {"error": "the reminder was sent already"}
    refused = page.wait_for_selector("[data-openreceipt-notice] [data-openreceipt-refused]")
    assert refused.get_attribute("data-openreceipt-refused") == "refused"
    assert refused.text_content() == "openreceipt: the reminder was sent already"
    notice = tab.notice()
    assert notice.kind == "added" and notice.text.startswith(POPUP_ADDED + "openreceipt:"), notice
    assert buttons(tab) == [("reminder", REMIND_3_DAYS), ("dismiss", "No thanks")]
    assert page.locator(REMIND).is_enabled()
    assert receipts.pixel(pixel["id"])["reminder"]["after_days"] == 2
    assert message_state(tab) == message

    # Tried again once the server agrees: the refusal gives way to what was set.
    write_database(receipts, "UPDATE pixel SET reminded_at = NULL WHERE public_id = ?", pixel["id"])
    click_reminder(tab)
    page.wait_for_selector(REMIND, state="detached")
    assert tab.notice() == ("added", POPUP_ADDED + REMINDED_3)
    assert receipts.pixel(pixel["id"])["reminder"]["after_days"] == 3
    assert message_state(tab) == message
    tab.check()


# -- Only on Gmail ---------------------------------------------------------------------------------


def test_on_another_site_it_says_so_and_sends_nothing(tab, receipts):
    """A page that wraps fetch (and would log every header) never sees the bookmarklet's key."""
    seen = []
    tab.page.on("request", lambda request: seen.append(request.url))
    tab.context.route(
        "https://shop.example/**",
        lambda route: route.fulfill(
            status=200,
            content_type="text/html",
            body="<!doctype html><title>Shop</title><h1>Shop</h1>",
        ),
    )
    page = tab.page
    page.goto("https://shop.example/")
    page.evaluate(
        """() => {
          window.__captured = [];
          const original = window.fetch;
          window.fetch = (...args) => {
            window.__captured.push(JSON.stringify(args));
            return original(...args);
          };
        }"""
    )
    tab.click_bookmarklet()
    notice = tab.notice()
    assert notice.kind == "not-gmail" and "Gmail" in notice.text
    assert page.evaluate("window.__captured") == []
    assert page.evaluate("typeof window.__openreceipt") == "undefined"
    assert not [url for url in seen if url.startswith(receipts.url)]
    tab.check()


def test_on_its_own_server_it_explains_how_to_install_it(tab, receipts):
    page = tab.page
    page.goto(f"{receipts.url}/privacy")
    tab.click_bookmarklet()
    notice = tab.notice()
    assert notice.kind == "not-gmail" and "bookmarks bar" in notice.text
    assert tab.api_requests == []
    tab.check()


def test_no_compose_says_so_changes_nothing_and_the_notice_goes_away(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("inbox.html")
    page_before = tab.snapshot()
    page.clock.install()
    tab.click_bookmarklet()
    notice = tab.notice()
    assert notice.kind == "no-compose" and notice.text
    assert tab.snapshot() == page_before
    assert tab.api_requests == [] and receipts.new_pixels(before) == []
    page.clock.run_for(30_000)
    assert page.locator("[data-openreceipt-notice]").count() == 0
    tab.check()


def test_plain_text_mode_says_so_and_changes_nothing(tab, receipts):
    before = receipts.pixel_ids()
    tab.open("plaintext.html")
    page_before = tab.snapshot()
    tab.click_bookmarklet()
    assert tab.notice().kind == "plain-text"
    assert tab.snapshot() == page_before
    assert tab.api_requests == [] and receipts.new_pixels(before) == []
    tab.check()


# -- When the server says no ---------------------------------------------------------------------


def test_server_down_is_unreachable_and_changes_nothing(tab):
    dead = f"http://127.0.0.1:{free_port()}"
    tab.open("popup.html")
    page_before = tab.snapshot()
    tab.expect_console_error(r"ERR_CONNECTION_REFUSED")
    tab.click_bookmarklet(origin=dead)
    notice = tab.notice()
    assert notice.kind == "unreachable" and notice.text
    assert tab.snapshot() == page_before
    tab.check()


def test_revoked_token_says_how_to_get_a_new_bookmarklet(tab, receipts):
    token = receipts.revoked_token()
    before = receipts.pixel_ids()
    tab.open("popup.html")
    page_before = tab.snapshot()
    tab.expect_console_error(r"status of 401")
    tab.click_bookmarklet(token=token)
    notice = tab.notice()
    assert notice.kind == "revoked" and "bookmarklet" in notice.text.lower()
    assert tab.snapshot() == page_before and receipts.new_pixels(before) == []
    tab.check()


def test_out_of_date_bookmarklet_is_told_so(tab, receipts):
    before = receipts.pixel_ids()
    tab.open("popup.html")
    page_before = tab.snapshot()
    tab.expect_console_error(r"status of 409")
    tab.click_bookmarklet(version=VERSION - 1)
    assert tab.notice().kind == "outdated"
    [request] = tab.requests_to("/api/pixels")
    assert request.headers["x-openreceipt-bookmarklet"] == str(VERSION - 1)
    assert tab.snapshot() == page_before and receipts.new_pixels(before) == []
    tab.check()


def test_a_refusal_shows_the_apis_own_message(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    page.fill('input[name="subjectbox"]', "x" * 999)
    page_before = tab.snapshot()
    tab.expect_console_error(r"status of 400")
    tab.click_bookmarklet()
    notice = tab.notice()
    assert notice.kind == "refused"
    assert "'subject' is longer than 998 characters" in notice.text
    assert tab.snapshot() == page_before and receipts.new_pixels(before) == []
    tab.check()


# -- Once installed: one pixel per message, sending, the sender's own views ----------------------


def test_second_click_says_already_and_the_script_installs_once(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    page.evaluate("window.__openreceipt.__testMark = 1")
    tab.click_bookmarklet()
    assert tab.notice().kind == "already"
    assert page.evaluate("window.__openreceipt.__testMark") == 1  # not installed afresh
    assert tab.placement()["outsideQuote"] == 1
    assert len(receipts.new_pixels(before)) == 1 and len(tab.requests_to("/api/pixels")) == 1

    # Installed once: one Send, one sent marker. A second install's listener would send its
    # marker in the same click; a request the page makes after the click comes after it.
    with page.expect_response(lambda response: response.url.endswith("/sent")):
        page.locator("div.M9 div[role='button'].aoO").click()
    after = f"{tab.receipts.url}/p/after-the-click.gif"
    with page.expect_request(after):
        page.evaluate("(url) => { fetch(url, { mode: 'no-cors' }); }", after)
    assert len(tab.requests_to("/sent")) == 1
    tab.check()


def test_send_button_sends_the_final_subject_and_recipients(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    [pixel] = receipts.new_pixels(before)
    assert pixel["sent_at"] is None

    # The user goes on editing: a new subject, Carol out, Erin into Cc.
    page.fill('input[name="subjectbox"]', "Invoice #42 (corrected)")
    page.evaluate(
        """() => {
          document.querySelector('.anm[name="to"] [data-hovercard-id="carol@example.com"]')
            .remove();
          const chip = document.createElement("div");
          chip.setAttribute("role", "option");
          chip.setAttribute("data-name", "Erin");
          chip.setAttribute("data-hovercard-id", "Erin@Example.com");
          chip.textContent = "Erin";
          document.querySelector('.anm[name="cc"] [role="listbox"]').appendChild(chip);
        }"""
    )
    with page.expect_response(lambda response: response.url.endswith("/sent")) as sent:
        page.locator("div.M9 div[role='button'].aoO").click()
    assert sent.value.status == 200
    assert sent.value.url == f"{receipts.url}/api/pixels/{pixel['id']}/sent"
    final = ["bob@example.com", "erin@example.com", "dave@example.org"]
    assert sent.value.request.post_data_json == {
        "subject": "Invoice #42 (corrected)",
        "recipients": final,
    }
    detail = receipts.pixel(pixel["id"])
    assert detail["sent_at"] is not None
    assert (detail["subject"], detail["recipients"]) == ("Invoice #42 (corrected)", final)
    tab.check()


def test_ctrl_enter_sends_the_sent_marker(tab, receipts):
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    [pixel] = receipts.new_pixels(before)
    page.locator(BODY).click()
    with page.expect_response(lambda response: response.url.endswith("/sent")) as sent:
        page.keyboard.press("Control+Enter")
    assert sent.value.status == 200
    detail = receipts.pixel(pixel["id"])
    assert detail["sent_at"] is not None
    assert (detail["subject"], detail["recipients"]) == ("Invoice #42", POPUP_RECIPIENTS)
    tab.check()


def assert_self_view(receipts, pixel):
    """The proxy's fetch right after the beacon is judged the sender's own view."""
    receipts.fetch_as_gmail_proxy(pixel["url"])
    event = receipts.pixel(pixel["id"])["events"][-1]
    assert (event["kind"], event["source"]) == ("self", "gmail-proxy"), event


def test_self_view_beacon_when_the_tab_shows_the_sent_message(tab, receipts):
    """Gmail is one page: after sending, the same tab shows the sent message."""
    before = receipts.pixel_ids()
    page = tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    [pixel] = receipts.new_pixels(before)
    with page.expect_response(lambda response: response.url.endswith("/sent")):
        page.locator("div.M9 div[role='button'].aoO").click()
    assert tab.requests_to("/self-view") == []  # the draft's own image is no self-view

    with page.expect_response(lambda response: response.url.endswith("/self-view")) as beacon:
        page.evaluate(
            """(src) => {
              const message = document.createElement("div");
              message.className = "adn ads";
              const text = document.createElement("div");
              text.className = "a3s aiL";
              text.textContent = "Hello Bob, the invoice is attached.";
              const img = document.createElement("img");
              img.src = src;
              img.width = img.height = 1;
              img.alt = "";
              text.appendChild(img);
              message.appendChild(text);
              document.querySelector('div.nH[role="main"]').appendChild(message);
            }""",
            GMAIL_PROXY.format(secrets.token_urlsafe(24), pixel["url"]),
        )
    assert beacon.value.status == 200
    assert beacon.value.url == f"{receipts.url}/api/pixels/{pixel['id']}/self-view"
    assert beacon.value.request.headers["authorization"] == f"Bearer {receipts.token}"
    assert_self_view(receipts, pixel)
    tab.check()


def test_self_view_beacon_on_a_sent_message_page(tab, receipts, fixtures):
    """The fixture's sent message, with the pixel's src rewritten as Gmail's proxy does."""
    before = receipts.pixel_ids()
    tab.open("popup.html")
    tab.click_bookmarklet()
    assert tab.notice().kind == "added"
    [pixel] = receipts.new_pixels(before)
    assert receipts.api("POST", f"/api/pixels/{pixel['id']}/sent", {})[0] == 200

    path = f"/sent-{pixel['id']}.html"
    fixtures.pages[path] = fixtures.template(
        "sent_message.html",
        subject="Invoice #42",
        pixel_src=GMAIL_PROXY.format(secrets.token_urlsafe(24), pixel["url"]),
    )
    page = tab.open(path.lstrip("/"))  # a new page load: the bookmarklet is clicked again
    assert page.locator("#message img").evaluate("img => img.complete && img.naturalWidth") == 1
    with page.expect_response(lambda response: response.url.endswith("/self-view")) as beacon:
        tab.click_bookmarklet()
        assert tab.notice().kind == "no-compose"
        # Gmail draws the conversation again (say, the user opens it once more).
        page.evaluate(
            """() => {
              const message = document.getElementById("message");
              message.replaceWith(message.cloneNode(true));
            }"""
        )
    assert beacon.value.status == 200
    assert beacon.value.url == f"{receipts.url}/api/pixels/{pixel['id']}/self-view"
    assert_self_view(receipts, pixel)
    tab.check()


# -- The install page ----------------------------------------------------------------------------


def test_install_page_makes_a_working_bookmarklet_and_screenshot(
    browser, receipts, fixtures, screenshots
):
    context = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1000, "height": 800})
    page = context.new_page()
    errors = []
    # (The server has no favicon; the browser's own request for one is not the page's error.)
    page.on(
        "console",
        lambda message: (
            message.type == "error"
            and not message.location["url"].endswith("/favicon.ico")
            and errors.append(message.text)
        ),
    )
    page.goto(f"{receipts.url}/login?next=/bookmarklet")
    page.fill("#email", EMAIL)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.locator("form button[type=submit]").click()
    assert urllib.parse.urlsplit(page.url).path == "/bookmarklet"
    assert page.locator("#bookmarklet-name").input_value().startswith("Chrome ")
    page.fill("#bookmarklet-name", "Work laptop")
    page.get_by_role("button", name=re.compile("Create")).click()
    link = page.wait_for_selector('a[href^="javascript:"]')
    href = link.get_attribute("href")
    assert page.locator("#bookmarklet-address").input_value() == href
    assert "Work laptop" in page.locator("#new-heading").text_content()
    # Clicked here instead of dragged: the page says what to do, the policy blocks nothing.
    assert page.locator("#bookmarklet-clicked").is_hidden()
    link.click()
    assert page.locator("#bookmarklet-clicked").is_visible()
    assert urllib.parse.urlsplit(page.url).path == "/bookmarklet"
    page.screenshot(path=str(screenshots / "bookmarklet-install.png"))
    assert errors == []
    context.close()

    # The link works as it is: dragged to the bar and clicked in a compose.
    tab = GmailTab(browser, fixtures, receipts)
    try:
        before = receipts.pixel_ids()
        tab.open("popup.html")
        tab.click_bookmarklet(href)
        assert tab.notice() == ("added", POPUP_ADDED)
        [pixel] = receipts.new_pixels(before)  # the same user's pixels
        assert_pixel_image(tab.placement(), receipts, pixel)
        tab.check()
    finally:
        tab.close()
