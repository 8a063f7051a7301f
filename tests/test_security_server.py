"""The server's own defences: slow clients, proxy headers, what unauthenticated
clients and one user can make the server keep, and what the pixel and the pages give away. The
server items run against real gunicorn; the rest through the test client on both databases."""

import dataclasses
import datetime
import http.client
import json
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlencode, urlsplit

import pytest
from peewee import SqliteDatabase

from web.config import public_binds
from web.pixel import spool
from web.serverlog import ERROR_LOG_LIMIT, redact
from web.storage.engine import utcnow
from web.storage.models import Event, Pixel

from .helpers import csrf_token, mint, pixel_path, sign_in, wait_for
from .test_spool import GMAIL_PROXY, spooled_fetch

EMAIL, PASSWORD = "ada@example.com", "correct horse battery"


def send(server, method, path, headers=None, body=None, timeout=10):
    """(status, headers, body) of one request on a connection of its own."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def api_token(server):
    server.openreceipt("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
    return {"Authorization": f"Bearer {server.openreceipt('token', 'new', EMAIL)}"}


def mint_through(server, auth, headers=None):
    status, _, body = send(
        server,
        "POST",
        "/api/pixels",
        {**auth, "Content-Type": "application/json", **(headers or {})},
        json.dumps({"subject": "Invoice #42"}),
    )
    assert status == 201, body
    return json.loads(body)


def login_cookie(headers):
    """The Set-Cookie line of the login cookie, attributes and all."""
    [line] = [
        value
        for value in headers.get_all("Set-Cookie") or []
        if value.startswith("openreceipt_session=")
    ]
    return line


def secure(cookie_line):
    return "secure" in [part.strip().lower() for part in cookie_line.split(";")[1:]]


# -- 4. Slow clients ----------------------------------------------------------------------------


@contextmanager
def trickling(server, count, interval=1.0):
    """`count` clients that each send a request one header line every `interval` seconds and
    never finish it, open for as long as the block lasts."""
    stop = threading.Event()
    parts = urlsplit(server.url)

    def trickle(number):
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
                sock.sendall(f"GET /p/slow-{number}.gif HTTP/1.1\r\nHost: x\r\n".encode())
                while not stop.wait(interval):
                    sock.sendall(b"X-Slow: still sending\r\n")
        except OSError:
            pass

    threads = [threading.Thread(target=trickle, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


@pytest.mark.slow
def test_slow_clients_do_not_stop_pixel_fetches(gunicorn):
    """More slow clients than workers: pixel fetches are still answered at once. (The timing is
    bench/slow_clients.py's; this only checks the fetch is answered while they trickle.)"""
    server = gunicorn(workers=2)
    pixel = mint_through(server, api_token(server))
    with trickling(server, 8):
        time.sleep(1.5)  # every slow client accepted, and sending
        status, headers, body = send(
            server, "GET", urlsplit(pixel["url"]).path, {"User-Agent": GMAIL_PROXY}, timeout=5
        )
        assert (status, body[:6]) == (200, b"GIF89a")
        assert headers["X-Openreceipt"] == "recorded: open"
    assert b"OPENRECEIPT_TRUSTED_PROXIES=0" not in server.log_bytes()  # loopback: no warning


@pytest.mark.slow
def test_a_public_address_without_a_proxy_is_warned_of_at_start(gunicorn):
    server = gunicorn(host="0.0.0.0", workers=1)
    assert (
        b"with OPENRECEIPT_TRUSTED_PROXIES=0: no reverse proxy in front, so 16 slow clients"
        in server.log_bytes()
    )


def test_public_binds_leave_out_loopback_and_unix_sockets():
    binds = ["127.0.0.1:8000", "[::1]:8000", "localhost:8000", "unix:/run/o.sock", "0.0.0.0:80"]
    assert public_binds([*binds, "[::]:8000", "receipts.example.com:80"]) == [
        "0.0.0.0:80",
        "[::]:8000",
        "receipts.example.com:80",
    ]


# -- 8. Proxy headers: trusted exactly as far as OPENRECEIPT_TRUSTED_PROXIES says ---------------


@pytest.mark.slow
def test_without_trusted_proxies_a_local_client_cannot_claim_https(gunicorn):
    """gunicorn's default believes X-Forwarded-Proto from loopback; ours believes nothing."""
    server = gunicorn()
    claim = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"}
    status, headers, _ = send(server, "GET", "/login", claim)
    assert status == 200
    assert "Strict-Transport-Security" not in headers
    assert not secure(login_cookie(headers))
    pixel = mint_through(server, api_token(server), claim)
    assert pixel["url"].startswith(server.url + "/p/")  # http://, as the request really came


@pytest.mark.slow
def test_behind_a_trusted_https_proxy(gunicorn):
    """One trusted proxy, no PUBLIC_URL: its X-Forwarded-Proto makes the login cookie Secure and
    the answers HSTS; its X-Forwarded-Host is believed for nothing."""
    server = gunicorn(TRUSTED_PROXIES=1)
    auth = api_token(server)
    proxy = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}

    status, headers, page = send(server, "GET", "/login", proxy)
    assert status == 200 and headers["Strict-Transport-Security"]
    cookie = login_cookie(headers)
    assert secure(cookie)
    # Over HTTPS, CSRF protection wants the Referer that a same-origin policy lets the form send.
    assert headers["Referrer-Policy"] == "same-origin"
    form = urlencode({"email": EMAIL, "password": PASSWORD, "csrf_token": csrf(page)})
    status, headers, _ = send(
        server,
        "POST",
        "/login",
        {
            **proxy,
            "Cookie": cookie.split(";", 1)[0],
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": f"https://{urlsplit(server.url).netloc}/login",
        },
        form,
    )
    assert status == 302 and secure(login_cookie(headers))

    # Plain HTTP through the same proxy: no Secure, or the browser would never send it back.
    _, headers, _ = send(server, "GET", "/login", {"X-Forwarded-For": "203.0.113.7"})
    assert not secure(login_cookie(headers))

    forged = {**proxy, "X-Forwarded-Host": "attacker.example", "X-Forwarded-Port": "8443"}
    pixel = mint_through(server, auth, forged)
    assert pixel["url"].startswith("https://" + urlsplit(server.url).netloc + "/p/")


