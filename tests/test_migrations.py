"""The schema: created on first start, changed only by migrations, which keep existing data."""

import datetime
import multiprocessing
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from peewee import Table

from web import create_app
from web.accounts import create_user, new_token
from web.storage.engine import open_database
from web.storage.migrate import MIGRATIONS, migrate
from web.storage.models import MODELS, Event, Pixel, User

from .helpers import mint, pixel_path

TABLES = {"user", "api_token", "pixel", "event", "setting", "schema_migration"}
# What the models need, once every shipped migration has run: at least TABLES.
MODEL_TABLES = {model._meta.table_name for model in MODELS} | {"schema_migration"}
# The shipped migrations, in the order the runner applies them.
SHIPPED = sorted(path.stem for path in Path(MIGRATIONS).glob("[0-9]*.py"))
FIRST = "0001_initial"
# A later migration, numbered after the shipped ones.
NOTE = f"{int(SHIPPED[-1][:4]) + 1:04d}_add_note"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
ADD_NOTE = '''\
"""A free-text note on each pixel."""

from peewee import TextField


def up(migrator, db):
    migrator.migrate(migrator.add_column("pixel", "note", TextField(null=True)))
'''
PROCESSES = 4
# Rounds of the concurrency tests: one round of a narrow race can pass by luck. A SQLite round
# costs milliseconds, a PostgreSQL round (reset, migrate, verify) a tenth of a second.
SQLITE_ROUNDS = 20
POSTGRESQL_ROUNDS = 5


def connect(url):
    """A peewee Database for `url`; for SQLite, its directory is made first, as create_app does."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return open_database(url)


@pytest.fixture
def empty_database(empty_database_url):
    """An empty database on SQLite and PostgreSQL, closed at the end of the test."""
    database = connect(empty_database_url)
    yield database
    if not database.is_closed():
        database.close()


@pytest.fixture
def upgrade_directory(tmp_path):
    """The shipped migrations plus a later one that adds a nullable column to pixel."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in Path(MIGRATIONS).glob("*.py"):
        shutil.copy(path, directory)
    (directory / f"{NOTE}.py").write_text(ADD_NOTE)
    return str(directory)


@pytest.fixture
def first_release_directory(tmp_path):
    """The migrations of the first release: 0001_initial alone."""
    directory = tmp_path / "first-release"
    directory.mkdir()
    shutil.copy(Path(MIGRATIONS) / f"{FIRST}.py", directory)
    return str(directory)


def query(database, sql):
    with database.connection_context():
        return database.execute_sql(sql).fetchall()


def tables(database):
    with database.connection_context():
        return set(database.get_tables())


def applied(database):
    return [name for (name,) in query(database, "SELECT name FROM schema_migration ORDER BY id")]


def snapshot(database):
    """Every row of every table, to compare before and after."""
    return {
        model._meta.table_name: query(
            database, f'SELECT * FROM "{model._meta.table_name}" ORDER BY 1'
        )
        for model in MODELS
    }


def fill(database):
    """A user with a pixel and two of its events, written through the application's models."""
    with database.bind_ctx(MODELS), database.connection_context():

        def insert(model, **values):
            """A row with the model's defaults for the columns this schema has (fill() serves
            older schemas too), and `values`."""
            columns = {column.name for column in database.get_columns(model._meta.table_name)}
            row = {
                field.column_name: field.db_value(
                    field.default() if callable(field.default) else field.default
                )
                for field in model._meta.sorted_fields
                if field.default is not None and field.column_name in columns
            }
            row.update(values)
            table = Table(model._meta.table_name, tuple(row)).bind(database)
            table.insert({getattr(table, name): value for name, value in row.items()}).execute()

        insert(User, email="ada@example.com", password_hash="pbkdf2:sha256:1000$x$y")
        owner = User.select(User.id).where(User.email == "ada@example.com").scalar()
        insert(
            Pixel,
            public_id="kept-across-upgrades",
            owner_id=owner,
            subject="Invoice #42",
            state="opened",
        )
        pixel = Pixel.select(Pixel.id).where(Pixel.public_id == "kept-across-upgrades").scalar()
        for ip, kind in (("81.2.69.0", "open"), ("17.58.0.0", "prefetch")):
            insert(Event, pixel_id=pixel, kind=kind, source="test", reason="fill()", ip=ip)


