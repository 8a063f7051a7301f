"""The spool: when the database cannot take a fetch, the pixel still answers a GIF at once, the
masked fetch waits in the data dir, and it is recorded later, in order and exactly once. On
SQLite, on PostgreSQL, and on a PostgreSQL server of the test's own that is stopped and started
again under a real gunicorn."""

import collections
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from peewee import DataError, OperationalError

from web import background, create_app
from web.judgement.classify import Fetch
from web.pixel import spool
from web.storage.engine import close_pool, utcnow
from web.storage.models import Event, Pixel

from .conftest import unavailable
from .helpers import held, mint, pixel_path, wait_for
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


def failing_at(app, keys, error):
    """The app's recorder's replay, raising `error` for a group of lines that holds one of the
    `keys`."""
    recorder = app.extensions["openreceipt"].recorder
    record_replayed = recorder.record_replayed

    def failing(fetches):
        if any(fetched.key in keys for fetched in fetches):
            raise error
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
        away = OperationalError("server closed the connection unexpectedly")
        recorder.record_replayed = failing_at(app, {keys[2]}, away)
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


UNREADABLE = ['{"not": "a fetch"}', "not JSON at all", '["a", "list"]', '{"at": "yesterday"}']


def test_unreadable_lines_are_set_aside_not_lost(app, client, auth, database):
    """Each line that is no fetch goes to rejected.jsonl, and why; a blank line is passed over;
    the fetches around them are recorded."""
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    with (spool_dir(app) / spool.ACTIVE).open("a") as handle:
        handle.write("\n" + "".join(line + "\n" for line in UNREADABLE))
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 2))
    assert spool.replay(app) == {"recorded": 2, "not_recorded": 0, "rejected": 4, "left": 0}
    lines = (spool_dir(app) / spool.REJECTED).read_text().splitlines()
    rejected = [json.loads(line) for line in lines]
    assert [(r["line"], r["why"]) for r in rejected] == [(u, "unreadable line") for u in UNREADABLE]


def test_a_line_damaged_on_disk_is_set_aside_and_the_rest_replayed(app, client, auth, database):
    """A byte that is no ASCII (the spool writes none: a disk's or an editor's damage) makes its
    line unreadable, not the batch: the line goes to rejected.jsonl, shown with the byte escaped,
    and the fetches around it are recorded."""
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    with (spool_dir(app) / spool.ACTIVE).open("ab") as handle:
        handle.write(b'{"public_id": "caf\xe9"}\n')
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 2))
    assert spool.replay(app) == {"recorded": 2, "not_recorded": 0, "rejected": 1, "left": 0}
    [rejected] = (spool_dir(app) / spool.REJECTED).read_text().splitlines()
    assert json.loads(rejected)["line"] == '{"public_id": "caf\\xe9"}'
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 2


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


# -- A full spool, repeats, the replay lock, the files' modes -------------------------------------


def test_a_full_spool_keeps_the_oldest_fetches_and_counts_the_dropped_ones(tmp_path):
    """OPENRECEIPT_SPOOL_MAX_MB: a fetch that would take the spool past its limit is dropped
    (SpoolFull, with the host's count of drops so far), the fetches already spooled are kept."""
    at = utcnow()
    fetches = [spooled_fetch("abc", n, at) for n in range(5)]
    spool.append(tmp_path, fetches[0])
    line = (tmp_path / "spool" / spool.ACTIVE).stat().st_size  # every line here is as long
    assert spool.dropped(tmp_path) == 0
    for fetched in fetches[1:3]:  # the third line fills the limit exactly
        assert spool.append(tmp_path, fetched, max_bytes=3 * line) is True
    for count, fetched in enumerate(fetches[3:], start=1):
        with pytest.raises(spool.SpoolFull) as full:
            spool.append(tmp_path, fetched, max_bytes=3 * line)
        assert full.value.dropped == count
        assert (full.value.errno, full.value.strerror) == (errno.ENOSPC, "the spool is full")
    assert spool.dropped(tmp_path) == 2
    assert keys_in(tmp_path / "spool" / spool.ACTIVE) == [f.key for f in fetches[:3]]
    assert spool.pending(tmp_path) == 3


