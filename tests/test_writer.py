"""The worker's writer (web/pixel/writer.py) and its journal (web/pixel/journal.py), on SQLite
and PostgreSQL: a fetch alone is stored before its answer; fetches that arrive while the worker
stores another are journaled, answered at once and stored by the writer, many to a transaction,
each exactly once; what the database cannot take goes to the spool; a journal whose worker is
gone is replayed by the spool. (A worker really killed under load: test_journal_kill.py.)"""

import json
import logging
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from peewee import OperationalError

from web.judgement.classify import Fetch
from web.pixel import journal, spool, writer
from web.storage.engine import utcnow
from web.storage.models import Event, Pixel

from .helpers import held, mint, pixel_path, wait_for

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


@pytest.fixture(autouse=True)
def queue_never_too_old(monkeypatch):
    """The queue's age limit is tried in its own test: elsewhere a slow moment of the machine
    must not make a fetch wait for room."""
    monkeypatch.setattr(writer, "MOST_QUEUED_SECONDS", 600)


def fetch_of(public_id, network, city="London"):
    return Fetch(
        user_agent=THUNDERBIRD,
        ip=f"81.2.{network}.0",
        public_id=public_id,
        at=utcnow(),
        browser=f"{network:032x}",  # the keyed hash of user agent and network
        country="GB",
        city=city,
    )


def writer_of(app):
    return app.extensions["openreceipt.pixel"].writer


def spool_dir(app):
    return Path(app.config["DATA_DIR"]) / "spool"


def journals(app):
    return sorted(spool_dir(app).glob("journal-*.jsonl"))


def journal_keys(path):
    return [json.loads(line)["key"] for line in path.read_text(encoding="ascii").splitlines()]


def queued_while_busy(app, fetches):
    """Record `fetches` while another fetch of the worker is being stored (its thread holds the
    writing): each is queued. Their outcomes; the writing is still held."""
    busy = writer_of(app)
    with busy._lock:
        assert not busy._writing
        busy._writing = True
    with app.app_context():
        return [busy.record(fetch) for fetch in fetches]


def stored_alone_and_handed_over(app):
    """The fetch stored alone is done: what was queued meanwhile is the writer's; wait for it."""
    busy = writer_of(app)
    busy._hand_over()
    assert busy.drain(10)


def failing_with(error):
    """A stand-in for a function that fails with `error`, whatever it is given."""

    def fail(*args, **kwargs):
        raise error

    return fail


def queued_then_failed(app, pixel, count, error):
    """`count` fetches of `pixel` queued while the worker is busy, their batch then failing with
    `error` when the writer stores it (the writer deals with that); their journal keys."""
    recorder = app.extensions["openreceipt"].recorder
    queued_while_busy(app, [fetch_of(pixel, n) for n in range(count)])
    keys = journal_keys(journals(app)[0])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recorder, "record_queued", failing_with(error))
        stored_alone_and_handed_over(app)
    return keys


def stored_keys(app):
    with app.app_context():
        return sorted(event.spool_key for event in Event.select())


def test_a_fetch_alone_is_stored_before_its_answer_and_needs_no_journal(
    app, client, auth, database
):
    pixel = mint(client, auth)
    response = client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": THUNDERBIRD},
        environ_base={"REMOTE_ADDR": "81.2.1.9"},
    )
    assert response.headers["X-Openreceipt"] == "recorded: open"
    with app.app_context():
        assert Event.get().spool_key is None
    assert journals(app) == []


def test_fetches_while_the_worker_stores_another_are_journaled_then_stored_once_each(
    app, client, auth, database
):
    pixels = [mint(client, auth, subject=f"#{n}")["id"] for n in range(3)]
    fetches = [fetch_of(pixels[n % 3], n) for n in range(12)]
    assert queued_while_busy(app, fetches) == [writer.QUEUED] * 12
    # Before they are stored, each is in the journal, with a key of its own.
    (path,) = journals(app)
    keys = journal_keys(path)
    assert len(set(keys)) == 12 and stored_keys(app) == []
    lines = [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]
    assert [line["ip"] for line in lines] == [fetch.ip for fetch in fetches]
    stored_alone_and_handed_over(app)
    assert stored_keys(app) == sorted(keys)
    with app.app_context():
        assert {p.public_id: p.open_count for p in Pixel.select()} == dict.fromkeys(pixels, 4)
    # Everything in it is stored: the journal is empty again, and stays the worker's.
    assert path.stat().st_size == 0 and not spool.has_work(app.config["DATA_DIR"])


