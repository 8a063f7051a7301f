"""Signing in and out, and the one-time first-run setup link."""

import datetime
import logging
import re

import pytest
from itsdangerous import Signer

import web.accounts
from web import create_app
from web.accounts import (
    AccountError,
    authenticate,
    create_user,
    hash_token,
    new_token,
    rename_token,
    revoke_token,
    set_password,
    token_for,
    token_name,
)
from web.storage.models import ApiToken, Setting, User
from web.ui.signin import SETUP_SALT
from web.vocabulary import Scope

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


# What the first-run link depends on, and what it leaves alone.


def test_a_signed_link_for_another_nonce_is_refused(settings, caplog):
    app, path = first_run_link(settings, caplog)
    signer = Signer(app.config["SECRET_KEY"], salt=SETUP_SALT)
    with app.app_context():
        Setting.create(name="another.setting", value="kept")
    # Signed with the server's own key, but for an earlier nonce or another setting's value.
    for value in ("an earlier nonce", "kept"):
        forged = "/setup/" + signer.sign(value).decode()
        assert app.test_client().get(forged).status_code == 404
    assert app.test_client().get(path).status_code == 200


def test_the_first_run_link_leaves_other_settings_alone(settings, caplog):
    app, _ = first_run_link(settings, caplog)
    with app.app_context():
        Setting.delete().execute()
        Setting.create(name="another.setting", value="kept")
    caplog.clear()
    # Another setting stored before the nonce: the link is still the nonce's.
    app, path = first_run_link(settings, caplog)
    nonce = path.removeprefix("/setup/").rsplit(".", 1)[0]
    assert len(nonce) == 32  # 24 random bytes, URL-safe base64
    assert app.test_client().get(path).status_code == 200
    with app.app_context():
        create_user("owner@example.com", "a long password")
    create_app(settings)  # a user exists now: the nonce goes, nothing else
    with app.app_context():
        assert {(s.name, s.value) for s in Setting.select()} == {("another.setting", "kept")}
    assert app.test_client().get(path).status_code == 404


def test_setup_form_says_what_to_change(settings, caplog):
    app, path = first_run_link(settings, caplog)
    client = app.test_client()
    form = client.get(path)
    data = {"email": "owner@example.com", "password": "nine char", "confirm": "nine char"}
    response = client.post(path, data={**data, "csrf_token": csrf_token(form)})
    assert "The password needs at least 10 characters." in response.get_data(as_text=True)
    data = {**data, "email": "", "password": "ten chars!", "confirm": "ten chars!"}
    response = client.post(path, data={**data, "csrf_token": csrf_token(form)})
    assert "&#39;&#39; is not an email address." in response.get_data(as_text=True)


# Sign-in form: the address typed is shown again after a mistake.


def test_a_wrong_sign_in_shows_the_address_typed(client, user):
    page = sign_in(client, email="Ada@Example.com", password="wrong password!")
    assert 'value="Ada@Example.com"' in page.get_data(as_text=True)
    long = "a" * 400
    page = sign_in(client, email=long, password="wrong password!").get_data(as_text=True)
    assert f'value="{"a" * 320}"' in page  # no more than an address can hold


def test_a_sign_in_without_an_email_field_is_a_wrong_sign_in(client, user):
    token = csrf_token(client.get("/login"))
    response = client.post("/login", data={"password": "x", "csrf_token": token})
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and "Wrong email or password" in text
    assert 'name="email" type="email" autocomplete="username" required autofocus>' in text


# Accounts: addresses, passwords.

DOMAIN = "@example.com"


@pytest.mark.parametrize(
    "email",
    [
        "@example.com",
        "@ada@example.com",
        "ada@localhost",
        "ada.example.com",
        "ada smith@example.com",
        "ada@exam ple.com",
        "ada\x00@example.com",
        "ada\u200b@example.com",
        "a" * (321 - len(DOMAIN)) + DOMAIN,
        "",
        None,
    ],
)
def test_what_is_not_an_email_address(app, email):
    with pytest.raises(AccountError) as refused:
        create_user(email, "a long password")
    assert str(refused.value) == f"{(email or '').strip().lower()!r} is not an email address"
    with app.app_context():
        assert User.select().count() == 0


def test_an_address_of_320_characters_is_the_longest(app):
    longest = "a" * (320 - len(DOMAIN)) + DOMAIN
    with app.app_context():
        assert create_user(f"  {longest.upper()} ", "a long password").email == longest
        assert authenticate(longest, "a long password").email == longest


def test_a_password_of_the_minimum_length_will_do(app, user):
    with app.app_context():
        for short in ("", None, "nine char"):
            with pytest.raises(AccountError) as refused:
                create_user("grace@example.com", short)
            assert str(refused.value) == "the password needs at least 10 characters"
            with pytest.raises(AccountError) as refused:
                set_password(user, short)
            assert str(refused.value) == "the password needs at least 10 characters"
        grace = create_user("grace@example.com", "ten chars!")
        assert authenticate("grace@example.com", "ten chars!") == grace
        set_password(user, "0123456789")
        assert authenticate("ada@example.com", "0123456789") == user


