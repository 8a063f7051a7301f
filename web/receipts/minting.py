"""Making a receipt: the one policy every way in goes through.

The API (scripts and the bookmarklet) and the form for receipts made by hand hand their raw
values to `make_receipt`, which checks them, refuses addresses on a do-not-track list, keeps of
the recipients what STORE_RECIPIENTS says, fingerprints the minting browser (so its own fetch
of the draft is the sender's), mints, and asks where the recipients' mail is hosted. A view only
turns its request into values and a `Refused` into an answer: a second way in cannot skip a
check, because there is no second copy of them.
"""

import datetime
import re
import secrets
from email.utils import getaddresses, quote

from flask import current_app

from ..notifications import reminders
from ..privacy import MAX_USER_AGENT, anonymize, fingerprint, kept_recipients
from ..storage.engine import utcnow
from ..storage.models import Pixel
from . import donottrack

MAX_SUBJECT = 998  # the longest line RFC 5322 allows
MAX_LABEL = 200
MAX_RECIPIENTS = 100
MAX_ADDRESS = 320
# How a receipt was made (Pixel.made_with): a manual receipt cannot know by itself when it was
# sent or which fetch was the sender's, so its page offers to say so.


DEFAULT = object()  # make_receipt's remind_after_days when the caller says nothing


class Refused(ValueError):
    """A user-facing refusal: the message says what is wrong; `status` is the HTTP answer."""

    status = 400


class TooManyReceipts(Refused):
    """The user made OPENRECEIPT_MINTS_PER_MINUTE receipts within the last minute already."""

    status = 429
    retry_after = 60  # seconds: by then the oldest of them has left the window

    def __init__(self, limit):
        super().__init__(
            f"no receipt: you made {limit} receipts within the last minute, the most this "
            "server allows; wait a minute and try again"
        )


class DoNotTrack(Refused):
    """A recipient is on a do-not-track list: no receipt for this message."""

    status = 409

    def __init__(self, listed):
        self.listed = listed
        verb = "is" if len(listed) == 1 else "are"
        super().__init__(
            f"no receipt: {', '.join(listed)} {verb} on the do-not-track list (see Settings)"
        )


def make_receipt(
    user,
    *,
    subject,
    label,
    recipients,
    made_with,
    user_agent,
    remote_addr,
    force=False,
    remind_after_days=DEFAULT,
):
    """Check, mint and return (pixel, the recipients' mail providers found in time).

    `subject`, `label` and each recipient are raw text (a recipient may be written
    `Name <address>`); `remote_addr` is the client's raw address, masked here and never kept;
    `remind_after_days`: a reminder if not opened within that many days, None for none, or
    the user's default. Raises Refused (or DoNotTrack, unless `force`; TooManyReceipts)."""
    check_mint_rate(user)
    subject = clean_text(subject, "subject", MAX_SUBJECT)
    label = clean_text(label, "label", MAX_LABEL)
    if remind_after_days is DEFAULT:
        remind_after_days = user.remind_after_days
    try:
        remind_after_days = reminders.checked_days(remind_after_days)
    except reminders.BadDays as bad:
        raise Refused(f"'remind_after_days': {bad}") from None
    addresses = clean_recipients(recipients)
    listed = listed_recipients(user, addresses)
    if listed and not force:
        raise DoNotTrack(listed)
    config = current_app.config
    pixel = mint(
        user,
        subject=subject,
        recipients=kept_recipients(addresses, config["STORE_RECIPIENTS"]),
        label=label,
        made_with=made_with,
        mint_fingerprint=fingerprint(
            config["SECRET_KEY"], (user_agent or "")[:MAX_USER_AGENT], anonymize(remote_addr)
        ),
    )
    if remind_after_days is not None:
        reminders.set_days(pixel, remind_after_days)
    return pixel, note_mail_hosting(pixel, addresses)


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


def check_mint_rate(user):
    """Refuse a receipt beyond the user's OPENRECEIPT_MINTS_PER_MINUTE. Counted in the database,
    so the limit holds across workers and hosts; requests that race may pass it by a few, which
    is still a bound on how fast one user can fill the database."""
    limit = current_app.config["MINTS_PER_MINUTE"]
    if not limit:
        return
    since = utcnow() - datetime.timedelta(minutes=1)
    recent = Pixel.select().where(Pixel.owner == user, Pixel.created_at > since)
    if recent.limit(limit).count() >= limit:
        raise TooManyReceipts(limit)