def test_the_journal_is_readable_by_its_owner_only(app, client, auth, database):
    pixel = mint(client, auth)["id"]
    queued_while_busy(app, [fetch_of(pixel, 1)])
    (path,) = journals(app)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool_dir(app).stat().st_mode) == 0o700
    stored_alone_and_handed_over(app)


def test_the_queue_is_stored_many_fetches_to_a_transaction(
    app, client, auth, database, monkeypatch
):
    """More fetches queued than a transaction takes: stored in turns, oldest first, until the
    queue is empty; then nobody in the worker is writing, and the next fetch is stored alone."""
    monkeypatch.setattr(writer, "MOST_AT_ONCE", 4)
    recorder = app.extensions["openreceipt"].recorder
    batches, record_queued = [], recorder.record_queued

    def counted(fetches):
        batches.append([fetch.ip for fetch in fetches])
        return record_queued(fetches)

    monkeypatch.setattr(recorder, "record_queued", counted)
    pixels = [mint(client, auth, subject=f"#{n}")["id"] for n in range(3)]
    fetches = [fetch_of(pixels[n % 3], n) for n in range(14)]
    queued_while_busy(app, fetches)
    stored_alone_and_handed_over(app)
    assert [len(batch) for batch in batches] == [4, 4, 4, 2]
    assert sum(batches, []) == [fetch.ip for fetch in fetches]
    busy = writer_of(app)
    assert not busy._queue and not busy._writing
    with app.app_context():
        assert Event.select().count() == 14
        assert busy.record(fetch_of(pixels[0], 99)) == "recorded: open"


def test_the_writer_gathers_a_moments_fetches_into_one_batch(
    app, client, auth, database, monkeypatch
):
    """Fewer fetches queued than a batch takes: the writer waits until the oldest was queued
    GATHER_SECONDS ago, and those queued meanwhile go in the same transaction."""
    monkeypatch.setattr(writer, "GATHER_SECONDS", 0.5)
    recorder = app.extensions["openreceipt"].recorder
    batches, record_queued = [], recorder.record_queued

    def counted(fetches):
        batches.append(len(fetches))
        return record_queued(fetches)

    monkeypatch.setattr(recorder, "record_queued", counted)
    pixel = mint(client, auth)["id"]
    busy = writer_of(app)
    assert queued_while_busy(app, [fetch_of(pixel, 1)]) == [writer.QUEUED]
    busy._hand_over()  # the writer's turn: it waits for more
    time.sleep(0.1)
    with app.app_context():
        assert [busy.record(fetch_of(pixel, n)) for n in (2, 3)] == [writer.QUEUED] * 2
    assert busy.drain(10)
    assert batches == [3]
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 3


def waiting_for_room(app, pixel, monkeypatch):
    """A full queue (MOST_QUEUED 2, both queued while the worker is busy) and a third fetch of
    `pixel` waiting for room in a thread of its own: (the thread, its outcome once answered)."""
    monkeypatch.setattr(writer, "MOST_QUEUED", 2)
    busy = writer_of(app)
    assert queued_while_busy(app, [fetch_of(pixel, n) for n in range(2)]) == [writer.QUEUED] * 2
    outcome = []

    def third():
        with app.app_context():
            outcome.append(busy.record(fetch_of(pixel, 2)))

    thread = threading.Thread(target=third)
    thread.start()
    assert wait_for(lambda: busy._room._waiters)  # it waits for room
    assert outcome == []
    return thread, outcome


def writer_takes_its_batch(app):
    """As the writer does under its lock: the queue's fetches taken off it as its batch, and
    whoever waits for room told; the fetches taken."""
    busy = writer_of(app)
    taken = [fetch for fetch, _, _ in busy._queue]
    busy._queue.clear()
    busy._room.notify_all()
    return taken


