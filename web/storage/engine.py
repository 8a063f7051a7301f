"""The database engine: the one deferred database every model and query uses (`db`), opening
it from OPENRECEIPT_DATABASE_URL with a pool of connections per process, SQLite's WAL mode and
lock waits, the write transaction both databases share, and the few helpers the pixel's SQL
needs. The schema is in models.py, its changes in migrate.py and migrations/."""

import datetime
import fcntl
import os
import sqlite3
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from peewee import DatabaseProxy, OperationalError, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import parse as parse_database_url
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from ..config import ConfigError, user_name, write_problem

db = DatabaseProxy()

SQLITE_BUSY_TIMEOUT_MS = 5000


MAX_ID = 2**63 - 1  # the largest row id either database takes in a query


def utcnow():
    """Now, in UTC, as the naive datetime the database stores."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def iso(moment):
    """A stored UTC moment as ISO 8601 text with its Z, for the API and exports; None stays."""
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


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


def sqlite_file(database):
    """The absolute path of a SQLite database's file; None for PostgreSQL or a memory database."""
    database = _real(database)
    if not isinstance(database, SqliteDatabase) or database.database in ("", ":memory:"):
        return None
    return Path(database.database).resolve()


def create_private(database):
    """Make a new SQLite database's file readable by its owner only (as the secret key is), before
    SQLite makes it with the umask's looser mode; its -wal and -shm files take the same mode."""
    path = sqlite_file(database)
    if path is None or path.exists() or not path.parent.is_dir():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # made meanwhile by another process, or not ours to make: SQLite will say


def probe_write(database):
    """Try a write to a SQLite database and take it back. SQLite opens a file it may not write
    read-only without a word: start-up would succeed and the first fetch or sign-in fail. The
    permission bits cannot tell (root writes whatever they say; a read-only mount stops root
    too): a write can. Raises the driver's OperationalError; see start_error()."""
    if sqlite_file(database) is None:
        return
    with database.connection_context():
        version = int(database.execute_sql("PRAGMA user_version").fetchone()[0])
        database.execute_sql("BEGIN IMMEDIATE")
        try:
            database.execute_sql(f"PRAGMA user_version = {version}")
        finally:
            database.execute_sql("ROLLBACK")


