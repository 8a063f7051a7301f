"""A worker's journal under a real gunicorn: a pixel fetch answered `queued` while the worker's
writer could not store it (another writer held the database) is stored exactly once, whether
the worker is then killed (kill -9: the spool's replay takes its journal over) or stopped
(SIGTERM: the worker stores its queue as it exits). On SQLite and on PostgreSQL (the
`database_url` fixture: its SQLite file is the server's own, in the server's DATA_DIR)."""

import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from web.pixel import journal, spool
from web.pixel.writer import QUEUED
from web.vocabulary import KINDS

from .helpers import held_in, wait_for

pytestmark = pytest.mark.slow

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
SPOOLED = "spooled: database unavailable"
# Each fetch from a /24 of its own (81.2.<n>.9): no fetch is a repeat of another.
NETWORKS = range(10, 40)
WORKER_READY = re.compile(rb"\] Worker ready \(pid: (\d+)\)")


def start(gunicorn, database_url, pixels=3, **settings):
    """One worker behind a trusted proxy, a user and `pixels` pixels: (server, the pixels as
    minted, each with the path of its URL)."""
    server = gunicorn(workers=1, TRUSTED_PROXIES=1, DATABASE_URL=database_url, **settings)
    server.openreceipt("user", "add", "ada@example.com", "--password-stdin", input="a long pw 1\n")
    auth = {"Authorization": "Bearer " + server.openreceipt("token", "new", "ada@example.com")}
    minted = []
    for n in range(pixels):
        status, _, body = server.request("POST", "/api/pixels", {"subject": f"Invoice {n}"}, auth)
        assert status == 201, body
        pixel = json.loads(body)
        minted.append({**pixel, "path": pixel["url"][len(server.url) :]})
    return server, minted


def writes_held(database_url, pixels):
    """Another writer holds what the pixel's writers need far longer than they wait: on SQLite
    the write lock (BEGIN IMMEDIATE), on PostgreSQL the pixels' rows (FOR UPDATE)."""
    return held_in(database_url, [pixel["id"] for pixel in pixels])


def fetch(server, pixel, n):
    """A Thunderbird reader's fetch of the pixel from network 81.2.<n>.0: the outcome the
    server answered."""
    status, headers, image = server.request(
        "GET",
        pixel["path"],
        headers={"User-Agent": THUNDERBIRD, "X-Forwarded-For": f"81.2.{n}.9"},
    )
    assert (status, headers["Content-Type"], image[:6]) == (200, "image/gif", b"GIF89a")
    return headers["X-Openreceipt"]


def burst(server, pixels, networks=NETWORKS):
    """Each network's fetch of a pixel, all sent at the same moment: {network: the outcome the
    server answered}."""
    ready = threading.Barrier(len(networks))

    def fetch_together(n):
        ready.wait(timeout=30)
        return fetch(server, pixels[n % len(pixels)], n)

    with ThreadPoolExecutor(len(networks)) as pool:
        return dict(zip(networks, pool.map(fetch_together, networks), strict=True))


def rows(database_url, sql):
    if database_url.startswith("sqlite:///"):
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as connection:
            return connection.execute(sql).fetchall()
    with closing(psycopg.connect(database_url)) as connection:
        return connection.execute(sql).fetchall()


def events_by_network(database_url):
    """How many events each masked network has."""
    return Counter(dict(rows(database_url, "SELECT ip, count(*) FROM event GROUP BY ip")))


def journal_keys(database_url):
    """{masked network: the key its event was stored with} (the fetches that had one)."""
    found = rows(database_url, "SELECT ip, spool_key FROM event WHERE spool_key IS NOT NULL")
    return dict(found)


def masked(networks):
    return {f"81.2.{n}.0" for n in networks}


def journals(data_dir):
    """The journals in the spool, hidden ones (still being made) too: {path: its lines}."""
    folder = spool.directory(data_dir)
    found = [*folder.glob(journal.PATTERN), *folder.glob("." + journal.PATTERN)]
    return {path: path.read_text().splitlines() for path in found}


def spool_is_empty(data_dir):
    """No fetch waits in the spool, and no journal holds one."""
    return spool.pending(data_dir) == 0 and not any(journals(data_dir).values())


def counted_as_stored(database_url):
    """Whether the pixels' counters add up, kind by kind, to the events stored."""
    stored = dict(rows(database_url, "SELECT kind, count(*) FROM event GROUP BY kind"))
    totals = ", ".join(f"coalesce(sum({kind}_count), 0)" for kind in KINDS)
    counted = dict(zip(KINDS, rows(database_url, f"SELECT {totals} FROM pixel")[0], strict=True))
    return {kind: count for kind, count in counted.items() if count} == stored


def ready_workers(server):
    return [int(pid) for pid in WORKER_READY.findall(server.log_bytes())]


