"""Recording fetches: judge them and store them, many at a time, with their SQL written once —
building a Peewee query costs more than the database takes to run it, and this runs for every
fetch of every pixel.

The pixel's fetches come here through the worker's writer (writer.py): a fetch alone through
Recorder.record_now, answered once it is committed; the fetches queued while the worker stores
others through Recorder.record_queued, many to a transaction. A batch goes like this:

1. Screen, without the write lock: one query reads the facts of the batch's pixels and, for
   each (pixel, network) pair of the batch, that pixel's events from that network within the
   repeat window around it; each fetch is judged against them. A repeat of a fetch seconds
   ago (most of what mail proxies send) stops here, and a batch of repeats never waits for
   the write lock.
2. Commit, under the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: the pixels' rows, FOR
   UPDATE, in one order): the same query again, now that no other writer can change what it
   reads, and each fetch judged again where its facts changed (the sender's own view, a
   recipient put on the do-not-track list) or a twin was stored meanwhile by another worker.
   The events go in with one INSERT, and each pixel's counters, state and times move once for
   all its events, in one UPDATE that never loses a concurrent count and only moves times
   outwards (a replayed fetch may be older than one recorded meanwhile): each statement takes
   all its rows in one parameter (a JSON array), so a batch of 200 is a few statements, not
   hundreds of steps, each of which would let go of Python's lock and wait to get it back
   from the request threads. On PostgreSQL, when the screen's plan stands, the whole
   transaction goes to the server as one message (Recorder._wrote_at_once): the rows stay
   locked only while the server works, never while the writer waits for its turn at Python's
   lock between two statements (which, with five workers' writers locking the same busy
   receipts, made them queue behind each other for a tenth of a second a batch).
3. In the same transaction, an open or a delivery whose owner wants to hear of it puts a notice
   in the outbox for each of their channels (notifications/outbox.py; sent later). Such a
   pixel's events are stored one by one, each counted before the next asks whether it is the
   first open.

The spool's replay (record_replayed) goes through step 2 alone, with each fetch's key checked so
that it is stored once. The statements are the same as the Peewee models describe
(storage/models.py); the tests run every fetch through here and read the results back through
the models.

In one file on purpose: the SQL, the judgement it feeds and the batches that run it are one
path, every fetch's, and each part's correctness (exactly once, repeats folded, counts never
lost) rests on the others."""

import datetime
import functools
import json
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg
from peewee import SqliteDatabase, __exception_wrapper__

from ..judgement.classify import PixelFacts
from ..notifications import outbox
from ..notifications.policy import REASONS
from ..storage.engine import (
    PIXEL_ROW_WAIT_MS,
    db,
    dialect_statements,
    in_writers_turn,
    sql_time,
    with_short_lock_waits,
    write_transaction,
)
from ..storage.models import Pixel
from ..vocabulary import KINDS, SHOWS_DELIVERY, STATE_REACHED, STATES, Kind


@dataclass(frozen=True)
class Waits:
    """How long a batch waits for other writers: `run(write)` runs the transaction (SQLite: in
    the pixel writers' turn, storage/engine.py); `settings` ("SET LOCAL ..." statements) go to
    PostgreSQL with its BEGIN, for this transaction only."""

    run: object
    settings: tuple


