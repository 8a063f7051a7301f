"""The bookmarklet on the server side: building it, the install page, the CLI, and the API
telling an out-of-date bookmarklet so."""

import datetime
import html
import re
from urllib.parse import unquote

import pytest

from web.accounts import create_user, new_token
from web.bookmarklet import MAX_LENGTH, VERSION, bookmarklet_code, build_bookmarklet
from web.privacy import anonymize, fingerprint
from web.receipts import donottrack
from web.storage.models import ApiToken, Pixel
from web.vocabulary import Scope

from .helpers import csrf_token, mint, pixel_path, sign_in

SENDER_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def test_built_url_carries_origin_token_and_version_and_stays_short():
    url = build_bookmarklet("https://receipts.example.com/", "or_abc-DEF_123")
    assert url.startswith("javascript:") and len(url) < MAX_LENGTH
    code = unquote(url.removeprefix("javascript:"))
    assert 'var ORIGIN="https://receipts.example.com"' in code
    assert 'var TOKEN="or_abc-DEF_123"' in code and f'var VERSION="{VERSION}"' in code
    assert "__OPENRECEIPT_" not in code and " " not in url and "\n" not in url


@pytest.mark.parametrize("token", ['or_"+alert(1)+"', "or_\\", "or_</script>", "or_\n"])
def test_nothing_that_could_end_the_string_goes_in(token):
    with pytest.raises(ValueError):
        bookmarklet_code("https://receipts.example.com", token)


def test_no_trusted_types_sinks_in_the_source():
    code = bookmarklet_code("https://r.example", "or_x")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "insertHTML",
        "eval(",
        "document.write",
        'createElement("script',
    ):
        assert sink not in code


def test_cli_prints_only_the_url_and_names_the_token(app, runner, user):
    result = runner.invoke(args=["bookmarklet", "ada@example.com"])
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith("javascript:") and "\n" not in url
    token = re.search(r"var%20TOKEN=%22(or_[A-Za-z0-9_-]+)%22", url).group(1)
    with app.app_context():
        from web.accounts import token_for

        assert token_for(token).user.email == "ada@example.com"
        row = ApiToken.get()
        assert row.name.startswith("bookmarklet ") and row.scope == "bookmarklet"
    assert "https://receipts.example.com" in unquote(url)


def test_out_of_date_bookmarklet_is_told_which_version_is_expected(client, auth):
    old = client.post("/api/pixels", json={}, headers={**auth, "X-Openreceipt-Bookmarklet": "0"})
    assert old.status_code == 409
    assert old.get_json()["expected_version"] == VERSION
    assert "/bookmarklet" in old.get_json()["error"]
    current = client.post(
        "/api/pixels", json={}, headers={**auth, "X-Openreceipt-Bookmarklet": str(VERSION)}
    )
    assert current.status_code == 201
    preflight = client.options(
        "/api/pixels",
        headers={
            "Origin": "https://mail.google.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-openreceipt-bookmarklet",
        },
    )
    assert preflight.status_code == 200
    assert "x-openreceipt-bookmarklet" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_install_page_needs_a_sign_in(client):
    assert client.get("/bookmarklet").status_code == 302


def test_create_list_and_revoke_bookmarklets(client, user, app):
    sign_in(client)
    page = client.get("/bookmarklet")
    assert "Create a new bookmarklet" in page.get_data(as_text=True)
    assert "None yet" in page.get_data(as_text=True)
    created = client.post("/bookmarklet", data={"csrf_token": csrf_token(page)})
    html = created.get_data(as_text=True)
    link = re.search(r'<a class="bookmarklet" href="(javascript:[^"]+)"', html).group(1)
    assert "Drag this link to your bookmarks bar" in html
    assert "Chrome" in html and "Firefox" in html and "Safari" in html and "phone" in html
    token = re.search(r"var%20TOKEN=%22(or_[A-Za-z0-9_-]+)%22", link).group(1)
    headers = {"Authorization": f"Bearer {token}"}
    # A bookmarklet's key adds receipts and does nothing else.
    assert client.post("/api/pixels", json={}, headers=headers).status_code == 201
    assert client.get("/api/pixels", headers=headers).status_code == 403

    with app.app_context():
        token_id = ApiToken.get(ApiToken.name.startswith("bookmarklet")).id
    listing = client.get("/bookmarklet").get_data(as_text=True)
    assert "active" in listing and token not in listing  # the key is shown once, at creation
    revoked = client.post(
        f"/bookmarklet/tokens/{token_id}/revoke",
        data={"csrf_token": csrf_token(client.get("/bookmarklet"))},
    )
    assert revoked.status_code == 302
    assert client.post("/api/pixels", json={}, headers=headers).status_code == 401
    assert "revoked" in client.get("/bookmarklet").get_data(as_text=True)


