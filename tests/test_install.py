"""The bookmarklet on the server side: building it, the install page, the CLI, and the API
telling an out-of-date bookmarklet so."""

import re
from urllib.parse import unquote

import pytest

from web.bookmarklet import MAX_LENGTH, VERSION, bookmarklet_code, build_bookmarklet
from web.models import ApiToken, Pixel

from .helpers import csrf_token, sign_in


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
        from web.accounts import user_for_token

        assert user_for_token(token).email == "ada@example.com"
        assert ApiToken.get().name.startswith("bookmarklet ")
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
    assert client.get("/api/pixels", headers=headers).status_code == 200

    with app.app_context():
        token_id = ApiToken.get(ApiToken.name.startswith("bookmarklet")).id
    listing = client.get("/bookmarklet").get_data(as_text=True)
    assert "active" in listing and token not in listing  # the key is shown once, at creation
    revoked = client.post(
        f"/bookmarklet/tokens/{token_id}/revoke",
        data={"csrf_token": csrf_token(client.get("/bookmarklet"))},
    )
    assert revoked.status_code == 302
    assert client.get("/api/pixels", headers=headers).status_code == 401
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


def test_manual_pixel_for_insert_photo_by_address(client, user, app):
    sign_in(client)
    page = client.get("/bookmarklet")
    made = client.post(
        "/bookmarklet/pixel",
        data={
            "subject": "Lease notice",
            "recipients": "Landlord@Example.com; x",
            "csrf_token": csrf_token(page),
        },
    )
    html = made.get_data(as_text=True)
    assert re.search(
        r'value="https://receipts\.example\.com/p/[^"]+\.gif" aria-label="Pixel URL"', html
    )
    assert "Insert photo" in html and "&lt;img src=" in html
    with app.app_context():
        pixel = Pixel.get()
        assert (pixel.subject, pixel.recipients) == ("Lease notice", ["landlord@example.com"])
