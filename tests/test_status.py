"""The status pages over HTTP on SQLite and PostgreSQL: list, search, filters, pagination,
detail, corrections, deletion, live JSON, settings, sign-in limits and page headers."""

import datetime
import re
from collections import namedtuple

import pytest

from web.receipts.export import forget
from web.storage.engine import utcnow
from web.storage.models import Event, LoginThrottle, Pixel, User
from web.ui.signin import THROTTLE_WINDOW
from web.ui.timeline_chart import timeline_svg

from .helpers import csrf_token, mint, pixel_path, sign_in

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)


@pytest.fixture
def signed_in(client, user):
    sign_in(client)
    return client


def open_it(client, pixel, address="81.2.69.160"):
    client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": GMAIL_PROXY},
        environ_base={"REMOTE_ADDR": address},
    )


def test_list_shows_state_opens_place_and_client(signed_in, auth):
    invoice = mint(signed_in, auth, subject="Invoice #42", recipients=["bob@example.com"])
    mint(signed_in, auth, subject="Lease notice")
    open_it(signed_in, invoice)
    page = signed_in.get("/").get_data(as_text=True)
    assert "✓✓ opened" in page and "×1" in page and "London, GB" in page and "Gmail" in page
    assert "○ waiting" in page and "bob@example.com" in page
    assert re.search(r'<time title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">just now</time>', page)
    # Most recent activity first: the opened invoice is above the newer lease notice.
    assert page.index("Invoice #42") < page.index("Lease notice")


def test_search_and_state_filter(signed_in, auth):
    invoice = mint(signed_in, auth, subject="Invoice #42", recipients=["bob@example.com"])
    mint(signed_in, auth, subject="Lease notice", recipients=["landlord@example.org"])
    open_it(signed_in, invoice)
    assert "Lease notice" not in signed_in.get("/?q=invoice").get_data(as_text=True)
    by_recipient = signed_in.get("/?q=landlord").get_data(as_text=True)
    assert "Lease notice" in by_recipient and "Invoice #42" not in by_recipient
    opened = signed_in.get("/?state=opened").get_data(as_text=True)
    assert "Invoice #42" in opened and "Lease notice" not in opened
    assert "No receipt matches" in signed_in.get("/?q=nothing-like-it").get_data(as_text=True)
    # Odd input is ignored, not an error.
    assert signed_in.get("/?state=bogus&page=x&q=%25_").status_code == 200


def test_pagination(signed_in, auth, app):
    for n in range(27):
        mint(signed_in, auth, subject=f"message {n:02d}")
    first = signed_in.get("/").get_data(as_text=True)
    second = signed_in.get("/?page=2").get_data(as_text=True)
    assert (
        "page 1 of 2 (27 receipts)" in first and "message 26" in first and "message 01" not in first
    )
    assert "message 01" in second and "message 00" in second and "message 26" not in second


def test_empty_state_points_to_the_bookmarklet(signed_in):
    page = signed_in.get("/").get_data(as_text=True)
    assert "No receipts yet" in page and 'href="/bookmarklet"' in page


def test_detail_timeline_and_explanations(signed_in, auth):
    pixel = mint(signed_in, auth, subject="Contract")
    signed_in.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": "Mozilla/5.0"},
        environ_base={"REMOTE_ADDR": "17.58.1.1"},
    )
    open_it(signed_in, pixel)
    page = signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
    assert "✓✓ opened" in page and "Someone opened the message." in page
    assert "A machine fetched it on delivery" in page and "A person most likely opened" in page
    assert (
        page.count("<circle") == 2
        and "<svg" in page
        and "style=" not in page.split("<svg", 1)[1].split("</svg>")[0]
    )
    assert "81.2.69.0/24" in page and "81.2.69.160" not in page
    assert "That was me" in page and pixel["url"] in page


