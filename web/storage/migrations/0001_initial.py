"""The first schema: users, API tokens, pixels, events, settings.

The models are frozen copies: later changes to web/models.py go into new migrations."""

import datetime

from peewee import (
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


def _utcnow():
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class User(Base):
        email = CharField(max_length=320, unique=True)
        password_hash = CharField(max_length=255)
        created_at = DateTimeField(default=_utcnow)

    class ApiToken(Base):
        user = ForeignKeyField(User, on_delete="CASCADE")
        name = CharField(max_length=100)
        token_hash = CharField(max_length=64, unique=True)
        created_at = DateTimeField(default=_utcnow)
        last_used_at = DateTimeField(null=True)
        revoked_at = DateTimeField(null=True)

    class Pixel(Base):
        public_id = CharField(max_length=32, unique=True)
        owner = ForeignKeyField(User, on_delete="CASCADE")
        label = CharField(max_length=200, null=True)
        subject = TextField(null=True)
        recipients = TextField(default="[]")
        created_at = DateTimeField(default=_utcnow)
        sent_at = DateTimeField(null=True)
        state = CharField(max_length=16, default="waiting")
        open_count = IntegerField(default=0)
        prefetch_count = IntegerField(default=0)
        preview_count = IntegerField(default=0)
        self_count = IntegerField(default=0)
        bot_count = IntegerField(default=0)
        first_open_at = DateTimeField(null=True)
        last_open_at = DateTimeField(null=True)
        last_event_at = DateTimeField(null=True)

        class Meta:
            indexes = (
                (("owner", "created_at"), False),
                (("owner", "last_event_at"), False),
                (("owner", "state"), False),
            )

    class Event(Base):
        pixel = ForeignKeyField(Pixel, on_delete="CASCADE")
        at = DateTimeField(default=_utcnow)
        kind = CharField(max_length=16)
        source = CharField(max_length=32)
        reason = CharField(max_length=200)
        ip = CharField(max_length=45, null=True)
        country = CharField(max_length=2, null=True)
        city = CharField(max_length=100, null=True)
        client = CharField(max_length=100, null=True)

        class Meta:
            indexes = ((("pixel", "at"), False),)

    class Setting(Base):
        name = CharField(max_length=64, primary_key=True)
        value = TextField()

    db.create_tables([User, ApiToken, Pixel, Event, Setting])
