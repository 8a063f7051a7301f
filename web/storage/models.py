"""The schema: one Peewee model per table, all on the engine's deferred database. A change to
it is a new numbered file in migrations/ as well."""

import json

from peewee import (
    BooleanField,
    CharField,
    CompositeKey,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from ..vocabulary import NoticeState, Opens, Scope, State
from .engine import db, utcnow


class JSONListField(TextField):
    """A list kept as JSON text, the same on SQLite and PostgreSQL."""

    def db_value(self, value):
        return json.dumps(list(value or []), ensure_ascii=False)

    def python_value(self, value):
        return json.loads(value) if value else []


class BaseModel(Model):
    class Meta:
        database = db
        legacy_table_names = False


class User(BaseModel):
    email = CharField(max_length=320, unique=True)
    password_hash = CharField(max_length=255)
    created_at = DateTimeField(default=utcnow)
    # Which events send a notice (notifications/): opens "first", "every" or "off"; deliveries
    # (the first prefetch) or not; and no second notice of one kind for one receipt on one
    # channel within the quiet period.
    notify_opens = CharField(max_length=8, default=Opens.FIRST)
    notify_delivered = BooleanField(default=False)
    notify_quiet_minutes = IntegerField(default=30)
    # How many receipts the user has: kept by triggers on pixel (migration 0010), read by the
    # lists instead of counting the user's receipts on every page.
    receipt_count = IntegerField(default=0)
    # The reminder new receipts get: "tell me if it is not opened within N days"; None: none.
    remind_after_days = IntegerField(null=True)


class ApiToken(BaseModel):
    """A bearer credential for the API; only its SHA-256 is stored."""

    user = ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    name = CharField(max_length=100)
    token_hash = CharField(max_length=64, unique=True)
    scope = CharField(max_length=16, default=Scope.FULL)
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)


class Pixel(BaseModel):
    """One receipt: the image in one message, with counters kept up to date by its events."""

    public_id = CharField(max_length=32, unique=True)
    # Indexed as the first column of Meta.indexes' (migration 0013).
    owner = ForeignKeyField(User, backref="pixels", on_delete="CASCADE", index=False)
    label = CharField(max_length=200, null=True)
    subject = TextField(null=True)
    recipients = JSONListField(default=list)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)
    state = CharField(max_length=16, default=State.WAITING)
    open_count = IntegerField(default=0)
    prefetch_count = IntegerField(default=0)
    preview_count = IntegerField(default=0)
    self_count = IntegerField(default=0)
    bot_count = IntegerField(default=0)
    unknown_count = IntegerField(default=0)
    click_count = IntegerField(default=0)
    first_open_at = DateTimeField(null=True)
    last_open_at = DateTimeField(null=True)
    last_event_at = DateTimeField(null=True)
    delivered_at = DateTimeField(null=True)
    # Keyed hash of the minting browser's user agent and masked network (privacy.fingerprint).
    mint_fingerprint = CharField(max_length=64, null=True)
    # Whether the recipients' mail is hosted by Google (mailhosts: google, other, unknown).
    mail_hosting = CharField(max_length=16, null=True)
    # The mail providers hosting the recipients, comma-separated (mailhosts.PROVIDERS keys).
    mail_providers = CharField(max_length=200, null=True)
    # How the receipt was made: a vocabulary.MadeWith.
    made_with = CharField(max_length=16, null=True)
    last_self_view_at = DateTimeField(null=True)
    # The latest of created_at and last_event_at: the status page lists by it.
    activity_at = DateTimeField(default=utcnow, null=True)
    # Set when a recipient is on a do-not-track list: later fetches are not recorded.
    tracking_stopped_at = DateTimeField(null=True)
    # What the events deleted by retention added up to, so counters survive a recount:
    # {kind: [count, first ISO time, last ISO time]} (retention.py).
    archived = TextField(null=True)
    # "Tell me if it is not opened within N days" (notifications/reminders.py): the days, when
    # the reminder is due (N days after sending; None once an open or a stop cancelled it), and
    # when it was queued.
    remind_after_days = IntegerField(null=True)
    remind_at = DateTimeField(null=True, index=True)
    reminded_at = DateTimeField(null=True)

    class Meta:
        indexes = (
            (("owner", "created_at"), False),
            (("owner", "state"), False),
            (("owner", "activity_at"), False),
        )


class Link(BaseModel):
    """A tracked link of a receipt's message: /l/<signed public id> redirects to `destination`,
    and nothing else. The honeypot is a link no person can see or click (links/tracking.py)."""

    public_id = CharField(max_length=32, unique=True)
    pixel = ForeignKeyField(Pixel, backref="links", on_delete="CASCADE")
    destination = TextField()
    honeypot = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)


