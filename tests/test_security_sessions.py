"""Sessions that end when they should, sign-in redirects that stay on
this server, and sign-in throttling that neither tells which accounts exist nor locks the owner
out."""

import concurrent.futures
import datetime
import functools
import http.client
import re
import statistics
import time
from urllib.parse import quote, urlencode, urljoin, urlsplit

import pytest
from werkzeug.security import generate_password_hash

import web.accounts
import web.ui.signin
from web import create_app
from web.accounts import create_user
from web.config import ConfigError
from web.storage.models import LoginSession, LoginThrottle
from web.ui.signin import account_key

from .helpers import csrf_token, sign_in

COOKIE = "openreceipt_session"
PUBLIC_HOST = "receipts.example.com"  # the tests' PUBLIC_URL
ATTACKER = "203.0.113.9"
OWNER = "198.51.100.20"


def browser(app, address="127.0.0.1"):
    """A test client that comes from `address`, with cookies of its own."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def replay(app, cookie):
    """A new browser that sends a copied login cookie: what a thief of the cookie can do."""
    thief = app.test_client()
    thief.set_cookie(COOKIE, cookie)
    return thief


def signed_in(client):
    return client.get("/settings").status_code == 200


def login_cookie(client):
    return client.get_cookie(COOKIE).value


# Item 2: sessions can be ended.


def test_a_cookie_replayed_after_sign_out_is_refused(app, client, user):
    sign_in(client)
    cookie = login_cookie(client)
    assert signed_in(replay(app, cookie))
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/logout"))})
    assert not signed_in(client)
    assert not signed_in(replay(app, cookie))


def test_signing_out_leaves_other_browsers_signed_in(app, user):
    laptop, phone = browser(app), browser(app)
    sign_in(laptop)
    sign_in(phone)
    laptop.post("/logout", data={"csrf_token": csrf_token(laptop.get("/logout"))})
    assert not signed_in(laptop) and signed_in(phone)


def change_password(client, current, new):
    page = client.get("/settings")
    return client.post(
        "/settings/password",
        data={"current": current, "password": new, "confirm": new, "csrf_token": csrf_token(page)},
        follow_redirects=True,
    )


def test_a_password_change_signs_out_every_other_browser(app, user):
    laptop, phone = browser(app), browser(app)
    sign_in(laptop)
    sign_in(phone)
    stolen = login_cookie(laptop)
    changed = change_password(laptop, "correct horse battery", "a new long password")
    text = changed.get_data(as_text=True)
    assert "Password changed" in text and "signed out" in text
    assert signed_in(laptop)  # the browser that made the change stays signed in
    assert not signed_in(phone)
    assert not signed_in(replay(app, stolen))  # nor the changer's own cookie from before


def test_sign_out_everywhere(app, user):
    laptop, phone = browser(app), browser(app)
    sign_in(laptop)
    sign_in(phone)
    page = laptop.get("/settings")
    assert "Sign out everywhere" in page.get_data(as_text=True)
    done = laptop.post(
        "/logout/everywhere", data={"csrf_token": csrf_token(page)}, follow_redirects=True
    )
    assert done.status_code == 200 and "signed out everywhere" in done.get_data(as_text=True)
    assert not signed_in(laptop) and not signed_in(phone)
    assert sign_in(phone).status_code == 302  # and signing in again works


def test_a_session_ends_after_the_configured_days(settings, user):
    app = create_app({**settings, "SESSION_DAYS": 2})
    client = app.test_client()
    response = sign_in(client)
    # The browser keeps the cookie for the session's lifetime, and no longer.
    expires = re.search(r"Expires=([^;]+)", response.headers["Set-Cookie"]).group(1)
    left = time.mktime(time.strptime(expires, "%a, %d %b %Y %H:%M:%S GMT")) - time.mktime(
        time.gmtime()
    )
    assert 2 * 86400 - 60 < left <= 2 * 86400 + 60
    assert signed_in(client)
    with app.app_context():
        from web.storage.engine import utcnow
        from web.storage.models import LoginSession

        LoginSession.update(expires_at=utcnow()).execute()
    assert not signed_in(client)


def test_session_days_is_checked(settings, monkeypatch):
    app = create_app(settings)
    assert app.config["SESSION_DAYS"] == 14
    assert app.config["PERMANENT_SESSION_LIFETIME"].days == 14
    for wrong in ("fortnight", "0", "-3"):
        monkeypatch.setenv("OPENRECEIPT_SESSION_DAYS", wrong)
        with pytest.raises(ConfigError) as refused:
            create_app(settings)
        assert "OPENRECEIPT_SESSION_DAYS" in refused.value.message
        assert "\n" not in refused.value.message


def test_a_cookie_signed_with_a_retired_key_is_refused(settings, app, client, user):
    sign_in(client)
    cookie = login_cookie(client)
    retired = app.config["SECRET_KEY"]
    rotated = create_app(
        {**settings, "SECRET_KEY": "the new secret key", "SECRET_KEY_FALLBACKS": [retired]}
    )
    assert signed_in(replay(app, cookie))  # still good where its key is current
    assert not signed_in(replay(rotated, cookie))
    assert sign_in(rotated.test_client()).status_code == 302  # a new sign-in works


# Item 5: after signing in, only paths on this server.

HOSTILE_NEXT = [
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\nSet-Cookie: x=1",
    "/\\evil.example",
    "\\\\evil.example",
    "//evil.example",
    "///evil.example",
    " //evil.example",
    "https://evil.example/",
    "https:evil.example",
    "javascript:alert(1)",
    "evil.example",
    "/\x00",
    "/\x7f/evil.example",
    "\u2028//evil.example",
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_sign_in_never_redirects_off_site(client, user, target):
    response = sign_in(client, next_path=quote(target, safe=""))
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location == "/"
    assert signed_in(client)


def test_same_site_paths_are_kept(client, user):
    target = "/m/Mu24EoN6ZmvarbCb?page=2#events"
    response = sign_in(client, next_path=quote(target, safe=""))
    assert response.headers["Location"] == target


@pytest.mark.parametrize(
    "query",
    [
        "%2F%252F%252Fevil.example",
        "%2Fa%2F..%2F..%2F%2Fevil.example",
        "%2F%C3%BC",
        "%2F%ED%A0%80",
        "%FF%2F%2Fevil.example",
        "%2F%E2%80%A8%2F%2Fevil.example",
        "%2F%5C%5Cevil.example",
    ],
)
def test_any_next_lands_on_this_server(client, user, query):
    response = sign_in(client, next_path=query)
    assert response.status_code == 302
    where = urlsplit(urljoin(f"https://{PUBLIC_HOST}/login", response.headers["Location"]))
    assert where.hostname == PUBLIC_HOST and "\\" not in response.headers["Location"]


# Item 6: the same cost for every account, throttling per account and network, unlocking.


def timed_failure(client, email):
    """Seconds one wrong-password sign-in takes, from a client that has its form already."""
    token = csrf_token(client.get("/login"))
    started = time.perf_counter()
    response = client.post(
        "/login", data={"email": email, "password": "not the password", "csrf_token": token}
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    return elapsed


def test_unknown_accounts_take_as_long_as_known_ones(app, monkeypatch):
    # Real password hashes, as a server makes them (the suite's are cheapened).
    monkeypatch.setattr(web.accounts, "generate_password_hash", generate_password_hash)
    with app.app_context():
        create_user("grace@example.com", "a real long password")
    known, unknown = [], []
    for attempt in range(10):
        # A network each, so that no limit cuts an attempt short.
        known.append(timed_failure(browser(app, f"198.51.{attempt}.7"), "grace@example.com"))
        unknown.append(timed_failure(browser(app, f"203.0.{attempt}.7"), "nobody@example.com"))
    assert statistics.median(unknown) >= 0.5 * statistics.median(known), (known, unknown)


def fail_sign_ins(client, count, email="ada@example.com"):
    for _ in range(count):
        response = sign_in(client, email=email, password="wrong password!")
        assert response.status_code == 200
        assert "Wrong email or password" in response.get_data(as_text=True)


def test_an_attackers_network_cannot_lock_the_owner_out(app, user):
    attacker = browser(app, ATTACKER)
    fail_sign_ins(attacker, 10)
    limited = sign_in(attacker)  # even the right password waits now, from there
    assert limited.status_code == 429
    assert "Too many failed sign-ins" in limited.get_data(as_text=True)
    assert sign_in(browser(app, OWNER)).status_code == 302
    assert sign_in(attacker).status_code == 429  # the owner's success lifts nothing for it


def test_another_account_from_the_same_network_is_not_throttled(app, user):
    with app.app_context():
        create_user("grace@example.com", "another long password")
    attacker = browser(app, ATTACKER)
    fail_sign_ins(attacker, 10)
    colleague = browser(app, ATTACKER)
    assert (
        sign_in(colleague, email="grace@example.com", password="another long password").status_code
        == 302
    )


def test_unlock_lets_the_account_in_again(app, runner, user):
    attacker = browser(app, ATTACKER)
    fail_sign_ins(attacker, 10)
    assert sign_in(attacker).status_code == 429
    result = runner.invoke(args=["user", "unlock", "Ada@Example.com"])
    assert result.exit_code == 0, result.output
    assert "ada@example.com" in result.output
    assert sign_in(attacker).status_code == 302
    again = runner.invoke(args=["user", "unlock", "ada@example.com"])
    assert again.exit_code == 0 and "was not" in again.output
    unknown = runner.invoke(args=["user", "unlock", "nobody@example.com"])
    assert unknown.exit_code == 1 and "no user nobody@example.com" in unknown.output


def post_login(server, email, password):
    """One sign-in to a real server, form and cookie included: its status."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", "/login")
        response = connection.getresponse()
        page = response.read().decode()
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        body = urlencode({"email": email, "password": password, "csrf_token": token})
        connection.request(
            "POST",
            "/login",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def test_parallel_attempts_never_evaluate_more_than_the_limit(request, gunicorn, backend):
    settings = {}
    if backend == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("postgresql_url")
    server = gunicorn(workers=4, **settings)
    server.openreceipt("user", "add", "ada@example.com", "--password-stdin", input="a long pw 1\n")
    attempt = functools.partial(post_login, server, "ada@example.com")
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(attempt, ["wrong password!"] * 40))
    # 200: the password was checked (and was wrong); 429: refused without checking it.
    assert sorted(set(statuses)) == [200, 429]
    assert statuses.count(200) == 10, statuses
    assert attempt("a long pw 1") == 429
    server.openreceipt("user", "unlock", "ada@example.com")
    assert attempt("a long pw 1") == 302


