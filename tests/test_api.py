"""The JSON API on SQLite and PostgreSQL: auth, ownership, CORS, validation, life cycle."""

import logging

import pytest

from web.accounts import new_token
from web.storage.models import Event, Pixel
from web.vocabulary import Scope

from .helpers import mint, pixel_path

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)


def test_mint_answers_signed_url_and_html(client, auth, database):
    body = mint(
        client, auth, subject="Invoice #42", recipients=["Bob <Bob@Example.com>"], label="inv-42"
    )
    assert body["url"].startswith("https://receipts.example.com/p/")
    assert body["url"].endswith(".gif")
    assert body["html"] == f'<img src="{body["url"]}" width="1" height="1" alt="">'
    assert "display" not in body["html"]
    pixel = Pixel.get(Pixel.public_id == body["id"])
    assert (pixel.subject, pixel.label, pixel.recipients, pixel.state) == (
        "Invoice #42",
        "inv-42",
        ["bob@example.com"],
        "waiting",
    )


def test_public_ids_are_random_not_sequential(client, auth):
    ids = [mint(client, auth)["id"] for _ in range(5)]
    assert len(set(ids)) == 5
    assert all(len(public_id) == 16 and not public_id.isdigit() for public_id in ids)


def test_mint_without_public_url_uses_the_request_host(settings, auth, client, app):
    app.config["PUBLIC_URL"] = None
    body = mint(client, auth)
    assert body["url"].startswith("http://localhost/p/")


def test_empty_body_mints_a_bare_pixel(client, auth):
    response = client.post("/api/pixels", headers=auth)
    assert response.status_code == 201
    assert (
        client.get(f"/api/pixels/{response.get_json()['id']}", headers=auth).get_json()[
            "recipients"
        ]
        == []
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer or_nope"},
    ],
    ids=["none", "empty", "basic", "unknown"],
)
def test_api_requires_a_live_token(client, headers):
    response = client.get("/api/pixels", headers=headers)
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]


def test_revoked_token_is_refused(client, app, auth, token):
    from web.accounts import hash_token, revoke_token
    from web.storage.models import ApiToken

    with app.app_context():
        row = ApiToken.get(ApiToken.token_hash == hash_token(token))
        assert revoke_token(row.id)
    response = client.get("/api/pixels", headers=auth)
    assert response.status_code == 401
    assert "revoked" in response.get_json()["error"]


def test_token_use_is_noted(client, app, auth, token):
    from web.accounts import hash_token
    from web.storage.models import ApiToken

    client.get("/api/pixels", headers=auth)
    with app.app_context():
        assert ApiToken.get(ApiToken.token_hash == hash_token(token)).last_used_at is not None


def test_users_see_only_their_own_pixels(client, auth, other_auth):
    mine = mint(client, auth, subject="mine")["id"]
    assert client.get(f"/api/pixels/{mine}", headers=other_auth).status_code == 404
    assert client.delete(f"/api/pixels/{mine}", headers=other_auth).status_code == 404
    assert client.get("/api/pixels", headers=other_auth).get_json()["total"] == 0
    assert client.get(f"/api/pixels/{mine}", headers=auth).status_code == 200


def test_list_is_newest_first_and_paginated(client, auth):
    ids = [mint(client, auth, subject=f"message {n}")["id"] for n in range(5)]
    first = client.get("/api/pixels?per_page=2", headers=auth).get_json()
    second = client.get("/api/pixels?per_page=2&page=2", headers=auth).get_json()
    last = client.get("/api/pixels?per_page=2&page=3", headers=auth).get_json()
    assert first["total"] == 5
    listed = [p["id"] for p in first["pixels"] + second["pixels"] + last["pixels"]]
    assert listed == ids[::-1]


def test_list_reads_the_links_of_a_page_at_once(client, auth, caplog):
    """Each receipt in the list carries its own tracked links, and the list's queries do not
    grow with the receipts on the page (the links of all of them are one query)."""

    def queries_listing():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            body = client.get("/api/pixels", headers=auth).get_json()
        return body, len([r for r in caplog.records if r.name == "peewee"])

    mint(client, auth, subject="first", links=["https://example.org/1"])
    _, with_one = queries_listing()
    for n in range(2, 6):
        mint(
            client, auth, subject=f"#{n}", links=[f"https://example.org/{n}", "https://a.example/"]
        )
    body, with_five = queries_listing()
    assert with_five == with_one
    listed = {p["subject"]: [link["destination"] for link in p["links"]] for p in body["pixels"]}
    assert listed["first"] == ["https://example.org/1"]
    assert listed["#3"] == ["https://example.org/3", "https://a.example/"]


