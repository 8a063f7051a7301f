"""Privacy features on SQLite and PostgreSQL: minimal collection settings, do-not-track lists,
export, erasure and the public privacy notice."""

import csv
import datetime
import html
import io
import json

import pytest

from web import create_app
from web.accounts import create_user, new_token
from web.config import ConfigError
from web.receipts import donottrack, export
from web.storage.models import ApiToken, DoNotTrack, Event, Pixel, User

from .helpers import mint, pixel_path, sign_in

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
NOT_RECORDED = "not recorded: a recipient is on the do-not-track list"


def open_it(client, pixel, address="81.2.69.160"):
    return client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": GMAIL_PROXY},
        environ_base={"REMOTE_ADDR": address},
    )


@pytest.fixture
def configured(settings):
    """configured(**overrides) -> (app, client, auth headers of ada@example.com)."""
    apps = []

    def make(**overrides):
        app = create_app({**settings, **overrides})
        apps.append(app)
        with app.app_context():
            ada = create_user("ada@example.com", "correct horse battery")
            headers = {"Authorization": f"Bearer {new_token(ada)[1]}"}
        return app, app.test_client(), headers

    yield make
    for app in apps:
        database = app.extensions["openreceipt.database"]
        database.close_all()


def stored(app, pixel):
    with app.app_context():
        row = Pixel.get(Pixel.public_id == pixel["id"])
        return row, list(Event.select().where(Event.pixel == row).order_by(Event.id))


# Minimal collection


@pytest.mark.parametrize(
    ("overrides", "country", "city", "client"),
    [
        ({}, "GB", "London", "Gmail"),
        ({"COLLECT_LOCATION": "country"}, "GB", None, "Gmail"),
        ({"COLLECT_LOCATION": "none"}, None, None, "Gmail"),
        ({"COLLECT_CLIENT": "off"}, "GB", "London", None),
        ({"COLLECT_LOCATION": "NONE", "COLLECT_CLIENT": False}, None, None, None),
    ],
    ids=["defaults", "country", "no-location", "no-client", "nothing"],
)
def test_a_fetch_stores_only_what_is_collected(configured, overrides, country, city, client):
    app, http, auth = configured(**overrides)
    pixel = mint(http, auth, subject="Invoice")
    assert open_it(http, pixel).headers["X-Openreceipt"] == "recorded: open"
    (event,) = stored(app, pixel)[1]
    assert (event.country, event.city, event.client) == (country, city, client)
    # Classification does not depend on what is kept: Gmail's proxy is still an open.
    assert (event.kind, event.source, event.ip) == ("open", "gmail-proxy", "81.2.69.0")


@pytest.mark.parametrize(
    ("store", "kept"),
    [
        ("address", ["bob@example.com", "alice@example.com", "carol@example.org"]),
        ("domain", ["example.com", "example.org"]),
        ("none", []),
    ],
)
def test_store_recipients_when_minting_and_when_sent(configured, store, kept):
    app, http, auth = configured(STORE_RECIPIENTS=store)
    addresses = ["Bob <Bob@Example.com>", "alice@example.com", "carol@example.org"]
    minted = mint(http, auth, recipients=addresses)
    assert stored(app, minted)[0].recipients == kept
    marked = mint(http, auth)
    answer = http.post(
        f"/api/pixels/{marked['id']}/sent", json={"recipients": addresses}, headers=auth
    )
    assert answer.status_code == 200 and answer.get_json()["recipients"] == kept
    assert stored(app, marked)[0].recipients == kept


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"COLLECT_LOCATION": "street"}, "OPENRECEIPT_COLLECT_LOCATION must be one of city"),
        ({"STORE_RECIPIENTS": "hash"}, "OPENRECEIPT_STORE_RECIPIENTS must be one of address"),
        ({"COLLECT_CLIENT": "maybe"}, "OPENRECEIPT_COLLECT_CLIENT must be on or off"),
        ({"RETENTION_DAYS": "a year"}, "OPENRECEIPT_RETENTION_DAYS must be a whole number"),
        ({"OPERATOR_CONTACT": "a\nb"}, "OPENRECEIPT_OPERATOR_CONTACT must be one line"),
    ],
)
def test_invalid_privacy_settings_stop_start_up(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off", **overrides})


def test_privacy_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRECEIPT_COLLECT_LOCATION", "Country")
    monkeypatch.setenv("OPENRECEIPT_COLLECT_CLIENT", "off")
    monkeypatch.setenv("OPENRECEIPT_STORE_RECIPIENTS", " domain ")
    app = create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off"})
    assert (
        app.config["COLLECT_LOCATION"],
        app.config["COLLECT_CLIENT"],
        app.config["STORE_RECIPIENTS"],
    ) == ("country", False, "domain")


# Do-not-track


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("Bob@Example.DE", "bob@example.de"),
        ("@example.de", "example.de"),
        (" Example.DE. ", "example.de"),
        (".DE", ".de"),
        ("mail.example.de", "mail.example.de"),
    ],
)
def test_entries_are_normalized(text, entry):
    assert donottrack.normalize(text) == entry


