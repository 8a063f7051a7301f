"""The status pages in real Chromium against a real gunicorn, on SQLite and on PostgreSQL: the
list and the detail page update in place as fetches arrive, the corrections work, nothing breaks
the Content Security Policy or logs an error, the pages fit a phone, carry labels and readable
marks, and work without JavaScript. Takes the docs/status-*.png screenshots (see the fixture
`screenshots`).
"""

import json
import re
import secrets
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from .conftest import scratch_schema
from .receivers import Receiver
from .servers import Gunicorn, start_gunicorn
from .test_browser import CHROME_UA, launched_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EMAIL = "grace@example.com"
PASSWORD = "a long password for the status pages"
# A second account whose receipts are only the ones the screenshots show.
DOCS_EMAIL = "ada@example.com"
DOCS_PASSWORD = "another long password for the docs"

GMAIL_PROXY_UA = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
# A bare "Mozilla/5.0" from outside Apple's ranges (the test client is 127.0.0.1): a machine's
# prefetch on delivery.
MACHINE_UA = "Mozilla/5.0"
OUTLOOK_UA = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"

LIVE_MS = 10_000  # the pages poll every 4 s: a change shows within two polls
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}

# Injected before any page script (init scripts are not subject to the page's CSP): every
# policy violation is reported to the test through an exposed function, across navigations.
WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__reportViolation({directive: event.violatedDirective, blocked: event.blockedURI,
    sample: event.sample, source: event.sourceFile + ":" + event.lineNumber,
    page: location.pathname});
});
"""

# What sticks out to the right of a `width` px wide screen: the innermost elements whose box or
# content goes past its edge, grouped by their path, with the widest one's text. (Measured against
# the intended width, not innerWidth: a mobile browser zooms out to fit a page that is too wide,
# and innerWidth grows with it.)
OVERFLOW = """(width) => {
  const describe = (node) => node.tagName.toLowerCase() + (node.id ? "#" + node.id : "")
    + [...node.classList].map((name) => "." + name).join("");
  // Content that overflows its box counts too, except where the box scrolls or clips it (a
  // text field scrolls its own value) or where scrollWidth means nothing (SVG).
  const spills = (node) => node instanceof HTMLElement && !node.matches("input, select, textarea")
    && getComputedStyle(node).overflowX === "visible";
  const right = (node) => {
    const box = node.getBoundingClientRect();
    if (box.width === 0) return 0;
    return box.left + (spills(node) ? Math.max(box.width, node.scrollWidth) : box.width);
  };
  const sticksOut = (node) => right(node) > width + 1;
  const groups = new Map();
  for (const node of document.querySelectorAll("body *")) {
    if (!sticksOut(node) || [...node.children].some(sticksOut)) continue;
    const path = [];
    for (let up = node; up && up !== document.body; up = up.parentElement) {
      path.unshift(describe(up));
    }
    const key = path.join(" > ");
    const edge = Math.round(right(node));
    const contents = document.createRange();
    contents.selectNodeContents(node);
    const reach = contents.getBoundingClientRect().right;  // the text's own width decides
    if (!groups.has(key) || groups.get(key).reach < reach) {
      groups.set(key, {edge, reach, text: node.textContent.trim().slice(0, 60)});
    }
  }
  const offenders = [...groups].map(([key, {edge, text}]) =>
    `${key} reaches ${edge} px: ${JSON.stringify(text)}`);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          offenders};
}"""

# Fields a person fills in (not hidden ones) without a label (label[for] or aria-label), and
# buttons without a name.
UNLABELLED = """() => {
  const labelled = (field) => {
    if ((field.getAttribute("aria-label") || "").trim()) return true;
    const label = field.id && document.querySelector(`label[for="${CSS.escape(field.id)}"]`);
    return !!label && label.textContent.trim() !== "";
  };
  const fields = [...document.querySelectorAll("input, select, textarea")]
    .filter((field) => field.type !== "hidden" && !labelled(field));
  const buttons = [...document.querySelectorAll("button")]
    .filter((button) => !button.textContent.trim() && !button.getAttribute("aria-label"));
  return [...fields, ...buttons].map((node) => node.outerHTML);
}"""

# Each receipt mark with its state (from its class) and its text.
MARKS = """() => [...document.querySelectorAll(".mark")].map((mark) => ({
  state: [...mark.classList].find((name) => name.startsWith("state-")).slice(6),
  text: mark.textContent.trim()}))"""

STATE_WORDS = {
    "waiting": "waiting",
    "inserted": "in the message",
    "sent": "sent",
    "delivered": "delivered",
    "opened": "opened",
}


@dataclass
class Receipts:
    """The module's server, with one account's API token."""

    server: Gunicorn
    token: str
    email: str
    password: str

    @property
    def url(self):
        return self.server.url

    def mint(self, user_agent=None, **body):
        headers = {"Authorization": f"Bearer {self.token}"}
        if user_agent:
            headers["User-Agent"] = user_agent
        status, _, raw = self.server.request("POST", "/api/pixels", body, headers)
        assert status == 201, raw
        return json.loads(raw)

    def sent(self, pixel):
        """Mark the pixel's message sent, as the bookmarklet does when Send is clicked."""
        status, _, raw = self.server.request(
            "POST", f"/api/pixels/{pixel['id']}/sent", {}, {"Authorization": f"Bearer {self.token}"}
        )
        assert status == 200, raw

    def fetch(self, pixel, user_agent):
        """Fetch the pixel's image as a mail client would; returns what the server recorded."""
        path = urllib.parse.urlsplit(pixel["url"]).path
        status, headers, _ = self.server.request("GET", path, headers={"User-Agent": user_agent})
        assert (status, headers["Content-Type"]) == (200, "image/gif")
        return headers["X-Openreceipt"]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def server(request, tmp_path_factory, geoip_path):
    """The status pages' gunicorn, once on SQLite (the default) and once on PostgreSQL."""
    tmp_path = tmp_path_factory.mktemp("status-server")
    settings = {"DATA_DIR": tmp_path / "data", "GEOIP_DATABASE": geoip_path, "MX_LOOKUP": "off"}
    settings["NOTIFY_ALLOW"] = "127.0.0.0/8"  # the notification test's receiver is on loopback
    with ExitStack() as stack:
        if request.param == "postgresql":
            schema = f"openreceipt_status_{secrets.token_hex(4)}"
            settings["DATABASE_URL"] = stack.enter_context(scratch_schema(schema))
        server = start_gunicorn(tmp_path, settings)
        stack.callback(server.stop)
        yield server


