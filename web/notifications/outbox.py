"""The outbox: the one place that writes `Notice` rows.

A notice is queued by the pixel's own transaction (pixel/recording.py asks `to_notify` before it
stores the event, then `queue` with the event's id): when an open or a delivery is stored whose
owner wants to hear of it, a row per channel of theirs goes in with the event, so either both are
stored or neither is; a fetch that waited in the spool queues its notice when it is replayed.
Both statements are SQL written once, like the rest of the pixel's writes.

The delivery loop (delivery.py) takes notices out with `claim`: one conditional UPDATE that
moves a notice's due time a lease ahead and stamps it with a claim token; only the worker or
host whose UPDATE changed the row sends it, so several never send the same notice twice. What
came of a try is written by that claim (`Claim.sent`, `.retry`, `.failed`, `.skipped`), so a
worker whose lease ran out cannot overwrite what another one did. A worker that dies after
sending and before marking leaves the notice to be sent again once the lease runs out:
receivers that must never see a notice twice use its id (X-Openreceipt-Delivery, or "id" in
the JSON)."""

import datetime
import secrets
from dataclasses import dataclass

from peewee import SqliteDatabase, fn

from ..storage.engine import db, dialect_statements, sql_time, utcnow
from ..storage.models import Event, Notice, NotifyChannel, Pixel, User
from ..vocabulary import Kind, NoticeState, Reason
from .policy import hold, past_quiet, wanted

# How long a claimed notice is left to its deliverer: far longer than a delivery may take.
LEASE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Statements:
    """The outbox's SQL in one database's dialect."""

    channels: str
    queue: str
    claim: str
    sqlite: bool


def statements(database):
    sqlite = isinstance(database, SqliteDatabase)
    p = database.param
    return Statements(
        # Before the event is counted: the pixel's counters still say whether it is the first
        # open.
        channels=(
            "SELECT c.id, u.notify_opens, u.notify_delivered, u.notify_quiet_minutes, "
            "p.open_count, p.click_count, p.delivered_at, (SELECT MAX(n.created_at) FROM notice n "
            f"WHERE n.channel_id = c.id AND n.pixel_id = p.id AND n.reason = {p} "
            "AND n.state <> 'skipped') FROM pixel p "
            'JOIN "user" u ON u.id = p.owner_id JOIN notify_channel c ON c.user_id = u.id '
            f"WHERE p.id = {p}"
        ),
        queue=(
            "INSERT INTO notice (channel_id, pixel_id, event_id, reason, created_at, due_at, "
            f"state, attempts) VALUES ({', '.join([p] * 6)}, 'pending', 0)"
        ),
        # The oldest due notice: SQLite runs this under its one write lock; PostgreSQL's SKIP
        # LOCKED lets each of many deliverers asking at once take a different notice, and the
        # outer conditions, checked again on the row as it is when locked, make sure that a
        # notice another deliverer took just now is not taken twice.
        claim=(
            f"UPDATE notice SET claim = {p}, due_at = {p}, attempts = attempts + 1 "
            "WHERE id = (SELECT id FROM notice WHERE state = 'pending' "
            f"AND due_at <= {p} ORDER BY due_at LIMIT 1"
            f"{'' if sqlite else ' FOR UPDATE SKIP LOCKED'}) "
            f"AND state = 'pending' AND due_at <= {p} RETURNING id"
        ),
        sqlite=sqlite,
    )


_sql = dialect_statements(statements)


def to_notify(pixel_id, reason, source, at):
    """In the pixel's transaction, before the event is stored: the notices of `reason` that an
    event from `source` at `at` is to put in the outbox, one for each channel of the pixel's
    owner that wants one (their choices, the quiet period). Handed to queue() with the event's
    id once it is stored."""
    sql = _sql()
    rows = db.execute_sql(sql.channels, (reason, pixel_id)).fetchall()
    if not rows:
        return []
    now = utcnow()
    due = now + hold(source, at, now, reason)
    return [
        (channel_id, pixel_id, reason, now, due)
        for channel_id, opens, delivered, quiet, opens_so_far, clicks, delivered_at, last in rows
        if wanted(
            reason,
            opens,
            delivered,
            clicks if reason == Reason.CLICK else opens_so_far,
            delivered_at is not None,
        )
        and past_quiet(Notice.created_at.python_value(last), quiet, now)
    ]


def queue(notices, event_id):
    """Put the notices to_notify() chose in the outbox, each telling of the event `event_id`."""
    sql = _sql()
    for channel_id, pixel_id, reason, now, due in notices:
        values = (channel_id, pixel_id, event_id, reason, now, due)
        db.execute_sql(sql.queue, [sql_time(value, sql.sqlite) for value in values])


