"""Notifications: telling a user that their message was opened (or delivered) by email, by a
signed JSON webhook, or by an ntfy-style push, without slowing the pixel or losing a notice.

The outbox: when the pixel stores an open or a delivery whose owner wants to hear of it, it adds
a Notice row per channel of theirs in the same transaction as the event (web/hotpath.py). Either
both are stored or neither is; a fetch that waited in the spool queues its notice when replayed.

The delivery loop: each gunicorn worker runs deliver_due() in a thread every CHECK_SECONDS (or,
with OPENRECEIPT_NOTIFY_IN_WORKERS=off, `openreceipt notify` does, as a service of its own). A
notice is claimed with one conditional UPDATE that moves its due time a lease ahead; the worker
or host whose UPDATE changed the row sends it, so several workers and hosts never send the same
notice twice. Sent: marked so, by its claim. Failed: tried again with growing pauses, until
NOTIFY_GIVE_UP_HOURS after it was queued, or at once when trying again cannot help (the
receiver refuses it, the address is not allowed); given-up notices are listed in the user's
settings. What the user sees of a failure is a plain category ("could not connect", "refused:
HTTP 404"), never what the receiver said: a URL of the user's choosing must not make the server
read out what answers on some port. The details go to the server's log.

A worker that dies after sending and before marking leaves the notice to be sent again once the
lease runs out: receivers that must never see a notice twice use its id (X-Openreceipt-Delivery,
or "id" in the JSON).

A notice says which message (label or subject), when, where (city and country, as collected)
and with what (the mail client): never an address of any kind."""

import datetime
import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage

from peewee import IntegrityError, SqliteDatabase

from . import outbound
from .background import Job, register, stopping
from .classify import SELF_VIEW_BEFORE
from .models import Event, Notice, NotifyChannel, Pixel, Setting, User, db, utcnow

log = logging.getLogger(__name__)

# What kind of event tells of what: an open, or a delivery (a machine fetched it on delivery).
# Previews, the sender's own views and bots never notify.
REASONS = {"open": "open", "prefetch": "delivered"}
EVENT_KIND = {reason: kind for kind, reason in REASONS.items()}
OPENS = ("first", "every", "off")
CHANNEL_KINDS = ("email", "webhook", "push")
CHECK_SECONDS = 2  # how often each worker looks for notices that are due
BATCH = 20  # notices a round claims at most
TIMEOUT = 10  # seconds one step of a delivery (connecting, each answer) may take
SEND_DEADLINE = 30  # seconds a whole delivery may take, however its receiver dawdles
# How long a claimed notice is left to its deliverer: far longer than a delivery may take.
LEASE = datetime.timedelta(minutes=5)
# "Send a test notification" waits in the request, and so holds a worker meanwhile: briefly,
# and one test per user at a time (TEST_EVERY is longer than TEST_DEADLINE).
TEST_TIMEOUT, TEST_DEADLINE = 3, 5
TEST_EVERY = datetime.timedelta(seconds=10)
TEST_TURN = "notify-test:"  # + the user's id: the name of a Setting row while a turn lasts
LONGEST_PAUSE = datetime.timedelta(hours=1)
NAME_LENGTH = 120  # of the message's name in a notice
# A Gmail-proxy open is held this long before it is sent: the sender's own Gmail tab announces
# itself up to SELF_VIEW_BEFORE after such a fetch, and the open then becomes `self`.
GMAIL_HOLD = SELF_VIEW_BEFORE + datetime.timedelta(seconds=3)
SIGNATURE_HEADER = "X-Openreceipt-Signature"
TIMESTAMP_HEADER = "X-Openreceipt-Timestamp"
DELIVERY_HEADER = "X-Openreceipt-Delivery"


# --- what the pixel path asks (web/hotpath.py) ------------------------------------------------


def wanted(reason, opens, delivered, open_count, was_delivered):
    """Whether a user whose choices are `opens` and `delivered` gets a notice of this event;
    `open_count` and `was_delivered` are the pixel's before it."""
    if reason == "open":
        return opens == "every" or (opens == "first" and open_count == 0)
    return bool(delivered) and not was_delivered


def past_quiet(last, quiet_minutes, now):
    """Whether the last notice of the same kind for the same receipt and channel (or None) is
    longer ago than the quiet period: one reading session sends one notice."""
    return last is None or now - last >= datetime.timedelta(minutes=quiet_minutes or 0)


def hold(source, at, now):
    """How long a new notice waits before it is due."""
    if source != "gmail-proxy":
        return datetime.timedelta(0)
    return max(datetime.timedelta(0), at + GMAIL_HOLD - now)


# --- what a notice says -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One notice, ready for any channel."""

    notice_id: int | None
    title: str
    text: str
    link: str | None
    data: dict  # the webhook's JSON


