"""Recording fetches: judge them and store them, many at a time, with their SQL written once —
building a Peewee query costs more than the database takes to run it, and this runs for every
fetch of every pixel.

The pixel hands each fetch to Recorder.record_together, which stores the fetches a worker's
threads bring at the same moment together (a group commit, at most MOST_TOGETHER), and answers
each once its batch is committed: an answered fetch is stored. A batch goes like this:

1. Screen, without the write lock: one query reads the facts of the batch's pixels and the
   events from the batch's networks within the repeat window around it; each fetch is judged
   against them. A repeat of a fetch seconds ago (most of what mail proxies send) stops here,
   and a batch of repeats never waits for the write lock.
2. Commit, under the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: the pixels' rows, FOR
   UPDATE, in one order): the same query again, now that no other writer can change what it
   reads, and each fetch judged again where its facts changed (the sender's own view, a
   recipient put on the do-not-track list) or a twin was stored meanwhile by another worker.
   The events go in with one executemany (psycopg sends them in one round trip), and each
   pixel's counters, state and times move once for all its events, in one UPDATE that never
   loses a concurrent count and only moves times outwards (a replayed fetch may be older than
   one recorded meanwhile).
3. In the same transaction, an open or a delivery whose owner wants to hear of it puts a notice
   in the outbox for each of their channels (notifications/outbox.py; sent later). Such a
   pixel's events are stored one by one, each counted before the next asks whether it is the
   first open.

The spool's replay (record_replayed) goes through step 2 alone, with each fetch's key checked so
that it is stored once. The statements are the same as the Peewee models describe
(storage/models.py); the tests run every fetch through here and read the results back through
the models.

In one file on purpose: the SQL, the judgement it feeds and the group commit that runs it are
one path, every fetch's, and each part's correctness (exactly once, repeats folded, counts never
lost) rests on the others."""

import datetime
import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from peewee import DataError, IntegrityError, SqliteDatabase, __exception_wrapper__

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
TIME_COLUMNS = ("sent_at", "last_self_view_at", "tracking_stopped_at")

NO_SUCH_PIXEL = "not recorded: no such pixel"
STOPPED = "not recorded: a recipient is on the do-not-track list"
REPEAT = "not recorded: repeat of a fetch seconds ago"
REPLAYED = "not recorded: already replayed"


@dataclass(frozen=True)
class Statements:
    """The recording's SQL in one database's dialect."""

    read: str
    lock: str | None
    replayed: str
    insert: str
    count: str
    sqlite: bool


# The columns of an event as the pixel stores it (_event gives them in this order), and of a
# pixel's count of its new events (_counting): the events of each kind, the latest event, the
# earliest that shows delivery, the earliest and the latest open (NULL when none), the furthest
# state reached (NULL when none).
EVENT_COLUMNS = {
    "pixel_id": "integer",
    "at": "timestamp",
    "kind": "text",
    "source": "text",
    "reason": "text",
    "ip": "text",
    "country": "text",
    "city": "text",
    "client": "text",
    "spool_key": "text",
    "link_id": "integer",
}
COUNT_COLUMNS = {
    "id": "integer",
    **{kind.value: "integer" for kind in KINDS},
    "latest": "timestamp",
    "delivered": "timestamp",
    "first_open": "timestamp",
    "last_open": "timestamp",
    "reached": "text",
}


def _rows(sqlite, columns):
    """Where a statement takes its rows: SQLite runs it once a row (executemany, named
    parameters); PostgreSQL once for all, each column an array, unnest()ed to rows `d` (one
    statement, one round trip, one plan). ({column: value expression}, the FROM clause)."""
    if sqlite:
        return {name: f":{name}" for name in columns}, ""
    arrays = ", ".join(f"%s::{kind}[]" for kind in columns.values())
    return {name: f"d.{name}" for name in columns}, f"unnest({arrays}) AS d({', '.join(columns)})"