# Item 7 (part): NUL bytes are a failed sign-in, never a 500.


def test_nul_in_the_email_is_a_failed_sign_in(client, user):
    for _ in range(10):
        response = sign_in(client, email="ada@example.com\x00", password="correct horse battery")
        assert response.status_code == 200
        assert "Wrong email or password" in response.get_data(as_text=True)
    assert sign_in(client, email="ada@example.com\x00").status_code == 429
    assert sign_in(client).status_code == 302


def test_nul_in_the_password_is_a_wrong_password(client, user):
    response = sign_in(client, password="correct horse\x00battery")
    assert response.status_code == 200
    assert "Wrong email or password" in response.get_data(as_text=True)
    assert sign_in(client, email="nobody\x00@example.com", password="\x00").status_code == 200


# Boundaries in time, on a clock of the test's own (signin.utcnow): a session and a throttle
# window end exactly when their time is up, and what is over is not kept.


class Clock:
    def __init__(self):
        self.now = datetime.datetime(2030, 1, 1, 12, 0, 0, 123456)

    def __call__(self):
        return self.now

    def advance(self, delta):
        self.now += delta


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(web.ui.signin, "utcnow", clock)
    return clock


MICROSECOND = datetime.timedelta(microseconds=1)
WINDOW = datetime.timedelta(minutes=15)


