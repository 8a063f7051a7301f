"""Recording a fetch: judge it and store it, with its SQL written once — building a Peewee
query costs more than SQLite takes to run it, and this runs for every fetch of every pixel.

One fetch is judged and stored like this (Recorder.record_together):
1. without a lock, read the pixel's facts and judge the fetch; a repeat of a fetch seconds ago
   (most of what mail proxies send) stops here without ever waiting for the write lock;
2. otherwise, take the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: the pixel's row, FOR
   UPDATE) and insert the event, in a statement that checks that the facts it was judged on
   still hold and that no twin was stored meanwhile (by another worker); then move the pixel's
   counters, state and times in one UPDATE that never loses a concurrent count. When the check
   fails (rarely), the facts are read again under the lock and the fetch judged again;
3. in the same transaction, an open or a delivery whose owner wants to hear of it puts a notice
   in the outbox for each of their channels (notifications/outbox.py; sent later).

The pixel stores its fetches together (Recorder.record_together, a group commit): the fetches a
worker's threads bring at the same moment go into one transaction, and each is answered once
that transaction is committed. An answered fetch is stored, as it was when each had a
transaction of its own; what changes is that one turn at the write lock serves many fetches.

The statements are the same as the Peewee models describe (storage/models.py); the tests run
every fetch through here and read the results back through the models.

Near 400 lines, in one file on purpose: the SQL, the judgement before the lock that the SQL
checks, and the group commit that runs it are one path, every fetch's, and each part's
correctness (exactly once, repeats folded, counts never lost) rests on the others."""

import datetime
import threading
from dataclasses import dataclass, field

from peewee import DataError, IntegrityError, SqliteDatabase

from ..judgement.classify import PixelFacts
from ..notifications import outbox
from ..notifications.policy import REASONS
from ..storage.engine import (
    PIXEL_ROW_WAIT_MS,
    db,
    dialect_statements,
    sql_time,
    with_short_lock_waits,
    write_transaction,
)
from ..storage.models import Pixel
from ..vocabulary import KINDS, SHOWS_DELIVERY, STATE_REACHED, STATES, Kind

# PostgreSQL: the batch's waits, for this transaction only, sent with its BEGIN.
PIXEL_TIMEOUTS = (
    f"SET LOCAL lock_timeout = '{PIXEL_ROW_WAIT_MS}ms'; SET LOCAL statement_timeout = '2s'"
)
# Mail clients and proxies often fetch an image twice: the same fetcher within 10 s is one event.
REPEAT_WINDOW = datetime.timedelta(seconds=10)
FACT_COLUMNS = ("mint_fingerprint", "sent_at", "last_self_view_at", "mail_hosting")
TIME_COLUMNS = {"sent_at", "last_self_view_at", "tracking_stopped_at"}


@dataclass(frozen=True)
class Statements:
    """The recording's SQL in one database's dialect."""

    facts: str
    lock: str | None
    replayed: str
    # kind -> the statements that store an event of that kind and count it on its pixel (SQLite:
    # the INSERT and the UPDATE; PostgreSQL: one statement), and the UPDATE's number of times
    store: dict
    sqlite: bool


def _latest(column, p):
    return f"{column} = CASE WHEN {column} IS NULL OR {column} < {p} THEN {p} ELSE {column} END"


def _earliest(column, p):
    return f"{column} = CASE WHEN {column} IS NULL OR {column} > {p} THEN {p} ELSE {column} END"


def _update(kind, p):
    """The UPDATE of one pixel for one new event of `kind`; every time parameter is the event's
    time. Times only move outwards: a replayed fetch may be older than one recorded meanwhile."""
    parts = [f"{kind}_count = {kind}_count + 1", _latest("last_event_at", p)]
    parts.append(_latest("activity_at", p))
    reached = STATE_REACHED.get(kind)
    if reached:
        earlier = ", ".join(f"'{state}'" for state in STATES[: STATES.index(reached)])
        parts.append(f"state = CASE WHEN state IN ({earlier}) THEN '{reached}' ELSE state END")
    if kind in SHOWS_DELIVERY:
        parts.append(_earliest("delivered_at", p))
    if kind == Kind.OPEN:
        parts += [_earliest("first_open_at", p), _latest("last_open_at", p)]
    times = sum(part.count(p) for part in parts)
    return f"UPDATE pixel SET {', '.join(parts)} WHERE id = {p}", times


