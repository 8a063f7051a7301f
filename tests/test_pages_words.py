"""What the pages say, over HTTP on SQLite and PostgreSQL: a receipt's state in words that agree
with its fetches and its sent time, its label and its subject, the words people read for kinds,
fetchers and networks (the API keeps its values), forms that keep what was typed, the app's own
error pages, and bookmarklet names that tell one from another."""

import datetime
import re

from web.bookmarklet import bookmarklet_token_name
from web.judgement.classify import FETCHERS
from web.receipts.display import SOURCE_NAMES, network, source_name
from web.storage.models import ApiToken, Event, Pixel
from web.vocabulary import KIND_LABELS, KINDS, STATE_REACHED, Kind, State

from .helpers import csrf_token, mint, pixel_path, sign_in

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
LONDON = "81.2.69.160"


def fetch(client, pixel, user_agent=GMAIL_PROXY, address=LONDON):
    response = client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": user_agent},
        environ_base={"REMOTE_ADDR": address},
    )
    assert response.status_code == 200
    return response.headers["X-Openreceipt"]


def page_text(client, path):
    response = client.get(path)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def visible(html):
    """The page's words, without tags and runs of white space."""
    return " ".join(re.sub(r"<[^>]+>", " ", html.split("<main>")[1]).split())


def correct(client, pixel, kind):
    page = client.get(f"/m/{pixel['id']}")
    event_id = re.search(r'id="event-(\d+)"', page.get_data(as_text=True)).group(1)
    done = client.post(
        f"/m/{pixel['id']}/events/{event_id}/kind",
        data={"kind": kind, "csrf_token": csrf_token(page)},
    )
    assert done.status_code == 302


# -- A receipt's state and the words for it ------------------------------------------------------


def test_my_own_view_of_a_sent_message_leaves_it_sent_not_waiting(signed_in, auth, database):
    """After "That was me" on the only open, the receipt is in the message and sent; nothing
    says "waiting" or that nothing fetched it, on the page, in the live JSON or the export."""
    pixel = mint(signed_in, auth, subject="Invoice 42")
    signed_in.post(f"/api/pixels/{pixel['id']}/sent", json={}, headers=auth)
    assert fetch(signed_in, pixel) == "recorded: open"
    correct(signed_in, pixel, "self")

    assert Pixel.get().state == State.INSERTED  # recounted
    text = visible(page_text(signed_in, f"/m/{pixel['id']}"))
    assert "◑ sent" in text and "Sent, not yet delivered" in text
    assert "waiting" not in text and "No mail server or reader has fetched" not in text
    live = signed_in.get(f"/live/m/{pixel['id']}").get_json()
    assert (live["state"], live["status"], live["mark"]) == ("inserted", "sent", "◑ sent")
    [row] = signed_in.get("/live/receipts").get_json()["rows"]
    assert (row["status"], row["mark"]) == ("sent", "◑ sent")
    [exported] = signed_in.get("/settings/export.json").get_json(force=True)["pixels"]
    assert exported["state"] == "inserted" and exported["sent_at"]
    # The list's filter speaks the same words.
    assert "Invoice 42" in page_text(signed_in, "/?state=sent")
    assert "Invoice 42" not in page_text(signed_in, "/?state=waiting")
    assert "Invoice 42" not in page_text(signed_in, "/?state=inserted")
    assert '<option value="sent" >sent</option>' in page_text(signed_in, "/")


def test_a_self_view_reaches_the_message_through_the_pixel_too(signed_in, auth, database):
    """The pixel's own UPDATE brings a receipt to "in the message" on the sender's own view,
    as the recount does (both read vocabulary.STATE_REACHED)."""
    assert STATE_REACHED[Kind.SELF] == State.INSERTED
    pixel = mint(signed_in, auth, subject="Offer")
    signed_in.post(f"/api/pixels/{pixel['id']}/self-view", headers=auth)
    assert fetch(signed_in, pixel, address="66.249.84.10") == "recorded: self"
    assert Pixel.get().state == State.INSERTED
    text = visible(page_text(signed_in, f"/m/{pixel['id']}"))
    assert "◔ in the message" in text and "Only you have seen it so far" in text
    # A recipient's open still moves it on, and "Not me" undoes nothing else.
    assert fetch(signed_in, pixel, THUNDERBIRD) == "recorded: open"
    assert Pixel.get().state == State.OPENED


