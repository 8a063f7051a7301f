"""Least privilege for bookmarklets: each API token has a scope ("full" for scripts, "bookmarklet"
for a bookmarklet's key, which can only add receipts), and each receipt says how it was made
(the API, a bookmarklet, or the form for receipts made by hand)."""

from peewee import CharField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("api_token", "scope", CharField(max_length=16, default="full")),
        migrator.add_column("pixel", "made_with", CharField(max_length=16, null=True)),
    )
    # Until now a bookmarklet's key was told apart by its name only.
    db.execute_sql(
        "UPDATE api_token SET scope = 'bookmarklet' WHERE substr(name, 1, 11) = 'bookmarklet'"
    )