@pytest.mark.parametrize(
    "text",
    [
        "",
        "de",
        "bob@",
        "@",
        "-bad.de",
        "a b.de",
        ".co.uk",
        "b ob@x.de",
        ".-de",
        "bob\x00@example.de",
        "b" * 310 + "@example.de",
    ],
)
def test_invalid_entries_are_refused(text):
    with pytest.raises(donottrack.EntryError, match="is not an address"):
        donottrack.normalize(text)


def test_an_entry_as_long_as_its_column_is_taken():
    entry = "b" * 309 + "@example.de"
    assert len(entry) == DoNotTrack.entry.max_length
    assert donottrack.normalize(entry) == entry


def test_a_refused_entry_is_quoted_short_with_the_forms_that_are_taken():
    with pytest.raises(donottrack.EntryError) as refused:
        donottrack.normalize("  not an entry ")
    assert str(refused.value) == (
        "'not an entry' is not an address (bob@example.de), a domain (example.de) or a "
        "top-level domain (.de)"
    )
    with pytest.raises(donottrack.EntryError) as long:
        donottrack.normalize("x" * 200)
    assert str(long.value).startswith(repr("x" * 80) + " is not")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Erin@Erase.Example.", "erin@erase.example"),
        (" Bob@Example.DE ", "bob@example.de"),
        ("Example.DE.", "example.de"),  # a stored domain (STORE_RECIPIENTS=domain)
        ('"a@b"@Example.DE.', '"a@b"@example.de'),
    ],
)
def test_recipients_are_compared_in_one_form(text, canonical):
    assert donottrack.canonical_address(text) == canonical


def test_an_entry_on_someone_elses_list_is_added_to_mine(app, user):
    with app.app_context():
        grace = create_user("grace@example.com", "another long password")
        assert donottrack.add(None, ["example.de"]) == (["example.de"], 0)
        assert donottrack.add(grace, ["example.de", "example.org"]) == (
            ["example.de", "example.org"],
            0,
        )
        assert donottrack.add(user, ["example.org", "example.de"]) == (
            ["example.org", "example.de"],
            0,
        )
        assert donottrack.add(user, ["example.de", "example.net"]) == (["example.net"], 0)
        assert donottrack.add(user, ["example.net"]) == ([], 0)
        mine = [row.entry for row in donottrack.listed(user)]
        assert mine == ["example.org", "example.de", "example.net"]
        assert [row.entry for row in donottrack.listed(None)] == ["example.de"]


def test_removing_an_entry_removes_only_that_one_of_that_list(app, user):
    with app.app_context():
        grace = create_user("grace@example.com", "another long password")
        for owner in (None, grace, user):
            donottrack.add(owner, ["example.de", "example.org"])
        assert donottrack.remove(user, "Example.DE") is True
        assert donottrack.remove(user, "example.de") is False
        assert [row.entry for row in donottrack.listed(user)] == ["example.org"]
        assert [row.entry for row in donottrack.listed(grace)] == ["example.de", "example.org"]
        assert [row.entry for row in donottrack.listed(None)] == ["example.de", "example.org"]
        assert donottrack.remove(None, "example.de") is True
        assert [row.entry for row in donottrack.listed(grace)] == ["example.de", "example.org"]


def test_entries_are_listed_oldest_first(app, user):
    with app.app_context():
        now = datetime.datetime(2026, 11, 25, 12, 0)
        for entry, minutes in [("c.example", 2), ("b.example", 0), ("a.example", 0)]:
            created = now + datetime.timedelta(minutes=minutes)
            DoNotTrack.create(user=user, entry=entry, created_at=created)
        listed = [row.entry for row in donottrack.listed(user)]
        assert listed == ["b.example", "a.example", "c.example"]  # at one time: as added