def status_of(pid):
    """(state, parent's pid) of a process, from /proc/<pid>/stat ("pid (comm) state ppid ...",
    comm may hold spaces); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[1])


def dead(pid):
    """Whether the process has ended (a zombie not reaped yet has: its files are closed)."""
    status = status_of(pid)
    return status is None or status[0] == "Z"


def journal_lines(written):
    """The one journal's lines, read: {masked network: its key}."""
    [lines] = written.values()
    keys = {json.loads(line)["ip"]: json.loads(line)["key"] for line in lines}
    assert len(set(keys.values())) == len(lines), lines
    return keys


def sorted_outcomes(outcomes):
    """The networks by what the server answered their fetches."""
    return {
        "queued": sorted(n for n, outcome in outcomes.items() if outcome == QUEUED),
        "spooled": sorted(n for n, outcome in outcomes.items() if outcome == SPOOLED),
        "other": {n: out for n, out in outcomes.items() if out not in (QUEUED, SPOOLED)},
    }


def counts(answered):
    return {name: len(networks) for name, networks in answered.items()}


def assert_clean_logs(server):
    logs = server.log_bytes()
    markers = (b"Traceback", b"fetch lost", b"not recorded", b"journal not", b"without its journal")
    assert [line for line in logs.splitlines() if any(m in line for m in markers)] == []


def test_a_worker_killed_with_fetches_in_its_journal_loses_none_and_stores_none_twice(
    tmp_path, database_url, gunicorn
):
    """A fetch answered `queued` is in the worker's journal before its answer goes out. While
    the database is held, the worker's writer waits and the journal holds every such fetch;
    the worker is then killed with kill -9. gunicorn starts a new worker, whose spool replay
    takes the dead worker's journal over: each fetch the server answered (queued or spooled) is
    stored exactly once, the counters agree with the events, and neither journal nor spool
    keeps anything."""
    data_dir = tmp_path / "data"
    server, pixels = start(gunicorn, database_url)
    [worker] = ready_workers(server)
    assert status_of(worker)[1] == server.process.pid

    with writes_held(database_url, pixels) as release:
        started = time.monotonic()
        outcomes = burst(server, pixels)
        # The journal as the worker left it, read before the writer's long wait (5 s) ends.
        written = journals(data_dir)
        os.kill(worker, signal.SIGKILL)
        answered = sorted_outcomes(outcomes)
        print(f"killed after {time.monotonic() - started:.2f} s;", counts(answered))
        # Nothing can be stored while the database is held: the first fetch waited the pixel's
        # short wait and was spooled; those that came meanwhile were queued.
        assert answered["other"] == {}, answered
        assert answered["queued"], f"no fetch was queued: {answered}"
        [path] = written
        assert path.name.startswith(f"journal-{worker}-")
        keys = journal_lines(written)
        assert set(keys) == masked(answered["queued"])
        assert wait_for(lambda: dead(worker), 10)
        assert events_by_network(database_url) == Counter()
        release()

    # A new worker, and its replay of the dead worker's journal and of the spool.
    assert wait_for(lambda: len(ready_workers(server)) == 2, 15), server.log_bytes()[-2000:]
    every = masked(NETWORKS)
    assert wait_for(
        lambda: set(events_by_network(database_url)) >= every and spool_is_empty(data_dir), 20
    ), (events_by_network(database_url), journals(data_dir), spool.pending(data_dir))
    assert events_by_network(database_url) == Counter(dict.fromkeys(every, 1))
    # Each queued fetch was stored from the dead worker's journal: its event has the line's key.
    assert {ip: key for ip, key in journal_keys(database_url).items() if ip in keys} == keys
    assert counted_as_stored(database_url)
    assert not list(spool.directory(data_dir).glob("batch-*"))
    server.stop()
    assert events_by_network(database_url) == Counter(dict.fromkeys(every, 1))
    assert f"Worker (pid:{worker}) was sent SIGKILL".encode() in server.log_bytes()
    assert_clean_logs(server)


