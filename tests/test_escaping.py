"""Text that a stranger or a user controls arrives on every page as text, never as markup: the
subject, the label, the recipients, client names read from a recipient's user agent, channel
targets and the errors of their receivers, token and bookmarklet names, do-not-track entries and
a search; on the list and detail pages, their live JSON, the settings, the bookmarklet page and
the form for receipts made by hand. On SQLite and PostgreSQL.

Each test checks that the text is on the page escaped as a whole (markupsafe.escape, what Jinja's
autoescape writes) and that no raw markup is: a `|safe` on any of these fields fails it."""

import json
import re
from pathlib import Path

import pytest
from markupsafe import escape

from web.storage.models import ApiToken, Event, Notice, NotifyChannel, Pixel, Setting
from web.ui.account_settings import TESTED

from .helpers import csrf_token, mint, pixel_path

# An image whose onerror runs a script: the markup every field below is given, with a quote, an
# apostrophe and an ampersand (attribute values and entities).
MARKUP = "<img src=x onerror=alert(1)>"
TIGHT = "<img/src=x/onerror=alert(1)>"  # the same without spaces, for fields that split on them
RAW = ("<img src=x", "<img/src=x", "<b>")  # none of these may reach a page as they are
SUBJECT = f'Tom & Jerry\'s "offer" {MARKUP}'
LABEL = f"Q3 <b>deal</b> & {MARKUP} 'quoted'"
# A quoted local part may hold anything but a quote: an address that minting accepts.
RECIPIENTS = [f'"{MARKUP}"@example.com', "tom&jerry's@example.com"]

# What reaches a page of a recipient's user agent is its client name, as ua-parser reads it
# (judgement/clients.py). Its generic rule for bots takes any two characters before "bot", so a
# recipient's mail program can name itself with markup; the rest of the user agent is not kept.
THUNDERBIRD_UA = (
    f'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Ab<"bot Thunderbird/128.5.0 {MARKUP}'
)
THUNDERBIRD_CLIENT = 'Ab<"bot, Linux'
CHROME_UA = (
    f'Mozilla/5.0 (Windows NT 10.0; Win64; x64; "{MARKUP}&bot) AppleWebKit/537.36 '
    "(KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)
CHROME_CLIENT = ">&bot, Windows"


@pytest.fixture
def settings(settings):
    """Channels to 127.0.0.1, whose addresses need no DNS (never reached here)."""
    return {**settings, "NOTIFY_ALLOW": "127.0.0.0/8"}


def page(client, path, status=200):
    response = client.get(path)
    assert response.status_code == status, path
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def assert_as_text(html, *texts):
    """Each of `texts` is in the page escaped, and no markup they hold is."""
    for text in texts:
        assert str(escape(text)) in html, f"{text!r} is not on the page, escaped"
    for raw in RAW:
        assert raw not in html, f"{raw!r} reached the page as markup"


def post(client, form_page, path, **data):
    """Send a form of `form_page` (for its CSRF token)."""
    return client.post(path, data={**data, "csrf_token": csrf_token(client.get(form_page))})


def fetch(client, pixel, user_agent, address):
    response = client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": user_agent},
        environ_base={"REMOTE_ADDR": address},
    )
    return response.headers["X-Openreceipt"]


def test_subject_label_and_recipients_on_the_list_and_detail_pages(signed_in, auth, app):
    labelled = mint(signed_in, auth, subject=SUBJECT, label=LABEL, recipients=RECIPIENTS)
    plain = mint(signed_in, auth, subject=SUBJECT)
    with app.app_context():
        assert Pixel.get(Pixel.public_id == labelled["id"]).recipients == RECIPIENTS

    listed = page(signed_in, "/")
    assert_as_text(listed, LABEL, SUBJECT, ", ".join(RECIPIENTS))
    detail = page(signed_in, f"/m/{labelled['id']}")
    assert_as_text(detail, LABEL, SUBJECT, ", ".join(RECIPIENTS))
    assert f"<title>{escape(LABEL)} · openreceipt</title>" in detail
    assert_as_text(page(signed_in, f"/m/{plain['id']}"), SUBJECT)  # the subject as the title
    # A search finds it, and the page's other receipts are escaped as well.
    assert_as_text(page(signed_in, "/?q=Jerry"), LABEL, SUBJECT)


