"""A receipt's ledger: its counters, times and state kept exact when what its events meant
changes — the sender's own views (self_view), the sender's corrections (correct) — by recounting
them from its events (refresh); and the owner's receipt looked up by its public id."""

import datetime
import re

from peewee import Case, fn

from ..judgement.classify import SELF_VIEW_REASON, within_self_view
from ..judgement.clicks import SWEEP
from ..storage.engine import locked, utcnow, write_transaction
from ..storage.models import Event, Pixel
from ..vocabulary import SHOWS_DELIVERY, STATE_REACHED, STATES, Kind, State
from .retention import archived_rows

COUNTERS = {
    Kind.OPEN: Pixel.open_count,
    Kind.PREFETCH: Pixel.prefetch_count,
    Kind.PREVIEW: Pixel.preview_count,
    Kind.SELF: Pixel.self_count,
    Kind.BOT: Pixel.bot_count,
    Kind.UNKNOWN: Pixel.unknown_count,
    Kind.CLICK: Pixel.click_count,
}


# An event of each kind in the words a corrected event's reason keeps.
AS_WORDS = {
    Kind.OPEN: "an open",
    Kind.PREFETCH: "a machine on delivery",
    Kind.PREVIEW: "their draft",
    Kind.SELF: "their own view",
    Kind.BOT: "a machine",
    Kind.UNKNOWN: "an unrecognised program",
    Kind.CLICK: "a click",
}

# What a public id can be (new_public_id makes 16 of these characters); anything else is no pixel.
PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def owned_pixel(owner, public_id):
    """The owner's pixel with this public id, or None (for a stranger's, too)."""
    if not PUBLIC_ID.fullmatch(public_id):
        return None
    return Pixel.get_or_none(Pixel.public_id == public_id, Pixel.owner == owner)


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
    opened = (firsts[Kind.OPEN], lasts[Kind.OPEN]) if Kind.OPEN in firsts else None
    delivered = min((firsts[k] for k in SHOWS_DELIVERY if k in firsts), default=None)
    state = State.WAITING
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
            Event.kind == Kind.OPEN,
            Event.at >= at - datetime.timedelta(seconds=60),
        )
        ids = [event.id for event in candidates if within_self_view(event.at, at)]
        if ids:
            Event.update(kind=Kind.SELF, reason=SELF_VIEW_REASON).where(Event.id.in_(ids)).execute()
            refresh(pixel.id)
    return len(ids)


HONEYPOT_SWEEP_REASON = (
    "the same network followed the hidden link that no person can see, within seconds: a scanner"
)
BURST_REASON = (
    "the same network followed several of the message's links within seconds: a scanner's sweep"
)


def settle_clicks(pixel_id, ip, at):
    """After a request of one of the pixel's links from the masked network `ip` at `at`: when
    that network also followed the honeypot, or another of the links, within SWEEP of it, its
    clicks then were a machine's (kind bot). Returns how many were re-classified."""
    with write_transaction():
        locked(Pixel.select(Pixel.id).where(Pixel.id == pixel_id)).first()
        near = list(
            Event.select(Event.id, Event.kind, Event.source, Event.link).where(
                Event.pixel == pixel_id,
                Event.link.is_null(False),
                Event.ip == ip,
                Event.at.between(at - SWEEP, at + SWEEP),
            )
        )
        honeypot = any(event.source == "honeypot" for event in near)
        links = {event.link_id for event in near if event.source != "honeypot"}
        if not honeypot and len(links) < 2:
            return 0
        ids = [event.id for event in near if event.kind == Kind.CLICK]
        if ids:
            reason = HONEYPOT_SWEEP_REASON if honeypot else BURST_REASON
            Event.update(kind=Kind.BOT, reason=reason).where(Event.id.in_(ids)).execute()
            refresh(pixel_id)
    return len(ids)


class WrongKind(ValueError):
    """A kind an event cannot be: a click for a fetch of the pixel, an open for a click."""


def correct(event, kind):
    """The sender says what an event really was; the pixel's counters and state follow. A
    fetch of the pixel is never a click, nor a click an open (WrongKind)."""
    if kind == (Kind.OPEN if event.link_id is not None else Kind.CLICK):
        raise WrongKind(
            "a tracked link's request can be a click, not an open"
            if event.link_id is not None
            else "a fetch of the image can be an open, not a click"
        )
    with write_transaction():
        locked(Pixel.select(Pixel.id).where(Pixel.id == event.pixel_id)).first()
        if event.kind != kind:
            said, judged = (AS_WORDS.get(k, k) for k in (kind, event.kind))
            reason = f"marked as {said} by the sender (judged {judged}: {event.reason})"
            Event.update(kind=kind, reason=reason[:200]).where(Event.id == event.id).execute()
        refresh(event.pixel_id)