def test_detail_pages_through_many_fetches(signed_in, auth, other_auth):
    """A busy receipt shows its latest fetches and links to earlier ones; every fetch is on exactly
    one page, also when many share the same second."""
    pixel = mint(signed_in, auth, subject="Busy")
    row = Pixel.get(Pixel.public_id == pixel["id"])
    start = utcnow().replace(microsecond=0)
    Event.insert_many(
        [
            {
                "pixel": row,
                "at": start + datetime.timedelta(seconds=n // 3),  # three fetches a second
                "kind": "bot",
                "source": "direct",
                "reason": f"fetch number {n:03d}",
            }
            for n in range(120)
        ]
    ).execute()

    seen, path = [], f"/m/{pixel['id']}"
    while path:
        page = signed_in.get(path).get_data(as_text=True)
        numbers = [int(n) for n in re.findall(r"fetch number (\d{3})", page)]
        assert numbers == sorted(numbers) and len(numbers) <= 50
        seen = numbers + seen
        older = re.search(r'<p class="pager" id="older">\s*<a href="([^"#]+)#events"', page)
        path = older.group(1).replace("&amp;", "&") if older else None
    assert seen == list(range(120))
    # The picture shows them all on every page; fetches of one second share a mark.
    marks = re.findall(r"<title>automated(?: ×(\d+))? [^<]+</title></circle>", page)
    assert len(marks) < 120 and sum(int(n or 1) for n in marks) == 120

    live = signed_in.get(f"/live/m/{pixel['id']}").get_json()
    assert [e["reason"] for e in live["events"]] == [
        f"fetch number {n:03d}" for n in range(70, 120)
    ]
    assert live["older"] is not None
    # An event of another receipt is no cursor.
    theirs = mint(signed_in, other_auth)
    open_it(signed_in, theirs)
    their_event = Event.get(Event.pixel == Pixel.get(Pixel.public_id == theirs["id"]))
    assert signed_in.get(f"/m/{pixel['id']}?before={their_event.id}").status_code == 404


def test_timeline_marks_count_every_event():
    """Overlapping fetches of one kind share a mark that says how many; apart, or of another
    kind, they keep their own."""
    created = datetime.datetime(2026, 11, 2, 9, 0)
    point = namedtuple("point", "at kind")
    events = [point(created + datetime.timedelta(seconds=n), "open") for n in range(5)]
    events += [point(created + datetime.timedelta(seconds=2), "prefetch")]
    events += [point(created + datetime.timedelta(days=3), "open")]
    events.sort(key=lambda e: e.at)
    svg = str(timeline_svg(created, events, created + datetime.timedelta(days=4)))
    titles = re.findall(r"<title>([^<]+)</title>", svg)
    assert titles == [
        "opened ×5 2026-11-02 09:00:00 – 2026-11-02 09:00:04 UTC",
        "delivered 2026-11-02 09:00:02 UTC",
        "opened 2026-11-05 09:00:00 UTC",
    ]
    assert 'aria-label="7 events between 2026-11-02 09:00 and 2026-11-06 09:00 UTC"' in svg
    one = str(timeline_svg(created, events[:1], created + datetime.timedelta(hours=1)))
    assert 'aria-label="1 event between' in one


def test_other_users_pixels_are_404(signed_in, auth, other_auth):
    theirs = mint(signed_in, other_auth, subject="Not yours")
    assert signed_in.get(f"/m/{theirs['id']}").status_code == 404
    assert signed_in.get(f"/live/m/{theirs['id']}").status_code == 404
    token = csrf_token(signed_in.get("/"))
    assert (
        signed_in.post(f"/m/{theirs['id']}/delete", data={"csrf_token": token}).status_code == 404
    )
    assert "Not yours" not in signed_in.get("/").get_data(as_text=True)


def test_that_was_me_drops_the_count_and_back(signed_in, auth):
    pixel = mint(signed_in, auth, subject="Invoice")
    open_it(signed_in, pixel)
    page = signed_in.get(f"/m/{pixel['id']}")
    event_id = re.search(r'id="event-(\d+)"', page.get_data(as_text=True)).group(1)
    action = f"/m/{pixel['id']}/events/{event_id}/kind"
    done = signed_in.post(action, data={"kind": "self", "csrf_token": csrf_token(page)})
    assert done.status_code == 302 and done.headers["Location"].endswith(f"#event-{event_id}")
    page = signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
    assert 'id="count-open">0<' in page and 'id="count-self">1<' in page and "Not me" in page
    signed_in.post(action, data={"kind": "open", "csrf_token": csrf_token(signed_in.get("/"))})
    assert 'id="count-open">1<' in signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)