# A fetch whose answer waits on it: another writer is waited for PIXEL_WAIT_MS (SQLite) or
# PIXEL_ROW_WAIT_MS (PostgreSQL) at most, then the fetch is spooled.
SHORT_WAITS = Waits(
    with_short_lock_waits,
    (f"SET LOCAL lock_timeout = '{PIXEL_ROW_WAIT_MS}ms'", "SET LOCAL statement_timeout = '2s'"),
)
# Fetches already answered (a worker's writer): as long as the database's own limits allow.
LONG_WAITS = Waits(
    in_writers_turn, ("SET LOCAL lock_timeout = '5s'", "SET LOCAL statement_timeout = '10s'")
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
    since: str | None
    insert: str
    count: str
    write_at_once: str | None
    sqlite: bool


# The columns of an event as the pixel stores it (_event gives them in this order).
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


def _rows_select(sqlite, columns):
    """The SELECT that makes the rows of one JSON parameter (a JSON array of rows: _params) into
    a table of `columns`: one statement, one step, one plan for all the rows of a batch, and
    json.dumps is the cheapest way there is to hand a database a few hundred values from
    Python."""
    if sqlite:
        picked = ", ".join(
            f"json_extract(value, '$[{n}]') AS {name}" for n, name in enumerate(columns)
        )
        return f"SELECT {picked} FROM json_each(?)"
    picked = ", ".join(
        f"(v->>{n})::{kind} AS {name}" for n, (name, kind) in enumerate(columns.items())
    )
    return f"SELECT {picked} FROM jsonb_array_elements(%s::jsonb) AS v"


def _twin_stored(within):
    """PostgreSQL: whether an event `e` from the fetcher of the planned event `d` (the same
    pixel, network, link, source and client: what the repeat check compares) is stored within
    the repeat window around it. The network is compared with = (or, for a planned event
    without one, IS NULL), which the index on event(pixel_id, at, ip) checks among its own
    entries; with IS NOT DISTINCT FROM, every event of the pixel within the window, from any
    network, would be read from the table to compare it."""
    same = " AND ".join(
        f"e.{name} IS NOT DISTINCT FROM d.{name}" for name in ("link_id", "source", "client")
    )
    twin = f"SELECT 1 FROM event e WHERE e.pixel_id = d.pixel_id AND {{}} AND {within} AND {same}"
    return (
        f"(EXISTS ({twin.format('e.ip = d.ip')}) "
        f"OR (d.ip IS NULL AND EXISTS ({twin.format('e.ip IS NULL')})))"
    )


def _count_statement(sqlite, events):
    """The UPDATE that counts each pixel's new events at once, from `events` (a FROM item of
    rows of EVENT_COLUMNS called `d`: the same rows the INSERT takes): counts only ever added
    to, times only moved outwards (a replayed fetch may be older than one recorded meanwhile),
    the state only forwards."""

    def rank(expression):
        ranks = " ".join(f"WHEN '{state}' THEN {n}" for n, state in enumerate(STATES))
        return f"CASE {expression} {ranks} ELSE -1 END"

    def moved(column, new, keep):
        # A NULL column compares as not kept: it takes the new value.
        return (
            f"{column} = CASE WHEN {new} IS NULL OR {column} {keep} {new} "
            f"THEN {column} ELSE {new} END"
        )

    # Each pixel's new events: how many of each kind, the latest, the earliest that shows
    # delivery, the earliest and the latest open (NULL when none), the furthest state they
    # reach (NULL when none).
    reaches = " ".join(
        f"WHEN '{kind}' THEN {STATES.index(state)}" for kind, state in STATE_REACHED.items()
    )
    states = " ".join(f"WHEN {n} THEN '{state}'" for n, state in enumerate(STATES))
    delivery = ", ".join(f"'{kind}'" for kind in SHOWS_DELIVERY)
    opens = f"FILTER (WHERE d.kind = '{Kind.OPEN}')"
    counted = (
        "SELECT d.pixel_id AS id, "
        + "".join(f"count(*) FILTER (WHERE d.kind = '{kind}') AS {kind}, " for kind in KINDS)
        + f"max(d.at) AS latest, min(d.at) FILTER (WHERE d.kind IN ({delivery})) AS delivered, "
        f"min(d.at) {opens} AS first_open, max(d.at) {opens} AS last_open, "
        f"CASE max(CASE d.kind {reaches} END) {states} END AS reached "
        f"FROM {events} GROUP BY d.pixel_id"
    )
    parts = [f"{kind}_count = {kind}_count + c.{kind}" for kind in KINDS]
    parts += [
        moved("last_event_at", "c.latest", ">="),
        moved("activity_at", "c.latest", ">="),
        moved("delivered_at", "c.delivered", "<="),
        moved("first_open_at", "c.first_open", "<="),
        moved("last_open_at", "c.last_open", ">="),
        f"state = CASE WHEN {rank('state')} < {rank('c.reached')} THEN c.reached ELSE state END",
    ]
    return f"UPDATE pixel SET {', '.join(parts)} FROM ({counted}) AS c WHERE pixel.id = c.id"


def statements(database):
    sqlite = isinstance(database, SqliteDatabase)
    p = database.param
    # A list of values as one parameter, a JSON array (_listed).
    in_list = (
        f"IN (SELECT value FROM json_each({p}))"
        if sqlite
        else f"IN (SELECT jsonb_array_elements_text({p}::jsonb))"
    )
    notified = "EXISTS (SELECT 1 FROM notify_channel c WHERE c.user_id = p.owner_id)"
    # A version of what was read (_Seen): PostgreSQL, the row's (xmin), which every write to it
    # changes; SQLite, the newest event's id, which every stored event moves on.
    version = "coalesce((SELECT max(id) FROM event), 0)" if sqlite else "p.xmin::text"
    window = f"interval '{REPEAT_WINDOW.total_seconds():g} seconds'"
    within = f"e.at BETWEEN d.at - {window} AND d.at + {window}"
    # PostgreSQL: a pixel's facts as one text, which the read gives and write_at_once compares.
    facts_row = (
        "NULL"
        if sqlite
        else f"ROW({', '.join('p.' + name for name in FACT_COLUMNS)}, "
        f"p.tracking_stopped_at, {notified})::text"
    )
    # The batch's events, from their one parameter.
    events = _rows_select(sqlite, EVENT_COLUMNS)
    rows = f"({events}) AS d"
    columns = ", ".join(EVENT_COLUMNS)
    # The batch's (public id, network) pairs as a table `f` (_pairs gives the parameters), and
    # the events from each pair's network within the repeat window (an event without a network
    # matches every pair of its pixel).
    if sqlite:
        pairs = (
            "(SELECT DISTINCT json_extract(value, '$[0]') AS public_id, "
            "json_extract(value, '$[1]') AS ip FROM json_each(?)) AS f"
        )
    else:
        pairs = (
            "(SELECT DISTINCT v->>0 AS public_id, v->>1 AS ip "
            "FROM jsonb_array_elements(%s::jsonb) AS v) AS f"
        )
    fetched = f"e.pixel_id = p.id AND e.at BETWEEN {p} AND {p} AND (e.ip IS NULL OR e.ip = f.ip)"
    # PostgreSQL: a LATERAL subquery that the planner may not merge into the join (OFFSET 0),
    # so that each pair's events are looked up through the index, whatever its statistics say
    # (on a table filled since the last ANALYZE they say "empty", and it would scan the whole
    # table instead, which under load is thousands of events a batch).
    fetched_from = (
        f"event e ON {fetched}"
        if sqlite
        else "LATERAL (SELECT e.at, e.ip, e.link_id, e.source, e.client FROM event e "
        f"WHERE {fetched} OFFSET 0) e ON true"
    )

    return Statements(
        # The facts of the batch's pixels, whether their owners have a channel to notify, and
        # who fetched each from the networks its fetches came from, within the repeat window:
        # one row per such event (at, network, link, source, client), or one row of NULLs after
        # the facts. Read by (pixel, network) pair, so that a pixel fetched hundreds of times a
        # window costs a look at its events from the batch's few networks, not a comparison of
        # every event of the window with every network of the batch.
        read=(
            f"SELECT p.public_id, {version}, p.id, "
            f"{', '.join('p.' + name for name in FACT_COLUMNS)}, p.tracking_stopped_at, "
            f"{notified}, e.at, e.ip, e.link_id, e.source, e.client, {facts_row} "
            f"FROM {pairs} JOIN pixel p ON p.public_id = f.public_id "
            f"LEFT JOIN {fetched_from}"
        ),
        # PostgreSQL: lock the pixels' rows first, all in one order (two hosts' batches never
        # wait for each other in a circle). Their versions say whether anything wrote to them
        # since they were read (_Seen.changed), and their facts as they are now what it was.
        lock=None
        if sqlite
        else (
            f"SELECT p.public_id, p.xmin::text, p.id, "
            f"{', '.join('p.' + name for name in FACT_COLUMNS)}, p.tracking_stopped_at, "
            f"{notified} FROM pixel p WHERE p.public_id {in_list} ORDER BY p.public_id FOR UPDATE"
        ),
        replayed=f"SELECT spool_key FROM event WHERE spool_key {in_list}",
        # Under the write lock, whether the screen's judgement still holds (_Seen.holds).
        # SQLite: the pixels' facts again, and whether an event from the batch's networks was
        # stored for them since the screen's read (one with a newer id; the unary + keeps
        # SQLite walking the few newest rows rather than the pixels' index). PostgreSQL, once
        # the pixels' rows are locked (so that every event of theirs is committed or not yet
        # begun) and in a statement of its own (whose snapshot sees what was committed while
        # it waited): how many events the read would find now.
        since=(
            f"SELECT p.public_id, EXISTS (SELECT 1 FROM event e WHERE e.id > {p} "
            f"AND +e.pixel_id IN (SELECT id FROM pixel WHERE public_id {in_list}) "
            f"AND (e.ip IS NULL OR +e.ip {in_list})), p.id, "
            f"{', '.join('p.' + name for name in FACT_COLUMNS)}, p.tracking_stopped_at, "
            f"{notified} FROM pixel p WHERE p.public_id {in_list}"
        )
        if sqlite
        else f"SELECT count(*) FROM {pairs} JOIN pixel p ON p.public_id = f.public_id "
        f"JOIN {fetched_from}",
        insert=f"INSERT INTO event ({columns}) SELECT {columns} FROM {rows}",
        count=_count_statement(sqlite, rows),
        # PostgreSQL, once the pixels' rows are locked: the batch's events and counts as the
        # screen planned them, in one statement, if what they were judged on still holds (the
        # pixels' facts as read, and no event stored meanwhile from the fetcher of one of them
        # within the repeat window around it: another worker's twin); whether it did.
        write_at_once=None
        if sqlite
        else (
            "WITH unchanged AS (SELECT count(*) = %s "
            f"AND coalesce(bool_and(x.pair->>1 = {facts_row}), true) AS yes "
            "FROM jsonb_array_elements(%s::jsonb) AS x(pair) "
            "JOIN pixel p ON p.public_id = x.pair->>0), "
            f"planned AS ({events}), "
            "holds AS (SELECT (SELECT yes FROM unchanged) AND NOT EXISTS (SELECT 1 FROM planned d "
            f"WHERE {_twin_stored(within)}) AS yes), "
            f"stored AS (INSERT INTO event ({columns}) SELECT {columns} FROM planned "
            "WHERE (SELECT yes FROM holds)), "
            f"counted AS ({_count_statement(sqlite, 'planned AS d')} AND (SELECT yes FROM holds)) "
            "SELECT yes FROM holds"
        ),
        sqlite=sqlite,
    )


_sql = dialect_statements(statements)


def _listed(values):
    """A list of values as the statements' one parameter for it."""
    return json.dumps(values)


def _put(statement, rows):
    """Run the statement for all the rows (each a list, in the statement's order) at once. The
    cursor."""
    return db.execute_sql(statement, _params(rows))


def _params(rows):
    """The rows as a statement's parameters: one JSON array of rows (times in ISO 8601)."""
    return (json.dumps(rows, default=_iso),)


def _iso(value):
    return value.isoformat()


@dataclass
class _Plan:
    """What storing a batch's fresh fetches takes, worked out before it is done: the outcomes
    {id(pending): outcome}, the events of receipts whose owners are notified (stored one by
    one), and the parameters of the others' INSERT and of their counters' UPDATE (the same
    rows: the UPDATE counts them)."""

    outcomes: dict
    notified: list
    events: object = None


@dataclass(eq=False)  # one fetch's own: compared by identity (the screen's plan is for these)
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

    def __init__(self, sql, rows, params=None):
        self.sql = sql
        self.params = params  # the read's
        self.events = 0  # how many events the read found
        self.pixels = {}
        self.versions = {}
        self.read_facts = {}  # public id -> the facts' columns as read
        self.facts_rows = {}  # public id -> the facts as one text (PostgreSQL)
        self.plan = None  # (the pending fetches it is for, their _Plan): made by the screen
        self.fetched = defaultdict(list)
        for public_id, version, pixel_id, *facts, at, ip, link, source, client, row in rows:
            if public_id not in self.pixels:
                self.pixels[public_id] = _facts(pixel_id, *facts)
                self.versions[public_id] = version
                self.facts_rows[public_id] = row
                self.read_facts[public_id] = (pixel_id, *facts)  # as holds() reads them
            if source is not None:
                self.fetched[(pixel_id, ip, link, source, client)].append(sql_time(at, sql.sqlite))
                self.events += 1

    def changed(self, versions, wanted):
        """Whether one of the `wanted` pixels' rows was written to (or deleted) since it was
        read, given their versions [(public id, version)] as they are now (PostgreSQL: every
        transaction that writes a row gives it a new xmin; a stored event always moves its
        pixel's counters, and a do-not-track stop or the sender's own view is written on it)."""
        now = {public_id: version for public_id, version, *_ in versions}
        return set(now) != wanted or any(self.versions.get(key) != now[key] for key in now)

    def holds(self, rows, wanted, stored_since):
        """Whether the judgements on this read still hold for the `wanted` pixels, given their
        `rows` (public id, anything, pixel id, facts...) read under the write lock, and whether
        an event from the batch's networks was `stored_since`: the same pixels with the same
        facts, and no such event."""
        now = {public_id: tuple(facts) for public_id, _, *facts in rows}
        return (
            not stored_since
            and set(now) == wanted
            and all(self.read_facts[key] == now[key] for key in now)
        )

    def repeat(self, fetcher, at):
        """Whether `fetcher` fetched within the repeat window around `at`; if not, that it did
        now."""
        times = self.fetched[fetcher]
        if times:
            low, high = _window(self.sql, at)
            if any(low <= time <= high for time in times):
                return True
        times.append(sql_time(at, self.sql.sqlite))
        return False


# The pixels whose facts, as read, are kept as the judgement reads them: a busy receipt is in
# every batch, its facts mostly the same as before.
FACTS_KEPT = 4096


@functools.lru_cache(maxsize=FACTS_KEPT)
def _facts(pixel_id, *row):
    """{fact: value} from a pixel's part of a read row, with "judged_on": the PixelFacts the
    judgement rests on. The same for every read of the same values: never changed."""
    *facts, stopped, notified = row
    values = dict(zip(FACT_COLUMNS, facts, strict=True))
    values.update(id=pixel_id, tracking_stopped_at=stopped, notified=bool(notified))
    for name in TIME_COLUMNS:
        values[name] = Pixel._meta.fields[name].python_value(values[name])
    values["judged_on"] = PixelFacts(*(values[name] for name in FACT_COLUMNS))
    return values


def _window(sql, at):
    """The repeat window around `at`, in the form the database compares."""
    return sql_time(at - REPEAT_WINDOW, sql.sqlite), sql_time(at + REPEAT_WINDOW, sql.sqlite)


def _read(sql, fetches):
    """_Seen for the fetches: one query for all of them."""
    low = _window(sql, min(fetch.at for fetch in fetches))[0]
    high = _window(sql, max(fetch.at for fetch in fetches))[1]
    params = (_pairs(fetches), low, high)
    return _Seen(sql, db.execute_sql(sql.read, params).fetchall(), params)


def _pairs(fetches):
    """The fetches' (public id, network) pairs, each once, as the statements' one parameter for
    them (a JSON array)."""
    return json.dumps(sorted({(fetch.public_id, fetch.ip) for fetch in fetches}, key=str))


def _event(fetch, facts, verdict, client, sql):
    """The event's row, EVENT_COLUMNS."""
    return [
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
    ]


def _screen_holds(sql, todo, fresh, versions):
    """Under the write lock: whether the judgements the screen made without it still hold for
    the `fresh` fetches (of the `todo` ones), so that they need not be read and judged again:
    nothing wrote to their pixels' rows since (PostgreSQL: their `versions` as locked), or
    nothing changed their facts and no event was stored from their networks since (SQLite)."""
    screens = {one.seen for one in fresh}
    if len(screens) != 1 or None in screens:
        return False
    (screen,) = screens
    if not sql.sqlite:
        wanted = {one.fetch.public_id for one in todo}
        if versions is None or not screen.changed(versions, wanted):
            return versions is not None
        # Written to since (under load, mostly another batch's counts): by what?
        (events,) = db.execute_sql(sql.since, screen.params).fetchone()
        return screen.holds(versions, wanted, events != screen.events)
    fetches = [one.fetch for one in fresh]
    ips = _listed(sorted({fetch.ip for fetch in fetches if fetch.ip is not None}))
    public_ids = _listed(sorted({fetch.public_id for fetch in fetches}))
    newest = max(screen.versions.values())
    rows = db.execute_sql(sql.since, (newest, public_ids, ips, public_ids)).fetchall()
    stored_since = any(row[1] for row in rows)
    return screen.holds(rows, {fetch.public_id for fetch in fetches}, stored_since)


# The most fetches one transaction stores for the pixel's own thread (a fetch alone) or for the
# spool's replay: a replay that competes with the pixel for the write lock takes few turns at it.
MOST_TOGETHER = 20


class Recorder:
    """Judges and stores fetches with this server's judge: built once at start-up, called for a
    fetch the pixel answers once it is stored (record_now), for the fetches a worker's writer
    stores after their answers went out (record_queued, web/pixel/writer.py) and for the spooled
    ones (record_replayed)."""

    def __init__(self, judge):
        self.judge = judge

    def record_now(self, fetches):
        """Store the fetches in one transaction, waiting PIXEL_WAIT_MS at most for another
        writer (a mail client waits for the answer); their outcomes."""
        return self._commit(self._screen(fetches), waits=SHORT_WAITS)

    def record_queued(self, fetches):
        """Store answered fetches (each with its key, kept with its event) in one transaction,
        waiting for the database as long as it takes: nobody's answer waits on them; their
        outcomes. A fetch the database refuses fails them all (the caller tries each alone)."""
        return self._commit(self._screen(fetches), waits=LONG_WAITS)

    def record_replayed(self, fetches):
        """Store spooled fetches (each with its key) in one transaction, in order, each exactly
        once; their outcomes. A fetch the database refuses fails them all (the caller tries
        each alone)."""
        return self._commit([_Pending(fetch) for fetch in fetches], waits=None)

    def _screen(self, fetches):
        """Step 1, without the write lock: the fetches as _Pending, each judged, with its
        outcome when it is not to be stored (most repeats end here)."""
        sql = _sql()
        seen = _read(sql, fetches)
        pending = [_Pending(fetch, seen=seen) for fetch in fetches]
        for one in pending:
            one.outcome, one.judged = self._judge(one, seen)
        # What to write, made now, without the lock: under it, only the writing is left when
        # the judgements still hold (_screen_holds), as they mostly do.
        todo = [one for one in pending if one.outcome is None]
        if todo:
            seen.plan = (todo, self._plan(sql, todo, [(None, one.judged) for one in todo]))
        return pending

    def _commit(self, pending, waits):
        """Step 2, under the write lock: store the pending fetches that have no outcome yet, in
        one transaction, in order; the outcomes of all. `waits`: SHORT_WAITS, LONG_WAITS, or
        None for the spool's replay, whose fetches' keys are looked up first (a replay cut
        short, or a journal taken over, may hold fetches already stored)."""
        sql = _sql()
        todo = [one for one in pending if one.outcome is None]
        wanted = sorted({one.fetch.public_id for one in todo})  # the pixels to lock, in order
        outcomes = {}

        def write():
            with write_transaction(settings="; ".join(waits.settings) if waits else None):
                versions = None
                if sql.lock:
                    versions = db.execute_sql(sql.lock, (_listed(wanted),)).fetchall()
                return self._store(sql, todo, versions, check_keys=waits is None)

        if todo and waits and self._wrote_at_once(sql, todo, wanted, waits):
            outcomes = todo[0].seen.plan[1].outcomes
        elif todo:
            outcomes = waits.run(write) if waits else write()
        return [outcomes.get(id(one), one.outcome) for one in pending]

    def _wrote_at_once(self, sql, todo, wanted, waits):
        """PostgreSQL: store the `todo` fetches as the screen planned them, the whole transaction
        (BEGIN, its settings, the pixels' rows locked, the writing, COMMIT) sent as one message
        (psycopg's client-side binding, one simple query), so that the rows are held only while
        the server works, never while this thread waits for its turn at Python's lock to send
        the next statement. Each statement of it sees what was committed before it began: the
        writing's check sees every event stored by whoever held the rows before. Whether it
        stored them: not when the read no longer holds (the transaction then wrote nothing,
        and the fetches are judged again under the lock, as on SQLite), nor when the plan has
        notices to queue (stored one by one) or is not the screen's for these fetches."""
        screen = todo[0].seen
        if sql.sqlite or screen is None or screen.plan is None or screen.plan[0] != todo:
            return False
        plan = screen.plan[1]
        if plan.notified or plan.events is None:
            return False
        facts = [(public_id, screen.facts_rows[public_id]) for public_id in wanted]
        transaction = ";".join(["BEGIN", *waits.settings, sql.lock, sql.write_at_once, "COMMIT"])
        with __exception_wrapper__:
            cursor = psycopg.ClientCursor(db.connection())
            try:
                cursor.execute(
                    transaction,
                    (_listed(wanted), len(wanted), _listed(facts), *plan.events),
                    prepare=False,
                )
            except BaseException:
                if not db.is_closed():
                    db.rollback()
                raise
            # The results: BEGIN, the settings, the lock, the writing, COMMIT.
            for _ in range(2 + len(waits.settings)):
                cursor.nextset()
            wrote = cursor.fetchone()[0]
        return wrote

    def _store(self, sql, todo, versions, check_keys):
        """Under the write lock: judge the fetches again on what the database holds now, and
        store those that are still new events; {id(pending): outcome}. On PostgreSQL,
        `versions` are the pixels' rows' versions as locked: when no other transaction wrote
        to them since the screen read them, its judgement still holds as it is."""
        outcomes = {}
        keys = [one.fetch.key for one in todo if one.fetch.key is not None and check_keys]
        replayed = set()
        if keys:
            rows = db.execute_sql(sql.replayed, (_listed(keys),)).fetchall()
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
        if _screen_holds(sql, todo, fresh, versions) and fresh[0].seen.plan[0] == fresh:
            plan = fresh[0].seen.plan[1]
        else:
            seen = _read(sql, [one.fetch for one in fresh])
            plan = self._plan(sql, fresh, [self._judge(one, seen) for one in fresh])
        for event in plan.notified:
            self._store_notified(sql, *event)
        if plan.events is not None:
            db.execute_sql(sql.insert, plan.events)
            db.execute_sql(sql.count, plan.events)
        outcomes.update(plan.outcomes)
        return outcomes

    def _plan(self, sql, fresh, judgements):
        """The _Plan that stores the fresh fetches as judged: [(outcome, judged)] in order."""
        plan = _Plan({}, [])
        events = []
        for one, (outcome, judged) in zip(fresh, judgements, strict=True):
            if outcome is None:
                facts, verdict, _ = judged
                if facts["notified"]:
                    plan.notified.append((one.fetch, *judged))
                else:
                    events.append(_event(one.fetch, *judged, sql))
                outcome = f"recorded: {verdict.kind}"
            plan.outcomes[id(one)] = outcome
        if events:
            plan.events = _params(events)
        return plan

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
            verdict = self.judge.verdict(fetch, judged_on, fetch.at)
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
        if sql.sqlite:
            event_id = _put(sql.insert, event).lastrowid
        else:
            event_id = _put(f"{sql.insert} RETURNING id", event).fetchone()[0]
        _put(sql.count, event)
        outbox.queue(notices, event_id)
