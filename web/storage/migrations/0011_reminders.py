"""Reminders: "tell me if it is not opened within N days", per receipt (remind_after_days; when
it is due, remind_at; when it was sent, reminded_at), and the user's default for new receipts
(off unless they turn it on)."""

from peewee import DateTimeField, IntegerField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("pixel", "remind_after_days", IntegerField(null=True)),
        migrator.add_column("pixel", "remind_at", DateTimeField(null=True)),
        migrator.add_column("pixel", "reminded_at", DateTimeField(null=True)),
        migrator.add_column("user", "remind_after_days", IntegerField(null=True)),
        migrator.add_index("pixel", ("remind_at",), False),
    )