def statements(database):
    sqlite = isinstance(database, SqliteDatabase)
    p = database.param
    same = "IS" if sqlite else "IS NOT DISTINCT FROM"  # equal, NULL included
    # The pixel's facts, whether its owner has a channel to notify, and who fetched it from the
    # same network within the repeat window: one row per such event (source, client), or one
    # row of NULLs after the facts.
    notified = "EXISTS (SELECT 1 FROM notify_channel c WHERE c.user_id = p.owner_id)"
    facts = (
        f"SELECT p.id, {', '.join('p.' + name for name in FACT_COLUMNS)}, p.tracking_stopped_at, "
        f"{notified}, "
        "e.source, e.client FROM pixel p LEFT JOIN event e ON e.pixel_id = p.id "
        f"AND e.at BETWEEN {p} AND {p} AND e.ip {same} {p} AND e.link_id {same} {p} "
        f"WHERE p.public_id = {p}"
    )
    # The event, only if the facts it was judged on still hold and no twin was stored since:
    # checked in the statement that stores it, so the judgement made before the write lock
    # (Recorder._screen) needs no second read under it.
    unchanged = " AND ".join(f"p.{name} {same} {p}" for name in FACT_COLUMNS)
    insert = (
        "INSERT INTO event (pixel_id, at, kind, source, reason, ip, country, city, client, "
        f"spool_key, link_id) SELECT {', '.join([p] * 11)} WHERE EXISTS (SELECT 1 FROM pixel p "
        f"WHERE p.id = {p} AND {unchanged} AND p.tracking_stopped_at IS NULL AND "
        f"{notified} = {p}) "
        f"AND NOT EXISTS (SELECT 1 FROM event e WHERE e.pixel_id = {p} AND e.at BETWEEN {p} "
        f"AND {p} AND e.ip {same} {p} AND e.source = {p} AND e.client {same} {p} "
        f"AND e.link_id {same} {p})"
    )
    counters = {kind: _update(kind, p) for kind in KINDS}
    return Statements(
        facts=facts,
        # PostgreSQL: lock the pixels' rows first, all in one order (two hosts' batches never
        # wait for each other in a circle), then read in a statement of its own, whose snapshot
        # (READ COMMITTED) sees the event a concurrent twin committed while we waited.
        lock=None
        if sqlite
        else f"SELECT 1 FROM pixel WHERE public_id = ANY({p}) ORDER BY public_id FOR UPDATE",
        replayed=f"SELECT 1 FROM event WHERE spool_key = {p}",
        # SQLite: the event, then (if it was stored) its pixel's counters; PostgreSQL: both in
        # one statement, one round trip, which returns the event's id (no row if it was not).
        store={
            kind: (insert, sql, times)
            if sqlite
            else (
                f"WITH e AS ({insert} RETURNING id) {sql} AND EXISTS (SELECT 1 FROM e) "
                "RETURNING (SELECT id FROM e)",
                times,
            )
            for kind, (sql, times) in counters.items()
        },
        sqlite=sqlite,
    )


_sql = dialect_statements(statements)


def _window(sql, at):
    """The repeat window around `at`, as the statements' two time parameters."""
    return sql_time(at - REPEAT_WINDOW, sql.sqlite), sql_time(at + REPEAT_WINDOW, sql.sqlite)


def _facts(row):
    """{fact: value} from a facts row, with "id", "tracking_stopped_at", "notified", and "as_read":
    the facts the judgement rests on as the database gave them, for the store's check that they
    still hold."""
    names = ("id", *FACT_COLUMNS, "tracking_stopped_at", "notified")
    values = dict(zip(names, row, strict=False))
    values["as_read"] = (*row[1 : 1 + len(FACT_COLUMNS)], values["notified"])
    for name in TIME_COLUMNS:
        values[name] = Pixel._meta.fields[name].python_value(values[name])
    return values


def _held_lock():
    lock = threading.Lock()
    lock.acquire()
    return lock


# The most fetches one transaction stores (record_together). A batch holds SQLite's one write
# lock while it is written (some 0.3 ms a fetch), and the other workers' fetches wait for it
# PIXEL_WAIT_MS at most before they are spooled: 20 keeps a batch well within that.
MOST_TOGETHER = 20