def test_revoking_someone_elses_bookmarklet_does_nothing(client, user, other_auth, app):
    with app.app_context():
        other_token = ApiToken.get(ApiToken.user != user.id)
    sign_in(client)
    client.post(
        f"/bookmarklet/tokens/{other_token.id}/revoke",
        data={"csrf_token": csrf_token(client.get("/bookmarklet"))},
    )
    assert client.get("/api/pixels", headers=other_auth).status_code == 200


def test_forms_without_csrf_are_rejected(client, user, app):
    sign_in(client)
    assert client.post("/bookmarklet").status_code == 400
    assert client.post("/bookmarklet/pixel", data={"subject": "x"}).status_code == 400
    with app.app_context():
        assert ApiToken.select().count() == 0 and Pixel.select().count() == 0


def test_a_new_bookmarklet_is_named_after_the_browser_or_as_told(client, user, app):
    with app.app_context():
        new_token(user, "invoicing script")  # a script's key: not a bookmarklet
    sign_in(client)
    page = client.get("/bookmarklet", headers={"User-Agent": SENDER_CHROME})
    text = page.get_data(as_text=True)
    when = r"\d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC"
    assert re.search(
        rf'id="bookmarklet-name" name="name" [^>]*value="Chrome on [^",]+, {when}"', text
    )
    assert "invoicing script" not in text and "None yet" in text

    named = client.post(
        "/bookmarklet", data={"name": " Work  laptop ", "csrf_token": csrf_token(page)}
    )
    assert "Your new bookmarklet: Work laptop" in named.get_data(as_text=True)
    unnamed = client.post(
        "/bookmarklet",
        data={"name": "  ", "csrf_token": csrf_token(page)},
        headers={"User-Agent": SENDER_CHROME},
    )
    assert re.search(rf"Your new bookmarklet: Chrome on [^,]+, {when}", unnamed.text)
    with app.app_context():
        rows = ApiToken.select().order_by(ApiToken.id)
        assert [row.scope for row in rows] == ["full", "bookmarklet", "bookmarklet"]
        assert [row.name for row in rows][:2] == ["invoicing script", "Work laptop"]
        assert re.fullmatch(rf"Chrome on [^,]+, {when}", rows[2].name)


def test_bookmarklet_names_never_fail_the_page(client, user, app):
    """Characters the database cannot hold are no server error (PostgreSQL refuses NUL)."""
    sign_in(client)
    page = client.get("/bookmarklet")
    created = client.post(
        "/bookmarklet", data={"name": "odd\x00name", "csrf_token": csrf_token(page)}
    )
    assert created.status_code == 200
    with app.app_context():
        row = ApiToken.get()
    renamed = client.post(
        f"/bookmarklet/tokens/{row.id}/rename",
        data={"name": "still\x00odd", "csrf_token": csrf_token(page)},
    )
    assert renamed.status_code == 302
    with app.app_context():
        assert "\x00" not in ApiToken.get().name


def test_rename_a_bookmarklet(client, user, app):
    with app.app_context():
        row, _ = new_token(user, "bookmarklet 2026-01-05", Scope.BOOKMARKLET)
    sign_in(client)
    page = client.get("/bookmarklet")
    action = f"/bookmarklet/tokens/{row.id}/rename"
    assert f'action="{action}"' in page.get_data(as_text=True)
    renamed = client.post(action, data={"name": "  Work   laptop ", "csrf_token": csrf_token(page)})
    assert renamed.status_code == 302 and renamed.headers["Location"].endswith("/bookmarklet#yours")
    shown = client.get("/bookmarklet").get_data(as_text=True)
    assert "Renamed." in shown and 'value="Work laptop"' in shown
    with app.app_context():
        assert ApiToken.get_by_id(row.id).name == "Work laptop"

    client.post(action, data={"name": "  ", "csrf_token": csrf_token(page)})
    assert "Not renamed: a name cannot be empty." in client.get("/bookmarklet").get_data(
        as_text=True
    )
    assert client.post(action, data={"name": "no CSRF"}).status_code == 400
    with app.app_context():
        assert ApiToken.get_by_id(row.id).name == "Work laptop"


def test_renaming_someone_elses_bookmarklet_does_nothing(client, user, app):
    with app.app_context():
        grace = create_user("grace@example.com", "another long password")
        theirs, _ = new_token(grace, "Grace's laptop", Scope.BOOKMARKLET)
    sign_in(client)
    client.post(
        f"/bookmarklet/tokens/{theirs.id}/rename",
        data={"name": "mine now", "csrf_token": csrf_token(client.get("/bookmarklet"))},
    )
    assert "No such bookmarklet." in client.get("/bookmarklet").get_data(as_text=True)
    with app.app_context():
        assert ApiToken.get_by_id(theirs.id).name == "Grace's laptop"