def test_the_batches_waiting_for_a_replay_count_toward_the_spool_limit(tmp_path):
    at = utcnow()
    for n in range(2):
        spool.append(tmp_path, spooled_fetch("abc", n, at))
    line = (tmp_path / "spool" / spool.ACTIVE).stat().st_size // 2
    spool._rotate(tmp_path / "spool")
    spool.append(tmp_path, spooled_fetch("abc", 2, at), max_bytes=3 * line)
    assert spool.pending(tmp_path) == 3  # two in the batch, one in the new active file
    with pytest.raises(spool.SpoolFull):
        spool.append(tmp_path, spooled_fetch("abc", 3, at), max_bytes=3 * line)
    assert spool.dropped(tmp_path) == 1


def test_a_spool_with_only_batches_moved_aside_still_has_work(tmp_path):
    assert not spool.has_work(tmp_path)
    spool.append(tmp_path, spooled_fetch("abc", 1))
    spool._rotate(tmp_path / "spool")
    assert not (tmp_path / "spool" / spool.ACTIVE).exists()
    assert spool.has_work(tmp_path) and spool.pending(tmp_path) == 1


def test_the_batches_to_replay_are_the_files_moved_aside_oldest_first(tmp_path):
    """Never the active file, which writers append to: only a replay's next move makes it one."""
    for n in range(3):
        spool.append(tmp_path, spooled_fetch("abc", n))
        spool._rotate(tmp_path / "spool")
    spool.append(tmp_path, spooled_fetch("abc", 3))
    found = spool.batches(tmp_path)
    assert [keys_in(path) for path in found] == [[f"{n:032x}"] for n in range(3)]
    active = tmp_path / "spool" / spool.ACTIVE
    assert spool.batches(tmp_path, include_active=True) == [*found, active]


def test_a_repeat_of_a_fetch_this_process_spooled_takes_no_room(tmp_path, monkeypatch):
    """Rule 15: the same fetcher's fetch of the same pixel at most 10 s after one this process
    spooled is not written (the replay would not record it either); any other fetch is."""
    monkeypatch.setattr(spool, "_spooled_lately", collections.OrderedDict())
    start = utcnow()

    def spooled(n, after, browser="a" * 32):
        at = start + datetime.timedelta(seconds=after)
        fetched = replace(spooled_fetch("abc", n, at), browser=browser)
        return spool.append(tmp_path, fetched, fold_repeats=True)

    assert spooled(1, 0) is True
    assert spooled(2, 0) is False  # at the same moment
    assert spooled(3, 10) is False  # at the repeat window's edge
    assert spooled(4, 5, browser="b" * 32) is True  # another fetcher
    assert spooled(5, 10.000001) is True  # just past the window of the first
    assert spooled(6, 14, browser="b" * 32) is False  # the other fetcher's, still in its window
    assert keys_in(tmp_path / "spool" / spool.ACTIVE) == [f"{n:032x}" for n in (1, 4, 5)]
    # Without fold_repeats, every fetch is written.
    assert spool.append(tmp_path, replace(spooled_fetch("abc", 7, start), browser="a" * 32))
    assert keys_in(tmp_path / "spool" / spool.ACTIVE)[-1] == f"{7:032x}"


def test_a_replay_of_a_host_that_never_spooled_finds_nothing(app):
    assert not spool_dir(app).exists()
    assert spool.replay(app) == {"recorded": 0, "not_recorded": 0, "rejected": 0, "left": 0}


