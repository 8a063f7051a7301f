"""The words the whole application shares, each kind of value one StrEnum: what a fetch (of the
pixel, or of a tracked link: a click) was
(Kind), how far a receipt got (State), what a notice tells of (Reason) and where it stands
(NoticeState), where notices go (ChannelKind), which opens a user hears of (Opens), and what an
API key may do (Scope). They are strings too: stored, compared and sent as their values.
The README says what each means for a user."""

from enum import StrEnum


class Kind(StrEnum):
    """What one fetch of a pixel was."""

    OPEN = "open"  # a person most likely opened the message
    CLICK = "click"  # a person followed one of the message's tracked links
    PREFETCH = "prefetch"  # a machine fetched it on delivery: delivered, not read
    PREVIEW = "preview"  # the sender's own browser showed the draft
    SELF = "self"  # the sender, looking at their own sent message
    BOT = "bot"  # automated and meaningless: a crawler, a link checker, a script
    UNKNOWN = "unknown"  # an unrecognised program: never counted as an open


KINDS = tuple(Kind)
# What people read for each kind, everywhere the pages name one: the counts, each fetch's row,
# the timeline picture. The values above stay what the API, the export and the database say.
KIND_LABELS = {
    Kind.OPEN: "opened",
    Kind.CLICK: "clicked",
    Kind.PREFETCH: "delivered",
    Kind.PREVIEW: "your draft",
    Kind.SELF: "you",
    Kind.BOT: "automated",
    Kind.UNKNOWN: "unrecognised",
}


class State(StrEnum):
    """How far a receipt got, in order: a receipt only moves forward."""

    WAITING = "waiting"
    INSERTED = "inserted"
    DELIVERED = "delivered"
    OPENED = "opened"


STATES = tuple(State)
# The state an event of each kind brings its receipt to, at least: the pixel's UPDATE
# (pixel/recording.py) and the recount (receipts/ledger.py) both read it. The sender's own view
# of their sent message shows the receipt is in the message, as their draft's does; it tells
# nothing of the recipient.
STATE_REACHED = {
    Kind.PREVIEW: State.INSERTED,
    Kind.SELF: State.INSERTED,
    Kind.PREFETCH: State.DELIVERED,
    Kind.OPEN: State.OPENED,
    Kind.CLICK: State.OPENED,  # a click is a person acting, even where no image was fetched
}
# The kinds whose event shows that the message was delivered (the receipt's delivered_at).
SHOWS_DELIVERY = (Kind.PREFETCH, Kind.OPEN, Kind.CLICK)


class Reason(StrEnum):
    """What a notice tells of."""

    OPEN = "open"
    CLICK = "click"
    DELIVERED = "delivered"
    NOT_OPENED = "not-opened"  # a reminder: not opened within the days the sender chose


class NoticeState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # given up
    SKIPPED = "skipped"  # no longer wanted when its turn came


class ChannelKind(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"
    PUSH = "push"


class Opens(StrEnum):
    """Which opens a user hears of."""

    FIRST = "first"
    EVERY = "every"
    OFF = "off"


class Scope(StrEnum):
    """What an API key may do."""

    FULL = "full"  # everything (scripts)
    BOOKMARKLET = "bookmarklet"  # only add receipts and what the bookmarklet needs


class MadeWith(StrEnum):
    """How a receipt was made."""

    API = "api"  # by a script, with a full API key
    BOOKMARKLET = "bookmarklet"
    FORM = "form"  # by hand, on the bookmarklet's page
