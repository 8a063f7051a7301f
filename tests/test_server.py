"""End to end through a real gunicorn: mint, fetch behind a proxy, read back, and find the raw
client address nowhere on disk; then the same audit with 200 addresses through every path."""

import concurrent.futures
import hashlib
import hmac
import http.client
import ipaddress
import json
import random
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest

pytestmark = pytest.mark.slow

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
RAW = "81.2.69.160"


def files_under(directory):
    return [path for path in directory.rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def test_raw_address_is_stored_and_logged_nowhere(request, tmp_path, gunicorn, backend):
    settings = {"TRUSTED_PROXIES": 1}
    if backend == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("postgresql_url")
    # Listening on 127.0.0.2 and connecting from 127.0.0.3 tells the server's own address (kept
    # in its log) from a client's (masked).
    server = gunicorn(host="127.0.0.2", **settings)
    server.openreceipt(
        "user", "add", "ada@example.com", "--password-stdin", input="correct horse battery\n"
    )
    token = server.openreceipt("token", "new", "ada@example.com", "--name", "e2e")
    auth = {"Authorization": f"Bearer {token}"}

    status, _, body = server.request("POST", "/api/pixels", {"subject": "Invoice #42"}, auth)
    assert status == 201
    minted = json.loads(body)
    assert minted["url"].startswith(server.url + "/p/")
    path = minted["url"][len(server.url) :]

    status, headers, image = server.request(
        "GET", path, headers={"User-Agent": GMAIL_PROXY, "X-Forwarded-For": RAW}
    )
    assert (status, headers["Content-Type"], image[:6]) == (200, "image/gif", b"GIF89a")
    assert headers["X-Openreceipt"] == "recorded: open"
    assert "Set-Cookie" not in headers

    # A request gunicorn itself rejects: its log line names the peer, which must come out masked.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), source_address=("127.0.0.3", 0)) as client:
        client.sendall(b"BOGUS\r\n\r\n")
        client.recv(1024)

    status, _, body = server.request("GET", f"/api/pixels/{minted['id']}", headers=auth)
    detail = json.loads(body)
    [event] = detail["events"]
    assert (event["ip"], event["country"], event["city"], event["kind"]) == (
        "81.2.69.0",
        "GB",
        "London",
        "open",
    )
    server.stop()

    logs = server.log_bytes()
    assert b"Invalid request from ip=127.0.0.0: Invalid HTTP request line" in logs
    assert b"127.0.0.3" not in logs
    assert f"Listening at: {server.url}".encode() in logs
    assert b"GET /p/" in logs  # the access log is on, and still says nothing of the client

    haystacks = {str(path): path.read_bytes() for path in files_under(tmp_path)}
    if backend == "postgresql":
        haystacks["pg_dump"] = postgresql_dump(server.env["OPENRECEIPT_DATABASE_URL"])
        assert b"81.2.69.0" in haystacks["pg_dump"]
    else:
        # The database is its file and its write-ahead log: two workers closing at the same
        # moment may each leave the checkpoint to the other.
        database = b"".join(
            path.read_bytes() for path in (tmp_path / "data").glob("openreceipt.db*")
        )
        assert b"81.2.69.0" in database  # the masked address is there...
    leaks = [name for name, content in haystacks.items() if RAW.encode() in content]
    assert leaks == []  # ...and the raw one nowhere


def postgresql_dump(url):
    from urllib.parse import parse_qs, unquote, urlsplit

    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is needed to search the PostgreSQL data")
    parts = urlsplit(url)
    schema = unquote(parse_qs(parts.query)["options"][0]).split("=", 1)[1]
    plain = parts._replace(query="").geturl()
    return subprocess.run(
        ["pg_dump", "--data-only", "--schema", schema, plain],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def test_real_server_answers_huge_headers_with_a_gif(gunicorn):
    server = gunicorn()
    headers = {
        "User-Agent": "Mozilla/5.0 " + "x" * 30_000,
        "Cookie": "session=" + "c" * 60_000,
        "X-Forwarded-For": ", ".join(f"10.0.{n // 256}.{n % 256}" for n in range(2_000)),
    }
    for path in ("/p/garbage.gif", "/p/" + "A" * 8_000 + ".gif"):
        status, response_headers, image = server.request("GET", path, headers=headers)
        assert (status, response_headers["Content-Type"], image[:6]) == (
            200,
            "image/gif",
            b"GIF89a",
        )


# The privacy audit: many raw addresses, every path that could keep one, every file afterwards.

AUDIT_EMAIL = "ada@example.com"
AUDIT_PASSWORD = "correct horse battery"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
APPLE_MPP = "Mozilla/5.0"
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"
PIXEL_USER_AGENTS = (GMAIL_PROXY, CHROME, APPLE_MPP, OUTLOOK)
REPEAT = "not recorded: repeat of a fetch seconds ago"
STOPPED = "not recorded: a recipient is on the do-not-track list"


@dataclass(frozen=True)
class RawClient:
    """A client address as a proxy writes it into X-Forwarded-For (maybe with brackets, a port or
    a zone), and the address itself."""

    sent: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address

    @property
    def carried(self):
        """The IPv4 address inside an IPv4-mapped or 6to4 address, else None."""
        return (self.ip.ipv4_mapped or self.ip.sixtofour) if self.ip.version == 6 else None

    @property
    def masked(self):
        """What the server may keep (worked out here, not by the code under audit)."""
        ip = self.carried or self.ip
        prefix = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network((ip, prefix), strict=False).network_address)

    def spellings(self):
        """Every way of writing the raw address down, lower case."""
        ip = self.ip
        found = {self.sent, str(ip)}
        if ip.version == 6:
            groups = ip.exploded.split(":")
            found |= {ip.compressed, ip.exploded, ":".join(f"{int(g, 16):x}" for g in groups)}
        if self.carried:
            found |= {str(self.carried), f"::ffff:{self.carried}"}
        if ip.version == 6 and ip.sixtofour:
            # The /48 of a 6to4 address holds the whole IPv4 address it carries.
            found.add(str(ipaddress.ip_network((ip, 48), strict=False).network_address))
        return {spelling.lower() for spelling in found}


def raw_clients(seed=48):
    """200 distinct client addresses, half IPv4 and half IPv6, varied in every part, the parts
    that masking removes too. Never 127/8 (the server's own address, which its log may name),
    never an IPv4 last octet of 0 or an IPv6 address with nothing after its /48: no raw address
    reads like a masked one, so a masked address is never mistaken for a leak."""
    rng = random.Random(seed)
    clients, seen, networks = [], set(), Counter()

    def take(sent, core=None):
        client = RawClient(sent, ipaddress.ip_address(core or sent))
        # A network holds at most 4 clients: the login limiter allows 10 failures per account
        # and network.
        if {client.ip, client.carried} & seen or networks[client.masked] >= 4:
            return
        seen.update({client.ip, client.carried} - {None})
        networks[client.masked] += 1
        clients.append(client)

    def ipv4_network():
        first = rng.choice([n for n in range(1, 224) if n != 127])
        return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}"

    def ipv4():
        return f"{ipv4_network()}.{rng.randint(1, 254)}"

    def interface():
        # Bits 48-63 never 0: a raw address is never its /48 followed by a few hex digits.
        groups = [rng.randint(1, 0xFFFF)] + [
            rng.choice([0, rng.randint(1, 0xFFFF)]) for _ in "1234"
        ]
        return ":".join(f"{group:x}" for group in groups)

    def ipv6():
        first = rng.randint(0x2003, 0x3FFF)  # global unicast, not 6to4 (2002::/16)
        return f"{first:x}:{rng.randrange(0x10000):x}:{rng.randrange(0x10000):x}:{interface()}"

    for last in rng.sample(range(1, 255), 4):
        take(f"81.2.69.{last}")  # London in the test GeoIP data
    while len(clients) < 8:
        take(f"17.58.{rng.randrange(256)}.{rng.randint(1, 254)}")  # Apple, Cupertino
    while len(clients) < 88:
        network = ipv4_network()
        for last in rng.sample(range(1, 255), rng.randint(1, 3)):  # masking joins these
            if len(clients) < 88:
                take(f"{network}.{last}")
    while len(clients) < 100:
        address = ipv4()
        take(f"{address}:{rng.randint(1024, 65535)}", address)

    while len(clients) < 104:
        take(f"2001:db8:1234:{interface()}")  # Berlin in the test GeoIP data
    while len(clients) < 164:
        prefix = ipv6().rsplit(":", 5)[0]
        for _ in range(rng.randint(1, 3)):
            if len(clients) < 164:
                take(f"{prefix}:{interface()}")
    while len(clients) < 172:
        address = ipv6()
        take(f"[{address}]:{rng.randint(1024, 65535)}", address)
    while len(clients) < 176:
        address = ipv6()
        take(f"[{address}]", address)
    while len(clients) < 180:
        take(ipaddress.ip_address(ipv6()).exploded)
    while len(clients) < 190:
        take(f"{rng.choice(['::ffff:', '::FFFF:'])}{ipv4()}")
    while len(clients) < 196:
        carried = int(ipaddress.ip_address(ipv4()))
        take(f"2002:{carried >> 16:x}:{carried & 0xFFFF:x}:{interface()}")
    while len(clients) < 200:
        address = "fe80::" + ":".join(f"{rng.randint(1, 0xFFFF):x}" for _ in "1234")
        take(f"{address}%{rng.choice(['eth0', 'en1', 'wlan0', '3'])}", address)
    rng.shuffle(clients)
    return clients


