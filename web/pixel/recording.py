"""The pixel's writes, with their SQL written once: building a Peewee query costs more than
SQLite takes to run it, and this runs for every fetch of every pixel.

One fetch is judged and stored like this:
1. without a lock, read the pixel's facts and judge the fetch; a repeat of a fetch seconds ago
   (most of what mail proxies send) stops here without ever waiting for the write lock;
2. otherwise, take the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: the pixel's row, FOR
   UPDATE), read the facts again (judged again if they changed), check for a repeat again (a
   concurrent twin may have just been stored), insert the event and move the pixel's counters,
   state and times in one UPDATE that never loses a concurrent count;
3. in the same transaction, an open or a delivery whose owner wants to hear of it puts a notice
   in the outbox for each of their channels (web/notify.py sends it later).

The statements are the same as the Peewee models describe (web/models.py); the tests run every
fetch through here and read the results back through the models."""

import datetime
import weakref
from dataclasses import dataclass

from peewee import SqliteDatabase

from . import notify
from .classify import KINDS
from .models import (
    PIXEL_WAIT_MS,
    STATES,
    Notice,
    Pixel,
    db,
    utcnow,
    with_short_lock_waits,
    write_transaction,
)

PIXEL_TIMEOUTS = (
    f"SET LOCAL lock_timeout = '{PIXEL_WAIT_MS}ms'",
    "SET LOCAL statement_timeout = '2s'",
)
STATE_REACHED = {"preview": "inserted", "prefetch": "delivered", "open": "opened"}
# Mail clients and proxies often fetch an image twice: the same fetcher within 10 s is one event.
REPEAT_WINDOW = datetime.timedelta(seconds=10)
FACT_COLUMNS = ("mint_fingerprint", "sent_at", "last_self_view_at", "mail_hosting")
TIME_COLUMNS = {"sent_at", "last_self_view_at", "tracking_stopped_at"}


@dataclass(frozen=True)
class Statements:
    """The hot path's SQL in one database's dialect."""

    facts: str
    lock: str | None
    replayed: str
    insert: str
    update: dict  # kind -> (sql, number of time parameters)
    channels: str
    queue: str
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
    if kind in ("prefetch", "open"):
        parts.append(_earliest("delivered_at", p))
    if kind == "open":
        parts += [_earliest("first_open_at", p), _latest("last_open_at", p)]
    times = sum(part.count(p) for part in parts)
    return f"UPDATE pixel SET {', '.join(parts)} WHERE id = {p}", times


def statements(database):
    sqlite = isinstance(database, SqliteDatabase)
    p = database.param
    same = "IS" if sqlite else "IS NOT DISTINCT FROM"  # equal, NULL included
    # The pixel's facts, and who fetched it from the same network within the repeat window:
    # one row per such event (source, client), or one row of NULLs after the facts.
    facts = (
        f"SELECT p.id, {', '.join('p.' + name for name in FACT_COLUMNS)}, p.tracking_stopped_at, "
        "e.source, e.client FROM pixel p LEFT JOIN event e ON e.pixel_id = p.id "
        f"AND e.at BETWEEN {p} AND {p} AND e.ip {same} {p} WHERE p.public_id = {p}"
    )
    return Statements(
        facts=facts,
        # PostgreSQL: lock the pixel's row first, then read in a statement of its own, whose
        # snapshot (READ COMMITTED) sees the event a concurrent twin committed while we waited.
        lock=None if sqlite else f"SELECT 1 FROM pixel WHERE public_id = {p} FOR UPDATE",
        replayed=f"SELECT 1 FROM event WHERE spool_key = {p}",
        insert=(
            "INSERT INTO event (pixel_id, at, kind, source, reason, ip, country, city, client, "
            f"spool_key) VALUES ({', '.join([p] * 10)})" + ("" if sqlite else " RETURNING id")
        ),
        update={kind: _update(kind, p) for kind in KINDS},
        # Before the pixel's UPDATE: its counters still say whether this is the first open.
        channels=(
            "SELECT c.id, u.notify_opens, u.notify_delivered, u.notify_quiet_minutes, "
            "p.open_count, p.delivered_at, (SELECT MAX(n.created_at) FROM notice n "
            f"WHERE n.channel_id = c.id AND n.pixel_id = p.id AND n.reason = {p} "
            "AND n.state <> 'skipped') FROM pixel p "
            'JOIN "user" u ON u.id = p.owner_id JOIN notify_channel c ON c.user_id = u.id '
            f"WHERE p.id = {p}"
        ),
        queue=(
            "INSERT INTO notice (channel_id, pixel_id, event_id, reason, created_at, due_at, "
            f"state, attempts) VALUES ({', '.join([p] * 6)}, 'pending', 0)"
        ),
        sqlite=sqlite,
    )


