"""The database: its engine and connections (engine.py), the schema (models.py), and the
schema's changes (migrate.py, migrations/)."""

import weakref

from peewee import OperationalError

from . import migrate
from .engine import create_private, db, open_database, probe_write, start_error


def init_app(app):
    """Bind the models to the configured database, make sure it can be written, migrate it, and
    close the connection at the end of every request (and every CLI command or other app
    context). A SQLite file that cannot be opened or written stops start-up with one line
    naming it (engine.start_error), not with a traceback, nor with a server whose every write
    fails."""
    database = open_database(app.config["DATABASE_URL"], pooled=True)
    db.initialize(database)
    app.extensions["openreceipt.database"] = database
    # When an app is done with (tests and tools make many), its pooled connections are closed.
    if hasattr(database, "close_all"):
        weakref.finalize(app, database.close_all)
    create_private(database)
    try:
        probe_write(database)
        app.extensions["openreceipt.migrated"] = migrate.migrate(database)
    except OperationalError as error:
        stop = start_error(database, error)
        if stop is None:
            raise
        raise stop from None

    @app.teardown_appcontext
    def close_connection(_exc):
        if not database.is_closed():
            database.close()