def _count_statement(sqlite):
    """The UPDATE that counts each pixel's new events at once: counts only ever added to, times
    only moved outwards (a replayed fetch may be older than one recorded meanwhile), the state
    only forwards."""
    value, rows = _rows(sqlite, COUNT_COLUMNS)

    def rank(expression):
        ranks = " ".join(f"WHEN '{state}' THEN {n}" for n, state in enumerate(STATES))
        return f"CASE {expression} {ranks} ELSE -1 END"

    def moved(column, new, keep):
        # A NULL column compares as not kept: it takes the new value.
        return (
            f"{column} = CASE WHEN {new} IS NULL OR {column} {keep} {new} "
            f"THEN {column} ELSE {new} END"
        )

    parts = [f"{kind}_count = {kind}_count + {value[kind]}" for kind in KINDS]
    parts += [
        moved("last_event_at", value["latest"], ">="),
        moved("activity_at", value["latest"], ">="),
        moved("delivered_at", value["delivered"], "<="),
        moved("first_open_at", value["first_open"], "<="),
        moved("last_open_at", value["last_open"], ">="),
        f"state = CASE WHEN {rank('state')} < {rank(value['reached'])} "
        f"THEN {value['reached']} ELSE state END",
    ]
    where = f"id = {value['id']}" if sqlite else f"pixel.id = {value['id']}"
    return f"UPDATE pixel SET {', '.join(parts)}{' FROM ' + rows if rows else ''} WHERE {where}"


def statements(database):
    sqlite = isinstance(database, SqliteDatabase)
    p = database.param
    # A list of values as one parameter: SQLite reads a JSON array, PostgreSQL an array.
    in_list = f"IN (SELECT value FROM json_each({p}))" if sqlite else f"= ANY({p})"
    notified = "EXISTS (SELECT 1 FROM notify_channel c WHERE c.user_id = p.owner_id)"
    # PostgreSQL: the row's version (xmin) too, which every write to it changes (_Seen).
    version = "NULL" if sqlite else "p.xmin::text"
    value, rows = _rows(sqlite, EVENT_COLUMNS)
    columns = ", ".join(EVENT_COLUMNS)
    return Statements(
        # The facts of the batch's pixels, whether their owners have a channel to notify, and
        # who fetched them from the batch's networks within the repeat window: one row per such
        # event (at, network, link, source, client), or one row of NULLs after the facts.
        read=(
            f"SELECT p.public_id, {version}, p.id, "
            f"{', '.join('p.' + name for name in FACT_COLUMNS)}, p.tracking_stopped_at, "
            f"{notified}, e.at, e.ip, e.link_id, e.source, e.client "
            "FROM pixel p LEFT JOIN event e ON e.pixel_id = p.id "
            f"AND e.at BETWEEN {p} AND {p} AND (e.ip IS NULL OR e.ip {in_list}) "
            f"WHERE p.public_id {in_list}"
        ),
        # PostgreSQL: lock the pixels' rows first, all in one order (two hosts' batches never
        # wait for each other in a circle). Their versions say whether anything wrote to them
        # since they were read (_Seen.changed); if so, they are read again in a statement of
        # its own, whose snapshot (READ COMMITTED) sees what was committed while we waited.
        lock=None
        if sqlite
        else (
            "SELECT public_id, xmin::text FROM pixel WHERE public_id = ANY(%s) "
            "ORDER BY public_id FOR UPDATE"
        ),
        replayed=f"SELECT spool_key FROM event WHERE spool_key {in_list}",
        insert=(
            f"INSERT INTO event ({columns}) VALUES ({', '.join(value.values())})"
            if sqlite
            else f"INSERT INTO event ({columns}) SELECT {columns} FROM {rows}"
        ),
        count=_count_statement(sqlite),
        sqlite=sqlite,
    )


_sql = dialect_statements(statements)


def _listed(sql, values):
    """A list of values as the statements' one parameter for it."""
    return json.dumps(values) if sql.sqlite else values