def test_a_receipt_already_stopped_is_neither_stopped_again_nor_counted(client, auth, user, app):
    to_bob = mint(client, auth, recipients=["bob@example.de"])
    with app.app_context():
        assert donottrack.add(user, ["example.de"]) == (["example.de"], 1)
        stopped_at = Pixel.get(Pixel.public_id == to_bob["id"]).tracking_stopped_at
        assert donottrack.add(user, ["bob@example.de"]) == (["bob@example.de"], 0)
        assert Pixel.get(Pixel.public_id == to_bob["id"]).tracking_stopped_at == stopped_at
        assert donottrack.add(user, ["example.de"]) == ([], 0)


@pytest.mark.parametrize(
    ("entry", "recipient", "covered"),
    [
        ("bob@example.de", "bob@example.de", True),
        ("bob@example.de", "alice@example.de", False),
        ("example.de", "alice@example.de", True),
        ("example.de", "bob@mail.example.de", True),
        ("example.de", "bob@notexample.de", False),
        (".de", "bob@anything.de", True),
        (".de", "bob@example.dev", False),
        ("example.de", "example.de", True),  # a stored domain (STORE_RECIPIENTS=domain)
    ],
)
def test_what_an_entry_covers(entry, recipient, covered):
    assert donottrack.covers(entry, recipient) is covered


def test_minting_for_a_listed_recipient_is_refused(app, client, auth, user, database):
    donottrack.add(user, ["example.de"])
    refused = client.post(
        "/api/pixels", json={"recipients": ["Bob <bob@mail.example.de>"]}, headers=auth
    )
    assert refused.status_code == 409
    body = refused.get_json()
    assert "example.de is on the do-not-track list" in body["error"]
    assert body["do_not_track"] == ["example.de"]
    assert Pixel.select().count() == 0
    bad = client.post(
        "/api/pixels", json={"recipients": ["bob@example.de"], "force": "yes"}, headers=auth
    )
    assert bad.status_code == 400 and "force" in bad.get_json()["error"]
    forced = mint(client, auth, recipients=["bob@example.de"], force=True)
    assert Pixel.get(Pixel.public_id == forced["id"]).recipients == ["bob@example.de"]
    assert mint(client, auth, recipients=["bob@example.dev"])


def test_server_entries_hold_for_everyone_user_entries_for_their_owner(
    client, auth, other_auth, user, database
):
    donottrack.add(None, [".de"])
    donottrack.add(user, ["bob@example.com"])
    for headers in (auth, other_auth):
        answer = client.post("/api/pixels", json={"recipients": ["x@y.de"]}, headers=headers)
        assert answer.status_code == 409 and answer.get_json()["do_not_track"] == [".de"]
    mine = client.post("/api/pixels", json={"recipients": ["bob@example.com"]}, headers=auth)
    assert mine.status_code == 409
    assert mint(client, other_auth, recipients=["bob@example.com"])


def test_a_new_entry_stops_the_receipts_it_covers(client, auth, other_auth, user, database):
    to_bob = mint(client, auth, recipients=["bob@example.de"])
    to_carol = mint(client, auth, recipients=["carol@example.org"])
    theirs = mint(client, other_auth, recipients=["bob@example.de"])
    assert donottrack.add(user, ["Example.DE", "example.de"]) == (["example.de"], 1)
    assert Pixel.get(Pixel.public_id == to_bob["id"]).tracking_stopped_at is not None
    assert Pixel.get(Pixel.public_id == to_carol["id"]).tracking_stopped_at is None
    assert Pixel.get(Pixel.public_id == theirs["id"]).tracking_stopped_at is None

    stopped = open_it(client, to_bob)
    assert stopped.status_code == 200 and stopped.mimetype == "image/gif"
    assert stopped.headers["X-Openreceipt"] == NOT_RECORDED
    assert open_it(client, theirs).headers["X-Openreceipt"] == "recorded: open"
    assert open_it(client, to_carol).headers["X-Openreceipt"] == "recorded: open"
    assert Event.select().join(Pixel).where(Pixel.public_id == to_bob["id"]).count() == 0
    assert Event.select().count() == 2


def test_sent_marker_with_a_newly_listed_recipient_stops_the_receipt(client, auth, user, database):
    donottrack.add(user, ["bob@example.de"])
    pixel = mint(client, auth, recipients=["alice@example.com"])
    unchanged = client.post(
        f"/api/pixels/{pixel['id']}/sent", json={"recipients": ["alice@example.com"]}, headers=auth
    )
    assert unchanged.get_json()["tracking_stopped_at"] is None
    marked = client.post(
        f"/api/pixels/{pixel['id']}/sent",
        json={"recipients": ["alice@example.com", "bob@example.de"]},
        headers=auth,
    )
    assert marked.status_code == 200 and marked.get_json()["tracking_stopped_at"] is not None
    assert open_it(client, pixel).headers["X-Openreceipt"] == NOT_RECORDED
    assert Event.select().count() == 0