def test_a_line_the_database_refuses_is_set_aside_with_the_reason(
    app, client, auth, database, monkeypatch
):
    """The reason (the database's message, which may quote the line's text in any script) is
    kept in rejected.jsonl, cut at 300 characters, with the time it was set aside."""
    pixel = mint(client, auth)
    fetches = [spooled_fetch(pixel["id"], n) for n in range(4)]
    for fetched in fetches:
        spool.append(app.config["DATA_DIR"], fetched)
    message = 'value too long for type character varying(64): "Grüße aus Köln' + "!" * 400
    refused = {fetches[1].key, fetches[2].key}
    recorder = app.extensions["openreceipt"].recorder
    monkeypatch.setattr(recorder, "record_replayed", failing_at(app, refused, DataError(message)))
    before = datetime.datetime.now(datetime.UTC)
    assert spool.replay(app) == {"recorded": 2, "not_recorded": 0, "rejected": 2, "left": 0}
    after = datetime.datetime.now(datetime.UTC)
    lines = (spool_dir(app) / spool.REJECTED).read_text(encoding="ascii").splitlines()
    rejected = [json.loads(line) for line in lines]
    assert [json.loads(r["line"])["key"] for r in rejected] == [f.key for f in fetches[1:3]]
    for record in rejected:
        assert record.keys() == {"line", "why", "at"}
        assert record["why"] == f"DataError: {message}"[:300]
        assert before <= datetime.datetime.fromisoformat(record["at"]) <= after
    events = Event.select().order_by(Event.id)
    assert [e.spool_key for e in events] == [fetches[0].key, fetches[3].key]


@contextmanager
def replay_lock_held(app):
    """Another worker's replay holds this host's replay lock."""
    descriptor = os.open(spool_dir(app) / spool.LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def waiting_for_lock(path):
    """Whether a process or thread waits for the flock on `path` (/proc/locks marks the waiting
    ones "->")."""
    inode = f":{path.stat().st_ino} "
    locks = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and inode in line for line in locks)


def test_a_replay_leaves_the_spool_to_the_replay_already_running(app, client, auth, database):
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    with ThreadPoolExecutor(1) as pool, replay_lock_held(app):
        assert pool.submit(spool.replay, app).result(timeout=30) is None
    assert spool.pending(app.config["DATA_DIR"]) == 1


def test_a_replay_told_to_wait_waits_for_the_replay_already_running(app, client, auth, database):
    """As `openreceipt spool replay` does: it records the fetches once the other replay is done."""
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    with ThreadPoolExecutor(1) as pool:
        with replay_lock_held(app):
            replaying = pool.submit(spool.replay, app, wait=True)
            assert wait_for(lambda: waiting_for_lock(spool_dir(app) / spool.LOCK))
        done = replaying.result(timeout=30)
    assert done == {"recorded": 1, "not_recorded": 0, "rejected": 0, "left": 0}


@contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_spool_is_readable_by_its_owner_only(app, client, auth, database):
    """The spool holds masked fetches: its folder, files and lock are the owner's alone, even
    under the usual umask 022."""
    pixel = mint(client, auth)
    with umask(0o022):
        spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
        active_mode = (spool_dir(app) / spool.ACTIVE).stat().st_mode & 0o777
        spool.replay(app)
    assert spool_dir(app).stat().st_mode & 0o777 == 0o700
    assert active_mode == 0o600
    assert (spool_dir(app) / spool.LOCK).stat().st_mode & 0o777 == 0o600


def test_stopping_the_replayer_leaves_the_other_jobs_running(app):
    spool.stop(app)
    assert background.stopping(app, "spool")
    assert not background.stopping(app, "notify") and not background.stopping(app, "retention")


def test_a_stopping_worker_does_not_wait_for_ever_for_a_stuck_replay(
    settings, client, auth, database, monkeypatch
):
    """A replay stuck in the database (e.g. waiting for a row another transaction holds) does
    not keep the worker from exiting: stop() gives up waiting after its timeout."""
    app = create_app({**settings, "SPOOL_AUTO": True})
    recorder = app.extensions["openreceipt"].recorder
    record_replayed, stuck, release = recorder.record_replayed, threading.Event(), threading.Event()

    def waiting(fetches):
        stuck.set()
        release.wait()
        return record_replayed(fetches)

    monkeypatch.setattr(recorder, "record_replayed", waiting)
    try:
        pixel = mint(app.test_client(), auth)
        spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
        background.start_all(app)  # as a worker does: the replayer, with SPOOL_AUTO on
        assert stuck.wait(30)
        with ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(spool.stop, app, timeout=0.1)
            try:
                assert stopping.result(timeout=30) is None
            finally:
                release.set()
        spool.stop(app)
    finally:
        close_pool(app)


