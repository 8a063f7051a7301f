"""The index the repeat check reads: event(pixel_id, at) becomes event(pixel_id, at, ip).

Every fetch asks who fetched its receipt from its network within the last seconds (the repeat
window): the events of the receipt in that window, from the batch's networks. With (pixel_id,
at), each event in the window was read from the table to learn its network; a receipt fetched
from many networks at once (a forward to a list, a wave of scanners) had the pixel read all of
them again for every batch. With the network in the index, the events of other networks are
passed over in the index itself. The index still orders a receipt's events by time, as the
status page reads them, and costs a new event no more than the one it replaces."""


def up(migrator, db):
    db.execute_sql("CREATE INDEX IF NOT EXISTS event_pixel_id_at_ip ON event (pixel_id, at, ip)")
    db.execute_sql("DROP INDEX IF EXISTS event_pixel_id_at")