@dataclass
class _Waiting:
    """A fetch waiting in record_together, and what came of it. Its thread sleeps in sleep()
    until woken, once: when its fetch is done, or when it is to write the next batches. (A bare
    lock, held until then: far cheaper to make, wait on and wake than a threading.Event, and
    there is one a fetch.)"""

    fetch: object
    verdicts: dict
    judged: tuple | None
    outcome: str | None = None
    error: BaseException | None = None
    done: bool = False
    _asleep: object = field(default_factory=_held_lock)

    def sleep(self):
        self._asleep.acquire()

    def wake(self):
        self._asleep.release()


class Recorder:
    """Judges and stores fetches with this server's judge: built once at start-up, called by
    the pixel endpoint for each fetch (record_together) and by the spool's replay for the
    spooled ones (record_replayed)."""

    def __init__(self, judge):
        self.judge = judge
        self._waiting = []
        self._waiting_lock = threading.Lock()  # guards _waiting and _writer
        self._writer = False  # whether a thread is writing batches

    def record_replayed(self, fetches):
        """Store spooled fetches (each with its key) in one transaction, in order, each exactly
        once; their outcomes. A fetch the database refuses fails them all (the caller tries
        each alone)."""
        return self._write([(fetch, {}, None) for fetch in fetches], short_waits=False)

    def record_together(self, fetch):
        """The pixel's way: store this fetch in one transaction with those this process's
        other threads are storing at the same moment (group commit), and return its outcome
        once that transaction is committed. A thread that finds nobody
        writing becomes the writer: it writes the waiting fetches, MOST_TOGETHER at a time,
        until its own is stored, then hands the writing to the next waiting thread, if any.
        Each other thread sleeps until its fetch is stored (or it is handed the writing): it
        is woken once, not at every batch. Under load, one transaction and one turn at the
        write lock serve many fetches; alone, a fetch is written at once."""
        verdicts = {}
        outcome, judged = self._screen(fetch, verdicts)
        if outcome is not None:
            return outcome
        me = _Waiting(fetch, verdicts, judged)
        with self._waiting_lock:
            self._waiting.append(me)
            writer, self._writer = not self._writer, True
        if not writer:
            me.sleep()
        if not me.done:
            self._write_until_done(me)
        if me.error is not None:
            raise me.error
        return me.outcome

    def _write_until_done(self, me):
        """Write the waiting fetches in batches until `me` is stored, then wake the next
        waiting thread to go on writing, or say that nobody is."""
        while not me.done:
            with self._waiting_lock:
                batch = self._waiting[:MOST_TOGETHER]
                del self._waiting[:MOST_TOGETHER]
            self._write_together(batch, me)
        with self._waiting_lock:
            if self._waiting:
                self._waiting[0].wake()
            else:
                self._writer = False

    def _write_together(self, batch, writer):
        """Write a batch in one transaction, and wake each of its threads but the writer's."""
        try:
            outcomes = self._write([(w.fetch, w.verdicts, w.judged) for w in batch], True)
        except (DataError, IntegrityError):
            # One fetch is at fault (the database refuses it): it alone must fail, so each is
            # written on its own.
            for waiting in batch:
                try:
                    one = [(waiting.fetch, waiting.verdicts, waiting.judged)]
                    waiting.outcome = self._write(one, True)[0]
                except Exception as error:  # noqa: BLE001 - handed to the fetch's own thread
                    waiting.error = error
        except Exception as error:  # noqa: BLE001 - the database is away: each thread spools
            for waiting in batch:
                waiting.error = error
        else:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                waiting.outcome = outcome
        finally:
            for waiting in batch:
                waiting.done = True
                if waiting is not writer:
                    waiting.wake()

    def _screen(self, fetch, verdicts):
        """Without the write lock: (outcome, None) when the fetch is not to be stored (most
        repeats end here, never waiting for the lock), else (None, what _assess judged), which
        the store checks still holds. A replayed fetch is looked at under the lock only."""
        if fetch.key is not None:
            return None, None
        return self._assess(_sql(), fetch, verdicts)

    def _assess(self, sql, fetch, verdicts):
        """(outcome, None) when the fetch is not to be stored, else (None, (pixel id, verdict,
        client)). `verdicts` keeps this fetch's judgement per set of facts: unchanged facts are
        not judged again."""
        at = fetch.at
        rows = db.execute_sql(
            sql.facts, (*_window(sql, at), fetch.ip, fetch.link_id, fetch.public_id)
        ).fetchall()
        if not rows:
            return "not recorded: no such pixel", None
        facts = _facts(rows[0])
        if facts["tracking_stopped_at"] is not None:
            return "not recorded: a recipient is on the do-not-track list", None
        known = tuple(facts.values())
        if known not in verdicts:
            pixel = PixelFacts(**{name: facts[name] for name in FACT_COLUMNS})
            verdict = self.judge.verdict(fetch, pixel, at)
            verdicts[known] = (verdict, self.judge.client(fetch.user_agent, verdict.source))
        verdict, client = verdicts[known]
        if any(row[-2:] == (verdict.source, client) for row in rows):
            return "not recorded: repeat of a fetch seconds ago", None
        return None, (facts, verdict, client)

    def _write(self, fetches, short_waits):
        """Store (fetch, verdicts, judged) triples in one transaction, in order; their
        outcomes."""
        sql = _sql()

        def write():
            outcomes = []
            # PostgreSQL: the pixels' rows may be held by other batches, a purge batch or a
            # correction: wait PIXEL_ROW_WAIT_MS at most, then fail (and the pixel spools the
            # fetches).
            with write_transaction(settings=PIXEL_TIMEOUTS if short_waits else None):
                if sql.lock:
                    db.execute_sql(sql.lock, (sorted({fetch.public_id for fetch, *_ in fetches}),))
                for fetch, verdicts, judged in fetches:
                    if fetch.key is not None:
                        if db.execute_sql(sql.replayed, (fetch.key,)).fetchone() is not None:
                            outcomes.append("not recorded: already replayed")
                            continue
                    outcomes.append(self._record_one(sql, fetch, verdicts, judged))
            return outcomes

        return with_short_lock_waits(write) if short_waits else write()

    def _record_one(self, sql, fetch, verdicts, judged):
        """Under the write lock: store the fetch as it was judged before the lock, if that
        judgement still holds; else look at it again (its facts changed, or a twin was stored
        meanwhile, or it was never judged: a replayed fetch). Its outcome."""
        if judged is None or not self._store(sql, fetch, *judged):
            outcome, judged = self._assess(sql, fetch, verdicts)
            if outcome is not None:
                return outcome
            # What the store checks was read just now, under the lock: it holds.
            self._store(sql, fetch, *judged)
        return f"recorded: {judged[1].kind}"

    def _store(self, sql, fetch, facts, verdict, client):
        """The event, its notices, and the pixel's counters, state and times, if the facts
        `verdict` rests on still hold and no twin of the fetch was stored meanwhile. Whether it
        was stored."""
        pixel_id = facts["id"]
        reason = REASONS.get(verdict.kind)
        notices = []
        if reason and facts["notified"]:
            notices = outbox.to_notify(pixel_id, reason, verdict.source, fetch.at)
        stamp = sql_time(fetch.at, sql.sqlite)
        event = (
            pixel_id,
            stamp,
            verdict.kind,
            verdict.source,
            verdict.reason[:200],
            fetch.ip,
            fetch.country,
            fetch.city,
            client,
            fetch.key,
            fetch.link_id,
        )
        unchanged = (pixel_id, *facts["as_read"])
        no_twin = (
            pixel_id,
            *_window(sql, fetch.at),
            fetch.ip,
            verdict.source,
            client,
            fetch.link_id,
        )
        *statements, times = sql.store[verdict.kind]
        counters = (*[stamp] * times, pixel_id)
        if sql.sqlite:
            insert, update = statements
            cursor = db.execute_sql(insert, (*event, *unchanged, *no_twin))
            if cursor.rowcount != 1:
                return False
            event_id = cursor.lastrowid
            db.execute_sql(update, counters)
        else:
            row = db.execute_sql(
                statements[0], (*event, *unchanged, *no_twin, *counters)
            ).fetchone()
            if row is None:
                return False
            event_id = row[0]
        outbox.queue(notices, event_id)
        return True