def receipt_link(public_url, pixel):
    return f"{public_url}/m/{pixel.public_id}" if public_url and pixel else None


def compose(reason, pixel, event, public_url, notice_id=None):
    """The Message for a notice of `reason` ("open", "delivered" or "test")."""
    if reason == "test":
        return Message(
            notice_id=None,
            title="openreceipt: test notification",
            text="This is a test. When one of your messages is opened, the notice comes here.",
            link=public_url,
            data={"id": None, "type": "test"},
        )
    # One line, and not too long: it goes into a mail's Subject and a push's Title header.
    name = " ".join((pixel.label or pixel.subject or "Your message").split())
    if len(name) > NAME_LENGTH:
        name = name[: NAME_LENGTH - 1] + "…"
    when = event.at.strftime("%-d %b %Y at %H:%M UTC")
    if reason == "open":
        title = f"Opened: {name}"
        text = f"“{name}” was opened on {when}"
    else:
        title = f"Delivered: {name}"
        text = (
            f"“{name}” was delivered on {when} (a mail server fetched it; nobody has read it yet)"
        )
    details = [
        f"in {event.place}" if event.place else "",
        f"with {event.client}" if event.client else "",
    ]
    text += "".join(f", {detail}" for detail in details if detail) + "."
    link = receipt_link(public_url, pixel)
    data = {
        "id": notice_id,
        "type": "opened" if reason == "open" else "delivered",
        "title": title,
        "text": text,
        "receipt": {
            "id": pixel.public_id,
            "label": pixel.label,
            "subject": pixel.subject,
            "url": link,
        },
        "fetch": {
            "at": event.at.isoformat(timespec="seconds") + "Z",
            "kind": event.kind,
            "source": event.source,
            "client": event.client,
            "city": event.city,
            "country": event.country,
        },
    }
    return Message(notice_id, title, text, link, data)


# --- the channels -----------------------------------------------------------------------------


class DeliveryError(Exception):
    """A notice could not be delivered: the message is a plain category for the user, `final`
    when trying again cannot help, `detail` what went wrong, for the server's log only."""

    def __init__(self, message, final=False, detail=None):
        super().__init__(message)
        self.final = final
        self.detail = detail or message


def _detail(error):
    return f"{type(error).__name__}: {_reason(error)}"


def send(channel, message, config, timeout=TIMEOUT, deadline=SEND_DEADLINE):
    """Deliver `message` on `channel` within `deadline` seconds, or raise DeliveryError.

    The sending runs in a thread of its own that is waited for `deadline` seconds at most:
    socket timeouts bound each step, not a receiver that answers one byte at a time. A send
    still running then is left to finish or fail by itself, and the try counts as failed."""
    senders = {"email": send_email, "webhook": send_webhook, "push": send_push}
    if channel.kind not in senders:
        raise DeliveryError(f"unknown channel kind {channel.kind!r}", final=True)
    outcome = {}

    def attempt():
        try:
            senders[channel.kind](channel, message, config, timeout)
        except DeliveryError as error:
            outcome["error"] = error
        except Exception as error:  # noqa: BLE001 - whatever it was, it is a failed try, counted
            log.exception("notify: unexpected error sending on a %s channel", channel.kind)
            outcome["error"] = DeliveryError(
                "failed: an unexpected error (the server's log has it)", detail=_detail(error)
            )

    sender = threading.Thread(target=attempt, name="openreceipt-send", daemon=True)
    sender.start()
    sender.join(deadline)
    if sender.is_alive():
        raise DeliveryError("timed out", detail=f"the receiver took more than {deadline} s")
    if "error" in outcome:
        raise outcome["error"]


