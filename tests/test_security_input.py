"""Every way in gets the same answer: a receipt minted through the API (a script's token or a
bookmarklet's key) and through the form for receipts made by hand comes out the same, and text
the databases cannot hold is refused with a clear answer on both, never a 500."""

import pytest

from web.accounts import new_token
from web.receipts import donottrack
from web.storage.models import Pixel
from web.vocabulary import Scope

from .helpers import csrf_token, sign_in

# What each entry point is given, the same message each time: a named recipient, a second one
# twice in another case, and a subject with spaces around it.
SUBJECT = "  Lease notice  "
RECIPIENTS = ["Erin Example <Erin@Example.org>", "frank@example.net", "FRANK@example.net"]


def mint_with_token(client, token):
    answer = client.post(
        "/api/pixels",
        json={"subject": SUBJECT, "recipients": RECIPIENTS},
        headers={"Authorization": f"Bearer {token}"},
    )
    return answer.status_code, answer.get_json().get("error")


def mint_with_form(client):
    page = client.get("/bookmarklet")
    answer = client.post(
        "/bookmarklet/pixel",
        data={
            "subject": SUBJECT,
            "recipients": ", ".join(RECIPIENTS),
            "csrf_token": csrf_token(page),
        },
    )
    return answer.status_code, answer.get_data(as_text=True)


@pytest.fixture
def entry_points(app, client, user):
    """Mint once through each way in; each returns (status, body or error text)."""
    with app.app_context():
        script = new_token(user, "script")[1]
        bookmarklet = new_token(user, "bookmarklet", Scope.BOOKMARKLET)[1]
    sign_in(client)
    return {
        "api": lambda: mint_with_token(client, script),
        "bookmarklet": lambda: mint_with_token(client, bookmarklet),
        "form": lambda: mint_with_form(client),
    }


@pytest.mark.parametrize("store", ["address", "domain", "none"])
def test_every_entry_point_stores_the_same_receipt(settings, store, entry_points, app):
    app.config["STORE_RECIPIENTS"] = store
    made = {}
    for name, mint in entry_points.items():
        status, _ = mint()
        assert status in (200, 201), name
        with app.app_context():
            pixel = Pixel.select().order_by(Pixel.id.desc()).get()
            made[name] = (pixel.subject, pixel.recipients, pixel.made_with)
    expected = {
        "address": ["erin@example.org", "frank@example.net"],
        "domain": ["example.org", "example.net"],
        "none": [],
    }[store]
    assert made == {
        name: ("Lease notice", expected, name) for name in ("api", "bookmarklet", "form")
    }


def test_every_entry_point_refuses_a_do_not_track_address(entry_points, app, user):
    with app.app_context():
        donottrack.add(user, ["erin@example.org"])
    for name, mint in entry_points.items():
        status, text = mint()
        assert status in (409, 422), name
        assert "erin@example.org" in text and "do-not-track" in text, name
    with app.app_context():
        assert Pixel.select().count() == 0


@pytest.mark.parametrize("path", ["/?q=a%00b", "/live/receipts?q=a%00b"])
def test_a_nul_in_a_search_is_a_clear_400(client, user, path):
    sign_in(client)
    answer = client.get(path)
    assert answer.status_code == 400
    assert "NUL" in answer.get_data(as_text=True)
    assert client.get(path.replace("%00", "")).status_code == 200