def test_a_full_queue_makes_the_next_fetch_wait_for_room(app, client, auth, database, monkeypatch):
    """The writer is behind: past MOST_QUEUED a fetch waits until the writer takes fetches off
    the queue, then is queued and answered (the writer still at work: here its batch is stored
    after the fetch is queued, so that the writer cannot be done first)."""
    pixel = mint(client, auth)["id"]
    thread, outcome = waiting_for_room(app, pixel, monkeypatch)
    busy = writer_of(app)
    with busy._lock:
        taken = writer_takes_its_batch(app)
    thread.join(10)
    assert outcome == [writer.QUEUED]
    with app.app_context():
        app.extensions["openreceipt"].recorder.record_queued(taken)
    stored_alone_and_handed_over(app)
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 3


def test_a_fetch_that_waited_for_room_while_the_writer_finished_is_stored_alone(
    app, client, auth, database, monkeypatch
):
    """The writer takes the full queue and, finding nothing more, is done before the fetch that
    waited for room runs again: that fetch is stored by its own thread, not queued where no
    writer would come for it."""
    pixel = mint(client, auth)["id"]
    thread, outcome = waiting_for_room(app, pixel, monkeypatch)
    busy = writer_of(app)
    with busy._lock:  # its batch taken, then nothing left, the writer is done
        taken = writer_takes_its_batch(app)
        busy._writing = False
    thread.join(10)
    assert outcome == ["recorded: open"]
    assert not busy._queue and not busy._writing
    with app.app_context():
        app.extensions["openreceipt"].recorder.record_queued(taken)
        assert Pixel.get(Pixel.public_id == pixel).open_count == 3


def test_a_fetch_that_finds_no_room_within_its_wait_is_spooled(
    app, client, auth, database, monkeypatch
):
    """The writer makes no room (its database stuck): the fetch goes to the spool, with a key
    of its own, and is stored by a replay."""
    monkeypatch.setattr(writer, "MOST_QUEUED", 2)
    monkeypatch.setattr(writer, "ROOM_WAIT_SECONDS", 0.05)
    pixel = mint(client, auth)["id"]
    outcomes = queued_while_busy(app, [fetch_of(pixel, n) for n in range(3)])
    assert outcomes == [writer.QUEUED] * 2 + ["spooled: database unavailable"]
    stored_alone_and_handed_over(app)
    assert spool.replay(app)["recorded"] == 1
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 3
        assert Event.select().where(Event.spool_key.is_null()).count() == 0


def test_a_queue_whose_oldest_fetch_waits_too_long_has_no_room(
    app, client, auth, database, monkeypatch
):
    """What a worker answers is on the status page within a second: once the oldest queued
    fetch has waited MOST_QUEUED_SECONDS, the next one waits for room (here, finding none in
    time, it is spooled)."""
    monkeypatch.setattr(writer, "MOST_QUEUED_SECONDS", 0.05)
    monkeypatch.setattr(writer, "ROOM_WAIT_SECONDS", 0.05)
    pixel = mint(client, auth)["id"]
    assert queued_while_busy(app, [fetch_of(pixel, 1)]) == [writer.QUEUED]
    busy = writer_of(app)
    assert wait_for(lambda: not busy._has_room())
    with app.app_context():
        assert busy.record(fetch_of(pixel, 2)) == "spooled: database unavailable"
    stored_alone_and_handed_over(app)
    assert spool.replay(app)["recorded"] == 1
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2


def test_a_fetch_the_journal_cannot_take_is_stored_before_its_answer(
    app, client, auth, database, monkeypatch, caplog
):
    """The journal cannot be written (the disk full): a fetch while the worker is busy is not
    answered `queued` (nothing would keep it if the worker died), but stored first; the log
    says so once, not once a fetch."""
    pixel = mint(client, auth)["id"]
    busy = writer_of(app)
    monkeypatch.setattr(
        busy.journal, "append", failing_with(OSError(28, "No space left on device"))
    )
    outcomes = queued_while_busy(app, [fetch_of(pixel, 1), fetch_of(pixel, 2)])
    assert outcomes == ["recorded: open"] * 2
    logged = [r.getMessage() for r in caplog.records if "journal not written" in r.getMessage()]
    assert logged == [
        "journal not written (fetches stored before their answers meanwhile): "
        "No space left on device"
    ]
    stored_alone_and_handed_over(app)
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2


def test_a_click_is_stored_before_its_redirect_even_while_the_worker_is_busy(
    app, client, auth, database
):
    pixel = mint(client, auth)["id"]
    busy = writer_of(app)
    queued_while_busy(app, [])
    with app.app_context():
        assert busy.record(fetch_of(pixel, 1), wait=True) == "recorded: open"
    stored_alone_and_handed_over(app)