def listed_recipients(user, addresses):
    """The user's and the server's do-not-track entries that cover any of `addresses`."""
    return donottrack.matching(donottrack.entries_for(user), addresses)


def clean_text(value, name, limit):
    """A subject or label: stripped, None when empty; refused when too long or unstorable."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused(f"'{name}' must be a string")
    value = value.strip()
    if len(value) > limit:
        raise Refused(f"'{name}' is longer than {limit} characters")
    check_storable(value, name)
    return value or None


def clean_recipients(values):
    """Addresses in their stored form (donottrack.canonical_address), each once, in order,
    from a list of `address` or `Name <address>` strings: one address an item. Refuses
    anything that is not an address, and an item holding several (`a@x.org, b@y.org`): an
    item is read as exactly one address or not at all, never as its first one with the rest
    dropped unchecked."""
    if values is None:
        return []
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise Refused("'recipients' must be a list of email addresses")
    if len(values) > MAX_RECIPIENTS:
        raise Refused(f"'recipients' holds more than {MAX_RECIPIENTS} addresses")
    addresses = []
    for item in values:
        check_storable(item, "recipients")
        found = _parsed([item])
        if len(found) > 1:
            raise Refused(
                f"'recipients' holds {item[:80]!r}, which is {len(found)} addresses: give each "
                "address as an item of its own"
            )
        address = donottrack.canonical_address(found[0][1]) if found else ""
        local, at, domain = address.rpartition("@")
        if not local or not at or not domain or len(address) > MAX_ADDRESS:
            raise Refused(f"'recipients' holds {item[:80]!r}, which is not an email address")
        if address not in addresses:
            addresses.append(address)
    return addresses


def split_addresses(text):
    """A form's recipients field (`a@x.org, Name <b@y.org>; c@z.org`) as a list of entries,
    one address each."""
    check_storable(text, "recipients")
    # The name quoted again: `"Doe, Jane" <j@x.org>` must not read as two entries.
    return [
        f'"{quote(name)}" <{address}>' if name else address
        for name, address in _parsed([text.replace(";", ",").replace("\n", ",")])
    ]


def _parsed(texts):
    """(name, address) of each address in `texts`, by the standard library's parser. Refuses
    text in which it finds fewer addresses than the text has @ signs outside names (`x@y.org
    erin@z.org` reads as one broken address): an address it lost would go unchecked."""
    found = [(name, address) for name, address in getaddresses(texts) if address]
    signs = sum(text.count("@") for text in texts)
    if signs > sum(name.count("@") + address.count("@") for name, address in found):
        shown = ", ".join(texts)[:80]
        raise Refused(f"'recipients' holds {shown!r}, which is not a list of email addresses")
    return found


# Characters no subject, label or address has any business holding: the control characters
# (Unicode's Cc: C0, DEL and C1; ESC starts a terminal's escape sequences, in a log or the
# command line's output), but tab and the line ends a form sends (CR LF).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_storable(value, name):
    """Refuse text that either database cannot hold (NUL, lone surrogates: PostgreSQL refuses
    them, so both do) or that holds control characters, with what is wrong in a few words."""
    if "\x00" in value:
        raise Refused(f"'{name}' contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(f"'{name}' is not valid Unicode") from None
    control = CONTROL.search(value)
    if control:
        raise Refused(
            f"'{name}' contains a control character (U+{ord(control.group()):04X}); "
            "only tabs and line breaks are allowed"
        )


def note_mail_hosting(pixel, addresses):
    """Look up where the recipients' mail is hosted, waiting a few hundred ms at most; answers
    that come later are stored by a background thread. Returns the providers found in time."""
    if not current_app.config["MX_LOOKUP"] or not addresses:
        return ()
    app = current_app._get_current_object()

    def store(hosting):
        with app.app_context():
            Pixel.update(
                mail_hosting=hosting.summary, mail_providers=",".join(hosting.providers) or None
            ).where(Pixel.id == pixel.id).execute()

    hosting = app.extensions["openreceipt"].mail_hosts.lookup(addresses, on_late=store)
    store(hosting)
    return hosting.providers
