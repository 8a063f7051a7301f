"""Reminders: "tell me if it is not opened within N days". A receipt's reminder is due N days
after its message was sent (remind_at); the delivery loop's round (delivery.step) queues a
notice of it for each of the owner's channels, once, and the notice goes out like any other.
An open cancels it, before it is due (nothing is queued) and after (the queued notice is
skipped when its turn comes); so does a recipient on the do-not-track list. A receipt whose
message shows no sign of having been sent (never marked sent, never delivered) gets none: a
draft left unsent is no unread message. Off unless the user turns it on, for one receipt or
as the default for new ones."""

import datetime

from ..storage.engine import locked, utcnow, write_transaction
from ..storage.models import Pixel
from ..vocabulary import State
from . import outbox

MAX_DAYS = 90
# Reminders queued per round at most: each is a short transaction of its own.
BATCH = 20


class BadDays(ValueError):
    """Not a number of days a reminder can wait."""


def checked_days(value):
    """A number of days as the API gives it: None (no reminder), or 1 to MAX_DAYS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise BadDays(f"days must be a whole number from 1 to {MAX_DAYS}, or null for none")
    return value


def days_from_form(text):
    """A number of days as a form gives it: empty for no reminder."""
    text = text.strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise BadDays(f"days must be a whole number from 1 to {MAX_DAYS}, or empty for none")
    return checked_days(int(text))


def due_at(pixel, days):
    """When a reminder after `days` is due: that long after the message was sent (or, until it
    is known to have been, after the receipt was made)."""
    if days is None:
        return None
    return (pixel.sent_at or pixel.created_at) + datetime.timedelta(days=days)


def set_days(pixel, days):
    """Give the receipt a reminder after `days` (checked_days), or none, in the database and
    on `pixel`; whether it changed (a reminder already sent stays sent)."""
    due = due_at(pixel, days)
    changed = (
        Pixel.update(remind_after_days=days, remind_at=due)
        .where(Pixel.id == pixel.id, Pixel.reminded_at.is_null())
        .execute()
    )
    if changed:
        pixel.remind_after_days, pixel.remind_at = days, due
    return bool(changed)


def sent(pixel_id):
    """The message was marked sent just now: a reminder counts from then."""
    pixel = Pixel.get_or_none(Pixel.id == pixel_id)
    if pixel is not None and pixel.remind_after_days and pixel.reminded_at is None:
        set_days(pixel, pixel.remind_after_days)


def queue_due(now=None):
    """Queue the notices of the reminders due at `now` (BATCH at most); how many receipts
    were reminded of. Each receipt once, whichever of the workers and hosts gets to it first."""
    now = now or utcnow()
    due = (
        Pixel.select(Pixel.id)
        .where(Pixel.remind_at <= now, Pixel.reminded_at.is_null())
        .order_by(Pixel.remind_at)
        .limit(BATCH)
    )
    reminded = 0
    for pixel_id in [row.id for row in due]:
        with write_transaction():
            query = Pixel.select().where(
                Pixel.id == pixel_id, Pixel.remind_at <= now, Pixel.reminded_at.is_null()
            )
            pixel = locked(query).first()
            if pixel is None:
                continue  # reminded (or changed) by another worker just now
            if (
                pixel.state == State.OPENED
                or pixel.tracking_stopped_at is not None
                or (pixel.sent_at is None and pixel.delivered_at is None)
            ):
                # Opened, stopped, or never sent: nothing to remind of (marking it sent later
                # sets the reminder again).
                Pixel.update(remind_at=None).where(Pixel.id == pixel_id).execute()
                continue
            Pixel.update(reminded_at=now).where(Pixel.id == pixel_id).execute()
            outbox.queue_reminder(pixel, now)
            reminded += 1
    return reminded
