"""The spool: an event replayed from a host's spool carries its key, so it is stored once only."""

from peewee import CharField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("event", "spool_key", CharField(max_length=32, null=True)),
        migrator.add_index("event", ("spool_key",), True),
    )