_cache = weakref.WeakKeyDictionary()  # database -> Statements


def _statements():
    database = db.obj
    found = _cache.get(database)
    if found is None:
        found = _cache[database] = statements(database)
    return found


def _time(value, sqlite):
    """A datetime as the database driver should get it: SQLite stores the text Peewee stores."""
    return value.isoformat(" ") if sqlite and value is not None else value


def _read(sql, params):
    return db.execute_sql(sql, params).fetchone()


def _facts(row):
    """{fact: value} from a facts row, with "id" and "tracking_stopped_at"."""
    values = dict(zip(("id", *FACT_COLUMNS, "tracking_stopped_at"), row, strict=False))
    for name in TIME_COLUMNS:
        values[name] = Pixel._meta.fields[name].python_value(values[name])
    return values


def record_fetch(public_id, judge, describe, ip, location, at, key=None, short_waits=False):
    """Store one fetch of the pixel `public_id`. `judge(facts_dict, at)` gives the Verdict,
    `describe(source)` the client's name (already clean and short). `short_waits`: wait for the
    write lock PIXEL_WAIT_MS at most (the pixel; then the caller spools). Returns the outcome for
    the X-Openreceipt header."""
    sql = _statements()
    stamp = _time(at, sql.sqlite)
    window = (_time(at - REPEAT_WINDOW, sql.sqlite), _time(at + REPEAT_WINDOW, sql.sqlite))

    verdicts = {}  # facts -> (verdict, client): under the lock, unchanged facts are not re-judged

    def assess(facts_sql):
        rows = db.execute_sql(facts_sql, (*window, ip, public_id)).fetchall()
        if not rows:
            return "not recorded: no such pixel", None
        facts = _facts(rows[0])
        if facts["tracking_stopped_at"] is not None:
            return "not recorded: a recipient is on the do-not-track list", None
        known = tuple(facts.values())
        if known not in verdicts:
            verdict = judge(facts, at)
            verdicts[known] = (verdict, describe(verdict.source))
        verdict, client = verdicts[known]
        if any(row[-2:] == (verdict.source, client) for row in rows):
            return "not recorded: repeat of a fetch seconds ago", None
        return None, (facts["id"], verdict, client)

    if key is None:
        outcome, _ = assess(sql.facts)  # no lock yet: most repeats end here
        if outcome is not None:
            return outcome

    def write():
        with write_transaction():
            if short_waits and not sql.sqlite:
                # The pixel's row may be held by a purge batch or a correction: wait 45 ms at
                # most, then fail (and the pixel spools the fetch).
                for statement in PIXEL_TIMEOUTS:
                    db.execute_sql(statement)
            if key is not None and _read(sql.replayed, (key,)) is not None:
                return "not recorded: already replayed"
            if sql.lock:
                db.execute_sql(sql.lock, (public_id,))
            outcome, judged = assess(sql.facts)
            if outcome is not None:
                return outcome
            store(*judged)
        return f"recorded: {judged[1].kind}"

    def store(pixel_id, verdict, client):
        cursor = db.execute_sql(
            sql.insert,
            (
                pixel_id,
                stamp,
                verdict.kind,
                verdict.source,
                verdict.reason[:200],
                ip,
                location.country,
                location.city,
                client,
                key,
            ),
        )
        reason = notify.REASONS.get(verdict.kind)
        if reason:
            event_id = cursor.lastrowid if sql.sqlite else cursor.fetchone()[0]
            queue_notices(pixel_id, event_id, reason, verdict)
        update, times = sql.update[verdict.kind]
        db.execute_sql(update, (*[stamp] * times, pixel_id))

    def queue_notices(pixel_id, event_id, reason, verdict):
        rows = db.execute_sql(sql.channels, (reason, pixel_id)).fetchall()
        if not rows:
            return
        now = utcnow()
        due = now + notify.hold(verdict.source, at, now)
        for channel_id, opens, delivered, quiet, open_count, delivered_at, last in rows:
            wanted = notify.wanted(reason, opens, delivered, open_count, delivered_at is not None)
            if wanted and notify.past_quiet(Notice.created_at.python_value(last), quiet, now):
                db.execute_sql(
                    sql.queue,
                    (
                        channel_id,
                        pixel_id,
                        event_id,
                        reason,
                        _time(now, sql.sqlite),
                        _time(due, sql.sqlite),
                    ),
                )

    return with_short_lock_waits(write) if short_waits else write()