def test_a_worker_stopped_with_fetches_queued_stores_them_as_it_exits(
    tmp_path, database_url, gunicorn
):
    """A worker told to stop (SIGTERM) while its writer waits for a held database stores what it
    queued before it exits, and leaves no journal behind. (The one fetch that was spooled waits
    in the spool, or was replayed on the way out; `openreceipt spool replay` stores the rest.)"""
    data_dir = tmp_path / "data"
    server, pixels = start(gunicorn, database_url)
    [worker] = ready_workers(server)

    with writes_held(database_url, pixels) as release:
        started = time.monotonic()
        outcomes = burst(server, pixels)
        written = journals(data_dir)
        server.process.send_signal(signal.SIGTERM)
        answered = sorted_outcomes(outcomes)
        assert answered["other"] == {}, answered
        assert answered["queued"], f"no fetch was queued: {answered}"
        keys = journal_lines(written)
        assert set(keys) == masked(answered["queued"])
        # The worker is on its way out (its exit hook runs next) with its queue still unstored.
        exiting = f"Worker exiting (pid: {worker})".encode()
        assert wait_for(lambda: exiting in server.log_bytes(), 10), server.log_bytes()[-2000:]
        assert events_by_network(database_url) == Counter()
        print(f"released after {time.monotonic() - started:.2f} s;", counts(answered))
        release()
    server.process.wait(timeout=30)

    # Every queued fetch stored once by the writer, with its journal line's key; the journal
    # gone. The spooled fetch: stored by the replay on the way out, or still in the spool.
    stored = events_by_network(database_url)
    spooled = masked(answered["spooled"])
    queued_stored = {ip: count for ip, count in stored.items() if ip not in spooled}
    assert queued_stored == dict.fromkeys(keys, 1)
    assert {ip: key for ip, key in journal_keys(database_url).items() if ip in keys} == keys
    assert journals(data_dir) == {}
    assert spool.pending(data_dir) + sum(stored[ip] for ip in spooled) == len(spooled)

    server.openreceipt("spool", "replay")
    assert events_by_network(database_url) == Counter(dict.fromkeys(masked(NETWORKS), 1))
    assert counted_as_stored(database_url)
    assert spool_is_empty(data_dir)
    assert_clean_logs(server)


def waiting_for_pixel_rows(database_url):
    """How many PostgreSQL sessions wait for a lock while holding one on this schema's pixel
    table: the pixel's writers waiting for rows another transaction holds."""
    [(count,)] = rows(
        database_url,
        "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid IN "
        "(SELECT pid FROM pg_locks WHERE relation = 'pixel'::regclass)",
    )
    return count


@pytest.mark.postgresql
def test_fetches_a_killed_worker_stored_but_still_had_in_its_journal_are_not_stored_again(
    tmp_path, postgresql_url, gunicorn
):
    """The journal is emptied only once the writer has stored everything in it: a worker killed
    while its writer waits for one receipt's row, after it stored the fetches of another, leaves
    both in its journal. `openreceipt spool replay` takes the journal over and stores only what
    was not stored yet (each line's key is kept with its event): every fetch once, even when the
    judgement changed in between. (PostgreSQL, whose writers wait for a receipt's row, not for
    the whole database.)"""
    data_dir = tmp_path / "data"
    # No replay in the worker: the command below is the one that takes the journal over.
    server, (first, second) = start(gunicorn, postgresql_url, pixels=2, SPOOL_AUTO="off")
    [worker] = ready_workers(server)

    with (
        writes_held(postgresql_url, [first]) as release_first,
        writes_held(postgresql_url, [second]) as release_second,
    ):
        # The first receipt's fetches: one is stored alone, and spooled once its wait is over;
        # those that came meanwhile are queued, and the writer waits for the receipt's row.
        answered = sorted_outcomes(burst(server, [first]))
        assert answered["other"] == {}, answered
        assert answered["queued"], f"no fetch was queued: {answered}"
        assert wait_for(lambda: waiting_for_pixel_rows(postgresql_url) == 1, 10)
        # The second receipt's fetches, queued behind the writer's batch (its queue is empty
        # again: there is room; a fetch that finds none within a second is spooled).
        later = sorted_outcomes(burst(server, [second], range(50, 55)))
        assert later["other"] == {}, later
        assert later["queued"], f"no fetch was queued: {later}"
        release_first()
        # The writer stores the first receipt's batch, then waits for the second's row.
        assert wait_for(lambda: events_by_network(postgresql_url), 10)
        written = journals(data_dir)
        stored = journal_keys(postgresql_url)
        os.kill(worker, signal.SIGKILL)
        keys = journal_lines(written)
        assert set(keys) == masked([*answered["queued"], *later["queued"]])
        assert stored and set(stored) <= masked(answered["queued"])
        assert {ip: keys[ip] for ip in stored} == stored  # stored, and still in the journal
        assert wait_for(lambda: dead(worker), 10)
        release_second()

    # Before the replay the operator turns client names off: each line is now judged a fetch by
    # no named client, which no stored event matches as a repeat; only its key can tell.
    anonymous = replace(server, env={**server.env, "OPENRECEIPT_COLLECT_CLIENT": "off"})
    replayed = anonymous.openreceipt("spool", "replay")
    left = len(keys) - len(stored) + len(answered["spooled"]) + len(later["spooled"])
    assert f"{left} recorded, {len(stored)} not recorded (" in replayed, replayed
    assert "; 0 rejected; 0 left" in replayed, replayed
    clients = dict(rows(postgresql_url, "SELECT ip, coalesce(client, '') FROM event"))
    assert {ip for ip, client in clients.items() if client} == set(stored)
    every = masked([*NETWORKS, *range(50, 55)])
    assert events_by_network(postgresql_url) == Counter(dict.fromkeys(every, 1))
    assert {ip: key for ip, key in journal_keys(postgresql_url).items() if ip in keys} == keys
    assert counted_as_stored(postgresql_url)
    assert spool_is_empty(data_dir)
    server.stop()
    assert_clean_logs(server)
