"""What the server needs to tell the sender's own views from a reader's: the minting browser's
fingerprint, where the recipients' mail is hosted, the last self-view beacon, and when the
message was first seen delivered."""

from peewee import CharField, DateTimeField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("pixel", "mint_fingerprint", CharField(max_length=64, null=True)),
        migrator.add_column("pixel", "mail_hosting", CharField(max_length=16, null=True)),
        migrator.add_column("pixel", "last_self_view_at", DateTimeField(null=True)),
        migrator.add_column("pixel", "delivered_at", DateTimeField(null=True)),
    )
    # Receipts recorded before this migration: delivered when first prefetched or opened.
    db.execute_sql(
        "UPDATE pixel SET delivered_at = (SELECT MIN(e.at) FROM event e "
        "WHERE e.pixel_id = pixel.id AND e.kind IN ('prefetch', 'open'))"
    )