def test_that_was_a_machine_and_back(signed_in, auth):
    """An open, or a program nobody recognised, can be marked a machine; a machine, a reader."""
    pixel = mint(signed_in, auth, subject="Invoice")
    open_it(signed_in, pixel)
    signed_in.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": "AcmeDesk/2.0"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    page = signed_in.get(f"/m/{pixel['id']}")
    text = page.get_data(as_text=True)
    assert 'id="count-open">1<' in text and 'id="count-unknown">1<' in text
    assert "an unrecognised program fetched the image" in text
    open_id, unknown_id = re.findall(r'id="event-(\d+)"', text)[::-1]
    token = csrf_token(page)
    for event_id in (open_id, unknown_id):
        action = f"/m/{pixel['id']}/events/{event_id}/kind"
        assert signed_in.post(action, data={"kind": "bot", "csrf_token": token}).status_code == 302
    text = signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
    assert 'id="count-open">0<' in text and 'id="count-bot">2<' in text and "Not a machine" in text
    assert "✓✓ opened" not in text
    action = f"/m/{pixel['id']}/events/{open_id}/kind"
    signed_in.post(action, data={"kind": "open", "csrf_token": token})
    text = signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
    assert 'id="count-open">1<' in text and 'id="count-bot">1<' in text and "✓✓ opened" in text


def test_provider_caveats_on_the_receipt(signed_in, auth, app):
    pixel = mint(signed_in, auth, subject="Lease notice")
    with app.app_context():
        Pixel.update(mail_providers="apple,hey").where(Pixel.public_id == pixel["id"]).execute()
    text = signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
    assert "Apple iCloud:" in text and "Mail Privacy Protection downloads every image" in text
    assert "HEY:" in text and "strips tracking images" in text


def test_actions_without_csrf_are_rejected(signed_in, auth, app):
    pixel = mint(signed_in, auth)
    open_it(signed_in, pixel)
    with app.app_context():
        event_id = Event.get().id
    assert (
        signed_in.post(
            f"/m/{pixel['id']}/events/{event_id}/kind", data={"kind": "self"}
        ).status_code
        == 400
    )
    assert signed_in.post(f"/m/{pixel['id']}/delete").status_code == 400
    assert signed_in.post("/settings/tokens", data={"name": "x"}).status_code == 400
    assert signed_in.post("/settings/password", data={}).status_code == 400
    with app.app_context():
        assert Event.get().kind == "open" and Pixel.select().count() == 1


def test_delete_removes_the_receipt(signed_in, auth, app):
    pixel = mint(signed_in, auth, subject="Old")
    open_it(signed_in, pixel)
    gone = signed_in.post(
        f"/m/{pixel['id']}/delete", data={"csrf_token": csrf_token(signed_in.get("/"))}
    )
    assert gone.status_code == 302
    assert "Deleted Old" in signed_in.get("/").get_data(as_text=True)
    with app.app_context():
        assert Pixel.select().count() == 0 and Event.select().count() == 0


def test_receipt_count_follows_every_way_a_receipt_comes_and_goes(signed_in, auth, other_auth, app):
    """The lists' total is the user's receipt_count, which the database keeps (migration 0010):
    it must follow mints, deletions through the API and the page, an erasure by address and a
    deleted account, on both databases."""

    def counts():
        with app.app_context():
            return {
                user.email: (user.receipt_count, Pixel.select().where(Pixel.owner == user).count())
                for user in User.select()
            }

    pixels = [mint(signed_in, auth, subject=f"s{n}") for n in range(4)]
    mint(signed_in, auth, subject="erin", recipients=["erin@example.org"])
    mint(signed_in, other_auth, subject="theirs", recipients=["erin@example.org"])
    assert counts() == {"ada@example.com": (5, 5), "grace@example.com": (1, 1)}
    assert signed_in.delete(f"/api/pixels/{pixels[0]['id']}", headers=auth).status_code == 204
    token = csrf_token(signed_in.get("/"))
    deleted = signed_in.post(f"/m/{pixels[1]['id']}/delete", data={"csrf_token": token})
    assert deleted.status_code == 302
    with app.app_context():
        assert len(forget("erin@example.org")) == 2
    assert counts() == {"ada@example.com": (2, 2), "grace@example.com": (0, 0)}
    assert signed_in.get("/live/receipts").get_json()["total"] == 2
    assert signed_in.get("/api/pixels", headers=auth).get_json()["total"] == 2
    # A search or a filter still counts what it finds.
    assert signed_in.get("/live/receipts?q=s3").get_json()["total"] == 1
    with app.app_context():
        User.get(User.email == "grace@example.com").delete_instance(recursive=True)
        Pixel.delete().where(Pixel.id == Pixel.get(Pixel.subject == "s2").id).execute()
    assert counts() == {"ada@example.com": (1, 1)}