def account(server, email, password):
    server.openreceipt("user", "add", email, "--password-stdin", input=password + "\n")
    return Receipts(server, server.openreceipt("token", "new", email), email, password)


@pytest.fixture(scope="module")
def receipts(server):
    return account(server, EMAIL, PASSWORD)


@pytest.fixture(scope="module")
def docs_receipts(server):
    return account(server, DOCS_EMAIL, DOCS_PASSWORD)


@pytest.fixture(scope="module")
def browser():
    """test_browser.py's Chromium (Debian's, same flags, never a download), once a module."""
    with launched_chromium() as browser:
        yield browser


class Tab:
    """One page in a context of its own, collecting everything that went wrong in it: console
    errors, uncaught exceptions, CSP violations, failed or refused requests to the server."""

    def __init__(self, browser, receipts, javascript=True, **options):
        self.receipts = receipts
        self.context = browser.new_context(
            user_agent=CHROME_UA, java_script_enabled=javascript, **(options or DESKTOP)
        )
        self.problems = []
        self.requests = []
        if javascript:
            self.context.expose_function(
                "__reportViolation", lambda report: self.problems.append(("csp", report))
            )
            self.context.add_init_script(WATCH)
        self.page = self.context.new_page()
        # Nothing is ignored: the pages bring their own (data:) favicon, so even the browser's
        # own requests have nothing to fail on.
        self.page.on(
            "console",
            lambda message: (
                message.type == "error"
                and self.problems.append(("console", message.text, message.location))
            ),
        )
        self.page.on("pageerror", lambda error: self.problems.append(("exception", str(error))))
        self.page.on(
            "requestfailed",
            lambda request: self.problems.append(("failed", request.url, request.failure)),
        )
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on(
            "response",
            lambda response: (
                response.status >= 400
                and self.problems.append(("status", response.status, response.url))
            ),
        )

    def url(self, path):
        return self.receipts.url + path

    def path(self):
        return urllib.parse.urlsplit(self.page.url).path

    def log_in(self, next_path="/"):
        page = self.page
        page.goto(self.url(f"/login?next={urllib.parse.quote(next_path)}"))
        page.fill("#email", self.receipts.email)
        page.fill("#password", self.receipts.password)
        with page.expect_navigation():
            page.locator("form button[type=submit]").click()
        assert self.path() == next_path
        return page

    def mark_page(self):
        """Set a marker that a reload or a navigation would lose."""
        self.page.evaluate("window.__marker = 1")

    def assert_not_reloaded(self):
        assert self.page.evaluate("window.__marker") == 1, "the page was reloaded"

    def check(self):
        assert self.problems == []

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser, receipts):
    tab = Tab(browser, receipts)
    yield tab
    tab.close()