def test_a_session_ends_exactly_when_its_lifetime_is_over(app, user, clock):
    client = browser(app)
    sign_in(client)
    with client.session_transaction() as cookie:
        assert len(cookie["session_id"]) == 43  # 32 random bytes, URL-safe base64
    clock.advance(app.permanent_session_lifetime - MICROSECOND)
    assert signed_in(client)
    clock.advance(MICROSECOND)
    assert not signed_in(client)


def test_a_session_over_is_not_kept(app, user, clock):
    sign_in(browser(app))
    clock.advance(app.permanent_session_lifetime)
    sign_in(browser(app))
    with app.app_context():
        [session] = LoginSession.select()
        assert session.expires_at == clock.now + app.permanent_session_lifetime


def test_a_session_id_that_is_not_text_is_no_session(app, user):
    client = browser(app)
    with client.session_transaction() as cookie:
        cookie["session_id"] = 12345  # only a holder of the secret key could send this
    assert client.get("/settings").status_code == 302


def test_signing_out_everywhere_leaves_other_users_signed_in(app, user):
    with app.app_context():
        create_user("grace@example.com", "another long password")
    ada, grace = browser(app), browser(app)
    sign_in(ada)
    sign_in(grace, email="grace@example.com", password="another long password")
    ada.post("/logout/everywhere", data={"csrf_token": csrf_token(ada.get("/settings"))})
    assert not signed_in(ada) and signed_in(grace)


