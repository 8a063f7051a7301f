"""Three indexes no query uses, which every fetch paid for: a new event wrote to each of the
event table's indexes, and each UPDATE of a receipt's counters and times (which moves indexed
columns, so PostgreSQL writes a new entry in every index of the row) to each of the pixel's.

- pixel(owner_id) and event(pixel_id), the foreign keys' own indexes: every query that looks
  up by them (a user's receipts, a receipt's events, the cascades of a deletion) uses the
  indexes that begin with the same column, pixel(owner_id, ...) and event(pixel_id, at);
- pixel(owner_id, last_event_at): the lists are ordered by activity_at (0003) or created_at."""

UNUSED = ("pixel_owner_id", "pixel_owner_id_last_event_at", "event_pixel_id")


def up(migrator, db):
    for name in UNUSED:
        db.execute_sql(f"DROP INDEX IF EXISTS {name}")