def expect(locator_or_page):
    from playwright.sync_api import expect

    return expect(locator_or_page)


def subject(prefix):
    return f"{prefix} {secrets.token_hex(3)}"


def assert_marks_are_words(page):
    """The receipt mark says its state in words, not by its colour alone."""
    marks = page.evaluate(MARKS)
    assert marks
    for mark in marks:
        assert STATE_WORDS[mark["state"]] in mark["text"], mark


def phone_overflow(page, name):
    """None if the page fits a phone's width, else what sticks out."""
    width = PHONE["viewport"]["width"]
    report = page.evaluate(OVERFLOW, width)
    if report["scrollWidth"] <= width + 1 and report["innerWidth"] == width:
        return None
    return (
        f"{name} is wider than a {width} px phone (scrollWidth {report['scrollWidth']}, "
        f"innerWidth {report['innerWidth']}); sticking out: {report['offenders']}"
    )


# -- Live updates --------------------------------------------------------------------------------


def test_list_shows_a_new_receipt_and_its_open_without_reloading(tab, receipts):
    page = tab.log_in("/")
    expect(page.locator("#notify")).to_be_visible()  # live.js ran
    tab.mark_page()

    title = subject("Quarterly report")
    pixel = receipts.mint(subject=title, recipients=["bob@example.com"])
    row = page.locator(f'#receipts tbody tr[data-id="{pixel["id"]}"]')
    expect(row).to_contain_text(title, timeout=LIVE_MS)
    expect(page.locator("#receipts")).to_be_visible()
    expect(row.locator(".mark")).to_have_text("○ waiting")
    expect(row).to_contain_text("bob@example.com")
    expect(row.locator(".count")).to_have_count(0)
    tab.assert_not_reloaded()

    assert receipts.fetch(pixel, GMAIL_PROXY_UA) == "recorded: open"
    expect(row.locator(".mark")).to_have_text("✓✓ opened", timeout=LIVE_MS)
    expect(row.locator(".count")).to_have_text(re.compile(r"^\s*×1$"))
    expect(row).to_contain_text("Gmail")  # the client column
    expect(row.locator("time")).to_have_text("just now")
    assert row.get_attribute("data-opens") == "1"
    tab.assert_not_reloaded()

    # A receipt with a label shows it as its title, and its subject beneath, live too.
    labelled = receipts.mint(subject=subject("Invoice 42"), label="Bob's invoice")
    row = page.locator(f'#receipts tbody tr[data-id="{labelled["id"]}"]')
    expect(row.locator("a")).to_have_text("Bob's invoice", timeout=LIVE_MS)
    expect(row.locator(".subject")).to_have_text(re.compile(r"^Invoice 42 "))
    tab.assert_not_reloaded()
    assert tab.path() == "/"
    assert any("/live/receipts" in url for url in tab.requests)
    tab.check()