def test_the_live_json_carries_the_text_as_it_is_and_no_page_renders_it(signed_in, auth):
    """The pages' script puts the JSON's text in with textContent; the JSON is never HTML."""
    pixel = mint(signed_in, auth, subject=SUBJECT, label=LABEL, recipients=RECIPIENTS)
    fetch(signed_in, pixel, THUNDERBIRD_UA, "81.2.69.160")
    for path in ("/live/receipts", f"/live/m/{pixel['id']}"):
        response = signed_in.get(path)
        assert response.mimetype == "application/json"
    [row] = signed_in.get("/live/receipts").get_json()["rows"]
    assert (row["title"], row["subtitle"], row["recipients"], row["client"]) == (
        LABEL,
        SUBJECT,
        ", ".join(RECIPIENTS),
        THUNDERBIRD_CLIENT,
    )
    live = signed_in.get(f"/live/m/{pixel['id']}").get_json()
    assert live["title"] == LABEL
    assert [event["client"] for event in live["events"]] == [THUNDERBIRD_CLIENT]
    # The timeline's SVG, which the script does parse, holds none of the receipt's text.
    assert "<svg" in live["timeline"]
    assert not [text for text in ("Jerry", "Ab<", "<img", "<b>") if text in live["timeline"]]


def test_the_pages_script_writes_text_only():
    """static/live.js builds its rows with textContent and setAttribute: no HTML sink."""
    script = (Path(__file__).resolve().parent.parent / "static" / "live.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "text/html" not in script
    # The one parsed string is the timeline, as SVG, which the server writes.
    assert re.findall(r"parseFromString\(([^)]*)\)", script) == ['data.timeline, "image/svg+xml"']


def test_client_names_from_a_recipients_user_agent(signed_in, auth, app):
    """A recipient's mail program names itself in its user agent; the pages show that name."""
    pixel = mint(signed_in, auth, subject="Offer")
    assert fetch(signed_in, pixel, THUNDERBIRD_UA, "81.2.69.160") == "recorded: open"
    assert fetch(signed_in, pixel, CHROME_UA, "81.2.70.1") == "recorded: open"
    with app.app_context():
        clients = [event.client for event in Event.select().order_by(Event.id)]
    assert clients == [THUNDERBIRD_CLIENT, CHROME_CLIENT]  # the markup is stored: a real test

    detail = page(signed_in, f"/m/{pixel['id']}")
    assert_as_text(detail, THUNDERBIRD_CLIENT, CHROME_CLIENT)
    assert 'Ab<"' not in detail and ">&bot" not in detail
    listed = page(signed_in, "/")  # the latest open's client
    assert_as_text(listed, CHROME_CLIENT)
    assert ">&bot" not in listed


def test_channel_targets_and_their_errors_on_the_settings_page(signed_in, user, app):
    target = f"http://127.0.0.1:9/hook?a={TIGHT}&b=\"'"
    added = post(signed_in, "/settings", "/settings/channels", kind="webhook", target=target)
    assert added.status_code == 302
    with app.app_context():
        stored = NotifyChannel.get().target
    assert "<img/src=x" in stored  # kept as typed: the receiver's to read
    # Saved before targets were checked as they are now, or by another way in: the page
    # escapes what is stored, whatever it is.
    with app.app_context():
        old = NotifyChannel.create(user=user, kind="push", target=f"https://ntfy.sh/{MARKUP}")
        pixel = Pixel.create(public_id="p1", owner=user, subject=SUBJECT, label=LABEL)
        # A receiver's own answer becomes the error shown: a stranger's text.
        Notice.create(
            channel=old,
            pixel=pixel,
            reason="open",
            state="failed",
            attempts=9,
            last_error=f"HTTP 500: {MARKUP} & more",
        )
        Notice.create(
            channel=old,
            pixel=pixel,
            reason="open",
            state="pending",
            attempts=1,
            last_error=f'HTTP 502: {MARKUP} "retry"',
        )
        problem = json.dumps({"at": "2025-01-01T00:00:00", "problem": f"HTTP 404: {MARKUP}"})
        Setting.create(name=f"{TESTED}{old.id}", value=problem)

    settings = signed_in.get("/settings#notifications")
    text = settings.get_data(as_text=True)
    assert_as_text(
        text,
        f"Added: webhook notices to {stored}. Send a test notification to check it.",
        stored,
        old.target,
        f"HTTP 500: {MARKUP} & more",
        f'HTTP 502: {MARKUP} "retry"',
        f"HTTP 404: {MARKUP}",
        LABEL,  # the failed notice's receipt
    )
    # A target refused comes back in its field, with what is wrong with it.
    refused = post(signed_in, "/settings", "/settings/channels", kind="push", target=f"{MARKUP}")
    assert refused.status_code == 200
    assert_as_text(refused.get_data(as_text=True), MARKUP)
    # Removing it says which it was.
    removed = post(signed_in, "/settings", f"/settings/channels/{old.id}/delete")
    assert removed.status_code == 302
    assert_as_text(page(signed_in, "/settings"), f"Removed: push notices to {old.target}.")


def test_token_names_on_the_settings_page(signed_in, user, app):
    name = f"script {MARKUP} & 'cron'"
    created = post(signed_in, "/settings", "/settings/tokens", name=name)
    text = created.get_data(as_text=True)
    assert created.status_code == 200
    assert f'Your new token "{escape(name)}" (shown once):' in text
    assert_as_text(text, name)
    assert_as_text(page(signed_in, "/settings"), name)
    with app.app_context():
        assert ApiToken.get(ApiToken.name == name)


def test_bookmarklet_names_on_the_bookmarklet_page(signed_in, app):
    name = f'Work laptop {MARKUP} & "Chrome"'
    created = post(signed_in, "/bookmarklet", "/bookmarklet", name=name)
    assert created.status_code == 200
    text = created.get_data(as_text=True)
    assert_as_text(text, f"Your new bookmarklet: {name}", name, f"Name of bookmarklet {name}")
    with app.app_context():
        token_id = ApiToken.get(ApiToken.name == name).id
    renamed = f"Home {MARKUP} 'Firefox'"
    done = post(signed_in, "/bookmarklet", f"/bookmarklet/tokens/{token_id}/rename", name=renamed)
    assert done.status_code == 302
    assert_as_text(page(signed_in, "/bookmarklet"), renamed, f"Name of bookmarklet {renamed}")
    # The settings list every token, bookmarklets too.
    assert_as_text(page(signed_in, "/settings"), renamed)


def test_the_form_for_receipts_made_by_hand(signed_in, app):
    made = post(
        signed_in,
        "/bookmarklet",
        "/bookmarklet/pixel",
        subject=SUBJECT,
        recipients=", ".join(RECIPIENTS),
    )
    assert made.status_code == 200
    assert_as_text(made.get_data(as_text=True))
    with app.app_context():
        pixel = Pixel.get()
    assert (pixel.subject, pixel.recipients) == (SUBJECT, RECIPIENTS)
    assert_as_text(page(signed_in, f"/m/{pixel.public_id}"), SUBJECT, ", ".join(RECIPIENTS))
    # Refused: the error quotes what was typed, and the fields keep it.
    typed = f"{MARKUP} & 'x'"
    refused = post(
        signed_in, "/bookmarklet", "/bookmarklet/pixel", subject=SUBJECT, recipients=typed
    )
    assert refused.status_code == 422
    text = refused.get_data(as_text=True)
    assert_as_text(text, SUBJECT, typed)
    assert "not a list of email addresses" in text or "not an email address" in text


def test_do_not_track_entries_and_their_errors(signed_in, app):
    entry = f'"{TIGHT}&\'"@example.com'
    added = post(signed_in, "/settings", "/settings/dnt", entries=entry)
    assert added.status_code == 302
    text = page(signed_in, "/settings")
    assert_as_text(text, entry, f"Added {entry}.")
    # Refused: the error quotes it, and the field keeps it.
    refused = post(signed_in, "/settings", "/settings/dnt", entries=TIGHT)
    assert refused.status_code == 200
    text = refused.get_data(as_text=True)
    assert_as_text(text, f"Nothing was added: {TIGHT!r} is not an address", TIGHT)


def test_a_search_is_shown_as_text(signed_in, auth):
    """A link to the list page with a search in it (a stranger can send one) shows the search
    as text in its field."""
    mint(signed_in, auth, subject="x")
    text = page(signed_in, f"/?q={MARKUP}\"'")
    assert_as_text(text, f"{MARKUP}\"'")


def test_the_message_after_deleting_names_the_receipt_as_text(signed_in, auth):
    pixel = mint(signed_in, auth, subject=SUBJECT, label=LABEL)
    done = post(signed_in, f"/m/{pixel['id']}", f"/m/{pixel['id']}/delete")
    assert done.status_code == 302
    assert_as_text(page(signed_in, "/"), f"Deleted {LABEL}.")


def test_an_unknown_receipt_in_the_address_is_not_echoed(signed_in):
    text = page(signed_in, f"/m/{MARKUP}", status=404)
    assert_as_text(text)


def test_the_export_is_a_download_not_a_page(signed_in, auth):
    """The export holds the text as it is: it is JSON or CSV, downloaded, never sniffed."""
    mint(signed_in, auth, subject=SUBJECT, label=LABEL, recipients=RECIPIENTS)
    for form, mimetype in (("json", "application/json"), ("csv", "text/csv")):
        response = signed_in.get(f"/settings/export.{form}")
        assert response.status_code == 200
        assert response.mimetype == mimetype
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert MARKUP in response.get_data(as_text=True)
