"""A user's data, whole, as JSON or CSV; and erasure of everything about one recipient."""

import csv
import io
import json

from peewee import JOIN, chunked, fn

from ..storage.engine import db, iso
from ..storage.models import ApiToken, DoNotTrack, Event, Link, NotifyChannel, Pixel
from .display import click_link
from .donottrack import covers
from .links import links_of_owner

PIXEL_FIELDS = (
    "id",
    "label",
    "subject",
    "recipients",
    "state",
    "open_count",
    "prefetch_count",
    "preview_count",
    "self_count",
    "bot_count",
    "unknown_count",
    "click_count",
    "created_at",
    "sent_at",
    "delivered_at",
    "first_open_at",
    "last_open_at",
    "last_event_at",
    "tracking_stopped_at",
    "remind_after_days",
    "remind_at",
    "reminded_at",
)
EVENT_FIELDS = ("at", "kind", "source", "reason", "ip", "country", "city", "client", "link")


def pixel_record(pixel):
    record = {name: getattr(pixel, name) for name in PIXEL_FIELDS if name != "id"}
    record = {"id": pixel.public_id, **record}
    for name, value in record.items():
        if name.endswith("_at"):
            record[name] = iso(value)
    return record


def event_record(event):
    record = {name: getattr(event, name) for name in EVENT_FIELDS if name != "link"}
    record["at"] = iso(event.at)
    record["link"] = click_link(event)
    return record


def user_pixels(user):
    """The user's pixels, oldest first, each with its events (oldest first): two queries."""
    pixels = list(Pixel.select().where(Pixel.owner == user).order_by(Pixel.created_at, Pixel.id))
    events = {}
    query = (
        Event.select(Event, Link)
        .join(Pixel)
        .switch(Event)
        .join(Link, JOIN.LEFT_OUTER)
        .where(Pixel.owner == user)
        .order_by(Event.pixel, Event.at, Event.id)
    )
    for event in query.iterator():
        events.setdefault(event.pixel_id, []).append(event)
    return [(pixel, events.get(pixel.id, [])) for pixel in pixels]


def as_json(user):
    """Everything the server holds for `user`, as one JSON document."""
    tokens = ApiToken.select().where(ApiToken.user == user).order_by(ApiToken.id)
    entries = DoNotTrack.select().where(DoNotTrack.user == user).order_by(DoNotTrack.id)
    pixels = user_pixels(user)
    tracked = links_of_owner(user)
    document = {
        "user": {"email": user.email, "created_at": iso(user.created_at)},
        "api_tokens": [
            {
                "name": token.name,
                "created_at": iso(token.created_at),
                "last_used_at": iso(token.last_used_at),
                "revoked_at": iso(token.revoked_at),
            }
            for token in tokens
        ],
        "do_not_track": [entry.entry for entry in entries],
        "notifications": {
            "opens": user.notify_opens,
            "delivered": bool(user.notify_delivered),
            "quiet_minutes": user.notify_quiet_minutes,
            # Where notices go; never the webhook's signing secret or a push access token.
            "channels": [
                {
                    "kind": channel.kind,
                    "target": channel.target,
                    "created_at": iso(channel.created_at),
                }
                for channel in NotifyChannel.select()
                .where(NotifyChannel.user == user)
                .order_by(NotifyChannel.id)
            ],
        },
        "pixels": [
            {
                **pixel_record(pixel),
                "links": [link.destination for link in tracked.get(pixel.id, [])],
                "events": [event_record(event) for event in events],
            }
            for pixel, events in pixels
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def as_csv(user):
    """The user's receipts as CSV: one row per event, with its receipt's columns first; a receipt
    without events has one row with the event columns empty. Recipients are separated by
    spaces."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [f"pixel_{name}" for name in PIXEL_FIELDS] + [f"event_{n}" for n in EVENT_FIELDS]
    )
    for pixel, events in user_pixels(user):
        record = pixel_record(pixel)
        record["recipients"] = " ".join(record["recipients"])
        row = [_cell(name, record[name]) for name in PIXEL_FIELDS]
        for event in events or [None]:
            cells = event_record(event) if event else {}
            writer.writerow(row + [_cell(name, cells.get(name)) for name in EVENT_FIELDS])
    return out.getvalue()


# Columns whose text comes from people or from fetchers; the others are ids, numbers, times,
# addresses and words of openreceipt's own, left exactly as they are.
FREE_TEXT = {"label", "subject", "recipients", "reason", "city", "client", "link"}


def _cell(name, value):
    """A CSV cell; free text that a spreadsheet would run as a formula gets a leading '."""
    if value is None:
        return ""
    text = str(value)
    if name in FREE_TEXT and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def forget(address):
    """Delete every pixel, of any user, whose stored recipients include `address`, however
    either is spelt (case, a trailing dot, a domain's Unicode or xn-- form), with its events.
    Returns a list of (owner email, pixel id, subject, events deleted)."""
    removed = []
    with db.atomic():
        # Every receipt is looked at: an erasure must not depend on how JSON text escapes.
        candidates = Pixel.select(Pixel.id, Pixel.recipients).iterator()
        matched = [
            pixel.id
            for pixel in candidates
            if any(covers(address, recipient) for recipient in pixel.recipients)
        ]
        pixels = []
        for batch in chunked(matched, 200):
            pixels.extend(Pixel.select().where(Pixel.id.in_(batch)))
        for batch in chunked(pixels, 200):
            ids = [pixel.id for pixel in batch]
            counts = dict(
                Event.select(Event.pixel, fn.COUNT(Event.id))
                .where(Event.pixel.in_(ids))
                .group_by(Event.pixel)
                .tuples()
            )
            Event.delete().where(Event.pixel.in_(ids)).execute()
            Pixel.delete().where(Pixel.id.in_(ids)).execute()
            removed += [
                (pixel.owner.email, pixel.public_id, pixel.subject, counts.get(pixel.id, 0))
                for pixel in batch
            ]
    return removed