class Event(BaseModel):
    """One fetch of a pixel, as stored: masked address and what it meant, never the raw IP."""

    # Indexed as the first column of (pixel, at, ip) (migrations 0013, 0014).
    pixel = ForeignKeyField(Pixel, backref="events", on_delete="CASCADE", index=False)
    at = DateTimeField(default=utcnow)
    kind = CharField(max_length=16)
    source = CharField(max_length=32)
    reason = CharField(max_length=200)
    ip = CharField(max_length=45, null=True)
    country = CharField(max_length=2, null=True)
    city = CharField(max_length=100, null=True)
    client = CharField(max_length=100, null=True)
    # The spool's key for a fetch that waited in the spool (pixel/spool.py): stored once only.
    spool_key = CharField(max_length=32, null=True, unique=True)
    # A click's link (None for a fetch of the pixel).
    link = ForeignKeyField(Link, null=True, on_delete="CASCADE")

    class Meta:
        # A receipt's events by time (its status page); with the network, who fetched it within
        # the repeat window, from the index alone (web/pixel/recording.py's read).
        indexes = ((("pixel", "at", "ip"), False),)

    @property
    def place(self):
        """ "London, GB", as much of it as was collected."""
        return ", ".join(part for part in (self.city, self.country) if part)


class DoNotTrack(BaseModel):
    """An address (bob@example.de), a domain (example.de, and its subdomains) or a top-level
    domain (.de) whose mail gets no receipts. No user: the entry holds for every user of the
    server (the operator's list, e.g. after an erasure request)."""

    user = ForeignKeyField(User, backref="do_not_track", null=True, on_delete="CASCADE")
    entry = CharField(max_length=320)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("user", "entry"), True),)


class LoginSession(BaseModel):
    """A signed-in browser. Its login cookie holds a random id, and only the id's SHA-256 is
    kept here: deleting the row signs that browser out, wherever a copy of the cookie went."""

    user = ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    key_hash = CharField(max_length=64, unique=True)
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(index=True)


class LoginThrottle(BaseModel):
    """Sign-in attempts for one account from one network (ui/signin.py), each keyed by a hash:
    of the email, and of the masked address. Counted per pair, so an attacker's network can
    throttle only itself."""

    account = CharField(max_length=64)
    network = CharField(max_length=64)
    attempts = IntegerField(default=0)
    window_start = DateTimeField(default=utcnow, index=True)

    class Meta:
        primary_key = CompositeKey("account", "network")


class Setting(BaseModel):
    """Small server-wide values (e.g. the first-run setup nonce)."""

    name = CharField(max_length=64, primary_key=True)
    value = TextField()


class NotifyChannel(BaseModel):
    """Where a user's notices go: "email" (an address, through the operator's SMTP server),
    "webhook" (a URL that gets signed JSON) or "push" (an ntfy-style topic URL)."""

    user = ForeignKeyField(User, backref="channels", on_delete="CASCADE")
    kind = CharField(max_length=16)
    target = CharField(max_length=2000)
    # webhook: the HMAC key the receiver verifies with; push: an optional access token.
    secret = CharField(max_length=200, null=True)
    created_at = DateTimeField(default=utcnow)


class Notice(BaseModel):
    """The outbox: one notice for one channel, written in the same transaction as the event it
    tells of, and sent later by the delivery loop (notifications/). It holds no text of its own:
    the event and the receipt give it when it is sent."""

    channel = ForeignKeyField(NotifyChannel, backref="notices", on_delete="CASCADE")
    pixel = ForeignKeyField(Pixel, on_delete="CASCADE")
    event = ForeignKeyField(Event, null=True, on_delete="CASCADE")
    reason = CharField(max_length=16)  # a vocabulary.Reason
    created_at = DateTimeField(default=utcnow)
    # When it may next be tried; while a delivery loop holds it, when that claim runs out.
    due_at = DateTimeField(default=utcnow)
    state = CharField(max_length=16, default=NoticeState.PENDING)
    attempts = IntegerField(default=0)
    claim = CharField(max_length=32, null=True)
    sent_at = DateTimeField(null=True)
    last_error = CharField(max_length=300, null=True)

    class Meta:
        indexes = (
            (("state", "due_at"), False),
            (("channel", "pixel", "reason"), False),
        )


MODELS = (
    User,
    ApiToken,
    Pixel,
    Link,
    Event,
    DoNotTrack,
    LoginSession,
    LoginThrottle,
    Setting,
    NotifyChannel,
    Notice,
)