def test_detail_page_corrections_and_live_updates(tab, receipts):
    title = subject("Signed contract")
    pixel = receipts.mint(subject=title, recipients=["carol@example.com"])
    assert receipts.fetch(pixel, GMAIL_PROXY_UA) == "recorded: open"

    page = tab.log_in("/")
    with page.expect_navigation():
        page.locator(f'#receipts tr[data-id="{pixel["id"]}"] a').click()
    assert tab.path() == f"/m/{pixel['id']}"
    expect(page.locator("#title")).to_have_text(title)
    expect(page.locator("#mark")).to_have_text("✓✓ opened")
    expect(page.locator("#count-open")).to_have_text("1")
    events = page.locator("#events tbody tr")
    expect(events).to_have_count(1)
    expect(events.locator(".kind")).to_have_text("opened")
    expect(events.locator('td[data-label="Who"]')).to_have_text("Gmail")
    expect(events.locator('td[data-label="Network"]')).to_have_text("127.0.0.0/24")
    expect(page.locator("#timeline svg circle")).to_have_count(1)
    expect(page.locator("#timeline svg circle title")).to_contain_text("opened")

    # "That was me": a plain form post; the page comes back with the event as the sender's own.
    with page.expect_navigation():
        events.get_by_role("button", name="That was me").click()
    expect(page.locator(".flash")).to_have_text("Marked as you.")
    expect(page.locator("#count-open")).to_have_text("0")
    expect(page.locator("#count-self")).to_have_text("1")
    expect(events.locator(".kind")).to_have_text("you")
    # The sender's own view says nothing about the recipient, but the receipt is in the message.
    expect(page.locator("#mark")).to_have_text("◔ in the message")
    expect(page.locator("#explanation")).to_contain_text("Only you have seen it so far")

    # A machine prefetches it on delivery: the page shows it without a reload.
    tab.mark_page()
    assert receipts.fetch(pixel, MACHINE_UA) == "recorded: prefetch"
    expect(page.locator("#count-prefetch")).to_have_text("1", timeout=LIVE_MS)
    expect(page.locator("#mark")).to_have_text("✓ delivered")
    expect(page.locator("#explanation")).to_contain_text("mail server fetched it")
    expect(page.locator("#count-self")).to_have_text("1")
    expect(page.locator("#count-open")).to_have_text("0")
    expect(events).to_have_count(2)
    expect(events.locator(".kind")).to_have_text(["you", "delivered"])
    expect(events.nth(1).locator('td[data-label="Who"]')).to_have_text("a machine")
    expect(events.nth(1).locator('td[data-label="Network"]')).to_have_text("127.0.0.0/24")
    expect(page.locator("#timeline svg circle")).to_have_count(2)
    tab.assert_not_reloaded()
    assert any(f"/live/m/{pixel['id']}" in url for url in tab.requests)

    # The rows the script built carry working forms: "Not me" undoes the correction.
    with page.expect_navigation():
        events.nth(0).get_by_role("button", name="Not me").click()
    expect(page.locator(".flash")).to_have_text("Counted as open.")
    expect(page.locator("#count-open")).to_have_text("1")
    expect(page.locator("#count-self")).to_have_text("0")
    expect(page.locator("#mark")).to_have_text("✓✓ opened")
    tab.check()


# -- Accessibility and JavaScript off -------------------------------------------------------------


def test_fields_have_labels_and_marks_say_their_state_in_words(tab, receipts):
    waiting = receipts.mint(subject=subject("Waiting"))
    delivered = receipts.mint(subject=subject("Delivered"))
    opened = receipts.mint(subject=subject("Opened"))
    assert receipts.fetch(delivered, MACHINE_UA) == "recorded: prefetch"
    assert receipts.fetch(opened, OUTLOOK_UA) == "recorded: open"

    page = tab.page
    page.goto(tab.url("/login"))
    assert page.evaluate(UNLABELLED) == [], "/login"
    tab.log_in("/")
    assert page.evaluate(UNLABELLED) == [], "/"
    states = {
        row.get_attribute("data-id"): row.locator(".mark").text_content()
        for row in page.locator("#receipts tbody tr").all()
    }
    assert states[waiting["id"]] == "○ waiting"
    assert states[delivered["id"]] == "✓ delivered"
    assert states[opened["id"]] == "✓✓ opened"
    assert_marks_are_words(page)

    page.goto(tab.url(f"/m/{opened['id']}"))
    assert page.evaluate(UNLABELLED) == [], "detail"
    assert_marks_are_words(page)
    # The timeline is an image with a text alternative.
    svg = page.locator("#timeline svg")
    assert svg.get_attribute("role") == "img"
    assert re.match(r"1 events? between ", svg.get_attribute("aria-label"))

    page.goto(tab.url("/settings"))
    assert page.evaluate(UNLABELLED) == [], "/settings"
    page.fill("#token-name", "a script")
    with page.expect_navigation():
        page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token")).to_be_visible()  # the field only a new token shows
    assert page.evaluate(UNLABELLED) == [], "/settings with a new token"
    tab.check()