def test_marked_sent_with_nothing_fetched_is_sent_not_waiting(signed_in, auth, database):
    pixel = mint(signed_in, auth, subject="Lease")
    waiting = visible(page_text(signed_in, f"/m/{pixel['id']}"))
    assert "○ waiting" in waiting and "No mail server or reader has fetched" in waiting
    page = signed_in.get(f"/m/{pixel['id']}")
    signed_in.post(f"/m/{pixel['id']}/sent", data={"csrf_token": csrf_token(page)})
    text = visible(page_text(signed_in, f"/m/{pixel['id']}"))
    assert "◑ sent" in text and "not yet delivered" in text and "○ waiting" not in text
    assert "◑ sent" in visible(page_text(signed_in, "/"))
    assert Pixel.get().state == State.WAITING  # what the API and the export say is unchanged
    # Delivered is delivered, sent or not.
    fetch(signed_in, pixel, "Mozilla/5.0", "17.58.1.1")
    assert "✓ delivered" in visible(page_text(signed_in, f"/m/{pixel['id']}"))


# -- The label and the subject -------------------------------------------------------------------


def test_a_label_is_the_title_and_the_subject_is_shown_beneath(signed_in, auth, database):
    pixel = mint(signed_in, auth, subject="Invoice <42> & more", label="Bob's invoice")
    plain = mint(signed_in, auth, subject="Lunch on Friday?")
    listed = page_text(signed_in, "/")
    assert 'Bob&#39;s invoice</a><br><small class="subject">Invoice &lt;42&gt; &amp; more' in (
        listed
    )
    assert "<42>" not in listed  # escaped, never marked safe
    detail = page_text(signed_in, f"/m/{pixel['id']}")
    assert '<h1 id="title">Bob&#39;s invoice</h1>' in detail
    assert "Subject: Invoice &lt;42&gt; &amp; more" in detail
    rows = {row["id"]: row for row in signed_in.get("/live/receipts").get_json()["rows"]}
    assert (rows[pixel["id"]]["title"], rows[pixel["id"]]["subtitle"]) == (
        "Bob's invoice",
        "Invoice <42> & more",
    )
    # Without a label, the subject is the title, once.
    assert (rows[plain["id"]]["title"], rows[plain["id"]]["subtitle"]) == ("Lunch on Friday?", "")
    assert 'id="subject"' not in page_text(signed_in, f"/m/{plain['id']}")
    # Search still finds it by either.
    assert "Bob&#39;s invoice" in page_text(signed_in, "/?q=more")


# -- One vocabulary for people -------------------------------------------------------------------


def test_every_kind_and_fetcher_has_words_for_people():
    assert set(KIND_LABELS) == set(KINDS)
    assert len(set(KIND_LABELS.values())) == len(KINDS)
    sources = set(FETCHERS) | {"machine", "no-user-agent", "outlook", "automated", "unrecognised"}
    for source in sources:
        assert SOURCE_NAMES.get(source, source) != source and "-" not in source_name(source)
    assert source_name("gmail-proxy") == "Gmail"
    assert source_name("apple-mpp") == "Apple Mail Privacy Protection"
    assert source_name("scanner-microsoft") == "Microsoft 365 scanner"
    reason = "a mail program fetched the image as the message was shown"
    assert source_name("direct", Kind.OPEN, reason) == "a mail program"
    assert source_name("direct", Kind.OPEN, "a browser fetched the image") == "a browser"
    assert source_name("direct", Kind.PREVIEW, "the sender's own browser") == "your browser"
    assert network("81.2.69.0") == "81.2.69.0/24"
    assert network("2001:db8:1::") == "2001:db8:1::/48"
    assert network(None) == ""