def _put(sql, statement, rows):
    """Run the statement for each row ({column: value}), in one go: SQLite with executemany,
    PostgreSQL once with a column of values for each parameter. The cursor."""
    if sql.sqlite:
        with __exception_wrapper__:
            cursor = db.cursor()
            cursor.executemany(statement, rows)
        return cursor
    columns = [[row[name] for row in rows] for name in rows[0]]
    return db.execute_sql(statement, columns)


@dataclass
class _Pending:
    """A fetch on its way through a batch: its judgement per set of facts (unchanged facts are
    not judged again), what it was judged against facts (facts, verdict, client), and what came
    of it."""

    fetch: object
    verdicts: dict = field(default_factory=dict)
    judged: tuple | None = None
    outcome: str | None = None
    seen: object = None  # the screen's _Seen, shared by the batch (None: not screened)


class _Seen:
    """What the batch's read found: each pixel's facts by public id (with its row's version on
    PostgreSQL), and the times of the events stored within the repeat window by fetcher (pixel,
    network, link, source, client), to which the fetches the batch stores are added as it
    goes."""

    def __init__(self, sql, rows):
        self.sql = sql
        self.pixels = {}
        self.versions = {}
        self.fetched = defaultdict(list)
        for public_id, version, pixel_id, *facts, at, ip, link, source, client in rows:
            if public_id not in self.pixels:
                self.pixels[public_id] = _facts(pixel_id, *facts)
                self.versions[public_id] = version
            if source is not None:
                self.fetched[(pixel_id, ip, link, source, client)].append(sql_time(at, sql.sqlite))

    def changed(self, versions, wanted):
        """Whether one of the `wanted` pixels' rows was written to (or deleted) since it was
        read, given their versions [(public id, version)] as they are now (PostgreSQL: every
        transaction that writes a row gives it a new xmin; a stored event always moves its
        pixel's counters, and a do-not-track stop or the sender's own view is written on it)."""
        now = dict(versions)
        return set(now) != wanted or any(self.versions.get(key) != now[key] for key in now)

    def repeat(self, fetcher, at):
        """Whether `fetcher` fetched within the repeat window around `at`; if not, that it did
        now."""
        low, high = _window(self.sql, at)
        times = self.fetched[fetcher]
        if any(low <= time <= high for time in times):
            return True
        times.append(sql_time(at, self.sql.sqlite))
        return False


def _facts(pixel_id, *row):
    """{fact: value} from a pixel's part of a read row, with "judged_on": the facts the
    judgement rests on."""
    *facts, stopped, notified = row
    values = dict(zip(FACT_COLUMNS, facts, strict=True))
    values.update(id=pixel_id, tracking_stopped_at=stopped, notified=bool(notified))
    for name in TIME_COLUMNS:
        values[name] = Pixel._meta.fields[name].python_value(values[name])
    values["judged_on"] = tuple(values[name] for name in FACT_COLUMNS)
    return values


def _window(sql, at):
    """The repeat window around `at`, in the form the database compares."""
    return sql_time(at - REPEAT_WINDOW, sql.sqlite), sql_time(at + REPEAT_WINDOW, sql.sqlite)


def _read(sql, fetches):
    """_Seen for the fetches: one query for all of them."""
    ips = sorted({fetch.ip for fetch in fetches if fetch.ip is not None})
    public_ids = sorted({fetch.public_id for fetch in fetches})
    low = _window(sql, min(fetch.at for fetch in fetches))[0]
    high = _window(sql, max(fetch.at for fetch in fetches))[1]
    params = (low, high, _listed(sql, ips), _listed(sql, public_ids))
    return _Seen(sql, db.execute_sql(sql.read, params).fetchall())