def test_pages_work_without_javascript(browser, receipts):
    title = subject("Offline invoice")
    pixel = receipts.mint(subject=title, recipients=["dave@example.org"])
    assert receipts.fetch(pixel, MACHINE_UA) == "recorded: prefetch"
    assert receipts.fetch(pixel, GMAIL_PROXY_UA) == "recorded: open"

    tab = Tab(browser, receipts, javascript=False)
    try:
        page = tab.log_in("/")
        row = page.locator(f'#receipts tbody tr[data-id="{pixel["id"]}"]')
        expect(row.locator(".mark")).to_have_text("✓✓ opened")
        expect(row.locator(".count")).to_have_text("×1")
        expect(row).to_contain_text("Gmail")
        expect(page.locator("#notify")).to_be_hidden()  # live.js did not run

        with page.expect_navigation():
            row.locator("a").click()
        expect(page.locator("#mark")).to_have_text("✓✓ opened")
        expect(page.locator("#count-prefetch")).to_have_text("1")
        expect(page.locator("#timeline svg circle")).to_have_count(2)
        with page.expect_navigation():
            page.get_by_role("button", name="That was me").click()
        expect(page.locator("#count-open")).to_have_text("0")
        expect(page.locator("#count-self")).to_have_text("1")
        expect(page.locator("#mark")).to_have_text("✓ delivered")
        assert not [url for url in tab.requests if "/live/" in url]
        tab.check()
    finally:
        tab.close()


def timeline_events(page):
    """How many events the timeline picture stands for: a shared mark says "×n" in its title."""
    titles = page.locator("#timeline svg circle title").all_text_contents()
    return sum(int(m.group(1)) if (m := re.search(r" ×(\d+) ", t)) else 1 for t in titles)


# -- Screenshots for the docs ---------------------------------------------------------------------


def docs_receipts_in_every_state(docs_receipts):
    """A few receipts as a user would have them, the last one with a full story."""
    r = docs_receipts
    r.mint(subject="Lunch on Friday?", recipients=["erin@example.com"])
    drafted = r.mint(CHROME_UA, subject="Draft: offer letter", recipients=["frank@example.org"])
    assert r.fetch(drafted, CHROME_UA) == "recorded: preview"  # the sender's own draft
    delivered = r.mint(subject="Re: Invoice #41", recipients=["bob@example.com"])
    assert r.fetch(delivered, MACHINE_UA) == "recorded: prefetch"
    opened = r.mint(
        CHROME_UA,
        subject="Invoice #42",
        recipients=["bob@example.com", "carol@example.com"],
    )
    assert r.fetch(opened, CHROME_UA) == "recorded: preview"
    r.sent(opened)
    assert r.fetch(opened, MACHINE_UA) == "recorded: prefetch"
    assert r.fetch(opened, GMAIL_PROXY_UA) == "recorded: open"
    assert r.fetch(opened, OUTLOOK_UA) == "recorded: open"
    return opened


def test_screenshots_at_desktop_and_phone_width(browser, docs_receipts, screenshots):
    opened = docs_receipts_in_every_state(docs_receipts)
    problems = []
    storage = None
    for name, options in (("desktop", DESKTOP), ("phone", PHONE)):
        tab = Tab(browser, docs_receipts, **options)
        try:
            page = tab.page
            if storage is None:
                tab.log_in("/")
                storage = tab.context.storage_state()
            else:
                tab.context.add_cookies(storage["cookies"])
                page.goto(tab.url("/"))
            expect(page.locator("#receipts tbody tr")).to_have_count(4)
            page.screenshot(path=str(screenshots / f"status-list-{name}.png"))
            if name == "phone":
                problems.append(phone_overflow(page, "the list"))

            page.goto(tab.url(f"/m/{opened['id']}"))
            assert timeline_events(page) == 4
            page.screenshot(path=str(screenshots / f"status-detail-{name}.png"), full_page=True)
            if name == "phone":
                problems.append(phone_overflow(page, "the detail page"))
            tab.check()
        finally:
            tab.close()
    problems = [problem for problem in problems if problem]
    assert not problems, "\n".join(problems)


