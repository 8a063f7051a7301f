"""Each user's number of receipts, kept by the database itself.

The status page and the API's list say how many receipts a user has; counting them took a scan
of the user's rows in the pixel index on every page (3.5 ms at 100,000 receipts, a hundred times
the page's own query). The count now lives in user.receipt_count, and triggers move it with every
row of pixel inserted or deleted, whichever way: a mint, a deletion, an erasure by address, a
deleted account's cascade. (A receipt never changes owner.)"""

from peewee import DatabaseProxy, IntegerField, SqliteDatabase

SQLITE_TRIGGERS = (
    """CREATE TRIGGER pixel_counted AFTER INSERT ON pixel BEGIN
        UPDATE "user" SET receipt_count = receipt_count + 1 WHERE id = NEW.owner_id;
    END""",
    """CREATE TRIGGER pixel_uncounted AFTER DELETE ON pixel BEGIN
        UPDATE "user" SET receipt_count = receipt_count - 1 WHERE id = OLD.owner_id;
    END""",
)

# Once per statement, not per row: PostgreSQL keeps every version of a row updated in one
# transaction, and a row-level trigger would update the owner's row once for each of thousands
# of receipts inserted or deleted together, slower with each.
POSTGRESQL_TRIGGERS = (
    """CREATE OR REPLACE FUNCTION count_new_receipts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE "user" u SET receipt_count = u.receipt_count + n.count
        FROM (SELECT owner_id, COUNT(*) AS count FROM new_rows GROUP BY owner_id) n
        WHERE u.id = n.owner_id;
        RETURN NULL;
    END $$""",
    """CREATE OR REPLACE FUNCTION count_gone_receipts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE "user" u SET receipt_count = u.receipt_count - o.count
        FROM (SELECT owner_id, COUNT(*) AS count FROM old_rows GROUP BY owner_id) o
        WHERE u.id = o.owner_id;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER pixel_counted AFTER INSERT ON pixel REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION count_new_receipts()",
    "CREATE TRIGGER pixel_uncounted AFTER DELETE ON pixel REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION count_gone_receipts()",
)


def up(migrator, db):
    migrator.migrate(migrator.add_column("user", "receipt_count", IntegerField(default=0)))
    db.execute_sql(
        'UPDATE "user" SET receipt_count = '
        '(SELECT COUNT(*) FROM pixel WHERE pixel.owner_id = "user".id)'
    )
    sqlite = isinstance(db.obj if isinstance(db, DatabaseProxy) else db, SqliteDatabase)
    for statement in SQLITE_TRIGGERS if sqlite else POSTGRESQL_TRIGGERS:
        db.execute_sql(statement)
