"""Deny by default: a counter for fetches by unrecognised programs, and the mail providers that
host a receipt's recipients (named at mint, so the receipt can say what it can show)."""

from peewee import CharField, IntegerField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("pixel", "unknown_count", IntegerField(default=0)),
        migrator.add_column("pixel", "mail_providers", CharField(max_length=200, null=True)),
    )
