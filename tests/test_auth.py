"""Signing in and out, and the one-time first-run setup link."""

import logging
import re

import pytest

from web import create_app
from web.storage.models import User

from .helpers import csrf_token, sign_in


def test_pages_need_a_sign_in(client):
    response = client.get("/settings")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_sign_in_and_out(client, user):
    response = sign_in(client)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "ada@example.com" in page.get_data(as_text=True)
    out = client.post("/logout", data={"csrf_token": csrf_token(page)})
    assert out.status_code == 302
    assert client.get("/settings").status_code == 302


def test_wrong_password_is_refused(client, user):
    response = sign_in(client, password="wrong password!")
    assert response.status_code == 200
    assert "Wrong email or password" in response.get_data(as_text=True)
    assert client.get("/settings").status_code == 302


def test_sign_in_without_csrf_token_is_rejected(client, user):
    response = client.post(
        "/login", data={"email": "ada@example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 400
    assert client.get("/settings").status_code == 302


def test_next_only_goes_to_local_paths(client, user):
    assert sign_in(client, next_path="/api/pixels").headers["Location"] == "/api/pixels"
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/logout"))})
    assert sign_in(client, next_path="//evil.example/x").headers["Location"] == "/"


def test_status_page_lists_own_pixels(client, user, auth, other_auth):
    client.post("/api/pixels", json={"subject": "Invoice #42"}, headers=auth)
    client.post("/api/pixels", json={"subject": "Someone else's"}, headers=other_auth)
    sign_in(client)
    page = client.get("/").get_data(as_text=True)
    assert "Invoice #42" in page and "waiting" in page
    assert "Someone else" not in page


def first_run_link(settings, caplog):
    with caplog.at_level(logging.WARNING):
        app = create_app(settings)
    [line] = [r.getMessage() for r in caplog.records if "No user yet" in r.getMessage()]
    path = re.search(r"https://receipts\.example\.com(/setup/\S+)", line).group(1)
    return app, path


def test_first_run_link_creates_the_first_account_once(settings, caplog):
    app, path = first_run_link(settings, caplog)
    client = app.test_client()
    form = client.get(path)
    assert form.status_code == 200
    data = {
        "email": "owner@example.com",
        "password": "a long password",
        "confirm": "a long password",
    }
    done = client.post(path, data={**data, "csrf_token": csrf_token(form)})
    assert done.status_code == 302
    assert "owner@example.com" in client.get("/").get_data(as_text=True)
    with app.app_context():
        assert [u.email for u in User.select()] == ["owner@example.com"]
    # The link is dead now, for this client and any other.
    assert app.test_client().get(path).status_code == 404
    stranger = app.test_client()
    token = csrf_token(stranger.get("/login"))
    again = stranger.post(path, data={**data, "email": "second@example.com", "csrf_token": token})
    assert again.status_code == 404
    with app.app_context():
        assert User.select().count() == 1


def test_every_start_prints_the_same_link_until_used(settings, caplog):
    _, first = first_run_link(settings, caplog)
    caplog.clear()
    _, second = first_run_link(settings, caplog)
    assert first == second


def test_no_link_once_a_user_exists(settings, caplog, user):
    with caplog.at_level(logging.WARNING):
        create_app(settings)
    assert not any("No user yet" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("email", "password", "confirm", "message"),
    [
        ("owner@example.com", "short", "short", "at least 10 characters"),
        ("owner@example.com", "a long password", "another password", "two passwords differ"),
        ("not-an-email", "a long password", "a long password", "is not an email address"),
    ],
    ids=["short", "mismatch", "email"],
)
def test_setup_form_explains_mistakes_and_keeps_the_link(
    settings, caplog, email, password, confirm, message
):
    app, path = first_run_link(settings, caplog)
    client = app.test_client()
    form = client.get(path)
    response = client.post(
        path,
        data={
            "email": email,
            "password": password,
            "confirm": confirm,
            "csrf_token": csrf_token(form),
        },
    )
    assert response.status_code == 200 and message in response.get_data(as_text=True)
    assert client.get(path).status_code == 200


def test_forged_setup_link_is_refused(settings, caplog):
    app, path = first_run_link(settings, caplog)
    assert app.test_client().get(path[:-3] + "abc").status_code == 404
    assert app.test_client().get("/setup/anything").status_code == 404
