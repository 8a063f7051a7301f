"""The spool: when the database cannot take a fetch, the pixel still answers a GIF at once, the
masked fetch waits in the data dir, and it is recorded later, in order and exactly once. On
SQLite, on PostgreSQL, and on a PostgreSQL server of the test's own that is stopped and started
again under a real gunicorn."""

import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from peewee import OperationalError

from web import create_app
from web.judgement.classify import Fetch
from web.pixel import spool
from web.storage.engine import close_pool, utcnow
from web.storage.models import Event, Pixel

from .conftest import unavailable
from .helpers import mint, pixel_path
from .servers import free_port

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)


def spooled_fetch(public_id, n, at=None, key=None):
    """A fetch as the pixel would spool it: a Gmail-proxy open from network 81.2.<n>.0."""
    return Fetch(
        public_id=public_id,
        at=at or utcnow(),
        user_agent=GMAIL_PROXY,
        ip=f"81.2.{n}.0",
        method="GET",
        purpose="",
        browser="0" * 32,
        country="GB",
        city="London",
        key=key or f"{n:032x}",
    )


def spool_dir(app):
    return Path(app.config["DATA_DIR"]) / "spool"


def test_replay_records_in_order_and_exactly_once(app, client, auth, database):
    pixel = mint(client, auth, subject="Invoice")
    start = utcnow().replace(microsecond=0) - datetime.timedelta(minutes=5)
    for n in range(5):
        at = start + datetime.timedelta(seconds=30 * n)
        spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], n, at))
    assert spool.pending(app.config["DATA_DIR"]) == 5
    # A replay cut short after writing events but before removing its file: keep a copy.
    spool._rotate(spool_dir(app))
    [batch] = spool.batches(app.config["DATA_DIR"])
    copy = batch.read_bytes()

    counts = spool.replay(app)
    assert counts == {"recorded": 5, "not_recorded": 0, "rejected": 0, "left": 0}
    assert not spool.has_work(app.config["DATA_DIR"])
    batch.write_bytes(copy)  # the same lines again
    assert spool.replay(app) == {"recorded": 0, "not_recorded": 5, "rejected": 0, "left": 0}

    events = list(Event.select().order_by(Event.at))
    assert [e.ip for e in events] == [f"81.2.{n}.0" for n in range(5)]
    assert {e.kind for e in events} == {"open"} and events[0].client == "Gmail"
    row = Pixel.get(Pixel.public_id == pixel["id"])
    assert (row.open_count, row.state) == (5, "opened")
    assert (row.first_open_at, row.last_open_at) == (events[0].at, events[-1].at)


def keys_in(path):
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def test_a_line_replayed_again_is_skipped_by_its_key_alone(app, app_with, client, auth, database):
    """A replay cut short after storing a line replays it again: its key (Event.spool_key) says
    it is stored already. Not the repeat rule: that one looks for the same fetcher (source and
    client) within 10 s, and here the judgement changed in between, so only the key can tell."""
    pixel = mint(client, auth)
    line = spooled_fetch(pixel["id"], 3, at=utcnow() - datetime.timedelta(minutes=1))
    spool.append(app.config["DATA_DIR"], line)
    spool._rotate(spool_dir(app))
    [batch] = spool.batches(app.config["DATA_DIR"])
    copy = batch.read_bytes()
    assert spool.replay(app) == {"recorded": 1, "not_recorded": 0, "rejected": 0, "left": 0}
    assert Event.get().client == "Gmail"

    # The operator turns client names off and restarts before the copy is replayed: the line
    # is now judged a fetch by no named client, which no stored event within 10 s matches.
    restarted = app_with(COLLECT_CLIENT=False)
    batch.write_bytes(copy)
    assert spool.replay(restarted) == {"recorded": 0, "not_recorded": 1, "rejected": 0, "left": 0}
    assert not (spool_dir(app) / spool.REJECTED).exists()
    with restarted.app_context():
        recorder = restarted.extensions["openreceipt"].recorder
        assert recorder.record_replayed([line]) == ["not recorded: already replayed"]
    # With the judgement unchanged too, the key is what answers, before the repeat rule.
    with app.app_context():
        recorder = app.extensions["openreceipt"].recorder
        assert recorder.record_replayed([line]) == ["not recorded: already replayed"]
    [event] = Event.select()
    assert (event.spool_key, event.client) == (line.key, "Gmail")
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 1