def call(server, method, path, forwarded_for, user_agent=CHROME, body=None, headers=None):
    """(status, headers, body) of one request a trusted proxy forwards from `forwarded_for`."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(
            method,
            path,
            body=body,
            headers={"X-Forwarded-For": forwarded_for, "User-Agent": user_agent, **(headers or {})},
        )
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def open_form(server, path, forwarded_for):
    """GET a page with a form: (its session cookie, its CSRF token)."""
    status, headers, body = call(server, "GET", path, forwarded_for)
    assert status == 200, (path, status)
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    return session_cookie(headers), csrf


def session_cookie(headers):
    [cookie] = [
        value.split(";", 1)[0]
        for value in headers.get_all("Set-Cookie") or []
        if value.startswith("openreceipt_session=")
    ]
    return cookie


def post_form(server, path, forwarded_for, cookie, **fields):
    return call(
        server,
        "POST",
        path,
        forwarded_for,
        body=urlencode(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
    )


def fetch_pixel(server, path, forwarded_for, user_agent):
    status, headers, image = call(server, "GET", path, forwarded_for, user_agent)
    assert (status, headers["Content-Type"], image[:6]) == (200, "image/gif", b"GIF89a")
    return headers["X-Openreceipt"]


def mint(server, auth, client, user_agent, recipient):
    status, _, body = call(
        server,
        "POST",
        "/api/pixels",
        client.sent,
        user_agent,
        body=json.dumps({"subject": f"Invoice for {recipient}", "recipients": [recipient]}),
        headers={**auth, "Content-Type": "application/json"},
    )
    return status, json.loads(body)


def every_path(server, auth, clients, pixels, index):
    """What client `index` does: two pixel fetches (the second behind a client-claimed hop that
    must be ignored) and every error path that might log or store it. Returns the fetches'
    outcomes and the sign-in's status."""
    client = clients[index]
    user_agent = PIXEL_USER_AGENTS[index % len(PIXEL_USER_AGENTS)]
    claimed = clients[(index + 1) % len(clients)].sent
    own = pixels[index]["path"]
    other = pixels[(index + 7) % len(pixels)]["path"]
    outcomes = [
        fetch_pixel(server, own, client.sent, user_agent),
        fetch_pixel(server, other, f"{claimed}, {client.sent}", user_agent),
    ]
    public_id, signature = own.removeprefix("/p/").removesuffix(".gif").split(".", 1)
    forged = f"/p/{public_id[::-1]}.{signature}.gif"
    garbled = f"/p/{secrets.token_urlsafe(20)}.gif"
    for path in (forged, garbled):
        assert fetch_pixel(server, path, client.sent, user_agent) == (
            "not recorded: invalid signature"
        )

    wrong_token = {"Authorization": f"Bearer or_{secrets.token_urlsafe(32)}"}
    status, _, _ = call(server, "GET", f"/api/pixels/{public_id}", client.sent, headers=wrong_token)
    assert status == 401
    status, _, _ = call(
        server,
        "POST",
        "/api/pixels",
        client.sent,
        body=b'{"subject": "Invoice',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert status == 400
    status, _, _ = call(server, "GET", f"/no/such/page/{index}", client.sent)
    assert status == 404
    status, _, _ = call(server, "GET", f"/setup/{secrets.token_urlsafe(24)}", client.sent)
    assert status == 404

    # Every 16th client tries the real account; none tries ten times from one network, so none
    # is told to wait (429).
    email = AUDIT_EMAIL if index % 16 == 0 else f"nobody{index}@example.org"
    cookie, csrf = open_form(server, "/login", client.sent)
    login, _, _ = post_form(
        server, "/login", client.sent, cookie, email=email, password="wrong", csrf_token=csrf
    )
    assert login == 200
    return outcomes, login


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def test_no_raw_address_survives_anywhere(request, tmp_path, gunicorn, backend):
    settings = {"TRUSTED_PROXIES": 1}
    if backend == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("postgresql_url")
    server = gunicorn(**settings)
    clients = raw_clients()
    assert len({client.ip for client in clients}) == 200
    assert sum(client.ip.version == 4 for client in clients) == 100

    # First run: the one-time link from the server's log, opened and used from raw addresses.
    [setup] = {link.decode() for link in re.findall(rb"/setup/[\w.-]+", server.log_bytes())}
    cookie, csrf = open_form(server, setup, clients[0].sent)
    status, headers, _ = post_form(
        server,
        setup,
        clients[1].sent,
        cookie,
        email=AUDIT_EMAIL,
        password=AUDIT_PASSWORD,
        confirm=AUDIT_PASSWORD,
        csrf_token=csrf,
    )
    assert (status, headers["Location"]) == (302, "/")
    signed_in = session_cookie(headers)
    assert call(server, "GET", setup, clients[2].sent)[0] == 404
    auth = {"Authorization": f"Bearer {server.openreceipt('token', 'new', AUDIT_EMAIL)}"}

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        minted = list(
            pool.map(
                lambda index: mint(
                    server,
                    auth,
                    clients[index],
                    PIXEL_USER_AGENTS[index % len(PIXEL_USER_AGENTS)],
                    f"client{index}@example.{'de' if index % 10 == 0 else 'com'}",
                ),
                range(len(clients)),
            )
        )
        assert {status for status, _ in minted} == {201}
        pixels = [{**body, "path": urlsplit(body["url"]).path} for _, body in minted]
        visits = list(
            pool.map(
                lambda index: every_path(server, auth, clients, pixels, index),
                range(len(clients)),
            )
        )
    fetches = [(index, outcome) for index, (pair, _) in enumerate(visits) for outcome in pair]
    # Stored before the answer, or queued for the worker's writer (stored within moments).
    recorded = [
        (index, outcome)
        for index, outcome in fetches
        if outcome.startswith(("recorded: ", "queued: "))
    ]
    assert {outcome for _, outcome in fetches} - {outcome for _, outcome in recorded} <= {REPEAT}
    assert len(recorded) > 350
    failed_logins = [index for index, (_, login) in enumerate(visits) if login == 200]
    assert len(failed_logins) > 190

    # The privacy tools: do-not-track (then refused and unrecorded fetches), purge, exports.
    assert "added example.de" in server.openreceipt("dnt", "add", "example.de")
    for index in range(0, len(clients), 10):
        other = clients[(index + 3) % len(clients)]
        assert fetch_pixel(server, pixels[index]["path"], other.sent, CHROME) == STOPPED
        status, body = mint(server, auth, other, CHROME, f"late{index}@example.de")
        assert (status, body["do_not_track"]) == (409, ["example.de"])
    assert server.openreceipt("purge").startswith("deleted 0 events")
    exports = tmp_path / "exports"
    exports.mkdir()
    for form in ("json", "csv"):
        (exports / f"cli.{form}").write_text(
            server.openreceipt("export", AUDIT_EMAIL, "--format", form)
        )
        status, _, body = call(
            server,
            "GET",
            f"/settings/export.{form}",
            clients[3].sent,
            headers={"Cookie": signed_in},
        )
        assert status == 200
        (exports / f"web.{form}").write_bytes(body)
    for path in ("/", f"/m/{pixels[0]['id']}", f"/api/pixels/{pixels[1]['id']}"):
        status, _, body = call(
            server, "GET", path, clients[4].sent, headers={"Cookie": signed_in, **auth}
        )
        assert status == 200
        (exports / f"response{path.replace('/', '_')}").write_bytes(body)
    server.stop()

    # Every file the run left (data dir with database, WAL, secret key and any spool file; the
    # gunicorn logs; the exports and pages), read before anything opens the database again.
    haystacks = {
        str(path.relative_to(tmp_path)): path.read_bytes() for path in files_under(tmp_path)
    }
    if backend == "postgresql":
        haystacks["pg_dump"] = postgresql_dump(server.env["OPENRECEIPT_DATABASE_URL"])
        database_bytes = haystacks["pg_dump"]
    else:
        database_bytes = b"".join(
            content for name, content in haystacks.items() if name.startswith("data/openreceipt.db")
        )
    assert b"GET /p/" in server.log_bytes()  # the access log is on

    secret = (tmp_path / "data" / "secret_key").read_text().strip()
    leaks = find_leaks(haystacks, clients, secret)
    assert not leaks, "raw client addresses found:\n" + "\n".join(
        f"{sent}: {', '.join(sorted(found))}" for sent, found in sorted(leaks.items())
    )

    # The audit found nothing because nothing raw was kept, not because nothing was kept.
    expected_ips = {clients[index].masked for index, _ in recorded}
    assert b"81.2.69.0" in database_bytes and b"2001:db8:1234::" in database_bytes
    events = rows(backend, tmp_path, server, "SELECT ip FROM event")
    assert len(events) == len(recorded)
    assert {ip for (ip,) in events} == expected_ips
    document = json.loads((exports / "cli.json").read_text())
    exported = [event for pixel in document["pixels"] for event in pixel["events"]]
    assert len(exported) == len(recorded)
    assert {event["ip"] for event in exported} == expected_ips
    fingerprints = dict(
        rows(backend, tmp_path, server, "SELECT public_id, mint_fingerprint FROM pixel")
    )
    for index, pixel in enumerate(pixels):
        user_agent = PIXEL_USER_AGENTS[index % len(PIXEL_USER_AGENTS)]
        assert fingerprints[pixel["id"]] == keyed_hash(secret, user_agent, clients[index].masked)
    login_keys = {
        key for (key,) in rows(backend, tmp_path, server, "SELECT network FROM login_throttle")
    }
    for index in failed_logins:
        assert network_key(clients[index].masked) in login_keys


def keyed_hash(secret, user_agent, address):
    """A browser fingerprint as web/privacy.py makes it, for any spelling of an address."""
    message = f"{user_agent}\n{address}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def network_key(address):
    """The login limiter's key for a network, for any spelling of an address."""
    return hashlib.sha256(f"network:{address}".encode()).hexdigest()


def find_leaks(haystacks, clients, secret):
    """{raw address: {"file: spelling"}} for every raw address found in a haystack: written out
    in any spelling, packed (IPv6), or hashed the way the server hashes masked addresses."""
    lowered = {name: content.lower() for name, content in haystacks.items()}
    hex_windows = {name: hex_substrings(content) for name, content in lowered.items()}
    leaks = {}
    for client in clients:
        spellings = client.spellings()
        hashes = {network_key(spelling): f"network key of {spelling}" for spelling in spellings}
        for user_agent in PIXEL_USER_AGENTS:
            hashes |= {
                keyed_hash(secret, user_agent, spelling): f"fingerprint of {spelling}"
                for spelling in spellings
            }
        for name, content in lowered.items():
            found = {spelling for spelling in spellings if spelling.encode() in content}
            found |= {
                what for digest, what in hashes.items() if digest.encode() in hex_windows[name]
            }
            if client.ip.version == 6 and client.ip.packed in haystacks[name]:
                found.add("packed")
            if found:
                leaks.setdefault(client.sent, set()).update(f"{name}: {what}" for what in found)
    return leaks


def hex_substrings(content):
    """Every 32 and 64 hex digit stretch of a haystack: the lengths of the server's hashes."""
    return {
        run[start : start + width]
        for run in re.findall(rb"[0-9a-f]{32,}", content)
        for width in (32, 64)
        for start in range(len(run) - width + 1)
    }


def rows(backend, tmp_path, server, sql):
    if backend == "sqlite":
        with closing(sqlite3.connect(tmp_path / "data" / "openreceipt.db")) as connection:
            return connection.execute(sql).fetchall()
    with psycopg.connect(server.env["OPENRECEIPT_DATABASE_URL"]) as connection:
        return connection.execute(sql).fetchall()
