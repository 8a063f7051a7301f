"""Where a fetch goes once the pixel has judged it genuine: into the database now, into the
worker's queue, or into the spool (spool.py).

A fetch that finds nobody in its worker storing fetches is stored at once, by its own thread, and
answered once it is committed (its outcome in the debug header is what became of it). A fetch
that arrives while its worker is storing others does not wait for them: it is written to the
worker's journal (journal.py), put in the worker's queue and answered at once; the worker's
writer, a thread of its own, stores the queue MOST_AT_ONCE fetches to a transaction (once the
oldest has waited GATHER_SECONDS for others to join it) until it is empty, then empties the
journal. Under load, then, no request thread waits for another's
transaction, and each transaction stores many fetches: one read, one INSERT and one counters
UPDATE a batch (recording.py).

What an answered fetch is promised: it is stored, or on its way to be. A fetch answered
`recorded` is committed; one answered `queued` is in the journal, a file the operating system
has even if the worker is killed the next moment (kill -9, or the host's whole process tree):
a journal whose worker is gone is taken over by the spool's replay, and each fetch's key keeps
what the writer did store from being stored twice. While the journal cannot be written (the
disk full), fetches are stored before their answers, as one alone is. A power cut may lose
what the operating system had not yet written out: neither the journal nor the spool is
fsynced (nor is SQLite's write-ahead log at every commit: synchronous=NORMAL).

When the queue holds MOST_QUEUED fetches, or its oldest was queued MOST_QUEUED_SECONDS ago, the
writer is behind the requests: a fetch then waits for room before it is queued and answered, so
that a worker answers as fast as it stores, no faster, and what it answered is soon on the
status page; one that finds no room within ROOM_WAIT_SECONDS (the database stuck) is spooled. A
batch the database cannot take (away, or busy past its limits) goes to the spool, as a fetch
alone does."""

import collections
import json
import os
import threading
import time
from dataclasses import replace

from peewee import DatabaseError, DataError, IntegrityError

from ..storage.engine import PIXEL_WAIT_MS, db
from . import spool
from .journal import REWRITE_BYTES, Journal

QUEUED = "queued: stored by the worker's writer"
MOST_AT_ONCE = 200  # the most queued fetches one transaction stores
MOST_QUEUED = 1000  # the most fetches a worker's queue holds; past it, a fetch waits for room
# The oldest a queued fetch may be before the next waits for room: under load, what a worker
# answered is on the status page within a second.
MOST_QUEUED_SECONDS = 0.3
ROOM_WAIT_SECONDS = 1  # the longest a fetch waits for room before it is spooled
# How long the writer waits for more fetches once its queue is empty, before it leaves the next
# fetch to be stored alone (which, under load, costs far more than a moment's wait).
LINGER_SECONDS = 0.005
# How long a queued fetch waits for others before the writer stores them (unless MOST_AT_ONCE
# are queued): a batch costs nearly as much whether it stores 20 fetches or 100, most of it
# this thread's turns at Python's lock, which the worker's request threads hold most of the
# time under load. A tenth of a second keeps what was answered on the status page well within
# a second.
GATHER_SECONDS = 0.1
MB = 1024 * 1024
# A failure that repeats at every fetch (the full spool turning fetches away, the journal that
# cannot be written) is logged once a minute per worker at most: a line a fetch would make the
# log grow as fast as the fetches come.
LOG_EVERY_SECONDS = 60