def _event(fetch, facts, verdict, client, sql):
    """The event's row, EVENT_COLUMNS."""
    values = (
        facts["id"],
        sql_time(fetch.at, sql.sqlite),
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
    return dict(zip(EVENT_COLUMNS, values, strict=True))


def _counting(pixel_id, events, sql):
    """The count of a pixel's new events [(kind, at)], COUNT_COLUMNS."""
    count = dict.fromkeys(COUNT_COLUMNS)
    count.update(id=pixel_id, **dict.fromkeys(KINDS, 0))
    for kind, _ in events:
        count[kind] += 1
    every = [at for _, at in events]
    delivery = [at for kind, at in events if kind in SHOWS_DELIVERY]
    opens = [at for kind, at in events if kind == Kind.OPEN]
    reached = [STATE_REACHED[kind] for kind, _ in events if kind in STATE_REACHED]
    times = {
        "latest": max(every),
        "delivered": min(delivery, default=None),
        "first_open": min(opens, default=None),
        "last_open": max(opens, default=None),
    }
    count.update({name: sql_time(at, sql.sqlite) for name, at in times.items()})
    count["reached"] = max(reached, key=STATES.index) if reached else None
    return count


def _held_lock():
    lock = threading.Lock()
    lock.acquire()
    return lock


# The most fetches one transaction stores (record_together). A batch holds SQLite's one write
# lock while it is written, and the other workers' fetches wait for it PIXEL_WAIT_MS at most
# before they are spooled: 20 keeps a batch well within that.
MOST_TOGETHER = 20


@dataclass
class _Waiting:
    """A fetch waiting in record_together, and what came of it. Its thread sleeps in sleep()
    until woken, once: when its fetch is done, or when it is to write the next batches. (A bare
    lock, held until then: far cheaper to make, wait on and wake than a threading.Event, and
    there is one a fetch.)"""

    fetch: object
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
        return self._commit([_Pending(fetch) for fetch in fetches], short_waits=False)

    def record_together(self, fetch):
        """The pixel's way: store this fetch in one transaction with those this process's
        other threads are storing at the same moment (group commit), and return its outcome
        once that transaction is committed. A thread that finds nobody writing becomes the
        writer: it writes the waiting fetches, MOST_TOGETHER at a time, until its own is
        stored, then hands the writing to the next waiting thread, if any. Each other thread
        sleeps until its fetch is stored (or it is handed the writing): it is woken once, not
        at every batch. Under load, one read, one transaction and one turn at the write lock
        serve many fetches; alone, a fetch is written at once."""
        me = _Waiting(fetch)
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
            outcomes = self._write([waiting.fetch for waiting in batch])
        except (DataError, IntegrityError):
            # One fetch is at fault (the database refuses it): it alone must fail, so each is
            # written on its own.
            for waiting in batch:
                try:
                    waiting.outcome = self._write([waiting.fetch])[0]
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

    def _write(self, fetches):
        """Screen the pixel's fetches, then commit those still to be stored; their outcomes."""
        return self._commit(self._screen(fetches), short_waits=True)

    def _screen(self, fetches):
        """Step 1, without the write lock: the fetches as _Pending, each judged, with its
        outcome when it is not to be stored (most repeats end here)."""
        seen = _read(_sql(), fetches)
        pending = [_Pending(fetch, seen=seen) for fetch in fetches]
        for one in pending:
            one.outcome, one.judged = self._judge(one, seen)
        return pending

    def _commit(self, pending, short_waits):
        """Step 2, under the write lock: store the pending fetches that have no outcome yet, in
        one transaction, in order; the outcomes of all."""
        sql = _sql()
        todo = [one for one in pending if one.outcome is None]
        outcomes = {}

        def write():
            with write_transaction(settings=PIXEL_TIMEOUTS if short_waits else None):
                versions = None
                if sql.lock:
                    ids = sorted({one.fetch.public_id for one in todo})
                    versions = db.execute_sql(sql.lock, (ids,)).fetchall()
                return self._store(sql, todo, versions)

        if todo:
            outcomes = with_short_lock_waits(write) if short_waits else write()
        return [outcomes.get(id(one), one.outcome) for one in pending]

    def _store(self, sql, todo, versions):
        """Under the write lock: judge the fetches again on what the database holds now, and
        store those that are still new events; {id(pending): outcome}. On PostgreSQL,
        `versions` are the pixels' rows' versions as locked: when no other transaction wrote
        to them since the screen read them, its judgement still holds as it is."""
        outcomes = {}
        keys = [one.fetch.key for one in todo if one.fetch.key is not None]
        replayed = set()
        if keys:
            rows = db.execute_sql(sql.replayed, (_listed(sql, keys),)).fetchall()
            replayed = {key for (key,) in rows}
        fresh = []
        for one in todo:
            key = one.fetch.key
            if key is not None and key in replayed:
                outcomes[id(one)] = REPLAYED
            else:
                replayed.add(key)
                fresh.append(one)
        if not fresh:
            return outcomes
        screens = {one.seen for one in fresh}
        (screen,) = screens if len(screens) == 1 else (None,)
        wanted = {one.fetch.public_id for one in todo}
        if screen is None or versions is None or screen.changed(versions, wanted):
            seen = _read(sql, [one.fetch for one in fresh])
            judgements = [self._judge(one, seen) for one in fresh]
        else:
            judgements = [(one.outcome, one.judged) for one in fresh]
        stored = defaultdict(list)  # pixel id -> [(fetch, facts, verdict, client)]
        for one, (outcome, judged) in zip(fresh, judgements, strict=True):
            if outcome is None:
                stored[judged[0]["id"]].append((one.fetch, *judged))
                outcome = f"recorded: {judged[1].kind}"
            outcomes[id(one)] = outcome
        events, counts = [], []
        for pixel_id, found in stored.items():
            if found[0][1]["notified"]:
                for event in found:
                    self._store_notified(sql, *event)
                continue
            events += [_event(*event, sql) for event in found]
            counts.append(_counting(pixel_id, [(v.kind, f.at) for f, _, v, _ in found], sql))
        if events:
            _put(sql, sql.insert, events)
            _put(sql, sql.count, counts)
        return outcomes

    def _judge(self, one, seen):
        """(outcome, None) when the fetch is not to be stored, else (None, (facts, verdict,
        client)), against what `seen` holds (to which a fetch to be stored is added)."""
        fetch = one.fetch
        facts = seen.pixels.get(fetch.public_id)
        if facts is None:
            return NO_SUCH_PIXEL, None
        if facts["tracking_stopped_at"] is not None:
            return STOPPED, None
        judged_on = facts["judged_on"]
        if judged_on not in one.verdicts:
            pixel = PixelFacts(*judged_on)
            verdict = self.judge.verdict(fetch, pixel, fetch.at)
            one.verdicts[judged_on] = (verdict, self.judge.client(fetch.user_agent, verdict.source))
        verdict, client = one.verdicts[judged_on]
        fetcher = (facts["id"], fetch.ip, fetch.link_id, verdict.source, client)
        if seen.repeat(fetcher, fetch.at):
            return REPEAT, None
        return None, (facts, verdict, client)

    def _store_notified(self, sql, fetch, facts, verdict, client):
        """One event of a pixel whose owner has a channel: asked whether it notifies before it
        is counted (the first open is the one that finds no open counted), stored, counted, and
        its notices queued with its id."""
        pixel_id = facts["id"]
        reason = REASONS.get(verdict.kind)
        notices = outbox.to_notify(pixel_id, reason, verdict.source, fetch.at) if reason else []
        event = [_event(fetch, facts, verdict, client, sql)]
        if sql.sqlite:  # (executemany leaves lastrowid unset)
            event_id = db.execute_sql(sql.insert, event[0]).lastrowid
        else:
            event_id = _put(sql, f"{sql.insert} RETURNING id", event).fetchone()[0]
        _put(sql, sql.count, [_counting(pixel_id, [(verdict.kind, fetch.at)], sql)])
        outbox.queue(notices, event_id)
