"""Load through real gunicorn servers: many concurrent pixel fetches, and API calls among them, on
one SQLite file shared by four workers, then on two hosts sharing one PostgreSQL schema. Every
fetch must be answered with the GIF and counted exactly once, in the events and the counters."""

import concurrent.futures
import datetime
import http.client
import ipaddress
import json
import random
import sqlite3
import subprocess
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from web.storage.migrate import MIGRATIONS
from web.storage.models import MODELS

pytestmark = pytest.mark.slow

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
GMAIL_PREFETCH = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246"
)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"
APPLE_MPP = "Mozilla/5.0"
CURL = "curl/8.5.0"
# Opens, prefetches and bots, from proxies and from readers' own clients.
USER_AGENTS = (GMAIL_PROXY, GMAIL_PREFETCH, CHROME, THUNDERBIRD, OUTLOOK, APPLE_MPP, CURL)
REPEAT = "not recorded: repeat of a fetch seconds ago"
LOCKED = "database is locked"
EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"
SECRET_KEY = "load-test-secret-key-shared-by-both-hosts"
SHIPPED = sorted(path.stem for path in Path(MIGRATIONS).glob("[0-9]*.py"))
MODEL_TABLES = {model._meta.table_name for model in MODELS} | {"schema_migration"}
EVENTS = (
    "SELECT pixel.public_id, event.ip, event.kind FROM event"
    " JOIN pixel ON pixel.id = event.pixel_id"
)


@dataclass(frozen=True)
class Fetch:
    """One pixel request as a mail client or proxy makes it, behind our one trusted proxy."""

    pixel: str
    path: str
    forwarded_for: str
    user_agent: str

    @property
    def network(self):
        """The masked address the server may store, worked out here: the /24 or /48."""
        address = ipaddress.ip_address(self.forwarded_for)
        prefix = 24 if address.version == 4 else 48
        return str(ipaddress.ip_network((address, prefix), strict=False).network_address)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    outcome: str
    body: bytes

    @property
    def text(self):
        """Everything the answer says, to search for error messages."""
        return f"{self.outcome}\n{self.body.decode(errors='replace')}"