@pytest.mark.parametrize("query", ["page=0", "page=x", "per_page=101", "per_page=-1", "page=²"])
def test_bad_pagination_is_a_json_400(client, auth, query):
    response = client.get(f"/api/pixels?{query}", headers=auth)
    assert response.status_code == 400
    assert "must be a whole number" in response.get_json()["error"]


def test_detail_shows_state_counts_and_events(client, auth):
    body = mint(client, auth, subject="Contract")
    client.get(
        pixel_path(body["url"]),
        headers={"User-Agent": GMAIL_PROXY},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    detail = client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()
    assert detail["state"] == "opened"
    assert detail["counts"] == {
        "open": 1,
        "prefetch": 0,
        "preview": 0,
        "self": 0,
        "bot": 0,
        "unknown": 0,
        "click": 0,
    }
    [event] = detail["events"]
    assert {k: event[k] for k in ("kind", "source", "ip", "country", "city", "client")} == {
        "kind": "open",
        "source": "gmail-proxy",
        "ip": "81.2.69.0",
        "country": "GB",
        "city": "London",
        "client": "Gmail",
    }
    assert event["at"].endswith("Z") and event["reason"]


def test_delete_removes_pixel_and_events(client, auth, database):
    from web.storage.models import Event

    body = mint(client, auth)
    client.get(pixel_path(body["url"]), headers={"User-Agent": GMAIL_PROXY})
    assert client.delete(f"/api/pixels/{body['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/pixels/{body['id']}", headers=auth).status_code == 404
    assert Event.select().count() == 0
    # The pixel still answers a GIF, but records nothing any more.
    response = client.get(pixel_path(body["url"]), headers={"User-Agent": GMAIL_PROXY})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert Event.select().count() == 0


def test_cors_preflight_from_any_origin(client):
    response = client.options(
        "/api/pixels",
        headers={
            "Origin": "https://mail.google.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://mail.google.com")
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_cross_origin_requests_carry_cors_headers_and_no_cookie(client, auth):
    response = client.post(
        "/api/pixels", json={}, headers={**auth, "Origin": "https://mail.google.com"}
    )
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://mail.google.com")
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"subject": 42}', "'subject' must be a string"),
        (b'{"subject": "' + b"x" * 999 + b'"}', "'subject' is longer than 998"),
        (b'{"label": "' + b"x" * 201 + b'"}', "'label' is longer than 200"),
        (b'{"recipients": "bob@example.com"}', "must be a list"),
        (b'{"recipients": [1]}', "must be a list"),
        (b'{"recipients": ["not an address"]}', "not an email address"),
        (b'{"recipients": ["a@b.c"' + b', "a@b.c"' * 100 + b"]}", "more than 100"),
        (b'{"subject": "nul \\u0000 byte"}', "NUL character"),
        (b'{"subject": "lone \\ud800 surrogate"}', "not valid Unicode"),
        (b'{"recipients": ["\\ud800@example.com"]}', "not valid Unicode"),
    ],
    ids=[
        "garbled",
        "array",
        "string",
        "subject-type",
        "subject-long",
        "label-long",
        "recipients-type",
        "recipients-items",
        "recipients-address",
        "recipients-many",
        "nul",
        "surrogate",
        "surrogate-address",
    ],
)
def test_bad_bodies_get_a_json_400(client, auth, database, body, message):
    response = client.post(
        "/api/pixels", data=body, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert Pixel.select().count() == 0


def test_oversized_body_is_a_json_413(client, auth):
    body = b'{"subject": "' + b"x" * 70_000 + b'"}'
    response = client.post(
        "/api/pixels", data=body, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "error" in response.get_json()


def test_unknown_api_paths_and_methods_answer_json(client, auth):
    missing = client.get("/api/nothing", headers=auth)
    assert missing.status_code == 404 and "error" in missing.get_json()
    wrong = client.put("/api/pixels", headers=auth)
    assert wrong.status_code == 405 and "error" in wrong.get_json()


def test_unicode_subject_and_recipients_round_trip(client, auth):
    body = mint(
        client, auth, subject="Rechnung Nr. 42 – Müller 🧾", recipients=["jörg@bücher.example"]
    )
    detail = client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()
    assert detail["subject"] == "Rechnung Nr. 42 – Müller 🧾"
    assert detail["recipients"] == ["jörg@bücher.example"]


# Scopes: a bookmarklet's key can only add receipts

ONLY_ADDS = "a bookmarklet's key can only add receipts"


@pytest.fixture
def bookmarklet_auth(app, user):
    with app.app_context():
        return {"Authorization": f"Bearer {new_token(user, 'laptop', Scope.BOOKMARKLET)[1]}"}


def test_a_bookmarklets_key_mints_marks_sent_and_reports_self_views(
    client, bookmarklet_auth, database
):
    body = mint(client, bookmarklet_auth, subject="Invoice", recipients=["Bob <bob@example.com>"])
    assert body["url"].startswith("https://receipts.example.com/p/")
    pixel = Pixel.get(Pixel.public_id == body["id"])
    assert (pixel.made_with, pixel.recipients) == ("bookmarklet", ["bob@example.com"])
    sent = client.post(
        f"/api/pixels/{body['id']}/sent",
        json={"subject": "Invoice (final)", "recipients": ["bob@example.com"]},
        headers=bookmarklet_auth,
    )
    assert sent.status_code == 200
    # Nothing about the receipt but that it was sent: no counts, recipients or events.
    answer = sent.get_json()
    assert set(answer) == {"id", "sent_at"} and answer["id"] == body["id"]
    assert answer["sent_at"].endswith("Z")
    assert Pixel.get_by_id(pixel.id).subject == "Invoice (final)"
    beacon = client.post(f"/api/pixels/{body['id']}/self-view", headers=bookmarklet_auth)
    assert beacon.status_code == 200 and beacon.get_json()["id"] == body["id"]


def test_a_bookmarklets_key_can_do_nothing_else(client, auth, bookmarklet_auth, database):
    body = mint(client, auth, subject="Contract")
    client.get(pixel_path(body["url"]), headers={"User-Agent": GMAIL_PROXY})
    event = Event.get()
    assert event.kind == "open"
    requests = [
        ("GET", "/api/pixels", None),
        ("GET", f"/api/pixels/{body['id']}", None),
        ("DELETE", f"/api/pixels/{body['id']}", None),
        ("DELETE", "/api/pixels/no-such-pixel", None),
        ("POST", f"/api/events/{event.id}/kind", {"kind": "self"}),
    ]
    for method, path, json in requests:
        response = client.open(path, method=method, json=json, headers=bookmarklet_auth)
        assert response.status_code == 403, (method, path)
        assert ONLY_ADDS in response.get_json()["error"], (method, path)
    # Nothing was deleted or changed.
    pixel = Pixel.get()
    assert (pixel.public_id, pixel.open_count, pixel.self_count) == (body["id"], 1, 0)
    assert [(e.id, e.kind) for e in Event.select()] == [(event.id, "open")]


def test_a_full_token_can_do_everything(client, auth, database):
    body = mint(client, auth, subject="Contract")
    assert Pixel.get().made_with == "api"
    client.get(pixel_path(body["url"]), headers={"User-Agent": GMAIL_PROXY})
    event = Event.get()
    sent = client.post(f"/api/pixels/{body['id']}/sent", json={}, headers=auth)
    assert sent.status_code == 200
    assert sent.get_json()["counts"]["open"] == 1 and sent.get_json()["sent_at"]
    assert client.post(f"/api/pixels/{body['id']}/self-view", headers=auth).status_code == 200
    assert client.get("/api/pixels", headers=auth).get_json()["total"] == 1
    assert client.get(f"/api/pixels/{body['id']}", headers=auth).status_code == 200
    corrected = client.post(f"/api/events/{event.id}/kind", json={"kind": "self"}, headers=auth)
    assert corrected.status_code == 200 and corrected.get_json()["counts"]["self"] == 1
    assert client.delete(f"/api/pixels/{body['id']}", headers=auth).status_code == 204
    assert Pixel.select().count() == 0


def test_a_revoked_bookmarklet_key_is_unknown_not_forbidden(client, app, user):
    from web.accounts import revoke_token

    with app.app_context():
        row, secret = new_token(user, "old laptop", Scope.BOOKMARKLET)
        revoke_token(row.id)
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.post("/api/pixels", json={}, headers=headers).status_code == 401
    assert client.get("/api/pixels", headers=headers).status_code == 401