def test_the_throttle_window_starts_again_after_exactly_a_quarter_hour(app, user, clock):
    attacker = browser(app, ATTACKER)
    fail_sign_ins(attacker, 10)
    clock.advance(WINDOW - MICROSECOND)
    assert sign_in(attacker).status_code == 429
    clock.advance(MICROSECOND)  # a quarter of an hour after the first attempt
    fail_sign_ins(attacker, 10)  # ten attempts again, no more
    assert sign_in(attacker).status_code == 429


def test_a_sign_in_clears_its_networks_count(app, user):
    owner = browser(app, OWNER)
    for _ in range(3):
        fail_sign_ins(owner, 9)
        assert sign_in(owner).status_code == 302
        owner.post("/logout", data={"csrf_token": csrf_token(owner.get("/logout"))})


def test_counts_whose_window_is_over_are_not_kept(app, user, clock):
    fail_sign_ins(browser(app, ATTACKER), 1)
    clock.advance(WINDOW)
    fail_sign_ins(browser(app, OWNER), 1)
    with app.app_context():
        [count] = LoginThrottle.select()
        assert count.window_start == clock.now and count.attempts == 1


def test_unlock_counts_the_networks_that_wait(app, runner, user, clock):
    with app.app_context():
        create_user("grace@example.com", "another long password")
    fail_sign_ins(browser(app, ATTACKER), 10)  # waits from the next attempt on
    another = browser(app, "203.0.114.9")
    fail_sign_ins(another, 10)
    assert sign_in(another).status_code == 429
    fail_sign_ins(browser(app, OWNER), 9)  # may still try
    fail_sign_ins(browser(app, OWNER), 3, email="grace@example.com")
    grace = runner.invoke(args=["user", "unlock", "grace@example.com"])
    assert "grace@example.com was not locked from any network" in grace.output
    ada = runner.invoke(args=["user", "unlock", "ada@example.com"])
    assert "unlocked ada@example.com: 2 networks may try again" in ada.output
    fail_sign_ins(browser(app, ATTACKER), 10)
    clock.advance(WINDOW - MICROSECOND)
    ada = runner.invoke(args=["user", "unlock", "ada@example.com"])
    assert "unlocked ada@example.com: 1 networks may try again" in ada.output
    fail_sign_ins(browser(app, ATTACKER), 10)
    clock.advance(WINDOW)  # its window is over: nothing to unlock
    ada = runner.invoke(args=["user", "unlock", "ada@example.com"])
    assert "ada@example.com was not locked from any network" in ada.output


def test_what_is_not_an_address_is_throttled_as_written(app, user):
    attacker = browser(app, ATTACKER)
    fail_sign_ins(attacker, 10, email="Straße")
    assert sign_in(attacker, email=" straße ").status_code == 429  # case and spaces aside
    fail_sign_ins(attacker, 1, email="strasse")
    fail_sign_ins(attacker, 1, email="grace")
    assert sign_in(attacker).status_code == 302


def test_account_keys(app):
    assert account_key(None) == account_key("") == account_key("   ") != account_key("xxxx")
    assert account_key(" Ada@Example.com") == account_key("ada@example.com")
    # Surrogates the form never sends, hashed all the same.
    assert re.fullmatch("[0-9a-f]{64}", account_key("\ud800@example.com"))
    assert account_key("\ud800") != account_key("\ud801")