def test_the_pages_say_what_people_read_and_the_api_keeps_its_values(signed_in, auth, database):
    pixel = mint(signed_in, auth, subject="Contract")
    assert fetch(signed_in, pixel, "Mozilla/5.0", "17.58.1.1") == "recorded: prefetch"
    assert fetch(signed_in, pixel) == "recorded: open"
    assert fetch(signed_in, pixel, THUNDERBIRD, "2001:db8:1:2::7") == "recorded: open"
    html = page_text(signed_in, f"/m/{pixel['id']}")
    events = html.split('id="events"')[1]
    # Counts, rows and picture in the same words; none of the stored values.
    for kind in KINDS:
        assert f'<span>{KIND_LABELS[kind]} <strong id="count-{kind}">' in html
    assert '<span class="kind kind-open">opened</span>' in events
    assert '<span class="kind kind-prefetch">delivered</span>' in events
    titles = re.findall(r"<title>([a-z ]+?)(?: ×\d+)? \d{4}-", html)
    assert sorted(set(titles)) == ["delivered", "opened"]
    assert '<td data-label="Who">Gmail</td>' in events
    assert '<td data-label="Who">Apple Mail Privacy Protection</td>' in events
    assert '<td data-label="Who">a mail program</td>' in events
    assert "gmail-proxy" not in html and "apple-mpp" not in html
    assert ">prefetch<" not in html and ">open<" not in html
    assert '<td data-label="Network">81.2.69.0/24</td>' in events
    assert '<td data-label="Network">2001:db8:1::/48</td>' in events
    assert '<td data-label="Network">17.58.1.0/24</td>' in events
    # A place nobody knows is an empty cell (hidden on a phone), not a dangling "Where".
    assert '<td data-label="Where"></td>' in events
    assert '<td data-label="Where">London, GB</td>' in events

    live = signed_in.get(f"/live/m/{pixel['id']}").get_json()
    gmail = next(event for event in live["events"] if event["source"] == "gmail-proxy")
    assert (gmail["kind"], gmail["label"], gmail["source_name"]) == ("open", "opened", "Gmail")
    assert (gmail["ip"], gmail["network"]) == ("81.2.69.0", "81.2.69.0/24")
    api = signed_in.get(f"/api/pixels/{pixel['id']}", headers=auth).get_json()
    assert {(e["kind"], e["source"], e["ip"]) for e in api["events"]} == {
        ("prefetch", "apple-mpp", "17.58.1.0"),
        ("open", "gmail-proxy", "81.2.69.0"),
        ("open", "direct", "2001:db8:1::"),
    }


def test_a_correction_says_why_in_words(signed_in, auth, database):
    pixel = mint(signed_in, auth, subject="Invoice")
    fetch(signed_in, pixel)
    correct(signed_in, pixel, "self")
    reason = Event.get().reason
    assert reason.startswith("marked as their own view by the sender (judged an open: Gmail")
    assert "'self'" not in reason and "'open'" not in reason


# -- Forms keep what was typed -------------------------------------------------------------------


def test_signing_in_again_keeps_the_email(client, user):
    wrong = sign_in(client, email="ada@example.com", password="not the password")
    page = wrong.get_data(as_text=True)
    assert "Wrong email or password." in page
    assert 'name="email" type="email" autocomplete="username" required value="ada@example.com"' in (
        page
    )
    odd = sign_in(client, email='"><script>x</script>', password="x").get_data(as_text=True)
    assert "<script>x" not in odd and 'value="&#34;&gt;&lt;script&gt;x' in odd