class Writer:
    """The worker's way of storing the pixel's fetches: record() for each, stop() when the worker
    exits. Built once for the app (create_app); its thread starts in the process that first
    queues a fetch (a gunicorn worker, never the master before the fork)."""

    def __init__(self, recorder, config, logger):
        self.recorder = recorder
        self.config = config
        self.logger = logger
        self.journal = Journal(spool.directory(config["DATA_DIR"]))
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # the writer took fetches off a full queue
        self._queue = collections.deque()  # (fetch, its journal line, when), oldest first
        self._waiting_for_room = 0
        self._writing = False  # a thread of this worker is storing fetches
        self._wake = threading.Semaphore(0)  # the writer's turn: the queue is its to store
        self._thread = None
        self._logged_at = {}  # what -> when last logged (_log_due)

    def record(self, fetch, wait=False):
        """Store the fetch now, or queue it while this worker stores others (unless `wait`: a
        click's redirect waits for its event); the outcome, as the debug header says it."""
        if wait:
            return self._store_now(fetch)
        # Its journal line is made before the lock, which every request thread of the worker
        # takes: only the queue's own work is done holding it.
        keyed = replace(fetch, key=ordered_key())
        line = (json.dumps(spool.to_json(keyed), ensure_ascii=True) + "\n").encode()
        with self._lock:
            room = self._room_within(ROOM_WAIT_SECONDS) if self._writing else True
            # Nobody in the worker storing fetches, even if the writer finished while this one
            # waited for room: it is stored now (queued, nobody would come for it).
            alone = not self._writing
            if alone:
                self._writing = True
            elif room and self._queue_fetch(keyed, line):
                return QUEUED
        if alone:
            try:
                return self._store_now(fetch)
            finally:
                self._hand_over()
        if not room:
            # The writer made no room for a second: its database is stuck.
            return self.spool(keyed, "the worker's writer is behind")
        # No journal to promise it in (the disk full, say): stored before its answer.
        return self._store_now(fetch)

    def _room_within(self, seconds):
        """Under the lock: whether the queue has room, waiting up to `seconds` for the writer to
        make some (it is behind: the answer waits, and the requests slow down to what the
        database takes)."""
        deadline = None
        while not self._has_room():
            now = time.monotonic()
            if deadline is None:
                deadline = now + seconds
            if now >= deadline:
                return False
            self._waiting_for_room += 1
            try:
                self._room.wait(deadline - now)
            finally:
                self._waiting_for_room -= 1
        return True

    def _has_room(self):
        """Whether the queue has room: fewer than MOST_QUEUED fetches, the oldest queued less
        than MOST_QUEUED_SECONDS ago."""
        queue = self._queue
        return not queue or (
            len(queue) < MOST_QUEUED and time.monotonic() - queue[0][2] < MOST_QUEUED_SECONDS
        )

    def _queue_fetch(self, fetch, line):
        """Under the lock: the fetch (with its key) into the journal, as `line`, and the queue;
        whether it went in (not when the journal cannot be written)."""
        try:
            self.journal.append(line)
        except OSError as error:
            if self._log_due("journal"):
                self.logger.error(
                    "journal not written (fetches stored before their answers meanwhile): %s",
                    error.strerror or error,
                )
            return False
        self._queue.append((fetch, line, time.monotonic()))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="openreceipt-writer", daemon=True
            )
            self._thread.start()
        return True

    def _hand_over(self):
        """A fetch stored alone: the fetches queued meanwhile are the writer's to store."""
        with self._lock:
            if self._queue:
                self._wake.release()
            else:
                self._writing = False

    def _run(self):
        while True:
            self._wake.acquire()
            self._store_queue()

    def _store_queue(self):
        """Store the queue, MOST_AT_ONCE at a time, until it is empty; then the journal holds
        nothing still to be stored."""
        lingered = False
        while True:
            with self._lock:
                gathering = self._gathering()
            if gathering > 0:
                time.sleep(gathering)
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(MOST_AT_ONCE, len(self._queue)))]
                if self._waiting_for_room:
                    self._room.notify_all()
                if not batch and lingered:
                    self._empty_journal()
                    self._writing = False
                    return
            if not batch:
                # Under load the next fetches are a moment away: wait for them rather than
                # leave the next one to be stored alone, by its own thread.
                time.sleep(LINGER_SECONDS)
                lingered = True
                continue
            lingered = False
            with self._lock:
                if self.journal.size > REWRITE_BYTES:
                    self._rewrite_journal(batch)
            try:
                self._store_queued([fetch for fetch, _, _ in batch])
            finally:
                if not db.is_closed():
                    db.close()  # back to the pool

    def _gathering(self):
        """Under the lock: how long to wait for more fetches before storing the queue: until
        its oldest was queued GATHER_SECONDS ago, unless it already holds a full batch."""
        queue = self._queue
        if not queue or len(queue) >= MOST_AT_ONCE:
            return 0
        return GATHER_SECONDS - (time.monotonic() - queue[0][2])

    def _empty_journal(self):
        try:
            self.journal.empty()
        except OSError as error:
            self.logger.error("journal not emptied: %s", error.strerror or error)

    def _rewrite_journal(self, batch):
        """The journal with only what is still to be stored: this batch and the queue."""
        try:
            self.journal.rewrite([line for _, line, _ in (*batch, *self._queue)])
        except OSError as error:
            self.logger.error("journal not rewritten: %s", error.strerror or error)

    def _store_queued(self, fetches):
        """Store a batch of answered fetches; what the database cannot take goes to the spool."""
        try:
            self.recorder.record_queued(fetches)
        except (DataError, IntegrityError):
            # One fetch is at fault (the database refuses it): it alone must fail.
            for fetch in fetches:
                try:
                    self.recorder.record_queued([fetch])
                except (DataError, IntegrityError) as error:
                    self.logger.error(
                        "pixel fetch not recorded: %s: %s", type(error).__name__, error
                    )
                except DatabaseError as error:
                    self.spool(fetch, _reason(error))
        except DatabaseError as error:
            reason = _reason(error)
            for fetch in fetches:
                self.spool(fetch, reason)
        except Exception as error:  # noqa: BLE001 - the writer goes on; the fetches wait
            self.logger.error("queued fetches spooled: %s: %s", type(error).__name__, error)
            for fetch in fetches:
                self.spool(fetch, type(error).__name__)

    def _store_now(self, fetch):
        """Store the fetch in its own thread, or spool it when the database cannot take it at
        once; the outcome."""
        try:
            return self.recorder.record_now([fetch])[0]
        except (DataError, IntegrityError):
            raise  # the fetch itself is at fault: replaying it later would fail the same way
        except DatabaseError as error:
            return self.spool(replace(fetch, key=ordered_key()), _reason(error))

    def spool(self, fetch, reason):
        """Keep the fetch (with its key) in the spool, to be stored once the database takes it
        again; the outcome."""
        config = self.config
        try:
            written = spool.append(
                config["DATA_DIR"], fetch, max_bytes=config["SPOOL_MAX_MB"] * MB, fold_repeats=True
            )
        except spool.SpoolFull as full:
            self._log_spool_full(reason, full.dropped)
            return "not recorded: database unavailable and spool full"
        except spool.SpoolError as spool_error:
            self.logger.error("fetch lost: database: %s; spool: %s", reason, spool_error.strerror)
            return "not recorded: database and spool unavailable"
        if not written:
            return "not recorded: repeat of a fetch seconds ago"
        self.logger.warning("fetch spooled: database: %s", reason)
        return "spooled: database unavailable"

    def _log_due(self, what, first=False):
        """Whether to log `what` now (a failure that may repeat at every fetch): when it is the
        `first` of its kind, or was not logged within LOG_EVERY_SECONDS; if so, it is now."""
        now = time.monotonic()
        logged = self._logged_at.get(what)
        if not first and logged is not None and now - logged < LOG_EVERY_SECONDS:
            return False
        self._logged_at[what] = now
        return True

    def _log_spool_full(self, reason, dropped):
        """Say that the full spool dropped a fetch: the host's first drop, then once a minute."""
        if not self._log_due("spool full", first=dropped <= 1):
            return
        self.logger.error(
            "pixel fetch dropped: database: %s; the spool is full (OPENRECEIPT_SPOOL_MAX_MB=%s): "
            "it keeps the oldest fetches, %s dropped so far on this host",
            reason,
            self.config["SPOOL_MAX_MB"],
            dropped,
        )

    def drain(self, timeout=10):
        """Wait until every fetch queued so far is stored (or spooled); whether it was within
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queue and not self._writing:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def stop(self, timeout=10):
        """The worker exits: store what is queued, then close the journal (left for the spool's
        replay if the database did not take everything: fetches still queued, or a batch taken
        off the queue that its transaction has not stored yet)."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if running:
            self.drain(timeout)
        with self._lock:
            if not self._queue and not self._writing:
                self._empty_journal()
            self.journal.close()


def ordered_key():
    """A key for a queued fetch, unique as a random one is (its last 64 bits are random) and
    ordered by time (its first 64 bits are the time in nanoseconds): each event's key goes at
    the end of the unique index on Event.spool_key, not at a random place in it, which under
    load would write a page of the index for nearly every event."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def _reason(error):
    """Why the database did not take a fetch, in one short line."""
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    if "locked" in reason or "busy" in reason:
        reason = f"busy for {PIXEL_WAIT_MS} ms"
    return reason
