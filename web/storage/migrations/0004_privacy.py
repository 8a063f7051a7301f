"""Privacy: do-not-track lists, receipts that stop recording, and the tallies of events that
retention deleted."""

import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("pixel", "tracking_stopped_at", DateTimeField(null=True)),
        migrator.add_column("pixel", "archived", TextField(null=True)),
    )

    class User(Model):
        id = IntegerField(primary_key=True)

        class Meta:
            database = db
            legacy_table_names = False

    class DoNotTrack(Model):
        user = ForeignKeyField(User, null=True, on_delete="CASCADE")
        entry = CharField(max_length=320)
        created_at = DateTimeField(
            default=lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        )

        class Meta:
            database = db
            legacy_table_names = False
            indexes = ((("user", "entry"), True),)

    db.create_tables([DoNotTrack])