def test_a_long_address_still_fits_a_phone(browser, receipts):
    """Addresses do not break at dots: a long one must wrap, not widen the page."""
    address = "maximilian.mustermann@subsidiary.examplecompany.com"  # 51 characters
    pixel = receipts.mint(subject=subject("Quarterly statements"), recipients=[address])
    assert receipts.fetch(pixel, GMAIL_PROXY_UA) == "recorded: open"
    tab = Tab(browser, receipts, **PHONE)
    try:
        page = tab.log_in("/")
        expect(page.locator(f'#receipts tr[data-id="{pixel["id"]}"]')).to_contain_text(address)
        problems = []
        for name, path in (("the list", None), ("the detail page", f"/m/{pixel['id']}")):
            if path:
                page.goto(tab.url(path))
            problems.append(phone_overflow(page, name))
        tab.check()
        problems = [problem for problem in problems if problem]
        assert not problems, "\n".join(problems)
    finally:
        tab.close()


def test_the_timeline_fits_a_phone(browser, receipts):
    """The picture scales to a 390 px screen: it neither widens the page nor scrolls inside it."""
    pixel = receipts.mint(subject=subject("Picture"))
    for user_agent in (MACHINE_UA, GMAIL_PROXY_UA, OUTLOOK_UA):
        receipts.fetch(pixel, user_agent)
    tab = Tab(browser, receipts, **PHONE)
    try:
        page = tab.log_in(f"/m/{pixel['id']}")
        width = PHONE["viewport"]["width"]
        svg = page.locator("#timeline svg").bounding_box()
        box = page.locator("#timeline").bounding_box()
        assert svg["x"] >= 0 and svg["x"] + svg["width"] <= box["x"] + box["width"] + 0.5
        assert svg["width"] <= width
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.evaluate("document.querySelector('#timeline').scrollWidth") <= box["width"]
        # Its words are still there to read: larger in the picture's own units on a phone.
        size = page.evaluate("getComputedStyle(document.querySelector('#timeline text')).fontSize")
        assert float(size.removesuffix("px")) >= 16
        tab.check()
    finally:
        tab.close()


def test_notifications_are_set_up_and_tested_from_settings(browser, receipts):
    """Settings → Notifications in a real browser: choose every open, add a webhook, send a
    test notification; then a real open reaches the receiver through the server's workers."""
    receiver = Receiver().start()
    tab = Tab(browser, receipts)
    try:
        page = tab.log_in("/settings")
        assert page.evaluate(UNLABELLED) == [], "/settings"
        page.check("#opens-every")
        page.fill("#quiet", "0")
        with page.expect_navigation():
            page.get_by_role("button", name="Save").click()
        expect(page.locator(".flash")).to_contain_text("Notification choices saved.")
        expect(page.locator("#opens-every")).to_be_checked()

        page.select_option("#channel-kind", "webhook")
        page.fill("#channel-target", receiver.url + "/hook")
        with page.expect_navigation():
            page.get_by_role("button", name="Add channel").click()
        row = page.locator("tr", has_text=receiver.url)
        expect(row).to_contain_text("Signing secret: whsec_")
        with page.expect_navigation():
            row.get_by_role("button", name="Send a test notification").click()
        # The result is where the page lands, not above it, and the channel says so too.
        said = page.locator(".flash", has_text="A test notification went to")
        expect(said).to_be_in_viewport()
        expect(page.locator("tr", has_text=receiver.url)).to_contain_text("Test sent at")
        test = receiver.received[0]
        assert test.json()["type"] == "test" and test.json()["fetch"] is None
        assert test.json()["receipt"] == {"id": None, "label": None, "subject": None, "url": None}
        assert test.headers["X-Openreceipt-Delivery"].startswith("test-")

        pixel = receipts.mint(subject=subject("Signed lease"))
        assert receipts.fetch(pixel, OUTLOOK_UA) == "recorded: open"
        notices = receiver.wait_for(2)
        assert len(notices) == 2 and notices[1].json()["receipt"]["id"] == pixel["id"]
        page.reload()
        expect(page.locator("tr", has_text=receiver.url)).to_contain_text("Last notice sent")
        tab.check()

        phone = Tab(browser, receipts, **PHONE)
        try:
            phone.log_in("/settings")
            assert phone_overflow(phone.page, "the settings page") is None
            phone.check()
        finally:
            phone.close()

        with page.expect_navigation():
            page.locator("tr", has_text=receiver.url).get_by_role("button", name="Remove").click()
        expect(page.locator(".flash")).to_contain_text("Removed: webhook notices")
    finally:
        tab.close()
        receiver.stop()
