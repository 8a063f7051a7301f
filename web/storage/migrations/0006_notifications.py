"""Notifications: each user's choice of events, their channels, and the outbox of notices."""

import datetime

from peewee import (
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
)


def _now():
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("user", "notify_opens", CharField(max_length=8, default="first")),
        migrator.add_column("user", "notify_delivered", BooleanField(default=False)),
        migrator.add_column("user", "notify_quiet_minutes", IntegerField(default=30)),
    )

    class User(Model):
        id = IntegerField(primary_key=True)

        class Meta:
            database = db
            legacy_table_names = False

    class Pixel(Model):
        id = IntegerField(primary_key=True)

        class Meta:
            database = db
            legacy_table_names = False

    class Event(Model):
        id = IntegerField(primary_key=True)

        class Meta:
            database = db
            legacy_table_names = False

    class NotifyChannel(Model):
        user = ForeignKeyField(User, on_delete="CASCADE")
        kind = CharField(max_length=16)
        target = CharField(max_length=2000)
        secret = CharField(max_length=200, null=True)
        created_at = DateTimeField(default=_now)

        class Meta:
            database = db
            legacy_table_names = False

    class Notice(Model):
        channel = ForeignKeyField(NotifyChannel, on_delete="CASCADE")
        pixel = ForeignKeyField(Pixel, on_delete="CASCADE")
        event = ForeignKeyField(Event, null=True, on_delete="CASCADE")
        reason = CharField(max_length=16)
        created_at = DateTimeField(default=_now)
        due_at = DateTimeField(default=_now)
        state = CharField(max_length=16, default="pending")
        attempts = IntegerField(default=0)
        claim = CharField(max_length=32, null=True)
        sent_at = DateTimeField(null=True)
        last_error = CharField(max_length=300, null=True)

        class Meta:
            database = db
            legacy_table_names = False
            indexes = (
                (("state", "due_at"), False),
                (("channel", "pixel", "reason"), False),
            )

    db.create_tables([NotifyChannel, Notice])