def away_at(app, key):
    """The app's recorder's replay, failing as a database that went away does for the group of
    lines that holds `key`."""
    recorder = app.extensions["openreceipt"].recorder
    record_replayed = recorder.record_replayed

    def failing(fetches):
        if any(fetched.key == key for fetched in fetches):
            raise OperationalError("server closed the connection unexpectedly")
        return record_replayed(fetches)

    return failing


def stopping_at(app, key):
    """spool.stopping, saying stop when the replay comes to the group of lines that holds
    `key` (the replay asks before each group)."""
    lines = spool_dir(app).glob("batch-*.jsonl")
    [batch] = lines
    position = keys_in(batch).index(key) // spool.MOST_TOGETHER
    calls = []

    def stopping(_app):
        calls.append(1)
        return len(calls) > position

    return stopping


@pytest.mark.parametrize("cut", ["database-away", "worker-stopping"])
def test_a_replay_cut_short_mid_batch_keeps_the_rest_only(
    app, client, auth, database, cut, monkeypatch
):
    """Cut short at the third of five lines (two lines to a transaction), a replay keeps the
    third to the fifth in its batch, and the next replay stores those: each fetch once, in
    order."""
    monkeypatch.setattr(spool, "MOST_TOGETHER", 2)
    pixel = mint(client, auth, subject="Invoice")
    start = utcnow().replace(microsecond=0) - datetime.timedelta(minutes=5)
    fetches = [
        spooled_fetch(pixel["id"], n, start + datetime.timedelta(seconds=30 * n)) for n in range(5)
    ]
    for fetched in fetches:
        spool.append(app.config["DATA_DIR"], fetched)
    spool._rotate(spool_dir(app))
    keys = [fetched.key for fetched in fetches]
    recorder = app.extensions["openreceipt"].recorder
    stopping = spool.stopping
    if cut == "database-away":
        recorder.record_replayed = away_at(app, keys[2])
    else:
        spool.stopping = stopping_at(app, keys[2])
    try:
        counts = spool.replay(app)
    finally:
        recorder.__dict__.pop("record_replayed", None)
        spool.stopping = stopping
    assert counts == {"recorded": 2, "not_recorded": 0, "rejected": 0, "left": 3}
    [batch] = spool.batches(app.config["DATA_DIR"])
    assert keys_in(batch) == keys[2:]
    assert [e.spool_key for e in Event.select().order_by(Event.id)] == keys[:2]

    assert spool.replay(app) == {"recorded": 3, "not_recorded": 0, "rejected": 0, "left": 0}
    assert not spool.has_work(app.config["DATA_DIR"])
    events = list(Event.select().order_by(Event.id))
    assert [e.spool_key for e in events] == keys
    assert [e.at for e in events] == [fetched.at for fetched in fetches]
    assert [e.ip for e in events] == [f"81.2.{n}.0" for n in range(5)]
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 5


def test_a_late_replay_moves_no_time_backwards(app, client, auth, database):
    """A fetch spooled an hour ago and replayed after a live one: first/last stay in order."""
    pixel = mint(client, auth)
    client.get(pixel_path(pixel["url"]), headers={"User-Agent": GMAIL_PROXY})
    live = Pixel.get(Pixel.public_id == pixel["id"])
    earlier = live.last_open_at - datetime.timedelta(hours=1)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 7, earlier))
    assert spool.replay(app)["recorded"] == 1
    row = Pixel.get_by_id(live.id)
    assert (row.open_count, row.first_open_at, row.last_open_at) == (
        2,
        earlier,
        live.last_open_at,
    )
    assert row.last_event_at == live.last_event_at and row.delivered_at == earlier