def call(server, method, path, forwarded_for="", user_agent=CHROME, body=None, headers=None):
    """One request on a connection of its own (gunicorn's sync workers close it anyway)."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    headers = {"User-Agent": user_agent, **(headers or {})}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    if body is not None:
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Answer(
            response.status,
            response.headers.get("Content-Type", ""),
            response.headers.get("X-Openreceipt", ""),
            response.read(),
        )
    finally:
        connection.close()


def fetch(server, job):
    return call(server, "GET", job.path, job.forwarded_for, job.user_agent)


def is_gif(answer):
    return (answer.status, answer.content_type, answer.body[:6]) == (200, "image/gif", b"GIF89a")


def client_address(pixel_number, fetch_number, rng):
    """A client address whose masked network (/24, /48) is its own among one pixel's fetches, so
    the repeat rule never joins two of them. The first two are in the test GeoIP data."""
    if fetch_number == 0:
        return f"81.2.69.{rng.randint(1, 254)}"  # London
    if fetch_number == 1:
        return f"2001:db8:1234::{rng.randint(1, 0xFFFF):x}"  # Berlin
    if fetch_number % 4 == 2:
        return f"2001:db8:{pixel_number * 256 + fetch_number:x}::{rng.randint(1, 0xFFFF):x}"
    # 100.64.0.0/10 is in no range the classifier knows (Apple, Microsoft 365, scanners).
    return f"100.{64 + pixel_number % 64}.{fetch_number}.{rng.randint(1, 254)}"


def fetches_of(pixels, per_pixel, rng):
    """`per_pixel` fetches of every pixel, each from a network of its own, user agents mixed."""
    return [
        Fetch(
            pixel["id"],
            urlsplit(pixel["url"]).path,
            client_address(pixel_number, fetch_number, rng),
            USER_AGENTS[(pixel_number + fetch_number) % len(USER_AGENTS)],
        )
        for pixel_number, pixel in enumerate(pixels)
        for fetch_number in range(per_pixel)
    ]


def mint(server, auth, number):
    answer = call(
        server, "POST", "/api/pixels", body={"subject": f"Invoice #{number}"}, headers=auth
    )
    assert answer.status == 201, answer
    return json.loads(answer.body)


def sign_up(server):
    """The first user and an API token, made with the openreceipt command."""
    server.openreceipt("user", "add", EMAIL, "--password-stdin", input=f"{PASSWORD}\n")
    token = server.openreceipt("token", "new", EMAIL, "--name", "load")
    return {"Authorization": f"Bearer {token}"}


def pixel_detail(server, auth, public_id):
    answer = call(server, "GET", f"/api/pixels/{public_id}", headers=auth)
    assert answer.status == 200, answer
    return json.loads(answer.body)


# The answers that promise an event: stored before the answer, queued for the worker's writer
# (which may still find it a repeat), or spooled.
STORED = ("recorded: ", "queued: ", "spooled: ")


def promised(outcome):
    return outcome.startswith(STORED)


def counted_once(outcomes):
    """Whether the deliveries of one fetch are answered as one fetch: at most one recorded it
    before its answer, and each other was queued (the writer judges it then) or a repeat."""
    recorded = [outcome for outcome in outcomes if outcome.startswith("recorded: ")]
    return len(recorded) <= 1 and all(promised(o) or o == REPEAT for o in outcomes)


def replay_spool(server, spooled):
    """`openreceipt spool replay`. A server without the command is accepted only as long as no
    fetch was spooled."""
    try:
        return server.openreceipt("spool", "replay")
    except subprocess.CalledProcessError as error:
        if spooled or "No such command" not in error.stderr:
            pytest.fail(
                f"`openreceipt spool replay` failed ({spooled} fetches spooled): {error.stderr}"
            )
        return None


def test_four_workers_on_one_sqlite_file_count_every_fetch(tmp_path, gunicorn):
    rng = random.Random(2024)
    server = gunicorn(name="sqlite", workers=4, TRUSTED_PROXIES=1)
    auth = sign_up(server)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        pixels = list(pool.map(lambda number: mint(server, auth, number), range(50)))
        fetches = fetches_of(pixels, 40, rng)
        rng.shuffle(fetches)
        # The API among the fetches: a pixel's detail every 25th request, a new pixel every
        # 100th. A job is ("fetch", Fetch), ("show", public id) or ("mint", None).
        jobs = []
        for number, job in enumerate(fetches):
            jobs.append(("fetch", job))
            if number % 25 == 0:
                jobs.append(("show", rng.choice(pixels)["id"]))
            if number % 100 == 50:
                jobs.append(("mint", None))

        def run(job):
            what, argument = job
            if what == "fetch":
                return fetch(server, argument)
            if what == "show":
                return call(server, "GET", f"/api/pixels/{argument}", headers=auth)
            return call(server, "POST", "/api/pixels", body={"subject": "Mid-load"}, headers=auth)

        window = LoadWindow.start()
        answers = list(pool.map(run, jobs))
        window.end(len(jobs))
    assert len(fetches) == 2000

    by_kind = {"fetch": [], "show": [], "mint": []}
    for (what, _), answer in zip(jobs, answers, strict=True):
        by_kind[what].append(answer)
    assert [answer for answer in by_kind["fetch"] if not is_gif(answer)] == []
    assert Counter(answer.status for answer in by_kind["show"]) == {200: len(by_kind["show"])}
    assert Counter(answer.status for answer in by_kind["mint"]) == {201: len(by_kind["mint"])}
    assert [answer for answer in answers if LOCKED in answer.text] == []

    # Each fetch came from a network of its own: none is a repeat, none may be lost.
    outcomes = Counter(answer.outcome for answer in by_kind["fetch"])
    stored = sum(count for outcome, count in outcomes.items() if promised(outcome))
    spooled = sum(count for outcome, count in outcomes.items() if outcome.startswith("spooled"))
    print(f"outcomes: {dict(outcomes)}")
    assert stored == len(fetches), outcomes
    replay_spool(server, spooled)

    database = tmp_path / "sqlite" / "data" / "openreceipt.db"
    events = stored_events(lambda sql: sqlite_rows(database, sql), len(fetches))
    assert len(events) == stored
    kinds = kind_of_user_agent(events, fetches)
    check_counted_once(events, fetches, kinds, window, lambda pixel: (server, auth))

    server.stop()
    logs = server.log_bytes()
    assert logs.count(b'"GET /p/') == len(fetches)  # every fetch reached the server
    markers = (LOCKED.encode(), b"Traceback", b"WORKER TIMEOUT", b"fetch lost")
    assert [line for line in logs.splitlines() if any(m in line for m in markers)] == []


@pytest.mark.postgresql
def test_two_hosts_on_one_postgresql_schema_count_every_fetch_once(empty_postgresql_url, gunicorn):
    rng = random.Random(1984)
    settings = {"DATABASE_URL": empty_postgresql_url, "SECRET_KEY": SECRET_KEY}
    # Both start on an empty schema at once: both run the migrations, one after the other.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        hosts = list(
            pool.map(lambda name: gunicorn(name=name, TRUSTED_PROXIES=1, **settings), ["a", "b"])
        )

    def rows(sql):
        with closing(psycopg.connect(empty_postgresql_url)) as connection:
            return connection.execute(sql).fetchall()

    assert sorted(name for (name,) in rows("SELECT name FROM schema_migration")) == SHIPPED
    tables = rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    assert {table for (table,) in tables} == MODEL_TABLES
    auth = sign_up(hosts[0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        pixels = list(pool.map(lambda n: mint(hosts[n % 2], auth, n), range(24)))
        minted_on = {pixel["id"]: n % 2 for n, pixel in enumerate(pixels)}
        for pixel in pixels:
            assert pixel["url"].startswith(hosts[minted_on[pixel["id"]]].url + "/p/")
        fetches = fetches_of(pixels, 16, rng)
        rng.shuffle(fetches)
        # Fetches alternate between the hosts; every third is delivered twice, to both hosts
        # at once (a proxy retrying through the other host): still one event.
        deliveries = []
        for number, job in enumerate(fetches):
            deliveries.append((number % 2, job))
            if number % 3 == 0:
                deliveries.append((1 - number % 2, job))
        window = LoadWindow.start()
        answers = list(
            pool.map(lambda delivery: fetch(hosts[delivery[0]], delivery[1]), deliveries)
        )
        window.end(len(deliveries))

    assert [answer for answer in answers if not is_gif(answer)] == []
    answered = {}
    for (host, job), answer in zip(deliveries, answers, strict=True):
        answered.setdefault(job, []).append((host, answer.outcome))
    print(f"outcomes: {dict(Counter(answer.outcome for answer in answers))}")
    spooled = Counter(
        host
        for (host, _), answer in zip(deliveries, answers, strict=True)
        if answer.outcome.startswith("spooled")
    )
    if not spooled:
        # Exactly one delivery of each fetch recorded it; any other was a repeat.
        not_once = {
            job: outcomes
            for job, outcomes in answered.items()
            if not counted_once([outcome for _, outcome in outcomes])
        }
        assert not_once == {}
    # Both hosts took fetches of pixels minted on the other one.
    recorded_by = Counter(
        (host, minted_on[job.pixel])
        for job, outcomes in answered.items()
        for host, outcome in outcomes
        if promised(outcome)
    )
    assert all(recorded_by[(host, other)] > 0 for host in (0, 1) for other in (0, 1))
    for number, host in enumerate(hosts):  # each host replays its own spool
        replay_spool(host, spooled[number])

    events = stored_events(rows, len(fetches))
    assert len(events) == len(fetches) == 24 * 16
    kinds = kind_of_user_agent(events, fetches)
    # Each pixel read back from the host that did not mint it.
    check_counted_once(
        events, fetches, kinds, window, lambda pixel: (hosts[1 - minted_on[pixel]], auth)
    )

    sent_to = Counter(host for host, _ in deliveries)
    for number, host in enumerate(hosts):
        host.stop()
        logs = host.log_bytes()
        assert b"Traceback" not in logs
        assert b"not recorded" not in logs and b"fetch lost" not in logs
        assert logs.count(b'"GET /p/') == sent_to[number] > 200  # both hosts served


class LoadWindow:
    """When the load ran, in the database's time (UTC), to place the stored events in."""

    @classmethod
    def start(cls):
        window = cls()
        window.first = utc_seconds()
        window.started = time.monotonic()
        return window

    def end(self, requests):
        seconds = time.monotonic() - self.started
        self.last = utc_seconds()
        print(f"{requests} requests in {seconds:.1f} s ({requests / seconds:.0f}/s)")

    def __contains__(self, iso):
        moment = datetime.datetime.fromisoformat(iso.removesuffix("Z"))
        return self.first <= moment <= self.last


