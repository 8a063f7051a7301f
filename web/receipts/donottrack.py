"""Do-not-track: addresses, domains and top-level domains whose mail gets no receipts.

An entry is an address (`bob@example.de`), a domain (`example.de`, which covers its subdomains)
or a top-level domain written with its dot (`.de`). A user's entries hold for their own receipts;
entries without a user hold for every user of the server (the operator's list)."""

import functools
import re

from peewee import IntegrityError, chunked

from ..storage.engine import db, utcnow
from ..storage.models import DoNotTrack, Pixel

MAX_ENTRY = 320
# A domain's labels: letters, digits and hyphens (internationalised names in their xn-- form
# are covered, and so are names in their own script).
LABEL = re.compile(r"^(?!-)[\w-]{1,63}(?<!-)$")


class EntryError(ValueError):
    """Text that is neither an address, a domain nor a top-level domain."""


def normalize(text):
    """The stored form of an entry: lower case, without spaces or a trailing dot; an entry that
    starts with @ is the domain after it. Raises EntryError with a sentence for the user."""
    entry = str(text).strip().lower().rstrip(".")
    if entry.startswith("@"):
        entry = entry[1:]
    local, at, domain = entry.rpartition("@")
    top_level = not at and entry.startswith(".")
    labels = (domain[1:] if top_level else domain).split(".")
    if (
        not entry
        or len(entry) > MAX_ENTRY
        or not entry.isprintable()
        or (at and (not local or any(c.isspace() for c in local)))
        or not all(LABEL.match(label) for label in labels)
        or (top_level and len(labels) != 1)
        or (not at and not top_level and len(labels) < 2)
    ):
        raise EntryError(
            f"{str(text).strip()[:80]!r} is not an address (bob@example.de), a domain "
            "(example.de) or a top-level domain (.de)"
        )
    return entry


def canonical_address(text):
    """An address (or, when only domains are kept, a domain) in the one form it is stored and
    compared in: without spaces around it, in lower case, its domain without the trailing dot
    DNS allows (`erin@Erase.Example.` is erin@erase.example). Minting stores this form, and
    every do-not-track check compares it."""
    local, at, domain = str(text).strip().lower().rpartition("@")
    return f"{local}{at}{domain.rstrip('.')}"


@functools.lru_cache(maxsize=4096)
def _comparable(text):
    """canonical_address(), with an internationalised domain in its ASCII (xn--) form, so that
    `bücher.example` and `xn--bcher-kva.example` are the same domain to a check. A leading dot
    (a top-level domain entry) is kept."""
    local, at, domain = canonical_address(text).rpartition("@")
    dot, name = ("." if domain.startswith(".") else ""), domain.lstrip(".")
    if name and not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:  # not a name IDNA can write: compared as it is
            pass
    return f"{local}{at}{dot}{name}"


def covers(entry, recipient):
    """Whether `entry` covers a recipient (an address, or a domain when only domains are
    stored), however either is spelt: case, a trailing dot, a domain's Unicode or xn-- form."""
    entry, recipient = _comparable(entry), _comparable(recipient)
    if "@" in entry:
        return recipient == entry
    domain = recipient.rpartition("@")[2]
    if entry.startswith("."):
        return domain.endswith(entry)
    return domain == entry or domain.endswith("." + entry)


def matching(entries, recipients):
    """The entries that cover at least one of the recipients, in the entries' order."""
    return [entry for entry in entries if any(covers(entry, r) for r in recipients)]


def entries_for(user):
    """The entries that hold for `user`'s receipts: their own and the server's."""
    query = DoNotTrack.select(DoNotTrack.entry).where(
        (DoNotTrack.user == user) | DoNotTrack.user.is_null()
    )
    return sorted({row.entry for row in query})


def listed(user):
    """`user`'s own entries (None: the server's), oldest first."""
    owner = DoNotTrack.user.is_null() if user is None else DoNotTrack.user == user
    return list(DoNotTrack.select().where(owner).order_by(DoNotTrack.created_at, DoNotTrack.id))


def add(user, texts):
    """Add entries for `user` (None: for every user) and stop the receipts they cover. Returns
    (the entries added, the number of receipts stopped); an entry already there is skipped."""
    entries = list(dict.fromkeys(normalize(text) for text in texts))
    owner = DoNotTrack.user.is_null() if user is None else DoNotTrack.user == user
    added = []
    with db.atomic():
        present = {row.entry for row in DoNotTrack.select().where(owner)}
        for entry in entries:
            if entry in present:
                continue
            try:
                with db.atomic():
                    DoNotTrack.create(user=user, entry=entry)
            except IntegrityError:
                continue
            added.append(entry)
        stopped = stop_covered(user, added)
    return added, stopped


def remove(user, text):
    """Remove one entry of `user` (None: the server's); True when it was there. Receipts it
    stopped stay stopped: what was not recorded meanwhile cannot be told apart."""
    entry = normalize(text)
    owner = DoNotTrack.user.is_null() if user is None else DoNotTrack.user == user
    return DoNotTrack.delete().where(owner, DoNotTrack.entry == entry).execute() > 0


def stop_covered(user, entries):
    """Stop recording the still-recording receipts (of `user`, or of everyone) whose stored
    recipients an entry covers. Returns how many were stopped."""
    if not entries:
        return 0
    query = Pixel.select(Pixel.id, Pixel.recipients).where(Pixel.tracking_stopped_at.is_null())
    if user is not None:
        query = query.where(Pixel.owner == user)
    ids = [pixel.id for pixel in query.iterator() if matching(entries, pixel.recipients)]
    now = utcnow()
    for batch in chunked(ids, 500):
        Pixel.update(tracking_stopped_at=now).where(Pixel.id.in_(batch)).execute()
    return len(ids)