def test_migrate_on_an_empty_database_creates_every_table(empty_database):
    assert tables(empty_database) == set()
    applied_now = migrate(empty_database)
    assert applied_now[0] == FIRST
    assert applied_now == SHIPPED
    assert tables(empty_database) >= TABLES
    assert tables(empty_database) == MODEL_TABLES
    assert applied(empty_database) == SHIPPED
    assert empty_database.is_closed()


def test_second_migrate_applies_nothing(empty_database):
    migrate(empty_database)
    fill(empty_database)
    before = snapshot(empty_database)
    assert migrate(empty_database) == []
    assert applied(empty_database) == SHIPPED
    assert snapshot(empty_database) == before


def test_receipts_survive_a_restart(settings, app, client, auth):
    pixel = mint(client, auth, subject="Invoice #42", recipients=["bob@example.com"])
    for remote_addr in ("81.2.69.160", "2001:db8:1234::1"):
        response = client.get(
            pixel_path(pixel["url"]),
            headers={"User-Agent": THUNDERBIRD},
            environ_base={"REMOTE_ADDR": remote_addr},
        )
        assert response.headers["X-Openreceipt"].startswith("recorded: ")
    first = app.extensions["openreceipt.database"]
    before = snapshot(first)
    assert [len(before[name]) for name in ("user", "api_token", "pixel", "event")] == [1, 1, 1, 2]
    first.close()

    restarted = create_app(settings)
    try:
        second = restarted.extensions["openreceipt.database"]
        after = snapshot(second)
        # Only the first-run link's nonce goes: a user exists, so start-up retires the link.
        settings_before = dict(before.pop("setting"))
        assert settings_before.pop("setup_nonce")
        assert dict(after.pop("setting")) == settings_before
        assert after == before
        assert applied(second) == SHIPPED
        # The old token, the old pixel URL and its events all still work.
        restarted_client = restarted.test_client()
        response = restarted_client.get(
            pixel_path(pixel["url"]),
            headers={"User-Agent": THUNDERBIRD},
            environ_base={"REMOTE_ADDR": "17.58.1.2"},
        )
        assert response.headers["X-Openreceipt"].startswith("recorded: ")
        shown = restarted_client.get(f"/api/pixels/{pixel['id']}", headers=auth).get_json()
        assert [event["city"] for event in shown["events"]] == ["London", "Berlin", "Cupertino"]
    finally:
        database = restarted.extensions["openreceipt.database"]
        if not database.is_closed():
            database.close()