def utc_seconds():
    """Now in UTC to the second, rounded down, as the API shows event times."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)


def sqlite_rows(database, sql):
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute(sql).fetchall()


def stored_events(rows, expected):
    """The stored events as (pixel public id, network, kind), once `expected` of them are
    there or after 15 s: the workers' writers and the spool may still be writing."""
    deadline = time.monotonic() + 15
    while True:
        events = rows(EVENTS)
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def kind_of_user_agent(events, fetches):
    """{user agent: the one kind its stored fetches were given}."""
    agents = {(job.pixel, job.network): job.user_agent for job in fetches}
    kinds = {}
    for pixel, ip, kind in events:
        kinds.setdefault(agents[(pixel, ip)], set()).add(kind)
    assert set(kinds) == set(USER_AGENTS)
    assert all(len(found) == 1 for found in kinds.values()), kinds
    return {user_agent: found.pop() for user_agent, found in kinds.items()}


def check_counted_once(events, fetches, kinds, window, reader):
    """Every fetch stored exactly once (its pixel and network), with the kind its user agent
    gets, at the time of the fetch; and each pixel's counters, read through the API with
    `reader(public id) -> (server, auth)`, add up to its events."""
    assert Counter((pixel, ip) for pixel, ip, _ in events) == Counter(
        (job.pixel, job.network) for job in fetches
    )
    expected = {}
    for job in fetches:
        expected.setdefault(job.pixel, Counter())[kinds[job.user_agent]] += 1
    for public_id, kinds_expected in expected.items():
        detail = pixel_detail(*reader(public_id), public_id)
        kinds_stored = Counter(event["kind"] for event in detail["events"])
        assert kinds_stored == kinds_expected, public_id
        assert sum(detail["counts"].values()) == len(detail["events"]), detail["counts"]
        assert {kind: n for kind, n in detail["counts"].items() if n} == kinds_stored
        assert [event["at"] for event in detail["events"] if event["at"] not in window] == []
