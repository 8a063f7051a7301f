"""Storage: the deferred database, the models, and per-request connections."""

import datetime
import json
import os
import time
import weakref
from urllib.parse import urlsplit

from peewee import (
    BooleanField,
    CharField,
    CompositeKey,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    OperationalError,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)
from playhouse.db_url import parse as parse_database_url
from playhouse.migrations import Runner
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

db = DatabaseProxy()

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
# Any constant will do: it names the lock that serialises migrations across hosts.
MIGRATION_LOCK = 0x6F70656E72637074
SQLITE_BUSY_TIMEOUT_MS = 5000

STATES = ("waiting", "inserted", "delivered", "opened")
MAX_ID = 2**63 - 1  # the largest row id either database takes in a query


def utcnow():
    """Now, in UTC, as the naive datetime the database stores."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def iso(moment):
    """A stored UTC moment as ISO 8601 text with its Z, for the API and exports; None stays."""
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


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
    # Which events send a notice (web/notify.py): opens "first", "every" or "off"; deliveries
    # (the first prefetch) or not; and no second notice of one kind for one receipt on one
    # channel within the quiet period.
    notify_opens = CharField(max_length=8, default="first")
    notify_delivered = BooleanField(default=False)
    notify_quiet_minutes = IntegerField(default=30)


class ApiToken(BaseModel):
    """A bearer credential for the API; only its SHA-256 is stored."""

    user = ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    name = CharField(max_length=100)
    token_hash = CharField(max_length=64, unique=True)
    scope = CharField(max_length=16, default="full")  # accounts.SCOPES
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)


class Pixel(BaseModel):
    """One receipt: the image in one message, with counters kept up to date by its events."""

    public_id = CharField(max_length=32, unique=True)
    owner = ForeignKeyField(User, backref="pixels", on_delete="CASCADE")
    label = CharField(max_length=200, null=True)
    subject = TextField(null=True)
    recipients = JSONListField(default=list)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)
    state = CharField(max_length=16, default="waiting")
    open_count = IntegerField(default=0)
    prefetch_count = IntegerField(default=0)
    preview_count = IntegerField(default=0)
    self_count = IntegerField(default=0)
    bot_count = IntegerField(default=0)
    unknown_count = IntegerField(default=0)
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
    # How the receipt was made: "api", "bookmarklet" or "form" (by hand); minting.MADE_WITH.
    made_with = CharField(max_length=16, null=True)
    last_self_view_at = DateTimeField(null=True)
    # The latest of created_at and last_event_at: the status page lists by it.
    activity_at = DateTimeField(default=utcnow, null=True)
    # Set when a recipient is on a do-not-track list: later fetches are not recorded.
    tracking_stopped_at = DateTimeField(null=True)
    # What the events deleted by retention added up to, so counters survive a recount:
    # {kind: [count, first ISO time, last ISO time]} (retention.py).
    archived = TextField(null=True)

    class Meta:
        indexes = (
            (("owner", "created_at"), False),
            (("owner", "last_event_at"), False),
            (("owner", "state"), False),
            (("owner", "activity_at"), False),
        )


class Event(BaseModel):
    """One fetch of a pixel, as stored: masked address and what it meant, never the raw IP."""

    pixel = ForeignKeyField(Pixel, backref="events", on_delete="CASCADE")
    at = DateTimeField(default=utcnow)
    kind = CharField(max_length=16)
    source = CharField(max_length=32)
    reason = CharField(max_length=200)
    ip = CharField(max_length=45, null=True)
    country = CharField(max_length=2, null=True)
    city = CharField(max_length=100, null=True)
    client = CharField(max_length=100, null=True)
    # The spool's key for a fetch that waited in the spool (web/spool.py): stored once only.
    spool_key = CharField(max_length=32, null=True, unique=True)

    class Meta:
        indexes = ((("pixel", "at"), False),)

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
    """Sign-in attempts for one account from one network (web/auth.py), each keyed by a hash:
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
    tells of, and sent later by the delivery loop (web/notify.py). It holds no text of its own:
    the event and the receipt give it when it is sent."""

    channel = ForeignKeyField(NotifyChannel, backref="notices", on_delete="CASCADE")
    pixel = ForeignKeyField(Pixel, on_delete="CASCADE")
    event = ForeignKeyField(Event, null=True, on_delete="CASCADE")
    reason = CharField(max_length=16)  # "open" or "delivered"
    created_at = DateTimeField(default=utcnow)
    # When it may next be tried; while a delivery loop holds it, when that claim runs out.
    due_at = DateTimeField(default=utcnow)
    state = CharField(max_length=16, default="pending")  # pending, sent, failed, skipped
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
    Event,
    DoNotTrack,
    LoginSession,
    LoginThrottle,
    Setting,
    NotifyChannel,
    Notice,
)


# A request, CLI command or background thread "closes" its connection at the end, which hands it
# back to its process's pool: opening a connection costs more than a pixel's whole write. A
# connection that broke (the database restarted) is dropped, not handed out again.
POOL = {"max_connections": 32, "stale_timeout": 300}


class PooledPostgresql(PooledPostgresqlDatabase):
    """Hands out a pooled connection without first asking the server "SELECT 1" (peewee's
    check): that round trip would cost as much as the pixel's own work. A connection the server
    dropped meanwhile fails on first use (the pixel then spools its fetch) and is not pooled
    again."""

    def _is_closed(self, conn):
        return conn.closed or conn.broken


def open_database(url, pooled=False):
    """A peewee Database for an OPENRECEIPT_DATABASE_URL (sqlite:///path or postgresql://...);
    `pooled`: one that keeps its connections for reuse (the app's)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] or ":memory:"
        options = {
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "pragmas": {
                "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
                "synchronous": "normal",
                "foreign_keys": 1,
            },
        }
        if not pooled or path == ":memory:":
            return SqliteDatabase(path, **options)
        # check_same_thread: a pooled connection may serve another thread later.
        return PooledSqliteDatabase(path, check_same_thread=False, **options, **POOL)
    params = parse_database_url(url, unquote_password=True, unquote_user=True)
    # A database host that went silent must not hold a request until gunicorn kills the worker:
    # connecting gives up after 2 s, and a connection whose peer vanished fails within 5 s.
    # (Either can be set in the URL instead.)
    params.setdefault("connect_timeout", 2)
    params.setdefault("tcp_user_timeout", 5000)
    kind = PooledPostgresql if pooled else PostgresqlDatabase
    return kind(params.pop("database"), prefer_psycopg3=True, **params, **(POOL if pooled else {}))


def migrate(database, directory=MIGRATIONS):
    """Create or upgrade the schema, once, even when several processes or hosts start together.
    Returns the names of the migrations applied."""
    runner = Runner(database, directory=directory, table_name="schema_migration")
    sqlite = isinstance(database, SqliteDatabase)
    if sqlite:
        enable_wal(database)
    with database.connection_context():
        if sqlite:
            # SQLite changes some columns by copying a table and dropping the old one; with
            # foreign keys on, that drop would cascade to every event of every pixel.
            database.execute_sql("PRAGMA foreign_keys = OFF")
        try:
            with write_transaction(database):
                if not sqlite:
                    database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                return runner.up()
        finally:
            if sqlite:
                database.execute_sql("PRAGMA foreign_keys = ON")


def enable_wal(database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
    """Put a SQLite file in WAL mode (it stays so). SQLite refuses the switch at once, without
    waiting, while another connection holds a lock, as happens when several workers open a new
    database together: retry until the busy timeout."""
    deadline = time.monotonic() + timeout
    with database.connection_context():
        while True:
            try:
                database.execute_sql("PRAGMA journal_mode=wal")
                return
            except OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def init_app(app):
    """Bind the models to the configured database, migrate it, and close the connection at the
    end of every request (and every CLI command or other app context)."""
    database = open_database(app.config["DATABASE_URL"], pooled=True)
    db.initialize(database)
    app.extensions["openreceipt.database"] = database
    # When an app is done with (tests and tools make many), its pooled connections are closed.
    if hasattr(database, "close_all"):
        weakref.finalize(app, database.close_all)
    migrate(database)

    @app.teardown_appcontext
    def close_connection(_exc):
        if not database.is_closed():
            database.close()


PIXEL_WAIT_MS = 45  # the longest the pixel waits for another writer before it spools the fetch
RETRY_SLEEP = 0.0005


def with_short_lock_waits(work, database=db):
    """work(), retried while another writer holds the database for PIXEL_WAIT_MS at most; then
    the last error is raised (and the pixel spools its fetch). On SQLite the connection's busy
    timeout is cut to 1 ms meanwhile: SQLite's own busy handler sleeps ever longer between tries
    (1, 2, 5, 10, 15 ms...), which under steady load keeps missing the lock's short free moments;
    trying every half millisecond does not."""
    if not isinstance(_real(database), SqliteDatabase):
        return work()  # PostgreSQL: the transaction sets its own lock_timeout (web/hotpath.py)
    deadline = time.monotonic() + PIXEL_WAIT_MS / 1000
    database.execute_sql("PRAGMA busy_timeout = 1")
    try:
        while True:
            try:
                return work()
            except OperationalError as error:
                message = str(error)
                if ("locked" not in message and "busy" not in message) or (
                    time.monotonic() > deadline
                ):
                    raise
            time.sleep(RETRY_SLEEP)
    finally:
        if not database.is_closed():
            database.execute_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


def close_pool(app):
    """Close every idle pooled connection of this process (before gunicorn forks, and when an
    app is done with)."""
    database = app.extensions["openreceipt.database"]
    if not database.is_closed():
        database.close()
    if hasattr(database, "close_idle"):
        database.close_idle()


def write_transaction(database=db):
    """A transaction that holds the write lock from its first statement. On SQLite, BEGIN
    IMMEDIATE: a read-then-write then never fails half-way on a busy database. PostgreSQL locks
    rows as they are selected FOR UPDATE (see locked())."""
    if isinstance(_real(database), SqliteDatabase):
        return database.atomic(lock_type="IMMEDIATE")
    return database.atomic()


def locked(query, database=db):
    """The query with its rows locked until the end of the transaction (a no-op on SQLite,
    whose write_transaction() already holds the whole database)."""
    if isinstance(_real(database), PostgresqlDatabase):
        return query.for_update()
    return query


def _real(database):
    return database.obj if isinstance(database, DatabaseProxy) else database