@pytest.mark.parametrize("store", ["domain", "none"])
def test_sent_marker_stops_the_receipt_whatever_is_stored(configured, store):
    """The do-not-track check sees the addresses the bookmarklet sent, not what is kept of them
    (as minting does)."""
    app, http, auth = configured(STORE_RECIPIENTS=store)
    with app.app_context():
        donottrack.add(User.get(), ["bob@example.de"])
    refused = http.post("/api/pixels", json={"recipients": ["bob@example.de"]}, headers=auth)
    assert refused.status_code == 409
    pixel = mint(http, auth, recipients=["alice@example.com"])
    marked = http.post(
        f"/api/pixels/{pixel['id']}/sent",
        json={"recipients": ["alice@example.com", "bob@example.de"]},
        headers=auth,
    )
    assert marked.status_code == 200 and marked.get_json()["tracking_stopped_at"] is not None
    assert open_it(http, pixel).headers["X-Openreceipt"] == NOT_RECORDED


def test_dnt_commands(runner, user, other_auth, client, auth):
    to_bob = mint(client, auth, recipients=["bob@example.de"])
    added = runner.invoke(
        args=["dnt", "add", "Bob@Example.DE", "@example.org", "--user", "ada@example.com"]
    )
    assert added.exit_code == 0, added.output
    assert "added bob@example.de (for ada@example.com)" in added.stdout
    assert "added example.org (for ada@example.com)" in added.stdout
    assert "1 receipts stopped recording" in added.stderr
    assert open_it(client, to_bob).headers["X-Openreceipt"] == NOT_RECORDED

    server = runner.invoke(args=["dnt", "add", ".DE"])
    assert server.exit_code == 0 and "added .de (for every user)" in server.stdout
    ada_list = runner.invoke(args=["dnt", "list", "--user", "ada@example.com"]).stdout
    assert [line.split("\t")[0] for line in ada_list.splitlines()] == [
        "bob@example.de",
        "example.org",
    ]
    assert [
        line.split("\t")[0] for line in runner.invoke(args=["dnt", "list"]).stdout.splitlines()
    ] == [".de"]
    assert runner.invoke(args=["dnt", "list", "--user", "grace@example.com"]).stdout == ""

    removed = runner.invoke(args=["dnt", "remove", "EXAMPLE.org.", "--user", "ada@example.com"])
    assert removed.exit_code == 0 and "removed example.org" in removed.stdout
    assert runner.invoke(args=["dnt", "remove", ".de"]).exit_code == 0
    assert runner.invoke(args=["dnt", "list"]).stdout == ""
    assert mint(client, other_auth, recipients=["x@y.de"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dnt", "add", "not an entry"], "is not an address"),
        (
            ["dnt", "add", "example.de", "--user", "nobody@example.com"],
            "no user nobody@example.com",
        ),
        (["dnt", "list", "--user", "nobody@example.com"], "no user nobody@example.com"),
        (["dnt", "remove", "example.de"], "example.de is not on the server's list"),
        (
            ["dnt", "remove", "x.de", "--user", "ada@example.com"],
            "is not on ada@example.com's list",
        ),
        (["dnt", "remove", "de"], "is not an address"),
    ],
)
def test_dnt_command_errors(runner, user, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output


# Export


@pytest.fixture
def ada_and_grace(client, auth, other_auth, user, database):
    """Ada: an opened invoice, a waiting formula-looking receipt, a do-not-track entry.
    Grace: a secret receipt of her own."""
    invoice = mint(client, auth, subject="Invoice #42", recipients=["bob@example.com"])
    open_it(client, invoice)
    open_it(client, invoice, address="2001:db8:1234::99")
    formula = mint(client, auth, subject='=HYPERLINK("https://evil.example","x")')
    donottrack.add(user, ["example.de"])
    mint(client, other_auth, subject="Grace's secret", recipients=["zoe@example.net"])
    return invoice, formula


def test_export_json_holds_the_whole_account(runner, ada_and_grace, token):
    invoice, formula = ada_and_grace
    result = runner.invoke(args=["export", "ada@example.com", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["user"]["email"] == "ada@example.com"
    assert [sorted(t) for t in document["api_tokens"]] == [
        ["created_at", "last_used_at", "name", "revoked_at"]
    ]
    assert document["api_tokens"][0]["name"] == "tests"
    assert token not in result.stdout and ApiToken.get().token_hash not in result.stdout
    assert document["do_not_track"] == ["example.de"]
    assert [p["id"] for p in document["pixels"]] == [invoice["id"], formula["id"]]
    first, second = document["pixels"]
    assert first["recipients"] == ["bob@example.com"] and first["open_count"] == 2
    assert [(e["kind"], e["ip"], e["city"]) for e in first["events"]] == [
        ("open", "81.2.69.0", "London"),
        ("open", "2001:db8:1234::", "Berlin"),
    ]
    assert second["events"] == [] and second["state"] == "waiting"
    assert "81.2.69.160" not in result.stdout and "Grace" not in result.stdout
    assert json.loads(export.as_json(User.get(User.email == "ada@example.com"))) == document


def test_export_csv_has_a_row_per_event_and_defuses_formulas(runner, ada_and_grace):
    invoice, formula = ada_and_grace
    result = runner.invoke(args=["export", "ada@example.com", "--format", "csv"])
    assert result.exit_code == 0, result.output
    header, *rows = list(csv.reader(io.StringIO(result.stdout)))
    assert header[:3] == ["pixel_id", "pixel_label", "pixel_subject"] and "event_ip" in header
    records = [dict(zip(header, row, strict=True)) for row in rows]
    assert [r["pixel_id"] for r in records] == [invoice["id"], invoice["id"], formula["id"]]
    assert [r["event_ip"] for r in records] == ["81.2.69.0", "2001:db8:1234::", ""]
    assert records[0]["pixel_recipients"] == "bob@example.com"
    assert records[2]["pixel_subject"] == '\'=HYPERLINK("https://evil.example","x")'
    assert records[2]["event_kind"] == "" and records[2]["pixel_state"] == "waiting"
    assert "Grace" not in result.stdout and "zoe@" not in result.stdout


def test_export_of_an_unknown_user_fails(runner, user):
    result = runner.invoke(args=["export", "nobody@example.com"])
    assert result.exit_code == 1 and "no user nobody@example.com" in result.output


# Erasure


def test_forget_deletes_every_receipt_sent_to_the_address(
    runner, client, auth, other_auth, user, database
):
    """An erasure request: every user's receipts to exactly that address go, with their events."""
    to_bob = mint(client, auth, subject="Invoice", recipients=["bob@example.com"])
    open_it(client, to_bob)
    to_bobby = mint(client, auth, recipients=["bobby@example.com"])
    to_alice = mint(client, auth, recipients=["alice@example.com"])
    theirs = mint(client, other_auth, recipients=["carol@example.com", "bob@example.com"])
    open_it(client, to_bobby)

    result = runner.invoke(args=["forget", " Bob@Example.com "])
    assert result.exit_code == 0, result.output
    assert f"deleted receipt {to_bob['id']} of ada@example.com: Invoice (1 events)" in result.output
    assert (
        f"deleted receipt {theirs['id']} of grace@example.com: (no subject) (0 events)"
        in result.output
    )
    assert "deleted 2 receipts sent to bob@example.com" in result.output
    remaining = {p.public_id for p in Pixel.select()}
    assert remaining == {to_bobby["id"], to_alice["id"]}
    assert [e.pixel.public_id for e in Event.select()] == [to_bobby["id"]]
    assert DoNotTrack.select().count() == 0
    assert mint(client, auth, recipients=["bob@example.com"])


def test_forget_with_do_not_track_blocks_every_user(runner, client, auth, other_auth, user):
    mint(client, auth, recipients=["bob@example.com"])
    result = runner.invoke(args=["forget", "bob@example.com", "--do-not-track"])
    assert result.exit_code == 0, result.output
    assert "bob@example.com added to the server's do-not-track list" in result.output
    for headers in (auth, other_auth):
        answer = client.post(
            "/api/pixels", json={"recipients": ["bob@example.com"]}, headers=headers
        )
        assert answer.status_code == 409
    again = runner.invoke(args=["forget", "bob@example.com", "--do-not-track"])
    assert "deleted 0 receipts" in again.output and "already on" in again.output
    assert runner.invoke(args=["forget", "example.com"]).exit_code == 1


def test_user_delete_removes_all_their_data_and_only_theirs(
    runner, client, auth, other_auth, user, database
):
    """Receipts, events, tokens and do-not-track entries go with the user; others' stay."""
    mine = mint(client, auth, recipients=["bob@example.de"])
    open_it(client, mine)
    theirs = mint(client, other_auth, recipients=["bob@example.de"])
    open_it(client, theirs)
    grace = User.get(User.email == "grace@example.com")
    donottrack.add(user, ["example.de"])
    donottrack.add(grace, ["zoe@example.net"])

    result = runner.invoke(args=["user", "delete", "ada@example.com", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted user ada@example.com and 1 receipts" in result.output
    assert [u.email for u in User.select()] == ["grace@example.com"]
    assert [p.public_id for p in Pixel.select()] == [theirs["id"]]
    assert [e.pixel_id for e in Event.select()] == [Pixel.get().id]
    assert [t.user_id for t in ApiToken.select()] == [grace.id]
    # Ada's list goes with her: it must not become a list for every user of the server.
    assert [(d.user_id, d.entry) for d in DoNotTrack.select()] == [(grace.id, "zoe@example.net")]
    assert client.get("/api/pixels", headers=auth).status_code == 401
    assert mint(client, other_auth, recipients=["bob@example.de"])


# The public notice


def text_of(response):
    """A page's HTML with entities decoded and white space collapsed."""
    return " ".join(html.unescape(response.get_data(as_text=True)).split())


def test_notice_at_privacy_and_at_the_front_page_when_signed_out(client, user):
    for path in ("/privacy", "/"):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "text/html"
        page = text_of(response)
        assert "Read receipts from receipts.example.com" in page
        assert "the city and country the network is registered in" in page
        assert "the name of the mail program" in page and "the recipients' addresses" in page
        assert "<strong>90 days</strong>" in page
        assert "has not published a contact address" in page
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
    sign_in(client)
    assert "Read receipts from" not in client.get("/").get_data(as_text=True)
    assert client.get("/privacy").status_code == 200


@pytest.mark.parametrize(
    ("overrides", "present", "absent"),
    [
        ({"RETENTION_DAYS": 0}, "kept until the sender deletes the receipt", "days</strong>"),
        ({"RETENTION_DAYS": 30}, "<strong>30 days</strong>", "90 days"),
        ({"COLLECT_LOCATION": "none"}, "No location is looked up.", "city"),
        ({"COLLECT_LOCATION": "country"}, "the country the network is registered in", "city"),
        ({"COLLECT_CLIENT": "off"}, "The mail program is not recorded.", "the name of the mail"),
        (
            {"STORE_RECIPIENTS": "domain"},
            "subject and only the domains of the recipients' addresses",
            "subject and the recipients' addresses",
        ),
        ({"STORE_RECIPIENTS": "none"}, "a receipt also holds the message's subject.", "domains"),
        (
            {"OPERATOR_CONTACT": "privacy@example.com"},
            '<a href="mailto:privacy@example.com">privacy@example.com</a>',
            "has not published",
        ),
        (
            {"OPERATOR_CONTACT": "https://example.com/erasure"},
            '<a href="https://example.com/erasure">https://example.com/erasure</a>',
            "has not published",
        ),
    ],
)
def test_notice_follows_the_settings(configured, overrides, present, absent):
    _, http, _ = configured(**overrides)
    page = text_of(http.get("/privacy"))
    assert present in page and absent not in page


def test_a_pixel_never_sets_a_cookie(client, auth, user):
    pixel = mint(client, auth)
    assert sign_in(client).status_code == 302  # the client now sends the login cookie
    response = open_it(client, pixel)
    assert response.headers["X-Openreceipt"].startswith("recorded")
    assert "Set-Cookie" not in response.headers
    forged = client.get(pixel_path(pixel["url"]).replace(".gif", "x.gif"))
    assert forged.headers["X-Openreceipt"] == "not recorded: invalid signature"
    assert "Set-Cookie" not in forged.headers


def test_export_csv_leaves_ids_alone(runner, client, auth, database):
    """Only free text is defused: a receipt id that starts with '-' is exported as it is."""
    pixel = mint(client, auth, subject="-5% discount")
    Pixel.update(public_id="-" + pixel["id"][1:]).where(Pixel.public_id == pixel["id"]).execute()
    result = runner.invoke(args=["export", "ada@example.com", "--format", "csv"])
    [record] = csv.DictReader(io.StringIO(result.stdout))
    assert record["pixel_id"] == "-" + pixel["id"][1:]
    assert record["pixel_subject"] == "'-5% discount"