def test_unreadable_lines_are_set_aside_not_lost(app, client, auth, database):
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    with (spool_dir(app) / spool.ACTIVE).open("a") as handle:
        handle.write('{"not": "a fetch"}\n')
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 2))
    assert spool.replay(app) == {"recorded": 2, "not_recorded": 0, "rejected": 1, "left": 0}
    [rejected] = (spool_dir(app) / spool.REJECTED).read_text().splitlines()
    assert json.loads(rejected)["line"] == '{"not": "a fetch"}'


def test_writers_never_lose_a_line_while_a_replay_rotates(app, client, auth, database):
    """Threads append while replays move the active file aside again and again."""
    pixel = mint(client, auth)
    stop = threading.Event()

    def replays():
        while not stop.is_set():
            spool._rotate(spool_dir(app))

    rotator = threading.Thread(target=replays)
    rotator.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: spool.append(
                        app.config["DATA_DIR"], spooled_fetch(pixel["id"], n % 250, key=f"{n:032x}")
                    ),
                    range(400),
                )
            )
    finally:
        stop.set()
        rotator.join()
    keys = set()
    for path in spool.batches(app.config["DATA_DIR"], include_active=True):
        keys |= {json.loads(line)["key"] for line in path.read_text().splitlines()}
    assert keys == {f"{n:032x}" for n in range(400)}


