"""Schema changes: numbered files in migrations/ (a shipped one never changes), applied once
at start-up — or by `openreceipt db migrate` — even when several processes or hosts start
together."""

import os

from peewee import SqliteDatabase
from playhouse.migrations import Runner

from .engine import enable_wal, write_transaction

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
# Any constant will do: it names the lock that serialises migrations across hosts.
MIGRATION_LOCK = 0x6F70656E72637074


def _runner(database, directory):
    return Runner(database, directory=directory, table_name="schema_migration")


def status(database, directory=MIGRATIONS):
    """Each migration as (name, when it was applied or None)."""
    with database.connection_context():
        return [(row.name, row.applied) for row in _runner(database, directory).status()]


def migrate(database, directory=MIGRATIONS):
    """Create or upgrade the schema, once, even when several processes or hosts start together.
    Returns the names of the migrations applied."""
    runner = _runner(database, directory)
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