def test_a_queued_fetch_the_database_refuses_fails_alone(app, client, auth, database, caplog):
    """PostgreSQL refuses a city longer than its column: that fetch is logged as not recorded,
    the others of its batch are stored. SQLite stores text of any length: there, all three
    are."""
    pixel = mint(client, auth)["id"]
    fetches = [fetch_of(pixel, 1), fetch_of(pixel, 2, city="x" * 5000), fetch_of(pixel, 3)]
    queued_while_busy(app, fetches)
    stored_alone_and_handed_over(app)
    refused = app.config["DATABASE_URL"].startswith("postgresql")
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == (2 if refused else 3)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len([m for m in logged if m.startswith("pixel fetch not recorded: DataError")]) == (
        1 if refused else 0
    )


def test_queued_fetches_the_database_cannot_take_wait_in_the_spool(
    app, client, auth, database, monkeypatch
):
    """The database is away when the writer comes to a batch: each of its fetches goes to the
    spool with its key, and a replay stores each once."""
    pixel = mint(client, auth)["id"]
    away = OperationalError("could not connect to server: Connection refused")
    keys = queued_then_failed(app, pixel, 3, away)
    assert stored_keys(app) == [] and spool.pending(app.config["DATA_DIR"]) == 3
    counts = spool.replay(app)
    assert (counts["recorded"], counts["left"]) == (3, 0)
    assert stored_keys(app) == sorted(keys)


def test_a_journal_whose_worker_is_gone_is_replayed_and_nothing_stored_twice(
    app, client, auth, database
):
    """A worker died with fetches in its journal, one of them already stored by its writer: the
    replay stores the others, and the stored one is known by its key."""
    pixel = mint(client, auth)["id"]
    fetches = [replace(fetch_of(pixel, n), key=f"{n:032x}") for n in range(3)]
    with app.app_context():
        app.extensions["openreceipt"].recorder.record_queued(fetches[:1])
    folder = spool_dir(app)
    folder.mkdir(mode=0o700, exist_ok=True)
    orphan = folder / "journal-999999-1.jsonl"
    orphan.write_bytes(b"".join((json.dumps(spool.to_json(f)) + "\n").encode() for f in fetches))
    assert spool.has_work(app.config["DATA_DIR"])
    counts = spool.replay(app)
    assert (counts["recorded"], counts["not_recorded"], counts["left"]) == (2, 1, 0)
    assert stored_keys(app) == [f"{n:032x}" for n in range(3)]
    assert not orphan.exists() and journals(app) == []


def test_an_empty_journal_whose_worker_is_gone_is_removed(app):
    folder = spool_dir(app)
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "journal-999999-1.jsonl").write_bytes(b"")
    assert spool.replay(app)["left"] == 0
    assert journals(app) == []


def test_a_journal_whose_worker_lives_is_left_to_it(app, client, auth, database):
    """This process's own journal, locked by it: the replay neither takes nor removes it."""
    pixel = mint(client, auth)["id"]
    queued_while_busy(app, [fetch_of(pixel, 1)])
    (path,) = journals(app)
    assert not journal.orphans(spool_dir(app))
    assert not spool.has_work(app.config["DATA_DIR"])
    assert spool.replay(app)["recorded"] == 0
    assert journals(app) == [path] and stored_keys(app) == []
    stored_alone_and_handed_over(app)
    assert len(stored_keys(app)) == 1


def test_past_its_limit_the_journal_keeps_only_what_is_still_to_be_stored(
    app, client, auth, database, monkeypatch
):
    """Under a load that never lets the queue run empty, the journal is written anew, before
    each batch, with that batch and the queue behind it: a new file takes the old one's
    place."""
    monkeypatch.setattr(writer, "MOST_AT_ONCE", 2)
    monkeypatch.setattr(writer, "REWRITE_BYTES", 1)
    recorder = app.extensions["openreceipt"].recorder
    seen, record_queued = [], recorder.record_queued

    def looked_at(fetches):
        (path,) = journals(app)
        seen.append((path.name, journal_keys(path), [fetch.key for fetch in fetches]))
        return record_queued(fetches)

    monkeypatch.setattr(recorder, "record_queued", looked_at)
    pixel = mint(client, auth)["id"]
    queued_while_busy(app, [fetch_of(pixel, n) for n in range(5)])
    keys = journal_keys(journals(app)[0])
    stored_alone_and_handed_over(app)
    assert [held for _, held, _ in seen] == [keys, keys[2:], keys[4:]]
    assert [batch for _, _, batch in seen] == [keys[:2], keys[2:4], keys[4:]]
    assert len({name for name, _, _ in seen}) == 3
    assert stored_keys(app) == sorted(keys)


