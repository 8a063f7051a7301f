"""A user's receipts as the status page lists them: most recent activity first, searched by
subject, label or recipient, filtered by status (display.STATUSES), a page at a time, with each
one's last open."""

from peewee import Cast, fn

from ..storage.models import Event, Pixel, User
from ..vocabulary import Kind
from .display import with_status

PER_PAGE = 25


def receipts_page(user, q, status, page):
    """One page of a user's receipts, most recent activity first, with each one's last open."""
    query = Pixel.select().where(Pixel.owner == user)
    if q:
        # Recipients are JSON text: compare the raw column, not a JSON-encoded search.
        recipients = Cast(Pixel.recipients, "TEXT")
        query = query.where(
            Pixel.subject.contains(q) | Pixel.label.contains(q) | recipients.contains(q)
        )
    if status:
        query = with_status(query, status)
    total = query.count() if q or status else receipt_count(user)
    pixels = list(
        query.order_by(Pixel.activity_at.desc(), Pixel.id.desc()).paginate(page, PER_PAGE)
    )
    return pixels, last_opens(pixels), total


def receipt_count(user):
    """How many receipts `user` has, as the database keeps it (no count of their rows)."""
    return User.select(User.receipt_count).where(User.id == user.id).scalar()


def last_opens(pixels):
    """The latest open event of each pixel, in one query."""
    ids = [pixel.id for pixel in pixels if pixel.open_count]
    if not ids:
        return {}
    latest = (
        Event.select(fn.MAX(Event.id))
        .where(Event.pixel.in_(ids), Event.kind == Kind.OPEN)
        .group_by(Event.pixel)
    )
    return {event.pixel_id: event for event in Event.select().where(Event.id.in_(latest))}