def test_first_start_creates_the_schema_ready_for_the_first_user(tmp_path, empty_database_url):
    app = create_app(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": empty_database_url,
            "MX_LOOKUP": False,
            "NOTIFY_IN_WORKERS": False,
        }
    )
    try:
        database = app.extensions["openreceipt.database"]
        assert tables(database) == MODEL_TABLES
        assert applied(database) == SHIPPED
        with app.app_context():
            _, token = new_token(create_user("ada@example.com", "correct horse battery"), "tests")
        response = app.test_client().get(
            "/api/pixels", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200
        assert response.get_json()["total"] == 0
    finally:
        database = app.extensions["openreceipt.database"]
        if not database.is_closed():
            database.close()


def test_upgrade_adds_a_column_and_keeps_every_row(empty_database, upgrade_directory):
    migrate(empty_database)
    fill(empty_database)
    before = snapshot(empty_database)

    assert migrate(empty_database, directory=upgrade_directory) == [NOTE]

    assert applied(empty_database) == [*SHIPPED, NOTE]
    assert tables(empty_database) == MODEL_TABLES
    after = snapshot(empty_database)
    assert {name: rows for name, rows in after.items() if name != "pixel"} == {
        name: rows for name, rows in before.items() if name != "pixel"
    }
    # The rows keep every earlier column, in place: only the new one is appended, empty.
    assert [row[:-1] for row in after["pixel"]] == before["pixel"]
    assert query(empty_database, "SELECT public_id, note FROM pixel") == [
        ("kept-across-upgrades", None)
    ]
    with empty_database.connection_context():
        columns = {column.name: column for column in empty_database.get_columns("pixel")}
    assert columns["note"].null is True
    # The application, which knows nothing of the note, still reads and writes pixels.
    with empty_database.bind_ctx(MODELS), empty_database.connection_context():
        assert Pixel.get().subject == "Invoice #42"
        Pixel.create(public_id="after-the-upgrade", owner=User.get())
        assert Pixel.select().count() == 2
    assert migrate(empty_database, directory=upgrade_directory) == []


def fill_first_release(database):
    """A user, a pixel and two events as the first release stored them, in plain SQL."""
    at = datetime.datetime(2026, 1, 5, 9, 30)
    with database.connection_context():
        user = Table("user").bind(database)
        user.insert(
            {
                user.c.email: "ada@example.com",
                user.c.password_hash: "pbkdf2:x",
                user.c.created_at: at,
            }
        ).execute()
        owner = user.select(user.c.id).scalar()
        pixel = Table("pixel").bind(database)
        pixel.insert(
            {
                pixel.c.public_id: "from-the-first-release",
                pixel.c.owner_id: owner,
                pixel.c.subject: "Invoice #42",
                pixel.c.recipients: '["bob@example.com"]',
                pixel.c.created_at: at,
                pixel.c.state: "opened",
                pixel.c.first_open_at: at,
                pixel.c.open_count: 1,
                pixel.c.prefetch_count: 1,
                pixel.c.preview_count: 0,
                pixel.c.self_count: 0,
                pixel.c.bot_count: 0,
            }
        ).execute()
        pixel_id = pixel.select(pixel.c.id).scalar()
        event = Table("event").bind(database)
        for kind, ip in (("prefetch", "17.58.0.0"), ("open", "81.2.69.0")):
            event.insert(
                {
                    event.c.pixel_id: pixel_id,
                    event.c.at: at,
                    event.c.kind: kind,
                    event.c.source: "test",
                    event.c.reason: "fill_first_release()",
                    event.c.ip: ip,
                    event.c.country: "GB",
                }
            ).execute()


def rows_in_columns(database, columns):
    """Every row of each table, limited to the given columns of that table."""
    return {
        table: query(
            database,
            "SELECT " + ", ".join(f'"{name}"' for name in names) + f' FROM "{table}" ORDER BY 1',
        )
        for table, names in columns.items()
    }


def test_upgrade_from_the_first_release_keeps_every_row(empty_database, first_release_directory):
    assert migrate(empty_database, directory=first_release_directory) == [FIRST]
    fill_first_release(empty_database)
    with empty_database.connection_context():
        first_columns = {
            table: [column.name for column in empty_database.get_columns(table)]
            for table in TABLES - {"schema_migration"}
        }
    before = rows_in_columns(empty_database, first_columns)

    assert migrate(empty_database) == SHIPPED[1:]

    assert applied(empty_database) == SHIPPED
    assert tables(empty_database) == MODEL_TABLES
    assert rows_in_columns(empty_database, first_columns) == before
    # What the first release stored reads back through today's models.
    with empty_database.bind_ctx(MODELS), empty_database.connection_context():
        pixel = Pixel.get()
        assert (pixel.public_id, pixel.owner.email, pixel.recipients) == (
            "from-the-first-release",
            "ada@example.com",
            ["bob@example.com"],
        )
        assert sorted(event.kind for event in pixel.events) == ["open", "prefetch"]


def migrate_in_rounds(urls, directory, barrier, results):
    """One process starting once per round: wait for the others, open the database, migrate."""
    for url in urls:
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return  # the test gave up; it reports why
        database = open_database(url)
        try:
            results.put(("applied", migrate(database, directory=directory)))
        except Exception as error:
            results.put(("error", f"{type(error).__name__}: {error}"))
        finally:
            if not database.is_closed():
                database.close()


def start_together(urls, directory, prepare, verify):
    """Round after round: prepare(url), let PROCESSES interpreters migrate it at the same moment,
    then verify(url, outcomes). The interpreters are started once, so a round costs milliseconds
    and a narrow race gets many chances to show. Returns the problems verify() found."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES + 1)
    results = context.Queue()
    processes = [
        context.Process(target=migrate_in_rounds, args=(urls, directory, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    problems = []
    try:
        for number, url in enumerate(urls):
            prepare(url)
            barrier.wait(timeout=120)
            outcomes = [results.get(timeout=120) for _ in processes]
            problems.extend(f"round {number}: {problem}" for problem in verify(url, outcomes))
    finally:
        barrier.abort()
        for process in processes:
            process.join(timeout=60)
            if process.exitcode is None:
                process.kill()
                process.join()
        exitcodes = [process.exitcode for process in processes]
        for process in processes:
            process.close()
        results.close()
        results.join_thread()
    assert exitcodes == [0] * PROCESSES
    return problems


def round_urls(database_url, tmp_path):
    """A new SQLite file per round; for PostgreSQL the one schema, emptied before each."""
    if database_url.startswith("sqlite:///"):
        return [
            f"sqlite:///{tmp_path / f'round-{number}' / 'openreceipt.db'}"
            for number in range(SQLITE_ROUNDS)
        ]
    return [database_url] * POSTGRESQL_ROUNDS


def reset(url):
    """No database at `url` yet: for SQLite, only its directory; for PostgreSQL, no tables."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    database = open_database(url)
    with database.connection_context():
        names = database.get_tables()
        if names:
            database.execute_sql(
                "DROP TABLE " + ", ".join(f'"{name}"' for name in names) + " CASCADE"
            )


def applied_once(outcomes, migrations):
    """Problems with one round's outcomes: each process that failed, and anything but exactly
    one of the processes that ran applying `migrations` while the others applied nothing."""
    for status, detail in outcomes:
        if status == "error":
            yield f"a process failed: {detail}"
    returned = sorted(detail for status, detail in outcomes if status == "applied")
    if returned and returned != [[]] * (len(returned) - 1) + [migrations]:
        yield f"migrate() returned {returned}"


@pytest.mark.slow
def test_processes_starting_together_on_a_fresh_database_migrate_once(empty_database_url, tmp_path):
    database_url = empty_database_url

    def verify(url, outcomes):
        yield from applied_once(outcomes, SHIPPED)
        if all(status == "error" for status, _ in outcomes):
            return
        database = open_database(url)
        try:
            found = (applied(database), tables(database))
        finally:
            database.close()
        if found != (SHIPPED, MODEL_TABLES):
            yield f"schema_migration and tables are {found}"

    problems = start_together(round_urls(database_url, tmp_path), MIGRATIONS, reset, verify)
    assert problems == []


@pytest.mark.slow
def test_processes_upgrading_together_migrate_once_and_keep_rows(
    database_url, tmp_path, upgrade_directory
):
    before = {}

    def prepare(url):
        reset(url)
        database = open_database(url)
        try:
            migrate(database)
            fill(database)
            before[url] = snapshot(database)
        finally:
            database.close()

    def verify(url, outcomes):
        yield from applied_once(outcomes, [NOTE])
        database = open_database(url)
        try:
            found, after = applied(database), snapshot(database)
        finally:
            database.close()
        if found != [*SHIPPED, NOTE]:
            yield f"schema_migration holds {found}"
        if [row[:-1] for row in after["pixel"]] != before[url]["pixel"]:
            yield f"pixel rows changed: {after['pixel']}"
        if (after["user"], after["event"]) != (before[url]["user"], before[url]["event"]):
            yield "user or event rows changed"

    # The database is in WAL mode already: the first-start race cannot happen here.
    problems = start_together(
        round_urls(database_url, tmp_path), upgrade_directory, prepare, verify
    )
    assert problems == []


def test_a_start_that_finds_a_fresh_sqlite_database_busy_waits_for_it(tmp_path):
    """The first-start race made deterministic: a connection holds the write lock of a
    database not yet in WAL mode for half a second; a start within the 5 s busy timeout must wait
    for it, not fail."""
    path = tmp_path / "data" / "openreceipt.db"
    path.parent.mkdir()
    rival = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    rival.execute("BEGIN IMMEDIATE")
    rival.execute("CREATE TABLE first_start (id INTEGER)")
    release = threading.Timer(0.5, rival.execute, ("COMMIT",))
    release.start()
    database = open_database(f"sqlite:///{path}")
    try:
        assert migrate(database) == SHIPPED
    finally:
        release.join()
        rival.close()
        if not database.is_closed():
            database.close()
    assert tables(database) == MODEL_TABLES | {"first_start"}


REBUILD = '''\
"""Makes pixel.label NOT NULL: on SQLite, peewee copies the table and drops the old one."""


def up(migrator, db):
    db.execute_sql("UPDATE pixel SET label = '' WHERE label IS NULL")
    migrator.migrate(migrator.add_not_null("pixel", "label"))
'''


def test_a_migration_that_rebuilds_a_table_keeps_its_events(empty_database, tmp_path):
    directory = tmp_path / "rebuild"
    directory.mkdir()
    for path in Path(MIGRATIONS).glob("*.py"):
        shutil.copy(path, directory)
    name = f"{int(SHIPPED[-1][:4]) + 1:04d}_label_not_null"
    (directory / f"{name}.py").write_text(REBUILD)
    migrate(empty_database)
    fill(empty_database)
    with empty_database.bind_ctx(MODELS), empty_database.connection_context():
        events_before = Event.select().count()
    assert events_before == 2

    assert migrate(empty_database, directory=directory) == [name]

    with empty_database.bind_ctx(MODELS), empty_database.connection_context():
        assert Event.select().count() == events_before
        assert Pixel.select().count() == 1


SCOPES = "0008_token_scopes"


def test_scopes_migration_makes_keys_named_bookmarklet_bookmarklet_keys(empty_database, tmp_path):
    """Before 0008 a bookmarklet's key was told apart by its name only."""
    directory = tmp_path / "before-scopes"
    directory.mkdir()
    for path in Path(MIGRATIONS).glob("*.py"):
        if path.stem < SCOPES:
            shutil.copy(path, directory)
    migrate(empty_database, directory=str(directory))
    fill(empty_database)
    names = ["bookmarklet 2026-01-05", "bookmarklet", "invoicing script", "my bookmarklet"]
    with empty_database.connection_context():
        api_token = Table("api_token").bind(empty_database)
        owner = query(empty_database, 'SELECT id FROM "user"')[0][0]
        for number, name in enumerate(names):
            api_token.insert(
                {
                    api_token.c.user_id: owner,
                    api_token.c.name: name,
                    api_token.c.token_hash: f"{number:064x}",
                    api_token.c.created_at: datetime.datetime(2026, 1, 5, 9, 30),
                }
            ).execute()

    assert migrate(empty_database) == SHIPPED[SHIPPED.index(SCOPES) :]

    assert query(empty_database, "SELECT name, scope FROM api_token ORDER BY id") == [
        ("bookmarklet 2026-01-05", "bookmarklet"),
        ("bookmarklet", "bookmarklet"),
        ("invoicing script", "full"),
        ("my bookmarklet", "full"),
    ]
    assert query(empty_database, "SELECT public_id, made_with FROM pixel") == [
        ("kept-across-upgrades", None)
    ]


RECEIPT_COUNT = "0010_receipt_count"


def test_receipt_count_migration_counts_the_receipts_there_are(empty_database, tmp_path):
    """0010 fills user.receipt_count from the rows there are; from then on the database keeps it."""
    directory = tmp_path / "before-receipt-count"
    directory.mkdir()
    for path in Path(MIGRATIONS).glob("*.py"):
        if path.stem < RECEIPT_COUNT:
            shutil.copy(path, directory)
    migrate(empty_database, directory=str(directory))
    fill(empty_database)
    with empty_database.connection_context():
        empty_database.execute_sql(
            'INSERT INTO "user" (email, password_hash, created_at, notify_opens, '
            "notify_delivered, notify_quiet_minutes) VALUES ('grace@example.com', 'x', "
            "'2026-01-05 09:30:00', 'first', false, 30)"
        )

    assert migrate(empty_database) == SHIPPED[SHIPPED.index(RECEIPT_COUNT) :]

    counts = 'SELECT email, receipt_count FROM "user" ORDER BY email'
    assert query(empty_database, counts) == [("ada@example.com", 1), ("grace@example.com", 0)]
    with empty_database.connection_context():
        empty_database.execute_sql(
            "INSERT INTO pixel (public_id, owner_id, subject, recipients, created_at, state, "
            "open_count, prefetch_count, self_count, bot_count, preview_count, unknown_count, "
            "click_count) "
            "SELECT 'second', id, 's', '[]', '2026-01-05 09:30:00', 'waiting', 0, 0, 0, 0, 0, 0, 0 "
            "FROM \"user\" WHERE email = 'grace@example.com'"
        )
        empty_database.execute_sql("DELETE FROM event")
        empty_database.execute_sql("DELETE FROM pixel WHERE public_id = 'kept-across-upgrades'")
    assert query(empty_database, counts) == [("ada@example.com", 0), ("grace@example.com", 1)]


def test_the_migrations_build_the_indexes_the_models_declare(empty_database):
    """What the queries are written for is what a migrated database holds, index by index: the
    indexes the models declare (their fields' and their Meta's), no fewer and no more (a
    forgotten index slows a query down, a stale one every write). Primary keys aside."""
    migrate(empty_database)
    with empty_database.connection_context():
        for model in MODELS:
            table = model._meta.table_name
            key = tuple(field.column_name for field in model._meta.get_primary_keys())
            built = {
                (tuple(index.columns), index.unique)
                for index in empty_database.get_indexes(table)
                if tuple(index.columns) != key
            }
            declared = {
                (tuple(field.column_name for field in index._expressions), index._unique)
                for index in model._meta.fields_to_index()
            }
            assert built == declared, table
