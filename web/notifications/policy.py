"""What deserves a notice: which events tell of what, whom they reach, and when they are due.
Asked by the pixel's transaction as it queues a notice (outbox.queue) and by the delivery loop
before it sends one."""

import datetime

from ..judgement.classify import SELF_VIEW_BEFORE
from ..judgement.clicks import SWEEP
from ..vocabulary import Kind, Opens, Reason, State

# What kind of event tells of what: an open, or a delivery (a machine fetched it on delivery).
# Previews, the sender's own views and bots never notify.
REASONS = {Kind.OPEN: Reason.OPEN, Kind.CLICK: Reason.CLICK, Kind.PREFETCH: Reason.DELIVERED}
EVENT_KIND = {reason: kind for kind, reason in REASONS.items()}
# A Gmail-proxy open is held this long before it is sent: the sender's own Gmail tab announces
# itself up to SELF_VIEW_BEFORE after such a fetch, and the open then becomes `self`.
GMAIL_HOLD = SELF_VIEW_BEFORE + datetime.timedelta(seconds=3)
# A click is held until the clicks around it are in: a scanner's sweep or honeypot hit within
# that time makes it a machine's (receipts/ledger.settle_clicks), and its notice is dropped.
CLICK_HOLD = SWEEP + datetime.timedelta(seconds=5)


def wanted(reason, opens, delivered, count, was_delivered):
    """Whether a user whose choices are `opens` and `delivered` gets a notice of this event;
    `count` (the receipt's opens, or for a click its clicks) and `was_delivered` are the
    pixel's before it. Clicks follow the choice for opens: the first one, every one, or none."""
    if reason in (Reason.OPEN, Reason.CLICK):
        return opens == Opens.EVERY or (opens == Opens.FIRST and count == 0)
    return bool(delivered) and not was_delivered


def past_quiet(last, quiet_minutes, now):
    """Whether the last notice of the same kind for the same receipt and channel (or None) is
    longer ago than the quiet period: one reading session sends one notice."""
    return last is None or now - last >= datetime.timedelta(minutes=quiet_minutes or 0)


def hold(source, at, now, reason=None):
    """How long a new notice waits before it is due."""
    if reason == Reason.CLICK:
        return max(datetime.timedelta(0), at + CLICK_HOLD - now)
    if source != "gmail-proxy":
        return datetime.timedelta(0)
    return max(datetime.timedelta(0), at + GMAIL_HOLD - now)


def no_longer_wanted(notice, event):
    """Why a queued notice is not to be sent after all (or None)."""
    if notice.reason == Reason.NOT_OPENED:
        if notice.pixel.state == State.OPENED:
            return "it was opened since"
        if notice.pixel.tracking_stopped_at is not None:
            return "a recipient is on the do-not-track list"
        return None
    if event is None or event.kind != EVENT_KIND.get(notice.reason):
        return "the fetch was judged otherwise since (e.g. it was the sender's own view)"
    user = notice.pixel.owner
    if notice.reason == Reason.OPEN and user.notify_opens == Opens.OFF:
        return "notices of opens were turned off"
    if notice.reason == Reason.DELIVERED and not user.notify_delivered:
        return "notices of deliveries were turned off"
    return None
