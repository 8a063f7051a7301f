"""Retention: events older than RETENTION_DAYS are deleted; each pixel keeps what they added up
to (its counters, state and first/last times), so "opened 3 times" stays true.

What a pixel's deleted events added up to is kept in Pixel.archived, per kind: the count and the
first and last time. receipts.refresh() adds it to what the remaining events say, so a later
correction recounts exactly. The deleted events are always the oldest, which is what makes the
first and last times of the two parts combine correctly.

It runs by itself at most once a day (whichever worker or host claims the day first; see
claim_run()) and by `openreceipt purge`."""

import datetime
import json

from peewee import fn

from .. import background
from ..storage.engine import db, locked, utcnow, write_transaction
from ..storage.models import Event, Pixel, Setting

LAST_RUN = "retention_last_run"
EVERY = datetime.timedelta(days=1)
CHECK_SECONDS = 3600  # how often a worker looks whether the day's run is due
FIRST_CHECK = 1  # seconds after a worker starts: a server restarted daily still purges
BATCH = 200  # pixels a transaction


def archived_rows(pixel):
    """The archived tallies of a pixel as (kind, count, first, last) rows."""
    if not pixel.archived:
        return []
    return [
        (
            kind,
            count,
            datetime.datetime.fromisoformat(first),
            datetime.datetime.fromisoformat(last),
        )
        for kind, (count, first, last) in json.loads(pixel.archived).items()
    ]


def merge(archived, rows):
    """Archived tallies (JSON text or None) with more (kind, count, first, last) rows added."""
    tallies = json.loads(archived) if archived else {}
    for kind, count, first, last in rows:
        if kind in tallies:
            old_count, old_first, old_last = tallies[kind]
            first = min(first, datetime.datetime.fromisoformat(old_first))
            last = max(last, datetime.datetime.fromisoformat(old_last))
            count += old_count
        tallies[kind] = [count, first.isoformat(), last.isoformat()]
    return json.dumps(tallies, sort_keys=True)


def purge(days, now=None):
    """Delete the events older than `days` days, archiving their tallies on their pixels. Safe to
    run in several processes at once: each pixel is handled under its row lock (SQLite: the
    write lock), and a pixel whose old events another run already took finds none. Returns
    (events deleted, pixels touched)."""
    if not days:
        return 0, 0
    cutoff = (now or utcnow()) - datetime.timedelta(days=days)
    old = Event.at < cutoff
    pixel_ids = [row[0] for row in Event.select(Event.pixel).where(old).distinct().tuples()]
    deleted = touched = 0
    for start in range(0, len(pixel_ids), BATCH):
        with write_transaction():
            for pixel_id in pixel_ids[start : start + BATCH]:
                pixel = locked(Pixel.select().where(Pixel.id == pixel_id)).first()
                if pixel is None:
                    continue
                rows = list(
                    Event.select(Event.kind, fn.COUNT(Event.id), fn.MIN(Event.at), fn.MAX(Event.at))
                    .where(Event.pixel == pixel_id, old)
                    .group_by(Event.kind)
                    .tuples()
                )
                if not rows:
                    continue
                Pixel.update(archived=merge(pixel.archived, rows)).where(
                    Pixel.id == pixel_id
                ).execute()
                deleted += Event.delete().where(Event.pixel == pixel_id, old).execute()
                touched += 1
    return deleted, touched


def claim_run(now=None, force=False):
    """Whether this process may run today's purge: the first to move the stored time of the last
    run forward wins, with one conditional UPDATE, however many workers or hosts ask at once.
    `force` records a run made now whatever the time (`openreceipt purge`)."""
    now = now or utcnow()
    stamp = now.isoformat(timespec="seconds")
    with db.atomic():
        Setting.insert(name=LAST_RUN, value="").on_conflict_ignore().execute()
    query = Setting.update(value=stamp).where(Setting.name == LAST_RUN)
    if not force:
        query = query.where(Setting.value <= (now - EVERY).isoformat(timespec="seconds"))
    return query.execute() == 1


def last_run():
    """When the purge last ran (by itself or by the command), or None."""
    row = Setting.get_or_none(Setting.name == LAST_RUN)
    return datetime.datetime.fromisoformat(row.value) if row and row.value else None


def init_app(app):
    """The job that runs the day's purge: each worker looks every CHECK_SECONDS (first soon after
    it starts) whether it is due, and the one that claims the day runs it."""
    days = app.config["RETENTION_DAYS"]

    def step():
        if not days:
            return False  # kept for ever
        with app.app_context():
            if claim_run():
                deleted, touched = purge(days)
                app.logger.info(
                    "retention: deleted %d events older than %d days from %d receipts",
                    deleted,
                    days,
                    touched,
                )
        return False

    in_workers = bool(days) and app.config["RETENTION_AUTO"]
    job = background.Job("retention", step, CHECK_SECONDS, in_workers, first_after=FIRST_CHECK)
    background.register(app, job)