def csrf(page):
    match = re.search(rb'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page has no CSRF token"
    return match.group(1).decode()


@pytest.fixture
def proxied(app_with, user, token):
    """An app behind one trusted proxy, PUBLIC_URL https://receipts.example.com."""
    app = app_with(TRUSTED_PROXIES=1)
    return app, {"Authorization": f"Bearer {token}"}


def test_public_url_wins_for_every_address_handed_out(proxied):
    app, auth = proxied
    client = app.test_client()
    forged = {
        "Host": "attacker.example",
        "X-Forwarded-Host": "attacker.example",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "http",
    }
    public = "https://receipts.example.com"

    minted = client.post("/api/pixels", json={}, headers={**auth, **forged}).get_json()
    assert minted["url"].startswith(public + "/p/")
    listed = client.get("/api/pixels", headers={**auth, **forged}).get_json()
    assert listed["pixels"][0]["url"].startswith(public + "/p/")
    stale = client.post(
        "/api/pixels", json={}, headers={**auth, **forged, "X-Openreceipt-Bookmarklet": "0"}
    )
    assert f"{public}/bookmarklet" in stale.get_json()["error"]
    notice = client.get("/privacy", headers=forged).get_data(as_text=True)
    assert "receipts.example.com" in notice and "attacker.example" not in notice

    sign_in(client)
    # The same, but for Host: the test client keeps the login cookie for its own host.
    behind_proxy = {name: value for name, value in forged.items() if name != "Host"}
    page = client.get("/bookmarklet", headers=behind_proxy)
    created = client.post(
        "/bookmarklet",
        data={"name": "laptop", "csrf_token": csrf_token(page)},
        headers=behind_proxy,
    )
    assert public in created.get_data(as_text=True)  # the server the bookmarklet talks to
    for response in (page, created):
        assert "attacker.example" not in response.get_data(as_text=True)


# -- 9. Unbounded growth ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_access_log_keeps_little_of_huge_user_agents(gunicorn):
    server = gunicorn()
    # Cut as sent, the line would end inside this IPv6 address, and its half would no longer read
    # as an address to be masked: it is masked first, then cut.
    agent = "Mozilla/5.0 " + "x" * 220 + " 2001:db8:1234:abcd:ef01:2345:6789:beef " + "y" * 60_000
    before = (server.logs / "access.log").stat().st_size
    for _ in range(10):
        status, _, _ = send(server, "GET", "/privacy", {"User-Agent": agent})
        assert status == 200
    server.stop()
    log = (server.logs / "access.log").read_bytes()
    assert len(log) - before < 10 * 600
    [line, *_] = [line for line in log.splitlines() if b"GET /privacy" in line]
    assert b'"Mozilla/5.0 xxx' in line and line.endswith(b'..."')
    assert b" 2001:db8:1234:: yyy" in line
    assert b":abcd:" not in log and b"beef" not in log


def raw_request(server, data):
    """The status line of the answer to `data`, sent as is on a connection of its own."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(200).split(b"\r\n")[0]


@pytest.mark.slow
def test_the_error_log_keeps_little_of_bad_requests_and_no_client_address(gunicorn):
    """gunicorn quotes a bad header into its "Invalid request from ip=<client>: ..." warning:
    60 KB of it, per request, from anyone. The review's 10 requests added 601 KB to the error
    log, each line with the client's raw address (unmasked: the server listens on the same
    127.0.0.1)."""
    server = gunicorn(workers=1)
    error_log = server.logs / "error.log"
    before = error_log.stat().st_size
    bad = b"GET /privacy HTTP/1.1\r\nHost: x\r\n" + b"(" * 60_000 + b": v\r\n\r\n"
    for _ in range(10):
        assert raw_request(server, bad) == b"HTTP/1.1 400 Bad Request"
    folded = b"GET / HTTP/1.1\r\nHost: x\r\nX-" + b"a" * 60_000 + b": v\r\n more\r\n\r\n"
    assert raw_request(server, folded).startswith(b"HTTP/1.1 400")
    assert wait_for(lambda: error_log.read_bytes().count(b"Invalid request from") == 11, 10)
    server.stop()
    log = error_log.read_bytes()
    assert len(log) - before < 11 * (ERROR_LOG_LIMIT + 100)
    lines = [line for line in log.splitlines() if b"Invalid request from" in line]
    assert len(lines) == 11
    for line in lines:
        assert b"Invalid request from ip=127.0.0.0: " in line and line.endswith(b"...")
    assert b"127.0.0.1:" not in b"".join(lines) and b"ip=127.0.0.1" not in log


@pytest.mark.slow
def test_runs_of_colons_cost_the_log_nothing(gunicorn):
    """A user agent, or a bad header name, of 60,000 colons: a run that may be an address, to
    be masked. Tried one shorter at a time, it cost the worker some 150 s of CPU per request
    (and the GIL with it); now its line is written at once."""
    server = gunicorn(workers=1)
    colons = ":" * 60_000
    status, _, _ = send(server, "GET", "/privacy", {"User-Agent": "x " + colons})
    assert status == 200
    bad = b"GET /privacy HTTP/1.1\r\nHost: x\r\n" + colons.encode() + b"a: v\r\n\r\n"
    assert raw_request(server, bad) == b"HTTP/1.1 400 Bad Request"
    logs = server.logs
    assert wait_for(lambda: b'"x :::' in (logs / "access.log").read_bytes(), 5)
    assert wait_for(lambda: b"Invalid request from" in (logs / "error.log").read_bytes(), 5)
    began = time.monotonic()
    assert redact("x " + colons + " 81.2.69.160" + colons) == "x " + colons + " 81.2.69.0" + colons
    assert time.monotonic() - began < 1


@pytest.fixture
def small_spool(app_with, user, token):
    """An app whose spool holds 1 MB at most, with a pixel, and its database gone away."""
    app = app_with(SPOOL_MAX_MB=1)
    client = app.test_client()
    pixel = mint(client, {"Authorization": f"Bearer {token}"})
    with app.app_context():
        sqlite = isinstance(Event._meta.database.obj, SqliteDatabase)
        Event._meta.database.execute_sql("DROP TABLE event" + ("" if sqlite else " CASCADE"))
    return app, client, pixel


def fetch(client, pixel, network, user_agent=GMAIL_PROXY):
    response = client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": user_agent},
        environ_base={"REMOTE_ADDR": network},
    )
    assert (response.status_code, response.mimetype) == (200, "image/gif")
    return response.headers["X-Openreceipt"]


def fill_spool(data_dir, public_id, size):
    """A batch of old spooled fetches of exactly `size` bytes."""
    lines, total = [], 0
    while total < size - 1000:
        lines.append(json.dumps(spool.to_json(spooled_fetch(public_id, len(lines) % 250))) + "\n")
        total += len(lines[-1])
    last = spooled_fetch(public_id, 0)
    padding = size - total - len(json.dumps(spool.to_json(last)) + "\n")
    last = dataclasses.replace(last, user_agent=last.user_agent + "z" * padding)
    lines.append(json.dumps(spool.to_json(last)) + "\n")
    old = spool.directory(data_dir) / "batch-00000000000000000001-1.jsonl"
    old.parent.mkdir(mode=0o700, exist_ok=True)
    old.write_text("".join(lines), encoding="ascii")
    assert old.stat().st_size == size
    return old


def test_a_full_spool_keeps_the_oldest_and_counts_what_it_drops(small_spool, caplog):
    app, client, pixel = small_spool
    data_dir = app.config["DATA_DIR"]
    # Room for one more fetch (some 450 bytes), not two.
    old = fill_spool(data_dir, pixel["id"], 1024 * 1024 - 700)
    kept = old.read_bytes()

    assert fetch(client, pixel, "81.2.69.160") == "spooled: database unavailable"
    with caplog.at_level(logging.ERROR):
        assert fetch(client, pixel, "81.2.70.160") == (
            "not recorded: database unavailable and spool full"
        )
        assert fetch(client, pixel, "81.2.71.160") == (
            "not recorded: database unavailable and spool full"
        )
    assert old.read_bytes() == kept and spool.pending(data_dir) == len(kept.splitlines()) + 1
    assert spool.dropped(data_dir) == 2
    [logged] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "the spool is full (OPENRECEIPT_SPOOL_MAX_MB=1)" in logged and "1 dropped" in logged
    assert "81.2.70" not in logged


def test_repeats_take_no_room_in_the_spool(small_spool):
    app, client, pixel = small_spool
    assert fetch(client, pixel, "81.2.69.160") == "spooled: database unavailable"
    assert fetch(client, pixel, "81.2.69.7") == "not recorded: repeat of a fetch seconds ago"
    assert fetch(client, pixel, "81.2.70.7") == "spooled: database unavailable"
    assert fetch(client, pixel, "81.2.69.160", "Thunderbird/128") == (
        "spooled: database unavailable"
    )
    assert spool.pending(app.config["DATA_DIR"]) == 3


def test_minting_is_limited_per_user(app_with, user, token, other_auth):
    app = app_with(MINTS_PER_MINUTE=3)
    client, auth = app.test_client(), {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        mint(client, auth)
    refused = client.post("/api/pixels", json={"subject": "fourth"}, headers=auth)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    assert "3 receipts within the last minute" in refused.get_json()["error"]
    mint(client, other_auth)  # a user's limit is theirs alone

    sign_in(client)
    form = client.get("/bookmarklet")
    by_hand = client.post(
        "/bookmarklet/pixel",
        data={"subject": "by hand", "recipients": "", "csrf_token": csrf_token(form)},
    )
    assert by_hand.status_code == 429
    assert "3 receipts within the last minute" in by_hand.get_data(as_text=True)

    with app.app_context():
        assert Pixel.select().where(Pixel.owner == user).count() == 3
        Pixel.update(created_at=utcnow() - datetime.timedelta(minutes=2)).execute()
    mint(client, auth)  # a minute on, the window has moved


# -- 10. Small leaks ----------------------------------------------------------------------------


def test_the_pixel_tells_a_fetcher_nothing_by_default(app_with, user, token):
    app = app_with(DEBUG_HEADERS=False)
    client = app.test_client()
    pixel = mint(client, {"Authorization": f"Bearer {token}"})
    answers = [
        client.get(pixel_path(pixel["url"]), headers={"User-Agent": GMAIL_PROXY}),
        client.get("/p/forged-signature.gif"),
        client.get("/p/x/y"),
    ]
    for response in answers:
        assert "X-Openreceipt" not in response.headers
    assert len({(r.status_code, r.data, tuple(sorted(r.headers.items()))) for r in answers}) == 1
    with app.app_context():
        assert Event.select().count() == 1  # recorded all the same


def test_signed_in_pages_are_never_stored(client, user, token):
    assert "no-store" not in client.get("/privacy").headers.get("Cache-Control", "")
    sign_in(client)
    page = client.get("/bookmarklet")
    created = client.post("/bookmarklet", data={"name": "laptop", "csrf_token": csrf_token(page)})
    assert "javascript:" in created.get_data(as_text=True)
    for response in (page, created, client.get("/settings"), client.get("/")):
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
    api = client.get("/api/pixels", headers={"Authorization": f"Bearer {token}"})
    assert "no-store" not in api.headers.get("Cache-Control", "")