def test_a_stopping_worker_stores_its_queue_and_removes_its_journal(app, client, auth, database):
    pixel = mint(client, auth)["id"]
    queued_while_busy(app, [fetch_of(pixel, n) for n in range(3)])
    busy = writer_of(app)
    busy._hand_over()
    busy.stop()
    assert len(stored_keys(app)) == 3
    assert journals(app) == []


def test_a_batch_that_fails_for_another_reason_waits_in_the_spool_and_says_why(
    app, client, auth, database, monkeypatch, caplog
):
    """Not the database: something else fails the batch (a fault of the server's own). Its
    fetches go to the spool with their keys, the log says what failed, and the writer goes on
    to the next fetches."""
    pixel = mint(client, auth)["id"]
    keys = queued_then_failed(app, pixel, 2, RuntimeError("a fault of the server's own"))
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["queued fetches spooled: RuntimeError: a fault of the server's own"]
    lines = (spool_dir(app) / "active.jsonl").read_text(encoding="ascii").splitlines()
    spooled = [json.loads(line)["key"] for line in lines]
    assert spooled == keys
    queued_while_busy(app, [fetch_of(pixel, 5)])
    stored_alone_and_handed_over(app)
    assert len(stored_keys(app)) == 1


def test_a_journal_that_cannot_be_emptied_or_rewritten_is_logged_and_the_writer_goes_on(
    app, client, auth, database, monkeypatch, caplog
):
    busy = writer_of(app)
    monkeypatch.setattr(writer, "REWRITE_BYTES", 1)

    failing = failing_with(OSError(5, "Input/output error"))
    pixel = mint(client, auth)["id"]
    queued_while_busy(app, [fetch_of(pixel, n) for n in range(2)])
    monkeypatch.setattr(busy.journal, "rewrite", failing)
    monkeypatch.setattr(busy.journal, "empty", failing)
    stored_alone_and_handed_over(app)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [
        "journal not rewritten: Input/output error",
        "journal not emptied: Input/output error",
    ]
    assert len(stored_keys(app)) == 2