def test_a_fetch_from_a_city_named_beyond_ascii_is_replayed_intact(app, client, auth, database):
    pixel = mint(client, auth)
    fetched = replace(spooled_fetch(pixel["id"], 1), city="Zürich", country="CH")
    spool.append(app.config["DATA_DIR"], fetched)
    assert spool.replay(app) == {"recorded": 1, "not_recorded": 0, "rejected": 0, "left": 0}
    assert (Event.get().city, Event.get().country) == ("Zürich", "CH")


def test_a_replay_takes_the_batches_oldest_first_and_stops_at_the_first_pause(
    app, client, auth, database, monkeypatch
):
    """With the database away at the first batch, the later batches wait too: no fetch is
    recorded before an older one."""
    pixel = mint(client, auth)
    start = utcnow().replace(microsecond=0) - datetime.timedelta(minutes=5)
    fetches = [
        spooled_fetch(pixel["id"], n, start + datetime.timedelta(seconds=30 * n)) for n in range(5)
    ]
    for group in (fetches[:2], fetches[2:4]):
        for fetched in group:
            spool.append(app.config["DATA_DIR"], fetched)
        spool._rotate(spool_dir(app))
    spool.append(app.config["DATA_DIR"], fetches[4])
    recorder = app.extensions["openreceipt"].recorder
    away = OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(recorder, "record_replayed", failing_at(app, {fetches[1].key}, away))
    assert spool.replay(app) == {"recorded": 0, "not_recorded": 0, "rejected": 0, "left": 5}
    assert not Event.select().exists()

    monkeypatch.undo()  # the database is back
    assert spool.replay(app) == {"recorded": 5, "not_recorded": 0, "rejected": 0, "left": 0}
    assert [e.spool_key for e in Event.select().order_by(Event.id)] == [f.key for f in fetches]


def spool_messages(caplog):
    return [message for message in caplog.messages if message.startswith("spool:")]


def test_a_paused_replay_says_why_in_the_log(app, client, auth, database, monkeypatch, caplog):
    pixel = mint(client, auth)
    fetched = spooled_fetch(pixel["id"], 1)
    spool.append(app.config["DATA_DIR"], fetched)
    recorder = app.extensions["openreceipt"].recorder
    away = OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(recorder, "record_replayed", failing_at(app, {fetched.key}, away))
    assert spool.replay(app)["left"] == 1
    assert spool_messages(caplog) == [
        "spool: replay paused: OperationalError: server closed the connection unexpectedly"
    ]


def replayer_step(app):
    """One round of a worker's replayer: the step of the job spool.init_app registers."""
    [job] = [job for job in background.jobs(app) if job.name == "spool"]
    return job.step


def test_the_workers_replayer_replays_what_is_spooled_and_says_so(
    app, client, auth, database, caplog
):
    caplog.set_level(logging.INFO, logger=app.logger.name)
    step = replayer_step(app)
    step()  # nothing spooled: nothing done, nothing said
    pixel = mint(client, auth)
    spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 1))
    step()
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 1
    assert spool_messages(caplog) == [
        "spool: replayed {'recorded': 1, 'not_recorded': 0, 'rejected': 0, 'left': 0}"
    ]
    with replay_lock_held(app):
        spool.append(app.config["DATA_DIR"], spooled_fetch(pixel["id"], 2))
        step()  # another worker's replayer is at it
    assert spool.pending(app.config["DATA_DIR"]) == 1


