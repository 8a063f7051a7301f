"""Sessions that can be ended, and sign-in throttling per account and network.

A login cookie used to hold just the user's id: nothing could end it before it ran out. Now it
holds a random session id that must match a row of login_session. Cookies signed before this
migration carry no such id, so everyone signs in once more.

Failed sign-ins were counted per account and per network apart, so ten wrong passwords from
anywhere locked the owner out; login_throttle counts per account and network together, in one
row each, so that one statement can count an attempt and say how many there were."""

import datetime

from peewee import CharField, CompositeKey, DateTimeField, ForeignKeyField, IntegerField, Model


def _now():
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def up(migrator, db):
    class User(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class LoginSession(Model):
        user = ForeignKeyField(User, on_delete="CASCADE")
        key_hash = CharField(max_length=64, unique=True)
        created_at = DateTimeField(default=_now)
        expires_at = DateTimeField(index=True)

        class Meta:
            database = db
            legacy_table_names = False

    class LoginThrottle(Model):
        account = CharField(max_length=64)
        network = CharField(max_length=64)
        attempts = IntegerField(default=0)
        window_start = DateTimeField(default=_now, index=True)

        class Meta:
            database = db
            legacy_table_names = False
            primary_key = CompositeKey("account", "network")

    db.create_tables([LoginSession, LoginThrottle])
    # Recent failures are not carried over: their keys counted accounts and networks apart.
    db.execute_sql("DROP TABLE login_failure")