def writes_cut_to(monkeypatch, length):
    """Every os.write from now on writes its first `length` bytes only (a disk that fills)."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:length]))


def test_a_journal_rewritten_in_vain_leaves_no_file_of_its_own(tmp_path, monkeypatch):
    """The new journal cannot be written in full: it goes, and the old one stays in place."""
    kept = journal.Journal(tmp_path / "spool")
    kept.append(b"one\n")
    writes_cut_to(monkeypatch, 1)
    with pytest.raises(OSError):
        kept.rewrite([b"one\n", b"two\n"])
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == [kept.path.name]
    assert kept.path.read_bytes() == b"one\n"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OperationalError("database is locked"), "busy for 45 ms"),
        (OperationalError("database is busy\nand more"), "busy for 45 ms"),
        (
            OperationalError("server closed the connection\nunexpectedly"),
            "server closed the connection",
        ),
        (OperationalError("x" * 300), "x" * 200),
        (OperationalError(), "OperationalError"),
    ],
    ids=["locked", "busy", "first-line", "cut", "no-message"],
)
def test_a_fetch_the_database_cannot_take_is_spooled_with_the_reason_in_one_short_line(
    app, client, auth, database, monkeypatch, caplog, error, reason
):
    recorder = app.extensions["openreceipt"].recorder
    monkeypatch.setattr(recorder, "record_now", failing_with(error))
    pixel = mint(client, auth)["id"]
    with app.app_context():
        assert writer_of(app).record(fetch_of(pixel, 1)) == "spooled: database unavailable"
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fetch ")]
    assert logged == [f"fetch spooled: database: {reason}"]
    assert spool.pending(app.config["DATA_DIR"]) == 1
    # With a key of its own, which the replay stores with it: a replay cut short stores it once.
    (line,) = (spool_dir(app) / spool.ACTIVE).read_text(encoding="ascii").splitlines()
    assert len(json.loads(line)["key"]) == 32


def test_a_fetch_neither_the_database_nor_the_spool_takes_is_said_lost(
    app, client, auth, database, monkeypatch, caplog
):
    recorder = app.extensions["openreceipt"].recorder
    monkeypatch.setattr(
        recorder, "record_now", failing_with(OperationalError("database is locked"))
    )
    monkeypatch.setattr(
        spool, "append", failing_with(spool.SpoolError(30, "Read-only file system"))
    )
    pixel = mint(client, auth)["id"]
    with app.app_context():
        outcome = writer_of(app).record(fetch_of(pixel, 1))
    assert outcome == "not recorded: database and spool unavailable"
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["fetch lost: database: busy for 45 ms; spool: Read-only file system"]


def test_a_journal_that_cannot_be_written_leaves_no_half_line(tmp_path, monkeypatch):
    """A line written in part is taken back, and only it: the lines before it stay whole."""
    kept = journal.Journal(tmp_path / "spool")
    kept.append(b"one\n")
    kept.append(b"one and a half\n")
    writes_cut_to(monkeypatch, 2)
    with pytest.raises(OSError):
        kept.append(b"two\n")
    monkeypatch.undo()
    kept.append(b"three\n")
    assert kept.path.read_bytes() == b"one\none and a half\nthree\n"
    kept.close()
    assert kept.path.exists()  # it still holds a fetch: left to the spool's replay


def test_a_drain_the_database_holds_up_says_so_when_its_time_is_up(app, client, auth, database):
    """The queue cannot be stored within the drain's time (another writer holds the receipt):
    drain() says so rather than that all is stored; once the writer lets go, it is."""
    pixel = mint(client, auth)["id"]
    busy = writer_of(app)
    assert queued_while_busy(app, [fetch_of(pixel, 1)]) == [writer.QUEUED]
    with held(app, pixel):
        busy._hand_over()
        assert busy.drain(0.3) is False
    assert busy.drain(10)
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 1


def test_a_worker_that_stops_with_fetches_still_queued_keeps_them_in_its_journal(
    app, client, auth, database
):
    """The worker exits while fetches wait in its queue (its writer never came for them within
    stop()'s time): the journal keeps them for the spool's replay."""
    pixel = mint(client, auth)["id"]
    busy = writer_of(app)
    assert queued_while_busy(app, [fetch_of(pixel, 1), fetch_of(pixel, 2)]) == [writer.QUEUED] * 2
    (path,) = journals(app)
    keys = journal_keys(path)
    busy.stop(0.3)
    assert path.exists() and journal_keys(path) == keys


def test_a_worker_that_stops_while_its_batch_is_held_keeps_the_batch_in_its_journal(
    app, client, auth, database
):
    """The worker exits while its writer's batch waits for the database (another writer holds
    the receipt) past stop()'s time: the queue is empty, the batch taken off it but not stored,
    and the journal keeps the batch's fetches for the spool's replay (emptied, they would go
    with the process)."""
    pixel = mint(client, auth)["id"]
    busy = writer_of(app)
    assert queued_while_busy(app, [fetch_of(pixel, 1)]) == [writer.QUEUED]
    (path,) = journals(app)
    keys = journal_keys(path)
    with held(app, pixel):
        busy._hand_over()
        deadline = time.monotonic() + 10
        while busy._queue and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer takes its batch off the queue
        assert not busy._queue and busy._writing
        busy.stop(0.3)
        assert path.exists() and journal_keys(path) == keys
    assert busy.drain(10)
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 1


def test_a_queued_fetch_from_a_city_with_a_non_ascii_name_is_journaled_in_ascii(
    app, client, auth, database
):
    """The spool's replay sets aside as damaged any line that is not ASCII: a journal line
    escapes what is not (a city's name), so that a dead worker's journal is replayed whole."""
    pixel = mint(client, auth)["id"]
    assert queued_while_busy(app, [fetch_of(pixel, 1, city="Zürich")]) == [writer.QUEUED]
    (line,) = journals(app)[0].read_bytes().splitlines()
    assert line.isascii() and json.loads(line)["city"] == "Zürich"
    stored_alone_and_handed_over(app)
    with app.app_context():
        assert Event.get().city == "Zürich"
