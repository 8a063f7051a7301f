"""The delivery loop: each gunicorn worker runs deliver_due() in its `notify` job every
CHECK_SECONDS (or, with OPENRECEIPT_NOTIFY_IN_WORKERS=off, `openreceipt jobs run notify` does,
as a service of its own). It claims due notices from the outbox one at a time, sends each on
its channel, and records what came of it. Failed: tried again with growing pauses, until
NOTIFY_GIVE_UP_HOURS after it was queued, or given up at once when trying again cannot help
(the receiver refuses it, the address is not allowed); given-up notices are listed in the
user's settings."""

import datetime
import logging

from peewee import IntegrityError

from ..background import Job, register, stopping
from ..storage.engine import db, utcnow
from ..storage.models import Event, Setting
from ..vocabulary import Kind, Reason
from . import outbox, reminders
from .channels import DeliveryError, compose, send
from .policy import hold, no_longer_wanted

log = logging.getLogger(__name__)

CHECK_SECONDS = 2  # how often each worker looks for notices that are due
BATCH = 20  # notices a round claims at most
# "Send a test notification" waits in the request, and so holds a worker meanwhile: briefly,
# and one test per user at a time (TEST_EVERY is longer than TEST_DEADLINE).
TEST_TIMEOUT, TEST_DEADLINE = 3, 5
TEST_EVERY = datetime.timedelta(seconds=10)
TEST_TURN = "notify-test:"  # + the user's id: the name of a Setting row while a turn lasts
LONGEST_PAUSE = datetime.timedelta(hours=1)


def pause(attempts, first_seconds):
    """How long to wait after the `attempts`-th failed try: doubling, at most an hour."""
    seconds = first_seconds * 2 ** min(attempts - 1, 20)
    return min(datetime.timedelta(seconds=seconds), LONGEST_PAUSE)


def deliver_due(app, now=None, limit=BATCH):
    """Claim and send the notices that are due, one at a time, `limit` at most. Returns how
    many were sent, are to be tried again, were given up and were skipped. `now` (tests): the
    time to act at; otherwise each claim and each result takes the clock as it is then."""
    counts = {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}
    for _ in range(limit):
        if stopping(app, "notify"):
            break
        moment = now or utcnow()
        if not outbox.any_due(moment):
            break
        claim = outbox.claim(moment)
        if claim is None:
            break
        counts[deliver(app, claim, now)] += 1
    return counts


def deliver(app, claim, now=None):
    """Send one claimed notice and record what came of it."""
    notice = claim.notice()
    if notice is None:  # the receipt or the channel was deleted meanwhile
        return "skipped"
    moment = now or utcnow()
    event = Event.get_or_none(Event.id == notice.event_id)
    if notice.reason == Reason.OPEN and (event is None or event.kind != Kind.OPEN):
        # The open was the sender's own after all. An open that came meanwhile was not given a
        # notice of its own (not the first, or within the quiet period): this one tells of it.
        event = outbox.unnoticed_open(notice, event)
        if event is not None:
            claim.tell_of(event)
            held = hold(event.source, event.at, moment)
            if held:  # a Gmail open in turn: held as long as it is
                claim.hold_until(moment + held)
                return "retry"
    why_not = no_longer_wanted(notice, event)
    if why_not:
        claim.skipped(why_not)
        return "skipped"
    message = compose(notice.reason, notice.pixel, event, app.config["PUBLIC_URL"], notice.id)
    try:
        send(notice.channel, message, app.config)
    except DeliveryError as error:
        text = str(error)[:300]
        give_up = error.final or moment - notice.created_at >= datetime.timedelta(
            hours=app.config["NOTIFY_GIVE_UP_HOURS"]
        )
        if give_up:
            claim.failed(text)
            app.logger.warning(
                "notify: notice %d (%s channel %d) given up after %d tries: %r",
                notice.id,
                notice.channel.kind,
                notice.channel.id,
                notice.attempts,
                error.detail,
            )
            return "failed"
        app.logger.info(
            "notify: notice %d (%s channel %d) to be tried again: %r",
            notice.id,
            notice.channel.kind,
            notice.channel.id,
            error.detail,
        )
        claim.retry(moment + pause(notice.attempts, app.config["NOTIFY_RETRY_SECONDS"]), text)
        return "retry"
    claim.sent()
    return "sent"


def send_test(channel, config):
    """Send a test notice on `channel` now; returns None, or what went wrong."""
    try:
        message = compose("test", None, None, config["PUBLIC_URL"])
        send(channel, message, config, TEST_TIMEOUT, TEST_DEADLINE)
    except DeliveryError as error:
        log.info("notify: test on %s channel %s failed: %r", channel.kind, channel.id, error.detail)
        return str(error)
    return None


def take_test_turn(user, now=None):
    """Whether `user` may send a test notice now: one every TEST_EVERY, counted in the database
    so that every worker and host sees the same. Each test holds a worker while it waits for
    the receiver: unlimited, a slow receiver and a few clicks hold them all (and the pixel
    waits). A turn is a row that only one insert can make; rows older than TEST_EVERY are
    deleted first, so none is kept for longer."""
    now = now or utcnow()
    earliest = (now - TEST_EVERY).isoformat(timespec="microseconds")
    Setting.delete().where(Setting.name.startswith(TEST_TURN), Setting.value <= earliest).execute()
    try:
        with db.atomic():
            Setting.insert(
                name=f"{TEST_TURN}{user.id}", value=now.isoformat(timespec="microseconds")
            ).execute()
    except IntegrityError:
        return False  # a turn taken less than TEST_EVERY ago
    return True


def init_app(app):
    """The delivery job: in each worker, unless OPENRECEIPT_NOTIFY_IN_WORKERS is off (then
    `openreceipt jobs run notify`, or `openreceipt notify`, runs it on its own)."""
    in_workers = app.config["NOTIFY_IN_WORKERS"]
    register(app, Job("notify", lambda: step(app), CHECK_SECONDS, in_workers))


def step(app):
    """One round of the delivery loop: the reminders that are due queued, then the notices
    sent; True when there may be more due at once."""
    with app.app_context():
        reminded = reminders.queue_due()
        counts = deliver_due(app)
    if reminded:
        app.logger.info("notify: %d reminders of messages not opened queued", reminded)
    if any(counts.values()):
        app.logger.info("notify: %s", summary(counts))
    return sum(counts.values()) >= BATCH or reminded >= reminders.BATCH


def summary(counts):
    """One line for the log and the command line: what a round (or a run) of deliveries did."""
    return (
        f"{counts['sent']} notices sent, {counts['retry']} to be tried again, "
        f"{counts['failed']} given up, {counts['skipped']} no longer wanted"
    )