def test_an_address_is_one_account(app, user):
    with app.app_context(), pytest.raises(AccountError) as refused:
        create_user(" ADA@example.com", "another long password")
    assert str(refused.value) == "a user ada@example.com already exists"


def test_a_new_password_changes_only_that_users(app, user):
    with app.app_context():
        grace = create_user("grace@example.com", "graces own password")
        set_password(user, "adas new password")
        assert authenticate("ada@example.com", "adas new password") == user
        assert authenticate("ada@example.com", "correct horse battery") is None
        assert authenticate("grace@example.com", "graces own password") == grace
        assert authenticate("grace@example.com", "adas new password") is None


# API tokens: names, hashes, renaming, revoking, use.


def test_a_lone_surrogate_in_a_token_hashes_without_raising(app, user):
    digest = hash_token("or_\ud800")
    assert re.fullmatch("[0-9a-f]{64}", digest) and digest != hash_token("or_\ud801")
    with app.app_context():
        assert token_for("or_\ud800") is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("  Work \t laptop\n", "Work laptop"),
        ("Home\x00 \x1b[31mFirefox", "Home [31mFirefox"),
        ("x" * 150, "x" * 100),
        ("\x00\x07", ""),
        (None, ""),
    ],
)
def test_a_token_name_is_one_clean_line(given, kept):
    assert token_name(given) == kept


def test_a_new_token(app, user):
    with app.app_context():
        row, token = new_token(user)
        assert row.name == "API token" and row.scope == Scope.FULL
        # 32 random bytes after the prefix, stored only as their hash
        assert re.fullmatch(r"or_[A-Za-z0-9_-]{43}", token)
        assert row.token_hash == hash_token(token) != token
        for blank in (None, "", " \x00 "):
            assert new_token(user, blank)[0].name == "API token"
        assert new_token(user, " Work  laptop ")[0].name == "Work laptop"
        assert new_token(user, "Gmail", Scope.BOOKMARKLET)[0].scope == Scope.BOOKMARKLET
        with pytest.raises(ValueError) as refused:
            new_token(user, scope="admin")
        assert str(refused.value) == "unknown token scope 'admin'"


def names(user):
    return sorted(t.name for t in ApiToken.select().where(ApiToken.user == user))


def test_renaming_a_token_touches_only_that_one(app, user):
    with app.app_context():
        grace = create_user("grace@example.com", "another long password")
        laptop, _ = new_token(user, "laptop")
        new_token(user, "phone")
        theirs, _ = new_token(grace, "graces")
        assert rename_token(laptop.id, user, "  Work \n laptop ") is True
        assert names(user) == ["Work laptop", "phone"]
        assert rename_token(theirs.id, user, "mine now") is False
        assert rename_token(laptop.id + theirs.id + 1, user, "nothing") is False
        assert names(grace) == ["graces"]
        for blank in ("", " \x00 ", None):
            with pytest.raises(AccountError) as refused:
                rename_token(laptop.id, user, blank)
            assert str(refused.value) == "a name cannot be empty"
        assert names(user) == ["Work laptop", "phone"]


def test_revoking_a_token_ends_only_that_one(app, user):
    with app.app_context():
        grace = create_user("grace@example.com", "another long password")
        laptop, laptop_key = new_token(user, "laptop")
        _, phone_key = new_token(user, "phone")
        theirs, their_key = new_token(grace, "graces")
        assert revoke_token(theirs.id, user) is False  # not ada's to revoke
        assert revoke_token(laptop.id, user) is True
        assert revoke_token(laptop.id, user) is False  # revoked already
        assert token_for(laptop_key) is None
        assert token_for(phone_key).name == "phone" and token_for(their_key).name == "graces"
        assert revoke_token(theirs.id) is True  # the operator may revoke anyone's
        assert token_for(their_key) is None and token_for(phone_key).name == "phone"
        assert revoke_token(laptop.id + theirs.id + 1) is False


def test_a_tokens_use_is_noted_once_a_minute(app, user, monkeypatch):
    start = datetime.datetime(2030, 1, 1, 12, 0, 0, 123456)
    now = [start]
    monkeypatch.setattr(web.accounts, "utcnow", lambda: now[0])
    with app.app_context():
        row, token = new_token(user, "laptop")
        other, _ = new_token(user, "phone")

        def last_used(row):
            return ApiToken.get_by_id(row.id).last_used_at

        assert token_for(token).user == user
        assert last_used(row) == start and last_used(other) is None
        now[0] = start + datetime.timedelta(seconds=60)
        token_for(token)
        assert last_used(row) == start  # within the minute: not written again
        now[0] = start + datetime.timedelta(seconds=60, microseconds=1)
        token_for(token)
        assert last_used(row) == now[0] and last_used(other) is None