def test_settings_shows_what_each_token_can_do(client, user, app):
    with app.app_context():
        new_token(user, "invoicing script")
        new_token(user, "Work laptop", Scope.BOOKMARKLET)
    sign_in(client)
    page = client.get("/settings").get_data(as_text=True)
    assert '<th scope="col">Can do</th>' in page
    assert re.search(r"<td>invoicing script</td>\s*<td>everything \(scripts\)</td>", page)
    assert re.search(r"<td>Work laptop</td>\s*<td>only add receipts \(bookmarklet\)</td>", page)


# Receipts made by hand


def manual(client, recipients="", subject="Lease notice", **request):
    """Send the form for a receipt made by hand; returns the answer."""
    token = csrf_token(client.get("/bookmarklet"))
    return client.post(
        "/bookmarklet/pixel",
        data={"subject": subject, "recipients": recipients, "csrf_token": token},
        **request,
    )


def test_manual_pixel_for_insert_photo_by_address(client, user, app):
    sign_in(client)
    made = manual(client, "Landlord <Landlord@Example.com>; tenant@example.org")
    assert made.status_code == 200
    text = made.get_data(as_text=True)
    url = re.search(
        r'id="manual-url" class="copy" readonly '
        r'value="(https://receipts\.example\.com/p/[^"]+\.gif)" aria-label="Image address"',
        text,
    ).group(1)
    assert 'data-copy="manual-url"' in text and 'data-copy="manual-html"' in text
    assert "Insert photo" in text and f"&lt;img src=&#34;{url}&#34;" in text
    with app.app_context():
        pixel = Pixel.get()
    assert (pixel.subject, pixel.recipients, pixel.label, pixel.made_with) == (
        "Lease notice",
        ["landlord@example.com", "tenant@example.org"],
        None,
        "form",
    )
    assert f'<a href="/m/{pixel.public_id}">Its receipt</a>' in text
    assert client.get(pixel_path(url)).headers["X-Openreceipt"].startswith("recorded: ")


def test_manual_form_refuses_what_is_not_an_address(client, user, app):
    sign_in(client)
    refused = manual(client, "Landlord@Example.com; x")
    assert refused.status_code == 422
    text = html.unescape(refused.get_data(as_text=True))
    assert "'recipients' holds 'x', which is not an email address" in text
    # The form keeps what was typed, to correct it.
    assert 'value="Landlord@Example.com; x"' in text and 'value="Lease notice"' in text
    assert 'id="made"' not in text
    with app.app_context():
        assert Pixel.select().count() == 0


@pytest.mark.parametrize(
    "recipients",
    [
        "bob@dnt.example",
        "Bob Example <Bob@DNT.example>",
        'ok@example.com; "Example, Bob" <bob@dnt.example>',
    ],
    ids=["address", "named", "quoted-name"],
)
@pytest.mark.parametrize("whose", ["user", "server"])
def test_manual_form_refuses_a_do_not_track_address(client, user, app, recipients, whose):
    with app.app_context():
        donottrack.add(user if whose == "user" else None, ["bob@dnt.example"])
    sign_in(client)
    refused = manual(client, recipients)
    assert refused.status_code == 422
    text = refused.get_data(as_text=True)
    assert "no receipt: bob@dnt.example is on the do-not-track list" in text
    assert 'id="made"' not in text
    with app.app_context():
        assert Pixel.select().count() == 0


@pytest.mark.parametrize(
    ("store", "kept"), [("domain", ["example.com", "example.org"]), ("none", [])]
)
def test_manual_form_keeps_what_store_recipients_says(client, user, app, store, kept):
    app.config["STORE_RECIPIENTS"] = store
    sign_in(client)
    made = manual(client, "Bob <bob@example.com>, carol@example.com, dave@example.org")
    assert made.status_code == 200
    text = made.get_data(as_text=True)
    assert "bob@example.com" not in text and "dave@example.org" not in text
    with app.app_context():
        assert Pixel.get().recipients == kept


def test_a_named_recipient_is_stored_by_address_so_forget_finds_it(client, user, app, runner):
    sign_in(client)
    assert manual(client, "Erin Example <Erin@Erase.example>").status_code == 200
    assert (
        manual(client, '"Example, Erin" <erin@erase.example>, keep@example.org').status_code == 200
    )
    assert manual(client, "keep@example.org").status_code == 200
    with app.app_context():
        assert [pixel.recipients for pixel in Pixel.select().order_by(Pixel.id)] == [
            ["erin@erase.example"],
            ["erin@erase.example", "keep@example.org"],
            ["keep@example.org"],
        ]
    result = runner.invoke(args=["forget", "erin@erase.example"])
    assert result.exit_code == 0, result.output
    assert "deleted 2 receipts sent to erin@erase.example" in result.output
    with app.app_context():
        assert [pixel.recipients for pixel in Pixel.select()] == [["keep@example.org"]]


