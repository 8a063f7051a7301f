"""Receipts: minting pixels and recording what their fetches meant."""

import secrets

from peewee import Case, fn

from .models import STATES, Event, Pixel, db, utcnow

COUNTERS = {
    "open": Pixel.open_count,
    "prefetch": Pixel.prefetch_count,
    "preview": Pixel.preview_count,
    "self": Pixel.self_count,
    "bot": Pixel.bot_count,
}
STATE_REACHED = {"preview": "inserted", "prefetch": "delivered", "open": "opened"}


def new_public_id():
    """A random, non-sequential id: 96 bits, URL-safe, nothing to enumerate."""
    return secrets.token_urlsafe(12)


def mint(owner, subject=None, recipients=(), label=None):
    """Create a waiting pixel for a message."""
    return Pixel.create(
        public_id=new_public_id(),
        owner=owner,
        subject=subject,
        recipients=list(recipients),
        label=label,
    )


def record(pixel_id, verdict, ip, location, client, at=None):
    """Store one event (with the masked address `ip`) and move the pixel's counters and state,
    in one short transaction.

    Counters and state are updated in SQL, not from a copy read earlier, so concurrent fetches
    of the same pixel never overwrite each other."""
    at = at or utcnow()
    counter = COUNTERS[verdict.kind]
    changes = {counter: counter + 1, Pixel.last_event_at: at}
    reached = STATE_REACHED.get(verdict.kind)
    if reached:
        earlier = STATES[: STATES.index(reached)]
        changes[Pixel.state] = Case(None, [(Pixel.state.in_(earlier), reached)], Pixel.state)
    if verdict.kind == "open":
        changes[Pixel.first_open_at] = fn.COALESCE(Pixel.first_open_at, at)
        changes[Pixel.last_open_at] = at
    with db.atomic():
        event_id = Event.insert(
            pixel=pixel_id,
            at=at,
            kind=verdict.kind,
            source=verdict.source,
            reason=verdict.reason[:200],
            ip=ip,
            country=location.country,
            city=location.city,
            client=client[:100] if client else None,
        ).execute()
        Pixel.update(changes).where(Pixel.id == pixel_id).execute()
    return event_id