def test_the_workers_replayer_fails_a_round_only_when_nothing_went_in(
    app, client, auth, database, monkeypatch
):
    """A failed round (ReplayPaused) is tried again ever less often (web/background.py): for a
    database that is away, not for one that took some of the fetches, nor for a spool that held
    only lines that cannot be read."""
    step = replayer_step(app)
    pixel = mint(client, auth)
    fetches = [spooled_fetch(pixel["id"], n) for n in range(2)]
    spool.append(app.config["DATA_DIR"], fetches[0])
    spool._rotate(spool_dir(app))
    spool.append(app.config["DATA_DIR"], fetches[1])
    recorder = app.extensions["openreceipt"].recorder
    away = OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(recorder, "record_replayed", failing_at(app, {fetches[1].key}, away))
    step()  # the first went in, the second waits
    assert spool.pending(app.config["DATA_DIR"]) == 1
    with pytest.raises(spool.ReplayPaused) as paused:
        step()
    assert str(paused.value) == "1 fetches left"

    monkeypatch.undo()
    step()
    with (spool_dir(app) / spool.ACTIVE).open("a") as handle:
        handle.write("not JSON at all\n")
    step()
    assert spool.pending(app.config["DATA_DIR"]) == 0
    assert len((spool_dir(app) / spool.REJECTED).read_text().splitlines()) == 1


class HalfWrites:
    """The os module, but write() writes half the bytes it is given, as on a disk that fills up
    in the middle of a line."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(descriptor, data):
        return os.write(descriptor, data[: len(data) // 2])


def test_a_short_write_leaves_no_half_line(tmp_path, monkeypatch):
    spool.append(tmp_path, spooled_fetch("abc", 1))
    monkeypatch.setattr(spool, "os", HalfWrites())
    with pytest.raises(spool.SpoolError) as failed:
        spool.append(tmp_path, spooled_fetch("abc", 2))
    assert (failed.value.errno, failed.value.strerror) == (
        errno.ENOSPC,
        "cannot spool: short write to the spool",
    )
    monkeypatch.undo()
    spool.append(tmp_path, spooled_fetch("abc", 3))
    assert keys_in(tmp_path / "spool" / spool.ACTIVE) == [f"{n:032x}" for n in (1, 3)]


def replay_takes_the_active_file(monkeypatch, folder, times):
    """The next `times` writers each find, between opening active.jsonl and locking it, that a
    replay took the file (moved it aside, replayed and removed it). Returns the keys taken."""
    taken, rounds = [], iter(range(times))

    def flock(descriptor, operation):
        if next(rounds, None) is not None:
            taken.extend(keys_in(folder / spool.ACTIVE))
            (folder / spool.ACTIVE).unlink()
        fcntl.flock(descriptor, operation)

    monkeypatch.setattr(spool, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
    return taken


def test_a_writer_whose_active_file_was_taken_writes_to_a_new_one(tmp_path, monkeypatch):
    spool.append(tmp_path, spooled_fetch("abc", 1))
    taken = replay_takes_the_active_file(monkeypatch, tmp_path / "spool", times=1)
    assert spool.append(tmp_path, spooled_fetch("abc", 2)) is True
    assert taken == [f"{1:032x}"]
    assert keys_in(tmp_path / "spool" / spool.ACTIVE) == [f"{2:032x}"]


def test_a_writer_gives_up_when_the_active_file_keeps_moving(tmp_path, monkeypatch):
    """The pixel then says the fetch is lost (in the log) instead of trying for ever."""
    monkeypatch.setattr(spool, "APPEND_TRIES", 3)
    spool.append(tmp_path, spooled_fetch("abc", 1))
    taken = replay_takes_the_active_file(monkeypatch, tmp_path / "spool", times=3)
    with pytest.raises(spool.SpoolError) as failed:
        spool.append(tmp_path, spooled_fetch("abc", 2))
    assert (failed.value.errno, failed.value.strerror) == (
        0,
        "cannot spool: the active file kept moving",
    )
    assert taken == [f"{1:032x}"] and not (tmp_path / "spool" / spool.ACTIVE).exists()