@pytest.mark.parametrize(
    ("subject", "recipients", "message"),
    [
        ("nul \x00 byte", "bob@example.com", "'subject' contains a NUL character"),
        ("x" * 999, "bob@example.com", "'subject' is longer than 998 characters"),
        ("Lease notice", "bob@example.com\x00", "'recipients' contains a NUL character"),
    ],
    ids=["nul-subject", "long-subject", "nul-recipients"],
)
def test_manual_form_refuses_what_cannot_be_stored(client, user, app, subject, recipients, message):
    sign_in(client)
    refused = manual(client, recipients, subject=subject)
    assert refused.status_code == 422
    assert message in html.unescape(refused.get_data(as_text=True))
    with app.app_context():
        assert Pixel.select().count() == 0


def test_a_receipt_made_by_hand_knows_the_senders_browser(client, user, app):
    """The minting browser's fingerprint is kept: its own fetch of the draft is the sender's."""
    sign_in(client)
    made = manual(
        client,
        "bob@example.com",
        headers={"User-Agent": SENDER_CHROME},
        environ_base={"REMOTE_ADDR": "198.51.100.23"},
    )
    with app.app_context():
        pixel = Pixel.get()
    assert pixel.mint_fingerprint == fingerprint(
        app.config["SECRET_KEY"], SENDER_CHROME, anonymize("198.51.100.23")
    )
    url = re.search(r'id="manual-url" class="copy" readonly value="([^"]+)"', made.text).group(1)
    own = client.get(
        pixel_path(url),
        headers={"User-Agent": SENDER_CHROME},
        environ_base={"REMOTE_ADDR": "198.51.100.99"},
    )
    assert own.headers["X-Openreceipt"] == "recorded: preview"


def sent_button(public_id):
    return f'action="/m/{public_id}/sent"'


def test_i_sent_it_now_sets_the_time_once(client, user, app):
    sign_in(client)
    manual(client, "bob@example.com")
    with app.app_context():
        public_id = Pixel.get().public_id
    page = client.get(f"/m/{public_id}")
    text = page.get_data(as_text=True)
    assert 'id="by-hand"' in text and sent_button(public_id) in text
    assert 'id="sent">not yet known<' in text

    sent = client.post(f"/m/{public_id}/sent", data={"csrf_token": csrf_token(page)})
    assert sent.status_code == 302 and sent.headers["Location"].endswith(f"/m/{public_id}")
    with app.app_context():
        assert Pixel.get().sent_at is not None
        earlier = datetime.datetime(2026, 1, 5, 9, 30)
        Pixel.update(sent_at=earlier).execute()
    text = client.get(f"/m/{public_id}").get_data(as_text=True)
    assert "Marked as sent now." in text and sent_button(public_id) not in text
    assert 'id="sent">2026-01-05 09:30' in text

    # Once only: a second press (another tab, a double click) keeps the first time.
    again = client.post(f"/m/{public_id}/sent", data={"csrf_token": csrf_token(page)})
    assert again.status_code == 302
    assert client.post(f"/m/{public_id}/sent").status_code == 400  # no CSRF token
    with app.app_context():
        assert Pixel.get().sent_at == earlier


def test_i_sent_it_now_only_for_ones_own_receipts(client, user, app, other_auth):
    theirs = mint(client, other_auth)
    sign_in(client)
    token = csrf_token(client.get("/bookmarklet"))
    assert client.post(f"/m/{theirs['id']}/sent", data={"csrf_token": token}).status_code == 404
    with app.app_context():
        assert Pixel.get().sent_at is None


def test_only_receipts_made_by_hand_explain_themselves(client, user, app, auth):
    with app.app_context():
        bookmarklet = {"Authorization": f"Bearer {new_token(user, 'b', Scope.BOOKMARKLET)[1]}"}
    by_api = mint(client, auth)["id"]
    by_bookmarklet = mint(client, bookmarklet)["id"]
    sign_in(client)
    manual(client, "bob@example.com")
    with app.app_context():
        made_with = {pixel.public_id: pixel.made_with for pixel in Pixel.select()}
    by_hand = next(public_id for public_id, how in made_with.items() if how == "form")
    assert made_with == {by_api: "api", by_bookmarklet: "bookmarklet", by_hand: "form"}
    for public_id in made_with:
        text = client.get(f"/m/{public_id}").get_data(as_text=True)
        assert ('id="by-hand"' in text) is (public_id == by_hand)
        assert sent_button(public_id) in text  # none was marked sent yet
