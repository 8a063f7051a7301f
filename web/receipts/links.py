"""A receipt's tracked links: the destinations the sender asked to track, each stored once with a
public id of its own, and one honeypot link per receipt that no person can see or click (the
bookmarklet hides it in the message; scanners, which follow every link, follow it too). The
redirect (web/clicks.py) goes only to a destination stored here."""

import secrets
from urllib.parse import urlsplit

from ..storage.engine import write_transaction
from ..storage.models import Link, Pixel
from .minting import Refused, check_storable

MAX_LINKS = 20  # a receipt's tracked links, the honeypot aside
MAX_URL = 2000
SCHEMES = ("http", "https")


def clean_destinations(values):
    """The destinations of an API request (a list of URLs), checked: http and https only, with
    a host, no user name or password in them, no spaces or control characters; each once, in
    order. Raises Refused saying what is wrong."""
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise Refused("'links' must be a list of URLs")
    destinations = list(dict.fromkeys(value.strip() for value in values))
    if len(destinations) > MAX_LINKS:
        raise Refused(f"at most {MAX_LINKS} links a receipt")
    for url in destinations:
        shown = url[:80]
        if len(url) > MAX_URL:
            raise Refused(f"a link is longer than {MAX_URL} characters: {shown}…")
        check_storable(url, "links")
        if any(character.isspace() for character in url):
            raise Refused(f"a link holds a space: {shown!r}")
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            raise Refused(f"not a URL: {shown!r}") from None
        if parts.scheme.lower() not in SCHEMES or not host:
            raise Refused(f"only http:// and https:// links can be tracked, not {shown!r}")
        if parts.username is not None or parts.password is not None:
            raise Refused(f"a link with a user name or password is not tracked: {shown!r}")
    return destinations


def add_links(pixel, destinations):
    """Track `destinations` (clean_destinations) on the receipt: its Link for each, in order
    (one already tracked is reused), and its honeypot. Refused for a receipt that stopped
    recording (a recipient on a do-not-track list): their links are not rewritten either."""
    if pixel.tracking_stopped_at is not None:
        raise Refused("a recipient is on a do-not-track list: the links are not tracked")
    with write_transaction():
        links = list(Link.select().where(Link.pixel == pixel.id))
        honeypot = next((link for link in links if link.honeypot), None)
        known = {link.destination: link for link in links if not link.honeypot}
        new = [destination for destination in destinations if destination not in known]
        if len(known) + len(new) > MAX_LINKS:
            raise Refused(f"at most {MAX_LINKS} links a receipt")
        for destination in new:
            known[destination] = _new(pixel, destination)
        if honeypot is None and destinations:
            honeypot = _new(pixel, None)
    return [known[destination] for destination in destinations], honeypot


def _new(pixel, destination):
    return Link.create(
        public_id=secrets.token_urlsafe(12),
        pixel=pixel.id,
        destination=destination or "",
        honeypot=destination is None,
    )


def links_of(pixel):
    """The receipt's tracked links (not the honeypot), oldest first."""
    return links_of_each([pixel]).get(pixel.id, [])


def links_of_each(pixels):
    """{receipt id: its tracked links, oldest first} for a page of receipts, in one query; a
    receipt with none is not in it."""
    return _by_receipt(Link.select().where(Link.pixel.in_([pixel.id for pixel in pixels])))


def links_of_owner(user):
    """{receipt id: its tracked links, oldest first} for all of a user's receipts (an export),
    in one query."""
    return _by_receipt(Link.select().join(Pixel).where(Pixel.owner == user))


def _by_receipt(query):
    found = {}
    for link in query.where(~Link.honeypot).order_by(Link.id):
        found.setdefault(link.pixel_id, []).append(link)
    return found
