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


# -- Do-not-track, however an address is written ------------------------------------------------


def mint_as(client, key, recipients, **fields):
    """Mint through the API with `key` (a script's token or a bookmarklet's); (status, body)."""
    answer = client.post(
        "/api/pixels",
        json={"subject": "Lease", "recipients": recipients, **fields},
        headers={"Authorization": f"Bearer {key}"},
    )
    return answer.status_code, answer.get_json()


def mint_by_hand(client, recipients, subject="Lease"):
    """Mint through the form for receipts made by hand; (status, page)."""
    page = client.get("/bookmarklet")
    answer = client.post(
        "/bookmarklet/pixel",
        data={"subject": subject, "recipients": recipients, "csrf_token": csrf_token(page)},
    )
    return answer.status_code, answer.get_data(as_text=True)


def mark_sent(client, key, **body):
    """Tell the API a receipt's message was sent: a new receipt without recipients, then
    POST /api/pixels/<id>/sent with `body`. Returns (status, body, the receipt)."""
    status, minted = mint_as(client, key, [])
    assert status == 201, minted
    answer = client.post(
        f"/api/pixels/{minted['id']}/sent", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return answer.status_code, answer.get_json(), Pixel.get(Pixel.public_id == minted["id"])


@pytest.fixture
def keys(app, client, user):
    """A script's token and a bookmarklet's key, and the client signed in (for the form)."""
    with app.app_context():
        script = new_token(user, "script")[1]
        bookmarklet = new_token(user, "bookmarklet", Scope.BOOKMARKLET)[1]
    sign_in(client)
    return {"api": script, "bookmarklet": bookmarklet}


LISTED = "erin@erase.example"
# Spellings of the listed address that the review got receipts for.
SPELLINGS = ["erin@erase.example.", "Erin@ERASE.Example.", "Erin <erin@erase.example.>"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_entry_point_knows_a_listed_address_however_written(
    app, client, user, keys, database, spelling
):
    donottrack.add(user, [LISTED])
    for name, key in keys.items():
        status, body = mint_as(client, key, ["x@y.org", spelling])
        assert (status, body["do_not_track"]) == (409, [LISTED]), name
    status, page = mint_by_hand(client, f"x@y.org, {spelling}")
    assert status == 422 and LISTED in page and "do-not-track" in page
    assert Pixel.select().count() == 0
    # The message went out all the same: its receipt stops recording.
    for key in keys.values():
        status, _, pixel = mark_sent(client, key, recipients=[spelling])
        assert status == 200 and pixel.tracking_stopped_at is not None


def test_several_addresses_in_one_item_are_refused_not_half_read(app, client, user, keys, database):
    """An API item `"x@y.org, erin@erase.example"` was stored as x@y.org: the second address
    dropped, unchecked. An item is one address: several are refused, whatever the list."""
    donottrack.add(user, [LISTED])
    for item in (f"x@y.org, {LISTED}", f"x@y.org <{LISTED}>", f"x@y.org {LISTED}"):
        for name, key in keys.items():
            status, body = mint_as(client, key, [item])
            assert status == 400, (name, item)
            assert "address" in body["error"] and repr(item) in body["error"], (name, item)
            status, body, pixel = mark_sent(client, key, recipients=[item])
            assert status == 400 and pixel.recipients == [], (name, item)
    # The form's field is a list separated by commas: each address in it is checked.
    status, page = mint_by_hand(client, f"x@y.org, {LISTED}")
    assert status == 422 and LISTED in page and "do-not-track" in page
    assert [pixel.recipients for pixel in Pixel.select()] == [[]] * 3 * len(keys)


@pytest.mark.parametrize("store", ["address", "domain"])
def test_recipients_are_stored_in_one_form(app, client, keys, database, store):
    app.config["STORE_RECIPIENTS"] = store
    typed = ["Erin <Erin@Erase.Example.>", "frank@EXAMPLE.net."]
    expected = {
        "address": ["erin@erase.example", "frank@example.net"],
        "domain": ["erase.example", "example.net"],
    }[store]
    stored = []
    for key in keys.values():
        assert mint_as(client, key, typed)[0] == 201
        stored.append(Pixel.select().order_by(Pixel.id.desc()).get().recipients)
        assert mark_sent(client, key, recipients=typed)[2].recipients == expected
    assert mint_by_hand(client, ", ".join(typed))[0] == 200
    stored.append(Pixel.select().order_by(Pixel.id.desc()).get().recipients)
    assert stored == [expected] * 3


def test_a_receipt_stored_with_a_trailing_dot_is_stopped_by_its_entry(app, client, user, keys):
    """Receipts stored before addresses were put in one form still match the list."""
    with app.app_context():
        old = Pixel.create(public_id="old-one", owner=user, recipients=["erin@erase.example."])
        assert donottrack.add(user, ["erin@erase.example"]) == (["erin@erase.example"], 1)
        assert Pixel.get_by_id(old.id).tracking_stopped_at is not None


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_an_erasure_finds_the_address_however_either_is_spelt(
    app, client, user, keys, runner, spelling
):
    """`openreceipt forget` deletes a receipt stored before addresses were put in one form
    (`erin@erase.example.`) and one stored in it, whichever spelling the request names."""
    with app.app_context():
        Pixel.create(public_id="old-one", owner=user, recipients=["erin@erase.example."])
    assert mint_as(client, keys["api"], [LISTED])[0] == 201
    assert mint_as(client, keys["api"], ["erin@erase.example.org"])[0] == 201
    result = runner.invoke(args=["forget", spelling.split("<")[-1].rstrip(">")])
    assert result.exit_code == 0, result.output
    assert "deleted 2 receipts" in result.output
    with app.app_context():
        assert [p.recipients for p in Pixel.select()] == [["erin@erase.example.org"]]


# -- Control characters ------------------------------------------------------------------------

CONTROLS = ["\x01", "\x1b[31m", "\x7f", "\x9b"]


@pytest.mark.parametrize("control", CONTROLS)
def test_control_characters_are_refused_at_every_entry_point(app, client, keys, database, control):
    """NUL was refused; \\x01, ESC (which starts a terminal's escape sequences), DEL and C1
    controls were stored as they came. Now every text that reaches the database from a mint,
    by any way in, is refused with a clear answer."""
    text = f"Lease{control}notice"
    for name, key in keys.items():
        for field, value in (("subject", text), ("label", text)):
            status, body = mint_as(client, key, [], **{field: value})
            assert status == 400 and "control character" in body["error"], (name, field)
            assert f"'{field}'" in body["error"]
        status, body = mint_as(client, key, [f"erin{control}@example.org"])
        assert status == 400 and "'recipients' contains a control character" in body["error"]
        for field, value in (("subject", text), ("recipients", [f"x{control}@y.org"])):
            status, body, pixel = mark_sent(client, key, **{field: value})
            assert status == 400 and "control character" in body["error"], (name, field)
            assert pixel.subject == "Lease" and pixel.recipients == []
    for subject, recipients in ((text, ""), ("Lease", f"x@y.org, erin{control}@example.org")):
        status, page = mint_by_hand(client, recipients, subject)
        assert status == 422 and "contains a control character" in page
    assert [p.subject for p in Pixel.select()] == ["Lease"] * 2 * len(keys)


def test_tabs_and_line_breaks_are_text(app, client, keys, database):
    status, _ = mint_as(client, keys["api"], ["x@y.org"], subject="Lease\tnotice\r\nof May")
    assert status == 201
    status, _ = mint_by_hand(client, "x@y.org,\r\ny@z.org", subject="Lease\tnotice")
    assert status == 200
    assert sorted(p.subject for p in Pixel.select()) == ["Lease\tnotice", "Lease\tnotice\r\nof May"]