def send_email(channel, message, config, timeout):
    server = config["SMTP"]
    if server is None:
        raise DeliveryError("the server has no mail server (OPENRECEIPT_SMTP_URL) set up")
    mail = EmailMessage()
    mail["From"] = config["SMTP_FROM"]
    mail["To"] = channel.target
    mail["Subject"] = message.title
    mail["Date"] = email.utils.formatdate(usegmt=True)
    sender_domain = email.utils.parseaddr(config["SMTP_FROM"])[1].rpartition("@")[2]
    mail["Message-ID"] = email.utils.make_msgid(domain=sender_domain or None)
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
    mail.set_content(message.text + (f"\n\n{message.link}\n" if message.link else "\n"))
    context = ssl.create_default_context()
    try:
        if server.security == "ssl":
            smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=timeout)
        with smtp:
            if server.security == "starttls":
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    # Never on unencrypted: the password and the notice would go in the clear.
                    raise DeliveryError(
                        "the mail server does not offer STARTTLS (use smtps:// or, for a relay "
                        "on the same machine, smtp+plain:// in OPENRECEIPT_SMTP_URL)"
                    )
                smtp.starttls(context=context)
            if server.username:
                smtp.ehlo_or_helo_if_needed()
                if not smtp.has_extn("auth"):
                    raise DeliveryError(
                        "the mail server offers no login (AUTH): leave the user name and "
                        "password out of OPENRECEIPT_SMTP_URL"
                    )
                smtp.login(server.username, server.password or "")
            smtp.send_message(mail)
    except smtplib.SMTPRecipientsRefused as error:
        code, reply = next(iter(error.recipients.values()))
        raise DeliveryError(
            f"refused: the mail server refused the address (SMTP {code})",
            final=500 <= code < 600,
            detail=_smtp_reply(code, reply),
        ) from None
    except smtplib.SMTPResponseException as error:
        raise DeliveryError(
            f"failed: the mail server answered SMTP {error.smtp_code}",
            detail=_smtp_reply(error.smtp_code, error.smtp_error),
        ) from None
    except (OSError, smtplib.SMTPException) as error:
        what = _connection_failure(error)
        raise DeliveryError(f"{what} (the mail server)", detail=_detail(error)) from None


def _smtp_reply(code, reply):
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}"


