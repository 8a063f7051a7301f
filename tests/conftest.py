"""Fixtures: real SQLite files, the real PostgreSQL server, a test GeoIP database.

Every `app` test runs twice, on SQLite and on PostgreSQL. PostgreSQL tests use a schema of their
own inside TEST_POSTGRESQL_URL (default: the local server's `test` database), dropped at the end.
Under CI=true a PostgreSQL server or Chromium that cannot be reached fails the run instead of
skipping, and a run in which no PostgreSQL or browser test passed fails as well.
"""

import functools
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from flask.testing import FlaskCliRunner
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from werkzeug.security import generate_password_hash

from web import create_app
from web.accounts import create_user, new_token
from web.cli import cli as command_line
from web.storage.engine import close_pool, db
from web.storage.migrate import MIGRATIONS
from web.storage.models import MODELS

from .helpers import sign_in
from .receivers import Receiver
from .servers import TEST_SERVER_SETTINGS

# UPDATE_DOCS=1: the tests that check generated parts of the docs (the screenshots, the
# README's settings table) write them instead. Read before any test clears the environment.
UPDATE_DOCS = os.environ.get("UPDATE_DOCS") == "1"

MODEL_TABLES = {model._meta.table_name for model in MODELS}
IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRESQL_URL = os.environ.get("TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Networks of the test GeoIP database: MaxMind's own test address 81.2.69.160 is in London.
GEO_NETWORKS = {
    "81.2.69.0/24": ("GB", "United Kingdom", "London"),
    "2001:db8:1234::/48": ("DE", "Germany", "Berlin"),
    "17.58.0.0/16": ("US", "United States", "Cupertino"),
}


def unavailable(reason):
    """Skip a test whose real dependency is missing, except in CI, where that is a failure."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def build_city_database(path, networks=GEO_NETWORKS, database_type="GeoLite2-City"):
    writer = MMDBWriter(
        ip_version=6, database_type=database_type, languages=["en"], ipv4_compatible=True
    )
    for network, (iso, country, city) in networks.items():
        record = {"country": {"iso_code": iso, "names": {"en": country}}}
        if "City" in database_type:
            record["city"] = {"names": {"en": city}}
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="session")
def geoip_path(tmp_path_factory):
    return build_city_database(tmp_path_factory.mktemp("geoip") / "test-city.mmdb")


@contextmanager
def scratch_schema(name):
    """A new schema `name` in the PostgreSQL test database, dropped with everything in it at the
    end; yields a DATABASE_URL whose connections work in it."""
    try:
        connection = psycopg.connect(POSTGRESQL_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL at {POSTGRESQL_URL} is unreachable: {error}")
    with connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
        separator = "&" if "?" in POSTGRESQL_URL else "?"
        try:
            yield f"{POSTGRESQL_URL}{separator}options={quote(f'-csearch_path={name}')}"
        finally:
            connection.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(scope="session")
def postgresql_schema():
    """A schema of this run's own in the PostgreSQL test database; yields a DATABASE_URL."""
    with scratch_schema(f"openreceipt_test_{os.getpid()}_{secrets.token_hex(3)}") as url:
        yield url


def shipped_migrations():
    return sorted(path.stem for path in Path(MIGRATIONS).glob("[0-9]*.py"))


@pytest.fixture
def postgresql_url(postgresql_schema):
    """The run's PostgreSQL schema with no rows. When the tables are exactly those the shipped
    migrations make, they are emptied (fast); otherwise, after a test that changed the schema,
    they are dropped for the next start to make again."""
    with psycopg.connect(postgresql_schema, autocommit=True) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        intact = (
            tables == {*MODEL_TABLES, "schema_migration"}
            and sorted(row[0] for row in connection.execute("SELECT name FROM schema_migration"))
            == shipped_migrations()
        )
        names = ", ".join(f'"{table}"' for table in sorted(tables - {"schema_migration"}))
        if intact:
            connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        else:
            drop_tables(connection, tables)
    return postgresql_schema


@pytest.fixture
def empty_postgresql_url(postgresql_schema):
    """The run's PostgreSQL schema without any table, for tests of first starts and migrations."""
    with psycopg.connect(postgresql_schema, autocommit=True) as connection:
        drop_tables(
            connection,
            [
                row[0]
                for row in connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            ],
        )
    return postgresql_schema


def drop_tables(connection, tables):
    if tables:
        names = ", ".join(f'"{table}"' for table in tables)
        connection.execute(f"DROP TABLE {names} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_database_url(request, tmp_path):
    """Like database_url, but with no tables at all on PostgreSQL either."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'openreceipt.db'}"
    return request.getfixturevalue("empty_postgresql_url")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'openreceipt.db'}"
    return request.getfixturevalue("postgresql_url")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tests start from code defaults: no OPENRECEIPT_* setting leaks in from the shell."""
    for name in list(os.environ):
        if name.startswith("OPENRECEIPT_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def quick_password_hashes(monkeypatch):
    """Real werkzeug hashes, with a cheap work factor: scrypt's default costs 0.15 s a user."""
    import web.accounts

    monkeypatch.setattr(
        web.accounts,
        "generate_password_hash",
        functools.partial(generate_password_hash, method="pbkdf2:sha256:1000"),
    )


@pytest.fixture
def settings(tmp_path, database_url, geoip_path):
    return {
        "TESTING": True,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "GEOIP_DATABASE": str(geoip_path),
        "PUBLIC_URL": "https://receipts.example.com",
        # Tests that look up MX records bring their own DNS server (tests/dnsserver.py).
        "MX_LOOKUP": False,
        # No purge thread racing the test's own requests; tests/test_retention.py turns it on.
        "RETENTION_AUTO": False,
        # Nor a spool replayer: tests replay with web.pixel.spool.replay() when they mean to.
        "SPOOL_AUTO": False,
        # Nor a notification sender: tests deliver with delivery.deliver_due() themselves.
        "NOTIFY_IN_WORKERS": False,
        **TEST_SERVER_SETTINGS,
    }


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    close_pool(app)


@pytest.fixture
def app_with(settings):
    """create_app() with the test settings and overrides of the test's own; each app made is
    closed at the end."""
    made = []

    def make(**overrides):
        made.append(create_app({**settings, **overrides}))
        return made[-1]

    yield make
    for app in made:
        close_pool(app)


@pytest.fixture
def client(app):
    return app.test_client()


class CommandLine(FlaskCliRunner):
    """Runs `openreceipt` commands (web/cli.py) against the test's app."""

    def invoke(self, cli=None, args=None, **kwargs):
        return super().invoke(cli or command_line, args, **kwargs)


@pytest.fixture
def runner(app):
    return CommandLine(app)


@pytest.fixture
def user(app):
    with app.app_context():
        return create_user("ada@example.com", "correct horse battery")


@pytest.fixture
def token(app, user):
    with app.app_context():
        return new_token(user, "tests")[1]


@pytest.fixture
def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def other_auth(app):
    with app.app_context():
        other = create_user("grace@example.com", "another long password")
        return {"Authorization": f"Bearer {new_token(other)[1]}"}


@pytest.fixture
def database(app):
    """The app's database, for reading back what requests stored."""
    with app.app_context():
        yield db
    db.close()


# Under CI, the PostgreSQL and browser tests are the point: make sure some actually ran.
_passed_markers = {"postgresql": 0, "browser": 0}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        for marker in _passed_markers:
            if marker in report.keywords:
                _passed_markers[marker] += 1


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # A worker of pytest-xdist (-n): the run's controller sees every test's report and
        # decides; the figures of the tests this worker ran go to it.
        workeroutput["figures"] = _figures()
        return
    if IN_CI and exitstatus == 0:
        missing = [marker for marker, count in _passed_markers.items() if count == 0]
        if missing:
            session.config.pluginmanager.get_plugin("terminalreporter").write_line(
                f"CI=true: no {' or '.join(missing)} test passed; failing the run", red=True
            )
            session.exitstatus = 1


@pytest.fixture
def screenshots(tmp_path):
    """Where the browser tests put the pages' screenshots: the test's own directory, so a run
    leaves the checkout as it was; docs/ with UPDATE_DOCS=1."""
    if UPDATE_DOCS:
        return Path(__file__).resolve().parent.parent / "docs"
    return tmp_path


_workers_figures = []


def _figures():
    """Figures some tests measure (the fetch corpus's precision and recall), as lines."""
    return list(getattr(sys.modules.get("tests.test_corpus"), "FIGURES", []))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist: a worker is done; keep the figures its tests measured."""
    _workers_figures.extend(getattr(node, "workeroutput", {}).get("figures", []))


def pytest_terminal_summary(terminalreporter):
    """The figures some tests measured, after the run (from the workers, with -n)."""
    for line in _figures() + _workers_figures:
        terminalreporter.write_line(line)


@pytest.fixture
def gunicorn(tmp_path, geoip_path):
    """Start real gunicorn servers: gunicorn(**settings) -> tests.servers.Gunicorn. With `name`,
    a server keeps its data dir and logs under tmp_path/name (several hosts in one test)."""
    from .servers import start_gunicorn

    started = []

    def start(host="127.0.0.1", name=None, workers=2, **settings):
        directory = tmp_path / name if name else tmp_path
        directory.mkdir(exist_ok=True)
        settings.setdefault("DATA_DIR", directory / "data")
        settings.setdefault("GEOIP_DATABASE", geoip_path)
        settings.setdefault("MX_LOOKUP", "off")
        server = start_gunicorn(directory, settings, host=host, workers=workers)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def signed_in(client, user):
    """Signed in before `database` keeps an app context (and so one `g`) around the requests:
    the sign-in starts a new session, which must not meet a CSRF token cached in `g`."""
    sign_in(client)
    return client


@pytest.fixture
def receiver():
    """A real local HTTP receiver of notices (tests/receivers.py), stopped afterwards."""
    started = Receiver().start()
    yield started
    started.stop()
