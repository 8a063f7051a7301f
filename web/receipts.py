"""Receipts: minting pixels, recording what their fetches meant, and keeping each pixel's
counters and state exact."""

import datetime
import re
import secrets
from dataclasses import asdict, dataclass

from peewee import Case, fn

from . import hotpath
from .classify import (
    OPEN,
    PREFETCH,
    SELF,
    SELF_VIEW_REASON,
    Fetch,
    PixelFacts,
    client_name,
    judge,
    within_self_view,
)
from .geo import Location
from .hotpath import STATE_REACHED
from .models import STATES, Event, Pixel, locked, utcnow, write_transaction
from .retention import archived_rows

COUNTERS = {
    "open": Pixel.open_count,
    "prefetch": Pixel.prefetch_count,
    "preview": Pixel.preview_count,
    "self": Pixel.self_count,
    "bot": Pixel.bot_count,
    "unknown": Pixel.unknown_count,
}


# What a public id can be (new_public_id makes 16 of these characters); anything else is no pixel.
PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def owned_pixel(owner, public_id):
    """The owner's pixel with this public id, or None (for a stranger's, too)."""
    if not PUBLIC_ID.fullmatch(public_id):
        return None
    return Pixel.get_or_none(Pixel.public_id == public_id, Pixel.owner == owner)


def new_public_id():
    """A random, non-sequential id: 96 bits, URL-safe, nothing to enumerate."""
    return secrets.token_urlsafe(12)


def mint(owner, subject=None, recipients=(), label=None, mint_fingerprint=None, made_with=None):
    """Create a waiting pixel for a message (checked values: see minting.make_receipt)."""
    return Pixel.create(
        public_id=new_public_id(),
        owner=owner,
        subject=subject,
        recipients=list(recipients),
        label=label,
        mint_fingerprint=mint_fingerprint,
        made_with=made_with,
    )


@dataclass(frozen=True)
class Fetched:
    """One fetch of a pixel as the pixel endpoint saw it, masked and ready to be judged: what is
    recorded now, or spooled (web/spool.py) and recorded later. Nothing in it is raw: `ip` is the
    masked network, `browser` the keyed fingerprint of user agent and network."""

    public_id: str
    at: datetime.datetime
    user_agent: str
    ip: str | None
    method: str
    purpose: str
    browser: str
    country: str | None
    city: str | None
    key: str | None = None  # set when spooled: the replay stores it, once

    def to_json(self):
        return {**asdict(self), "at": self.at.isoformat()}

    @classmethod
    def from_json(cls, data):
        return cls(**{**data, "at": datetime.datetime.fromisoformat(data["at"])})


def record(fetched, app, short_waits=False):
    """Judge and store a Fetched with the app's classifier data and collection settings;
    `short_waits` as hotpath.record_fetch takes it."""
    services, config = app.extensions["openreceipt"], app.config
    fetch = Fetch(fetched.user_agent, fetched.ip, fetched.method, fetched.purpose)
    use_mail_hosting, collect_client = config["MX_LOOKUP"], config["COLLECT_CLIENT"]

    def decide(facts, now):
        pixel = PixelFacts(
            mint_fingerprint=facts["mint_fingerprint"],
            sent_at=facts["sent_at"],
            last_self_view_at=facts["last_self_view_at"],
            mail_hosting=facts["mail_hosting"],
        )
        return judge(fetch, pixel, services.networks, now, fetched.browser, use_mail_hosting)

    def name_client(source):
        if not collect_client:
            return None
        return (
            printable(client_name(fetched.user_agent, source, services.ua_parser) or "")[:100]
            or None
        )

    location = Location(fetched.country, fetched.city)
    return hotpath.record_fetch(
        fetched.public_id,
        decide,
        name_client,
        fetched.ip,
        location,
        fetched.at,
        fetched.key,
        short_waits,
    )


def printable(text):
    """Text without control characters (a user agent may hold NUL, which PostgreSQL refuses)."""
    return "".join(c for c in text if c.isprintable() or c == " ").strip()


def refresh(pixel_id):
    """Recount a pixel's counters, times and state from its events (after a correction), and
    from the tallies of its events that retention deleted."""
    counts = dict.fromkeys(COUNTERS, 0)
    firsts, lasts = {}, {}
    rows = (
        Event.select(Event.kind, fn.COUNT(Event.id), fn.MIN(Event.at), fn.MAX(Event.at))
        .where(Event.pixel == pixel_id)
        .group_by(Event.kind)
        .tuples()
    )
    archived = archived_rows(Pixel.select(Pixel.archived).where(Pixel.id == pixel_id).get())
    for kind, count, first_at, last_at in [*rows, *archived]:
        counts[kind] += count
        firsts[kind] = min(firsts.get(kind, first_at), first_at)
        lasts[kind] = max(lasts.get(kind, last_at), last_at)
    last = max(lasts.values(), default=None)
    opened = (firsts[OPEN], lasts[OPEN]) if OPEN in firsts else None
    delivered = min((firsts[k] for k in (OPEN, PREFETCH) if k in firsts), default=None)
    state = "waiting"
    for kind, reached in STATE_REACHED.items():
        if counts[kind]:
            state = max(state, reached, key=STATES.index)
    changes = {COUNTERS[kind]: count for kind, count in counts.items()}
    changes.update(
        {
            Pixel.state: state,
            Pixel.first_open_at: opened[0] if opened else None,
            Pixel.last_open_at: opened[1] if opened else None,
            Pixel.delivered_at: delivered,
            Pixel.last_event_at: last,
        }
    )
    changes[Pixel.activity_at] = last or Pixel.created_at
    Pixel.update(changes).where(Pixel.id == pixel_id).execute()


def self_view(pixel, at=None):
    """The sender's Gmail tab showed the pixel: Gmail-proxy opens from 5 s before now are the
    sender's own (later ones are judged so as they arrive). Returns how many were re-classified."""
    at = at or utcnow()
    with write_transaction():
        # Under the pixel's lock, like record_fetch and retention.purge: a recount never sees
        # events another transaction is moving or archiving.
        locked(Pixel.select(Pixel.id).where(Pixel.id == pixel.id)).first()
        # Never backwards: a late beacon does not shorten the window of a later one.
        column = Pixel.last_self_view_at
        later = Case(None, [(column.is_null() | (column < at), at)], column)
        Pixel.update({column: later}).where(Pixel.id == pixel.id).execute()
        candidates = Event.select(Event.id, Event.at).where(
            Event.pixel == pixel.id,
            Event.source == "gmail-proxy",
            Event.kind == OPEN,
            Event.at >= at - datetime.timedelta(seconds=60),
        )
        ids = [event.id for event in candidates if within_self_view(event.at, at)]
        if ids:
            Event.update(kind=SELF, reason=SELF_VIEW_REASON).where(Event.id.in_(ids)).execute()
            refresh(pixel.id)
    return len(ids)


def correct(event, kind):
    """The sender says what an event really was; the pixel's counters and state follow."""
    with write_transaction():
        locked(Pixel.select(Pixel.id).where(Pixel.id == event.pixel_id)).first()
        if event.kind != kind:
            reason = f"marked '{kind}' by the sender (judged '{event.kind}': {event.reason})"
            Event.update(kind=kind, reason=reason[:200]).where(Event.id == event.id).execute()
        refresh(event.pixel_id)