def start_error(database, error):
    """A ConfigError (one line: the file, what is wrong, what to do) for an OperationalError
    that says a SQLite file cannot be opened or written; None for any other error."""
    path = sqlite_file(database)
    message = str(error)
    if path is None or not any(
        words in message for words in ("readonly", "read-only", "unable to open database file")
    ):
        return None
    if path.is_dir():
        return ConfigError(
            f"the database {path} is a directory, not a database file: move it away, or point "
            "OPENRECEIPT_DATABASE_URL at the database"
        )
    if not path.parent.exists():
        return ConfigError(
            f"cannot make the database {path}: {path.parent} does not exist; make it, or correct "
            "OPENRECEIPT_DATABASE_URL"
        )
    files = [path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")), path.parent]
    problems = [f"{name} {why}" for name in files if name.exists() and (why := write_problem(name))]
    return ConfigError(
        f"cannot write the database {path}: {problems[0] if problems else message}; let the "
        f"user openreceipt runs as ({user_name()}) write the file, its -wal and -shm files and "
        "their directory, on a file system mounted read-write"
    )


def backup_sqlite(database, target):
    """Copy a SQLite database into the new file `target`, consistently, while the server goes
    on writing: SQLite's online backup reads one snapshot in a single step (with WAL, writers
    carry on meanwhile), and the copy holds every transaction committed before it, those still
    in the write-ahead log too. The copy is checked (quick_check) before it is closed. Returns
    its size in bytes."""
    source = sqlite3.connect(sqlite_file(database), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
            verdict = "; ".join(row[0] for row in copy.execute("PRAGMA quick_check"))
        finally:
            copy.close()
    finally:
        source.close()
    if verdict != "ok":
        raise sqlite3.DatabaseError(f"the copy in {target} is damaged: {verdict}")
    return Path(target).stat().st_size


def close_pool(app):
    """Close every idle pooled connection of this process (before gunicorn forks, and when an
    app is done with)."""
    database = app.extensions["openreceipt.database"]
    if not database.is_closed():
        database.close()
    if hasattr(database, "close_idle"):
        database.close_idle()


PIXEL_WAIT_MS = 45  # the longest the pixel waits for another writer before it spools the fetch
# PostgreSQL: the longest a batch of the pixel's fetches waits for its receipts' rows. Batches of
# several workers (or hosts) that share receipts wait for one another in turn; under load such a
# chain took more than 45 ms, and a batch that gives up spools every fetch in it (9% of them in
# bench/pixel_load.py's every-fetch-new load; none with 250 ms). Only those receipts' writers
# wait, never the whole database as on SQLite, and a mail client waits seconds for an image.
PIXEL_ROW_WAIT_MS = 250


RETRY_SLEEP = 0.0005


def with_short_lock_waits(work, database=db):
    """work(), retried while another writer holds the database for PIXEL_WAIT_MS at most; then
    the last error is raised (and the pixel spools its fetch). On SQLite the connection's busy
    timeout is cut to 1 ms meanwhile: SQLite's own busy handler sleeps ever longer between tries
    (1, 2, 5, 10, 15 ms...), which under steady load keeps missing the lock's short free moments;
    trying every half millisecond does not. The pixel's writers of the host's processes take
    their turns first (writers_turn), so they rarely find one another holding the lock."""
    if not isinstance(_real(database), SqliteDatabase):
        return work()  # PostgreSQL: the transaction sets its own lock_timeout (pixel/recording.py)
    with writers_turn(database):
        return _retried_while_busy(work, database)


def in_writers_turn(work, database=db):
    """work() in the pixel writers' turn (writers_turn), waiting for the database's lock as long
    as any other writer does: for a writer nobody's answer waits on (web/pixel/writer.py)."""
    if not isinstance(_real(database), SqliteDatabase):
        return work()
    with writers_turn(database):
        return work()


def _retried_while_busy(work, database):
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


# The file beside a SQLite database whose lock the pixel's writers take in turn: "-writers".
WRITERS_SUFFIX = "-writers"
# (process id, the database's file as configured) -> the file, opened once per process: resolving
# the database's path again for every batch cost more than the batch's SQL.
_writers_files = {}


@contextmanager
def writers_turn(database):
    """Wait, without spending CPU, until no other process's pixel writer is writing to this
    SQLite database, and hold the turn meanwhile (flock on the "-writers" file beside it; the
    kernel lets the waiters go one by one and frees the turn of a process that dies). Under
    load, many processes trying BEGIN IMMEDIATE every half millisecond spent the CPU that the
    one holding the lock needed, and ran past PIXEL_WAIT_MS into the spool; in turn, each
    meets SQLite's lock free unless a page or a background job holds it. It is a queue, not a
    lock that anything's correctness rests on: SQLite's own lock does that. A file that cannot
    be opened leaves the writers to SQLite's lock alone."""
    handle = _writers_file(database)
    if handle is None:
        yield
        return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _writers_file(database):
    # Each process its own open file: flock excludes between files.
    key = (os.getpid(), _real(database).database)
    if key not in _writers_files:
        path = sqlite_file(database)
        if path is None:
            _writers_files[key] = None
            return None
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            handle = os.open(f"{path}{WRITERS_SUFFIX}", flags, 0o600)
        except OSError:
            handle = None
        if _writers_files.setdefault(key, handle) != handle and handle is not None:
            os.close(handle)  # another thread was first
    return _writers_files[key]


def write_transaction(database=db, settings=None):
    """A transaction that holds the write lock from its first statement. On SQLite, BEGIN
    IMMEDIATE: a read-then-write then never fails half-way on a busy database. PostgreSQL locks
    rows as they are selected FOR UPDATE (see locked()); `settings` ("SET LOCAL ...;" statements,
    PostgreSQL only) go to the server with the BEGIN, in one round trip."""
    if isinstance(_real(database), SqliteDatabase):
        return database.atomic(lock_type="IMMEDIATE")
    if settings:
        return _postgresql_transaction(database, settings)
    return database.atomic()


@contextmanager
def _postgresql_transaction(database, settings):
    # Several statements and no parameters: psycopg sends them in one simple query. Peewee runs
    # in autocommit mode and sends BEGIN and COMMIT itself too; nothing inside may open another
    # transaction with atomic() (the pixel's statements are plain SQL).
    database.execute_sql(f"BEGIN; {settings}", ())
    try:
        yield
    except BaseException:
        if not database.is_closed():
            database.rollback()
        raise
    database.commit()


def locked(query, database=db):
    """The query with its rows locked until the end of the transaction (a no-op on SQLite,
    whose write_transaction() already holds the whole database)."""
    if isinstance(_real(database), PostgresqlDatabase):
        return query.for_update()
    return query


def _real(database):
    return database.obj if isinstance(database, DatabaseProxy) else database


def dialect_statements(build):
    """A function that gives `build(database)` for the database in use, built once per
    database: SQL text written once in that database's dialect, for the pixel's writes."""
    cache = weakref.WeakKeyDictionary()

    def statements():
        database = db.obj
        found = cache.get(database)
        if found is None:
            found = cache[database] = build(database)
        return found

    return statements


def sql_time(value, sqlite):
    """A datetime as the database driver should get it: SQLite stores the text Peewee stores."""
    return value.isoformat(" ") if sqlite and isinstance(value, datetime.datetime) else value


def redacted_url(url):
    """A database URL without its password (in the address or as a parameter), a SQLite
    file's path made absolute."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///") :]
        return f"sqlite:///{Path(path).resolve()}" if path and path != ":memory:" else url
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    return urlunsplit(parts._replace(query=without_password(parts.query, "***")))


def without_password(query, mark=None):
    """A URL's query with its password parameter shown as `mark`, or left out; as it was when
    it has none."""
    if "password" not in dict(parse_qsl(query, keep_blank_values=True)):
        return query
    pairs = [
        (key, mark if key == "password" else value)
        for key, value in parse_qsl(query, keep_blank_values=True)
        if key != "password" or mark is not None
    ]
    return urlencode(pairs, safe="/:=,*") if pairs else ""