def queue_reminder(pixel, now):
    """Put a reminder that `pixel` was not opened in the outbox, one notice for each channel
    of its owner (reminders.py, in the transaction that marks it reminded)."""
    channels = NotifyChannel.select(NotifyChannel.id).where(NotifyChannel.user == pixel.owner_id)
    rows = [
        {
            "channel": channel.id,
            "pixel": pixel.id,
            "event": None,
            "reason": Reason.NOT_OPENED,
            "created_at": now,
            "due_at": now,
            "state": NoticeState.PENDING,
        }
        for channel in channels
    ]
    if rows:
        Notice.insert_many(rows).execute()


def any_due(moment):
    """Whether a notice is due at `moment`. A read: a claim is an UPDATE, which on SQLite takes
    the write lock even when nothing is due, and the pixel would have to wait for it."""
    return (
        Notice.select().where(Notice.state == NoticeState.PENDING, Notice.due_at <= moment).exists()
    )


def claim(now):
    """Take the oldest notice due at `now` for this process; only one of any number of workers
    or hosts asking at once gets it. Returns a Claim, or None."""
    sql = _sql()
    token = secrets.token_hex(8)
    values = [sql_time(value, sql.sqlite) for value in (now + LEASE, now, now)]
    # fetchall(): the statement is only done (and SQLite's write lock let go) once it has
    # given all its rows.
    rows = db.execute_sql(sql.claim, (token, *values)).fetchall()
    return Claim(rows[0][0], token) if rows else None


@dataclass(frozen=True)
class Claim:
    """A notice this process claimed; what came of it is written by this claim only."""

    notice_id: int
    token: str

    def notice(self):
        """The notice with its channel, receipt and owner; None when one of them was deleted."""
        return (
            Notice.select(Notice, NotifyChannel, Pixel, User)
            .join(NotifyChannel)
            .switch(Notice)
            .join(Pixel)
            .join(User)
            .where(Notice.id == self.notice_id)
            .first()
        )

    def _write(self, **changes):
        mine = (Notice.id == self.notice_id) & (Notice.claim == self.token)
        Notice.update(**changes).where(mine).execute()

    def tell_of(self, event):
        """The notice now tells of `event` instead."""
        self._write(event=event.id)

    def hold_until(self, due):
        """Not sent yet, and not counted as a try: due again at `due`."""
        self._write(due_at=due, claim=None, attempts=Notice.attempts - 1)

    def skipped(self, why):
        self._write(state=NoticeState.SKIPPED, last_error=why)

    def retry(self, due, error):
        self._write(due_at=due, claim=None, last_error=error)

    def failed(self, error):
        self._write(state=NoticeState.FAILED, last_error=error)

    def sent(self):
        self._write(state=NoticeState.SENT, sent_at=utcnow(), last_error=None)


def unnoticed_open(notice, replaced):
    """The first open of the notice's receipt, after the event it was queued for, that has no
    notice on the same channel; or None."""
    noticed = Notice.select(Notice.event).where(
        Notice.channel == notice.channel_id, Notice.event.is_null(False), Notice.id != notice.id
    )
    query = Event.select().where(
        Event.pixel == notice.pixel_id, Event.kind == Kind.OPEN, Event.id.not_in(noticed)
    )
    if replaced is not None:
        query = query.where(Event.at >= replaced.at)
    return query.order_by(Event.at, Event.id).first()


# --- what the user sees of their notices ------------------------------------------------------


def channel_tallies(user):
    """The user's channels, each with how its notices fare: (channel, {"counts": {state:
    count}, "last_sent": when, "error": the last error of a notice still being tried})."""
    channels = list(
        NotifyChannel.select().where(NotifyChannel.user == user).order_by(NotifyChannel.id)
    )

    def tally():
        return {"counts": {}, "last_sent": None, "error": None}

    tallies = {}
    rows = (
        Notice.select(Notice.channel, Notice.state, fn.COUNT(Notice.id), fn.MAX(Notice.sent_at))
        .join(NotifyChannel)
        .where(NotifyChannel.user == user)
        .group_by(Notice.channel, Notice.state)
        .tuples()
    )
    for channel_id, state, count, last_sent in rows:
        found = tallies.setdefault(channel_id, tally())
        found["counts"][state] = count
        if state == NoticeState.SENT:
            found["last_sent"] = Notice.sent_at.python_value(last_sent)
    retrying = (
        Notice.select(Notice.channel, Notice.last_error)
        .join(NotifyChannel)
        .where(
            NotifyChannel.user == user,
            Notice.state == NoticeState.PENDING,
            Notice.last_error.is_null(False),
        )
        .order_by(Notice.id)
        .tuples()
    )
    for channel_id, error in retrying:
        tallies[channel_id]["error"] = error
    return [(channel, tallies.get(channel.id) or tally()) for channel in channels]


def given_up(user, limit):
    """The user's latest notices that were given up, with their receipts and channels."""
    return list(
        Notice.select(Notice, NotifyChannel, Pixel)
        .join(NotifyChannel)
        .switch(Notice)
        .join(Pixel)
        .where(NotifyChannel.user == user, Notice.state == NoticeState.FAILED)
        .order_by(Notice.id.desc())
        .limit(limit)
    )