def test_settings_forms_keep_what_was_typed(signed_in, database):
    def post(path, **fields):
        token = csrf_token(signed_in.get("/settings"))
        return signed_in.post(path, data={**fields, "csrf_token": token})

    notify = post("/settings/notify", opens="every", delivered="on", quiet="2000")
    page = notify.get_data(as_text=True)
    assert notify.status_code == 200 and "The quiet period is a number of minutes" in page
    assert 'id="opens-every" name="opens" value="every" checked' in page
    assert 'id="delivered" name="delivered" checked' in page and 'value="2000"' in page

    channel = post("/settings/channels", kind="webhook", target="https://u:p@hooks.example.com/x")
    page = channel.get_data(as_text=True)
    assert channel.status_code == 200 and "put no password in the URL" in page
    assert '<option value="webhook" selected>' in page
    assert 'value="https://u:p@hooks.example.com/x"' in page

    entries = post("/settings/dnt", entries="lawyer@example.org, not an entry!")
    page = entries.get_data(as_text=True)
    assert entries.status_code == 200 and "Nothing was added" in page
    assert 'value="lawyer@example.org, not an entry!"' in page
    # Each mistake is said in its own form, not at the top of the long page.
    assert page.index('id="add-do-not-track"') < page.index("Nothing was added")


# -- Error pages ---------------------------------------------------------------------------------


def test_errors_are_pages_of_the_app(signed_in, auth, app):
    for path in ("/m/unknown", "/m/" + "x" * 40, "/no/such/page"):
        response = signed_in.get(path)
        page = response.get_data(as_text=True)
        assert response.status_code == 404 and response.mimetype == "text/html", path
        assert "<h1>Not found</h1>" in page and "Back to your receipts" in page
        assert "/static/style.css" in page and "requested URL was not found" not in page
        assert "Content-Security-Policy" in response.headers
    signed_out = app.test_client().get("/no/such/page").get_data(as_text=True)
    assert "<h1>Not found</h1>" in signed_out and 'href="/login"' in signed_out
    # A method the page does not take: its own words, and its Allow header.
    refused = signed_in.put("/settings")
    assert refused.status_code == 405 and "Allow" in refused.headers
    assert "<h1>Method Not Allowed</h1>" in refused.get_data(as_text=True)
    # The pixel still answers its image, the API its JSON.
    for path in ("/p/nothing.gif", "/p/a/b"):
        assert signed_in.get(path).mimetype == "image/gif", path
    missing = signed_in.get("/api/pixels/unknown", headers=auth)
    assert missing.status_code == 404 and missing.is_json


def test_a_server_error_is_a_page_of_the_app(signed_in, app, monkeypatch):
    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setitem(app.view_functions, "settings.show", broken)
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    response = signed_in.get("/settings")
    page = response.get_data(as_text=True)
    assert response.status_code == 500 and "<h1>Something went wrong</h1>" in page
    assert "/static/style.css" in page and "a bug" not in page


# -- Bookmarklet names ---------------------------------------------------------------------------


def test_bookmarklet_names_tell_them_apart():
    at = datetime.datetime(2026, 11, 30, 14, 5, tzinfo=datetime.UTC)
    assert bookmarklet_token_name("Firefox", "Linux", at) == "Firefox on Linux, 30 Nov 14:05 UTC"
    assert bookmarklet_token_name("Safari", None, at) == "Safari, 30 Nov 14:05 UTC"
    assert bookmarklet_token_name(None, None, at) == "bookmarklet of 30 Nov 14:05 UTC"
    later = at + datetime.timedelta(minutes=1)
    assert bookmarklet_token_name("Firefox", "Linux", later) != bookmarklet_token_name(
        "Firefox", "Linux", at
    )


def test_a_new_bookmarklet_is_named_after_its_browser_system_and_time(signed_in, database):
    page = signed_in.get("/bookmarklet", headers={"User-Agent": FIREFOX})
    name = re.search(r'id="bookmarklet-name" name="name" [^>]*value="([^"]+)"', page.text)
    assert re.fullmatch(r"Firefox on Linux, \d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC", name.group(1))
    token = csrf_token(page)
    unnamed = signed_in.post(
        "/bookmarklet", data={"name": " ", "csrf_token": token}, headers={"User-Agent": FIREFOX}
    )
    assert unnamed.status_code == 200
    [row] = ApiToken.select()
    assert row.name.startswith("Firefox on Linux, ") and row.name.endswith(" UTC")