def test_live_list_json_with_etag(signed_in, auth):
    pixel = mint(signed_in, auth, subject="Invoice")
    first = signed_in.get("/live/receipts")
    assert first.status_code == 200 and first.get_json()["rows"][0]["state"] == "waiting"
    etag = first.headers["ETag"]
    assert signed_in.get("/live/receipts", headers={"If-None-Match": etag}).status_code == 304
    open_it(signed_in, pixel)
    changed = signed_in.get("/live/receipts", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    row = changed.get_json()["rows"][0]
    assert (row["state"], row["opens"], row["place"], row["client"]) == (
        "opened",
        1,
        "London, GB",
        "Gmail",
    )


def test_live_detail_json(signed_in, auth):
    pixel = mint(signed_in, auth, subject="Invoice")
    open_it(signed_in, pixel)
    data = signed_in.get(f"/live/m/{pixel['id']}").get_json()
    assert data["counts"]["open"] == 1 and data["mark"] == "✓✓ opened"
    assert data["events"][0]["ip"] == "81.2.69.0" and data["timeline"].startswith("<svg")


def test_pages_and_live_json_need_a_sign_in(client, auth):
    pixel = mint(client, auth)
    for path in (f"/m/{pixel['id']}", "/live/receipts", f"/live/m/{pixel['id']}", "/settings"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
    # Signed out, / is the privacy notice, with a way in and no receipt on it.
    home = client.get("/").get_data(as_text=True)
    assert "What is recorded" in home and 'href="/login"' in home and pixel["id"] not in home


def test_settings_tokens_and_password(signed_in, app):
    page = signed_in.get("/settings")
    made = signed_in.post(
        "/settings/tokens", data={"name": "invoicing", "csrf_token": csrf_token(page)}
    )
    token = re.search(
        r'id="new-token" class="copy" readonly value="(or_[^"]+)"', made.get_data(as_text=True)
    ).group(1)
    assert (
        signed_in.get("/api/pixels", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    assert token not in signed_in.get("/settings").get_data(as_text=True)

    wrong = signed_in.post(
        "/settings/password",
        data={
            "current": "nope",
            "password": "a new long one",
            "confirm": "a new long one",
            "csrf_token": csrf_token(page),
        },
        follow_redirects=True,
    )
    assert "current password is wrong" in wrong.get_data(as_text=True)
    short = signed_in.post(
        "/settings/password",
        data={
            "current": "correct horse battery",
            "password": "short",
            "confirm": "short",
            "csrf_token": csrf_token(page),
        },
        follow_redirects=True,
    )
    assert "at least 10 characters" in short.get_data(as_text=True)
    changed = signed_in.post(
        "/settings/password",
        data={
            "current": "correct horse battery",
            "password": "a new long one",
            "confirm": "a new long one",
            "csrf_token": csrf_token(page),
        },
        follow_redirects=True,
    )
    assert "Password changed." in changed.get_data(as_text=True)
    fresh = app.test_client()
    assert sign_in(fresh, password="a new long one").status_code == 302
    assert sign_in(app.test_client()).status_code == 200  # the old one no longer works


def test_sign_in_is_rate_limited(client, user, app):
    for _ in range(10):
        assert sign_in(client, password="wrong password!").status_code == 200
    limited = sign_in(client)  # even the right password waits now
    assert limited.status_code == 429 and "Too many failed sign-ins" in limited.get_data(
        as_text=True
    )
    with app.app_context():
        LoginThrottle.update(window_start=utcnow() - THROTTLE_WINDOW).execute()
    assert sign_in(client).status_code == 302


def test_rate_limit_counts_unknown_accounts_alike(app, user):
    # An address with no account is throttled as one with, so the 429 tells nothing either.
    client = app.test_client()
    for _ in range(10):
        sign_in(client, email="someone@example.com", password="guess guess guess")
    assert sign_in(client, email="someone@example.com").status_code == 429
    assert sign_in(client).status_code == 302


def test_pages_carry_security_headers_and_the_pixel_does_not(signed_in, auth):
    page = signed_in.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert (
        "script-src 'self'" in csp
        and "frame-ancestors 'none'" in csp
        and "unsafe-inline" not in csp
    )
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert "<script>" not in page.get_data(as_text=True)  # only <script src=...>
    pixel = signed_in.get(pixel_path(mint(signed_in, auth)["url"]))
    assert "Content-Security-Policy" not in pixel.headers
    # What carries a user's text but is no page is never sniffed into one either.
    for answer in (signed_in.get("/live/receipts"), signed_in.get("/api/pixels", headers=auth)):
        assert answer.mimetype == "application/json"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_settings_do_not_track_list(signed_in, auth, app):
    pixel = mint(signed_in, auth, subject="Kündigung", recipients=["anna@example.de"])
    page = signed_in.get("/settings")
    token = csrf_token(page)
    added = signed_in.post(
        "/settings/dnt", data={"entries": "lawyer@example.org, .DE", "csrf_token": token}
    )
    assert added.status_code == 302 and added.headers["Location"].endswith("#do-not-track")
    shown = signed_in.get("/settings").get_data(as_text=True)
    assert "Added lawyer@example.org, .de. 1 receipts stopped recording." in shown
    assert "<td>lawyer@example.org</td>" in shown and "<td>.de</td>" in shown
    # The receipt to a .de address stopped recording, and its page says so.
    open_it(signed_in, pixel)
    detail = signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
    assert "A recipient is on the do-not-track list" in detail
    assert Event.select().count() == 0
    refused = signed_in.post("/api/pixels", json={"recipients": ["x@y.de"]}, headers=auth)
    assert refused.status_code == 409 and refused.get_json()["do_not_track"] == [".de"]

    bad = signed_in.post("/settings/dnt", data={"entries": "not an entry!", "csrf_token": token})
    assert bad.status_code == 200 and "Nothing was added" in bad.get_data(as_text=True)
    no_csrf = signed_in.post("/settings/dnt", data={"entries": "spam.example"})
    assert no_csrf.status_code == 400

    entry_id = re.search(
        r'action="/settings/dnt/(\d+)/delete"', signed_in.get("/settings").get_data(as_text=True)
    ).group(1)
    signed_in.post(f"/settings/dnt/{entry_id}/delete", data={"csrf_token": token})
    assert "<td>lawyer@example.org</td>" not in signed_in.get("/settings").get_data(as_text=True)


def test_settings_downloads_all_own_data(signed_in, auth, other_auth):
    invoice = mint(signed_in, auth, subject="Invoice #42", recipients=["bob@example.com"])
    mint(signed_in, other_auth, subject="Not yours")
    open_it(signed_in, invoice)
    as_json = signed_in.get("/settings/export.json")
    assert as_json.headers["Content-Disposition"] == (
        'attachment; filename="openreceipt-export.json"'
    )
    data = as_json.get_json(force=True)
    assert data["user"]["email"] == "ada@example.com"
    [pixel] = data["pixels"]
    assert pixel["subject"] == "Invoice #42" and pixel["events"][0]["ip"] == "81.2.69.0"
    as_csv = signed_in.get("/settings/export.csv").get_data(as_text=True)
    assert "Invoice #42" in as_csv and "Not yours" not in as_csv and "81.2.69.160" not in as_csv
    assert signed_in.get("/settings/export.xml").status_code == 404


def test_list_states_the_retention_in_force(signed_in):
    page = signed_in.get("/").get_data(as_text=True)
    assert "deleted after 90 days; each receipt keeps its counts" in page


def test_hsts_only_over_https(client):
    secure = client.get("/privacy", base_url="https://receipts.example.com")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in client.get("/privacy").headers


def test_each_receipts_page_and_answer_are_its_own(signed_in, auth):
    first = mint(signed_in, auth, subject="First message")
    second = mint(signed_in, auth, subject="Second message")
    for pixel, subject in [(first, "First message"), (second, "Second message")]:
        assert subject in signed_in.get(f"/m/{pixel['id']}").get_data(as_text=True)
        answer = signed_in.get(f"/api/pixels/{pixel['id']}", headers=auth).get_json()
        assert (answer["id"], answer["subject"]) == (pixel["id"], subject)