def signature(secret, timestamp, body):
    """The webhook signature: HMAC-SHA256 of "<timestamp>.<body>" with the channel's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def send_webhook(channel, message, config, timeout):
    body = json.dumps(message.data, ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(channel.secret or "", timestamp, body),
    }
    if message.notice_id is not None:
        headers[DELIVERY_HEADER] = str(message.notice_id)
    _post(channel.target, body, headers, config, timeout)


def send_push(channel, message, config, timeout):
    """An ntfy-style push: the text as the body, the title and a link in headers."""
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": _header_text(message.title),
        "Tags": "envelope_with_arrow",
    }
    if message.link:
        headers["Click"] = message.link
    if channel.secret:
        headers["Authorization"] = f"Bearer {channel.secret}"
    _post(channel.target, message.text.encode(), headers, config, timeout)


def _header_text(text):
    """A header value: as is when ASCII, else RFC 2047 encoded words (ntfy decodes them)."""
    text = " ".join(text.split())
    # A long title is several encoded words, joined by a space: never folded over lines.
    return text if text.isascii() else Header(text, "utf-8").encode(linesep=" ")


RETRY_STATUSES = {408, 425, 429}


def _post(url, body, headers, config, timeout):
    """POST to a webhook or push URL (web/outbound.py: only where allowed). A redirect is an
    answer like any other: not a delivery, and not followed."""
    headers = {**headers, "User-Agent": "openreceipt-notify"}
    try:
        status = outbound.post(url, body, headers, timeout, config.get("NOTIFY_ALLOW") or ())
    except outbound.NotAllowed as error:
        raise DeliveryError(f"not allowed: {error}", final=True) from None
    except outbound.BadURL as error:  # saved before URLs were checked as they are now
        raise DeliveryError(f"not a valid address: {error}", final=True) from None
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryError(_connection_failure(error), detail=_detail(error)) from None
    if not 200 <= status < 300:
        final = 300 <= status < 500 and status not in RETRY_STATUSES
        raise DeliveryError(f"{'refused' if final else 'failed'}: HTTP {status}", final=final)


def _connection_failure(error):
    """The category of a failure to reach a receiver: nothing of what it said."""
    if isinstance(error, socket.gaierror):
        return "could not connect: the host name was not found"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return "could not connect securely (TLS)"
    if isinstance(error, OSError):
        return "could not connect"
    return "no valid HTTP answer"


def _reason(error):
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
    return " ".join(str(reason).split())[:200] or type(error).__name__


# --- the delivery loop ------------------------------------------------------------------------


def pause(attempts, first_seconds):
    """How long to wait after the `attempts`-th failed try: doubling, at most an hour."""
    seconds = first_seconds * 2 ** min(attempts - 1, 20)
    return min(datetime.timedelta(seconds=seconds), LONGEST_PAUSE)


def _claim_sql(database):
    """One statement that takes the oldest due notice: it moves the notice's due time a lease
    ahead and stamps it with this claim. SQLite runs it under its one write lock; PostgreSQL's
    SKIP LOCKED lets each of many deliverers asking at once take a different notice, and the
    outer conditions, checked again on the row as it is when locked, make sure that a notice
    another deliverer took just now is not taken twice."""
    sqlite = isinstance(database, SqliteDatabase)
    p = database.param
    return (
        f"UPDATE notice SET claim = {p}, due_at = {p}, attempts = attempts + 1 "
        "WHERE id = (SELECT id FROM notice WHERE state = 'pending' "
        f"AND due_at <= {p} ORDER BY due_at LIMIT 1{'' if sqlite else ' FOR UPDATE SKIP LOCKED'}) "
        f"AND state = 'pending' AND due_at <= {p} RETURNING id"
    ), sqlite


def claim_next(now):
    """Take the oldest notice due at `now` for this process; only one of any number of workers
    or hosts asking at once gets it. Returns (notice id, claim token), or None."""
    sql, sqlite = _claim_sql(db.obj)
    token = secrets.token_hex(8)

    def stamp(moment):  # SQLite keeps times as the text Peewee writes
        return moment.isoformat(" ") if sqlite else moment

    # fetchall(): the statement is only done (and SQLite's write lock let go) once it has
    # given all its rows.
    rows = db.execute_sql(sql, (token, stamp(now + LEASE), stamp(now), stamp(now))).fetchall()
    return (rows[0][0], token) if rows else None


def deliver_due(app, now=None, limit=BATCH):
    """Claim and send the notices that are due, one at a time, `limit` at most. Returns how
    many were sent, are to be tried again, were given up and were skipped. `now` (tests): the
    time to act at; otherwise each claim and each result takes the clock as it is then."""
    counts = {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}
    for _ in range(limit):
        if stopping(app, "notify"):
            break
        moment = now or utcnow()
        # A read first: a claim is an UPDATE, which on SQLite takes the write lock even when
        # nothing is due, and the pixel would have to wait for it.
        if not Notice.select().where(Notice.state == "pending", Notice.due_at <= moment).exists():
            break
        claimed = claim_next(moment)
        if claimed is None:
            break
        counts[deliver(app, *claimed, now)] += 1
    return counts


def deliver(app, notice_id, token, now=None):
    """Send one claimed notice and record what came of it (by its claim, so a worker whose lease
    ran out cannot overwrite what another one did)."""
    notice = (
        Notice.select(Notice, NotifyChannel, Pixel, User)
        .join(NotifyChannel)
        .switch(Notice)
        .join(Pixel)
        .join(User)
        .where(Notice.id == notice_id)
        .first()
    )
    if notice is None:  # the receipt or the channel was deleted meanwhile
        return "skipped"
    moment = now or utcnow()
    mine = (Notice.id == notice_id) & (Notice.claim == token)
    event = Event.get_or_none(Event.id == notice.event_id)
    if notice.reason == "open" and (event is None or event.kind != "open"):
        # The open was the sender's own after all. An open that came meanwhile was not given a
        # notice of its own (not the first, or within the quiet period): this one tells of it.
        event = _unnoticed_open(notice, event)
        if event is not None:
            Notice.update(event=event.id).where(mine).execute()
            held = hold(event.source, event.at, moment)
            if held:  # a Gmail open in turn: held as long as it is
                Notice.update(due_at=moment + held, claim=None, attempts=Notice.attempts - 1).where(
                    mine
                ).execute()
                return "retry"
    why_not = _no_longer_wanted(notice, event)
    if why_not:
        Notice.update(state="skipped", last_error=why_not).where(mine).execute()
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
            Notice.update(state="failed", last_error=text).where(mine).execute()
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
        later = moment + pause(notice.attempts, app.config["NOTIFY_RETRY_SECONDS"])
        Notice.update(due_at=later, claim=None, last_error=text).where(mine).execute()
        return "retry"
    Notice.update(state="sent", sent_at=utcnow(), last_error=None).where(mine).execute()
    return "sent"


def _unnoticed_open(notice, replaced):
    """The first open of the notice's receipt, after the event it was queued for, that has no
    notice on the same channel; or None."""
    noticed = Notice.select(Notice.event).where(
        Notice.channel == notice.channel_id, Notice.event.is_null(False), Notice.id != notice.id
    )
    query = Event.select().where(
        Event.pixel == notice.pixel_id, Event.kind == "open", Event.id.not_in(noticed)
    )
    if replaced is not None:
        query = query.where(Event.at >= replaced.at)
    return query.order_by(Event.at, Event.id).first()


def _no_longer_wanted(notice, event):
    """Why a queued notice is not to be sent after all (or None)."""
    if event is None or event.kind != EVENT_KIND.get(notice.reason):
        return "the fetch was judged otherwise since (e.g. it was the sender's own view)"
    user = notice.pixel.owner
    if notice.reason == "open" and user.notify_opens == "off":
        return "notices of opens were turned off"
    if notice.reason == "delivered" and not user.notify_delivered:
        return "notices of deliveries were turned off"
    return None


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
    """One round of the delivery loop; True when there may be more due at once."""
    with app.app_context():
        counts = deliver_due(app)
    return sum(counts.values()) >= BATCH
