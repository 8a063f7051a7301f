"""Link receipts: a receipt's tracked links (each redirecting to its stored destination only),
the click's link on its event, and the receipt's count of clicks."""

import datetime

from peewee import (
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


def _now():
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def up(migrator, db):
    class Pixel(Model):
        id = IntegerField(primary_key=True)

        class Meta:
            database = db
            legacy_table_names = False

    class Link(Model):
        public_id = CharField(max_length=32, unique=True)
        pixel = ForeignKeyField(Pixel, on_delete="CASCADE")
        destination = TextField()
        honeypot = BooleanField(default=False)
        created_at = DateTimeField(default=_now)

        class Meta:
            database = db
            legacy_table_names = False

    db.create_tables([Link])
    # One plain ALTER on both databases: the migrator would rebuild SQLite's pixel table to make
    # the column NOT NULL, and lose the receipt-count triggers on it (0010).
    db.execute_sql("ALTER TABLE pixel ADD COLUMN click_count INTEGER NOT NULL DEFAULT 0")
    # (add_column makes the foreign key's index, event_link_id, too.)
    migrator.migrate(
        migrator.add_column(
            "event", "link_id", ForeignKeyField(Link, null=True, on_delete="CASCADE", field=Link.id)
        ),
    )
