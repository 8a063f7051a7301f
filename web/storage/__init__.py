"""The database: its engine and connections (engine.py), the schema (models.py), and the
schema's changes (migrate.py, migrations/)."""

import weakref

from . import migrate
from .engine import db, open_database


def init_app(app):
    """Bind the models to the configured database, migrate it, and close the connection at the
    end of every request (and every CLI command or other app context)."""
    database = open_database(app.config["DATABASE_URL"], pooled=True)
    db.initialize(database)
    app.extensions["openreceipt.database"] = database
    # When an app is done with (tests and tools make many), its pooled connections are closed.
    if hasattr(database, "close_all"):
        weakref.finalize(app, database.close_all)
    app.extensions["openreceipt.migrated"] = migrate.migrate(database)

    @app.teardown_appcontext
    def close_connection(_exc):
        if not database.is_closed():
            database.close()
