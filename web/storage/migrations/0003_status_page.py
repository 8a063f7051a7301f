"""The status page: a pixel's latest activity (for "most recent activity first", indexed) and
failed sign-ins (for rate limiting)."""

import datetime

from peewee import CharField, DateTimeField, Model


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("pixel", "activity_at", DateTimeField(null=True)),
    )
    db.execute_sql("UPDATE pixel SET activity_at = COALESCE(last_event_at, created_at)")
    # Left nullable: making it NOT NULL would rebuild the table on SQLite.
    migrator.migrate(migrator.add_index("pixel", ("owner_id", "activity_at"), False))

    class LoginFailure(Model):
        key = CharField(max_length=64, index=True)
        at = DateTimeField(default=lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None))

        class Meta:
            database = db
            legacy_table_names = False

    db.create_tables([LoginFailure])