@contextmanager
def held(app, public_id):
    """Another writer holds the receipt far longer than the pixel waits: on SQLite, another
    process's write lock; on PostgreSQL, another transaction's lock on the receipt's row."""
    url = app.config["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    else:
        other = psycopg.connect(url)
        other.execute("SELECT 1 FROM pixel WHERE public_id = %s FOR UPDATE", (public_id,))
    try:
        yield
    finally:
        other.rollback() if isinstance(other, psycopg.Connection) else other.execute("ROLLBACK")
        other.close()


def test_a_held_receipt_spools_at_once_then_replays(app, client, auth, runner):
    """While another writer holds the receipt, each fetch is answered and spooled, and `openreceipt
    spool replay` records them once the writer is done."""
    pixel = mint(client, auth, subject="Invoice")
    with held(app, pixel["id"]):
        for n in range(20):
            response = client.get(
                pixel_path(pixel["url"]),
                headers={"User-Agent": GMAIL_PROXY},
                environ_base={"REMOTE_ADDR": f"81.2.{n}.9"},
            )
            assert (response.status_code, response.mimetype) == (200, "image/gif")
            assert response.headers["X-Openreceipt"] == "spooled: database unavailable"
        assert runner.invoke(args=["spool", "status"]).output == "20 fetches spooled\n"
        if app.config["DATABASE_URL"].startswith("sqlite:///"):
            # SQLite's replay gives up on a busy database; PostgreSQL's waits for the row.
            locked = runner.invoke(args=["spool", "replay"])
            assert locked.exit_code == 1 and "20 left" in locked.output
    result = runner.invoke(args=["spool", "replay"])
    assert result.exit_code == 0, result.output
    assert "20 recorded" in result.output and "0 left" in result.output
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 20
    assert {e.ip for e in Event.select()} == {f"81.2.{n}.0" for n in range(20)}


# -- A PostgreSQL server of the test's own, stopped and started again ---------------------------


def postgresql_binaries():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        unavailable("initdb and pg_ctl (Debian's postgresql package) are not installed")
    return found[-1].parent


class OwnPostgresql:
    """initdb + pg_ctl in a temporary directory, on a free port; the machine's server is
    untouched. Run as the postgres user when the tests run as root (initdb refuses root)."""

    def __init__(self):
        self.bin = postgresql_binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="openreceipt-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user)
        self.run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, program, *args):
        command = [str(self.bin / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        # No pipes: the server started by pg_ctl would inherit them and keep them open.
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    def start(self):
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "server.log")
        self.run("pg_ctl", "-D", str(self.dir / "data"), "-l", log, "-o", options, "-w", "start")

    def stop(self):
        self.run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgresql():
    server = OwnPostgresql()
    server.start()
    yield server
    server.remove()


@pytest.mark.slow
@pytest.mark.postgresql
def test_postgresql_outage_loses_no_fetch(gunicorn, own_postgresql):
    server = gunicorn(DATABASE_URL=own_postgresql.url, TRUSTED_PROXIES=1)
    server.openreceipt("user", "add", "ada@example.com", "--password-stdin", input="a long pw 1\n")
    auth = {"Authorization": "Bearer " + server.openreceipt("token", "new", "ada@example.com")}
    pixels = []
    for n in range(10):
        status, _, body = server.request("POST", "/api/pixels", {"subject": f"m{n}"}, auth)
        assert status == 201
        pixels.append(json.loads(body)["url"][len(server.url) :])

    own_postgresql.stop()
    # Each fetch is answered (within the request's 10 s deadline) and spooled. How fast the
    # pixel answers with the database away is a timing for bench/, not an assert here.
    outcomes = []
    for n in range(200):
        status, headers, body = server.request(
            "GET",
            pixels[n % 10],
            headers={"User-Agent": GMAIL_PROXY, "X-Forwarded-For": f"81.0.{n}.7"},
        )
        assert (status, headers["Content-Type"]) == (200, "image/gif")
        outcomes.append(headers["X-Openreceipt"])
    assert set(outcomes) == {"spooled: database unavailable"}
    status, headers, body = server.request("GET", "/api/pixels", headers=auth)
    assert (status, headers["Content-Type"]) == (503, "application/json")
    assert json.loads(body)["error"] == "the database is unavailable; try again shortly"
    own_postgresql.start()

    # The workers' replayers write the spool by themselves within a few seconds.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.openreceipt("spool", "status") == "0 fetches spooled":
            break
        time.sleep(0.5)
    assert server.openreceipt("spool", "status") == "0 fetches spooled"
    status, _, body = server.request("GET", "/api/pixels?per_page=100", headers=auth)
    listed = json.loads(body)["pixels"]
    assert sum(p["counts"]["open"] for p in listed) == 200
    ips = set()
    for p in listed:
        _, _, detail = server.request("GET", f"/api/pixels/{p['id']}", headers=auth)
        events = json.loads(detail)["events"]
        assert len(events) == p["counts"]["open"] == 20
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        ips |= {e["ip"] for e in events}
    assert ips == {f"81.0.{n}.0" for n in range(200)}
    server.stop()
    assert b"spooled" in server.log_bytes() and b"Traceback" not in server.log_bytes()


def test_a_replay_keeps_what_the_database_could_not_take(app, client, auth, database):
    """Only a line the database refuses for itself is set aside; a broken schema (or anything
    else that may pass) keeps the line for a later replay."""
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    database.execute_sql("ALTER TABLE event RENAME TO event_away")
    try:
        counts = spool.replay(app)
    finally:
        database.execute_sql("ALTER TABLE event_away RENAME TO event")
    assert counts == {"recorded": 0, "not_recorded": 0, "rejected": 0, "left": 1}
    assert spool.replay(app) == {"recorded": 1, "not_recorded": 0, "rejected": 0, "left": 0}


def test_a_stopping_worker_replays_no_further(settings, client, auth, database):
    """gunicorn's worker_exit stops the replayer between two lines; the rest stays spooled."""
    app = create_app({**settings, "SPOOL_AUTO": True})
    try:
        pixel = mint(app.test_client(), auth)
        for n in range(3):
            spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], n))
        spool.stop(app)
        assert spool.replay(app) == {"recorded": 0, "not_recorded": 0, "rejected": 0, "left": 3}
    finally:
        close_pool(app)


def test_a_replay_writes_its_lines_many_to_a_transaction(app, client, auth, database, monkeypatch):
    """45 spooled fetches take 3 transactions (20 to one), not 45 turns at the write lock."""
    pixel = mint(client, auth, subject="Invoice")
    start = utcnow().replace(microsecond=0) - datetime.timedelta(minutes=5)
    for n in range(45):
        spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], n, start))
    recorder = app.extensions["openreceipt"].recorder
    record_replayed, groups = recorder.record_replayed, []

    def counted(fetches):
        groups.append(len(fetches))
        return record_replayed(fetches)

    monkeypatch.setattr(recorder, "record_replayed", counted)
    assert spool.replay(app) == {"recorded": 45, "not_recorded": 0, "rejected": 0, "left": 0}
    assert groups == [20, 20, 5]
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 45
