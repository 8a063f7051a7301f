"""Retention on SQLite and PostgreSQL: old events are deleted, each receipt keeps what they added
up to (counters, state, times) through later corrections and fetches; the day's run is claimed by
one worker; the background purge, `openreceipt purge` and OPENRECEIPT_RETENTION_DAYS."""

import datetime
import functools
import logging
import threading
from collections import Counter

import pytest
from flask import Config
from peewee import OperationalError

from web import background, create_app
from web.accounts import create_user
from web.config import ConfigError, load
from web.receipts import ledger, minting, retention
from web.storage.engine import close_pool, utcnow
from web.storage.models import Event, Pixel, Setting

from .conftest import CommandLine
from .helpers import mint, pixel_path, sign_in, wait_for

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
KINDS = ("open", "prefetch", "preview", "self", "bot")
SUMMARY = (
    "state",
    "open_count",
    "prefetch_count",
    "preview_count",
    "self_count",
    "bot_count",
    "first_open_at",
    "last_open_at",
    "delivered_at",
    "last_event_at",
    "activity_at",
)


def add_events(pixel_id, *events):
    """Store (kind, at) events of a pixel and recount it, as if they had been fetched then."""
    Event.insert_many(
        [
            {"pixel": pixel_id, "at": at, "kind": kind, "source": "direct", "reason": f"a {kind}"}
            for kind, at in events
        ]
    ).execute()
    ledger.refresh(pixel_id)


def summary(pixel_id):
    pixel = Pixel.get_by_id(pixel_id)
    return {name: getattr(pixel, name) for name in SUMMARY}


def kinds_left(pixel_id):
    return [e.kind for e in Event.select().where(Event.pixel == pixel_id).order_by(Event.at)]


def tallies(pixel_id):
    """Events per kind: those left plus those archived."""
    counts = Counter(kinds_left(pixel_id))
    for kind, count, _first, _last in retention.archived_rows(Pixel.get_by_id(pixel_id)):
        counts[kind] += count
    return counts


def iso(moment):
    return moment.isoformat(timespec="seconds") + "Z"


def together(app, jobs):
    """Run the jobs in threads at once, each in an app context of its own; their results."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [], []

    def run(job):
        with app.app_context():
            barrier.wait()
            try:
                results.append(job())
            except Exception as error:  # noqa: BLE001 - reported below, in the test's thread
                errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert not errors, errors
    return results


def retention_threads():
    return [t for t in threading.enumerate() if t.name == "openreceipt-retention"]


def join_retention_threads():
    for thread in retention_threads():
        thread.join(10)
        assert not thread.is_alive()


def test_purge_deletes_only_old_events_and_keeps_the_summary(client, auth, user, database):
    """Events older than the cutoff go; the receipt's counters, state and times, its status page
    and its API answer stay as they were, and a new fetch counts on from there."""
    now = utcnow()
    cutoff = now - 90 * DAY
    public_id = mint(client, auth, subject="Invoice")["id"]
    pixel = Pixel.get(Pixel.public_id == public_id)
    add_events(
        pixel.id,
        ("prefetch", now - 120 * DAY),
        ("open", now - 110 * DAY),
        ("bot", now - 100 * DAY),
        ("open", cutoff - datetime.timedelta(seconds=1)),
        ("open", cutoff),  # exactly 90 days old: kept
        ("self", now - 3 * DAY),
        ("open", now - 2 * DAY),
    )
    recent = minting.mint(user, subject="Recent")
    add_events(recent.id, ("open", now - 89 * DAY))
    before, recent_before = summary(pixel.id), summary(recent.id)
    assert before["open_count"] == 4 and before["first_open_at"] == now - 110 * DAY

    assert retention.purge(90, now) == (4, 1)
    assert kinds_left(pixel.id) == ["open", "self", "open"]
    assert summary(pixel.id) == before and summary(recent.id) == recent_before
    body = client.get(f"/api/pixels/{public_id}", headers=auth).get_json()
    assert body["counts"] == {
        "open": 4,
        "prefetch": 1,
        "preview": 0,
        "self": 1,
        "bot": 1,
        "unknown": 0,
        "click": 0,
    }
    assert body["state"] == "opened" and len(body["events"]) == 3
    assert body["first_open_at"] == iso(now - 110 * DAY)
    assert body["delivered_at"] == iso(now - 120 * DAY)
    sign_in(client)
    page = client.get(f"/m/{public_id}").get_data(as_text=True)
    assert 'id="count-open">4<' in page and 'id="count-prefetch">1<' in page
    # A recount from what is left and what was archived says the same.
    ledger.refresh(pixel.id)
    assert summary(pixel.id) == before

    fetch = client.get(
        pixel_path(body["url"]),
        headers={"User-Agent": GMAIL_PROXY},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    assert fetch.headers["X-Openreceipt"] == "recorded: open"
    after_fetch = summary(pixel.id)
    assert after_fetch["open_count"] == 5 and after_fetch["first_open_at"] == now - 110 * DAY
    assert after_fetch["last_open_at"] > now
    ledger.refresh(pixel.id)
    assert summary(pixel.id) == after_fetch


def test_corrections_after_a_purge_still_count_purged_opens(client, auth, database):
    """Marking a remaining open as the sender's own keeps the purged opens and the purged first
    open; marking it back restores the receipt exactly."""
    now = utcnow()
    public_id = mint(client, auth, subject="Contract")["id"]
    pixel = Pixel.get(Pixel.public_id == public_id)
    add_events(
        pixel.id,
        ("prefetch", now - 100 * DAY),
        ("open", now - 99 * DAY),
        ("open", now - 98 * DAY),
        ("open", now - 2 * DAY),
    )
    purged = Event.get(Event.pixel == pixel.id, Event.at == now - 99 * DAY)
    before = summary(pixel.id)
    assert retention.purge(90, now) == (3, 1)
    remaining = Event.get(Event.pixel == pixel.id)

    ledger.correct(remaining, "self")
    marked = summary(pixel.id)
    assert (marked["open_count"], marked["self_count"], marked["prefetch_count"]) == (2, 1, 1)
    assert marked["state"] == "opened" and marked["delivered_at"] == now - 100 * DAY
    assert marked["first_open_at"] == now - 99 * DAY and marked["last_open_at"] == now - 98 * DAY
    assert marked["last_event_at"] == now - 2 * DAY

    answer = client.post(f"/api/events/{remaining.id}/kind", json={"kind": "open"}, headers=auth)
    body = answer.get_json()
    assert answer.status_code == 200 and body["counts"]["open"] == 3 and body["counts"]["self"] == 0
    assert body["first_open_at"] == iso(now - 99 * DAY)
    assert body["last_open_at"] == iso(now - 2 * DAY)
    assert summary(pixel.id) == before
    # A purged event can no longer be corrected.
    gone = client.post(f"/api/events/{purged.id}/kind", json={"kind": "self"}, headers=auth)
    assert gone.status_code == 404 and summary(pixel.id) == before


def test_correcting_the_last_prefetch_when_every_open_was_purged(client, auth, database):
    """With only a prefetch left, recounts keep the archived opens, state and delivery time."""
    now = utcnow()
    public_id = mint(client, auth, subject="Quote")["id"]
    pixel = Pixel.get(Pixel.public_id == public_id)
    add_events(
        pixel.id, ("open", now - 99 * DAY), ("open", now - 95 * DAY), ("prefetch", now - DAY)
    )
    before = summary(pixel.id)
    assert retention.purge(90, now) == (2, 1)
    prefetch = Event.get(Event.pixel == pixel.id)

    ledger.correct(prefetch, "bot")
    marked = summary(pixel.id)
    assert (marked["open_count"], marked["prefetch_count"], marked["bot_count"]) == (2, 0, 1)
    assert marked["state"] == "opened" and marked["delivered_at"] == now - 99 * DAY
    assert marked["first_open_at"] == now - 99 * DAY and marked["last_open_at"] == now - 95 * DAY
    assert marked["last_event_at"] == now - DAY

    body = client.post(
        f"/api/events/{prefetch.id}/kind", json={"kind": "prefetch"}, headers=auth
    ).get_json()
    assert body["counts"] == {
        "open": 2,
        "prefetch": 1,
        "preview": 0,
        "self": 0,
        "bot": 0,
        "unknown": 0,
        "click": 0,
    }
    assert summary(pixel.id) == before


def many_receipts(user, now, count=20):
    """`count` receipts with 15 events each, 11 of them older than 90 days, of mixed kinds."""
    pixels = []
    for n in range(count):
        pixel = minting.mint(user, subject=f"receipt {n}")
        add_events(pixel.id, *[(KINDS[(n + k) % 5], now - (200 - 10 * k) * DAY) for k in range(15)])
        pixels.append(pixel)
    return pixels


def test_purging_again_archives_nothing_twice(user, database):
    now = utcnow()
    pixels = many_receipts(user, now, count=3)
    original = {pixel.id: tallies(pixel.id) for pixel in pixels}
    summaries = {pixel.id: summary(pixel.id) for pixel in pixels}
    assert retention.purge(90, now) == (33, 3)
    archived = {pixel.id: Pixel.get_by_id(pixel.id).archived for pixel in pixels}
    assert retention.purge(90, now) == (0, 0)
    # A later run, with a later cutoff, adds only what has aged since.
    assert retention.purge(90, now + 5 * DAY) == (3, 3)
    for pixel in pixels:
        assert Pixel.get_by_id(pixel.id).archived != archived[pixel.id]
        assert tallies(pixel.id) == original[pixel.id] and len(kinds_left(pixel.id)) == 3
        ledger.refresh(pixel.id)
        assert summary(pixel.id) == summaries[pixel.id]


def test_a_purge_of_more_receipts_than_a_batch_takes_them_all(monkeypatch, user, database):
    """The receipts are purged in transactions of BATCH each (here 3): every batch is done."""
    monkeypatch.setattr(retention, "BATCH", 3)
    now = utcnow()
    pixels = many_receipts(user, now, count=7)
    original = {pixel.id: tallies(pixel.id) for pixel in pixels}
    assert retention.purge(90, now) == (7 * 11, 7)
    for pixel in pixels:
        assert len(kinds_left(pixel.id)) == 4 and tallies(pixel.id) == original[pixel.id]


def before_the_first_lock(monkeypatch, action):
    """Call action(pixel id) once, just before the purge locks the first receipt it works on:
    what another request or run did at that moment."""
    original = retention.locked
    seen = []

    def lock(query, *args, **kwargs):
        if not seen:
            seen.append(query.sql()[1][0])  # the id the query asks for
            action(seen[0])
        return original(query, *args, **kwargs)

    monkeypatch.setattr(retention, "locked", lock)
    return seen


def test_a_receipt_deleted_during_the_purge_does_not_stop_it(monkeypatch, user, database):
    """The receipt the purge comes to first was deleted by its owner just before: the others
    are purged all the same."""
    now = utcnow()
    pixels = many_receipts(user, now, count=4)
    summaries = {pixel.id: summary(pixel.id) for pixel in pixels}
    deleted = before_the_first_lock(
        monkeypatch, lambda pixel_id: Pixel.get_by_id(pixel_id).delete_instance(recursive=True)
    )
    assert retention.purge(90, now) == (3 * 11, 3)
    assert Pixel.get_or_none(Pixel.id == deleted[0]) is None
    for pixel in pixels:
        if pixel.id != deleted[0]:
            assert len(kinds_left(pixel.id)) == 4 and summary(pixel.id) == summaries[pixel.id]


def test_a_receipt_another_run_purged_first_does_not_stop_the_purge(monkeypatch, user, database):
    """Another run (say `openreceipt purge` while a worker's job runs) archived the old events
    of the receipt this purge comes to first, just before: this one finds none there and goes
    on with the others; each event is archived once."""
    now = utcnow()
    cutoff = now - 90 * DAY
    pixels = many_receipts(user, now, count=4)
    original = {pixel.id: tallies(pixel.id) for pixel in pixels}

    def other_run(pixel_id):
        old = list(Event.select().where(Event.pixel == pixel_id, Event.at < cutoff))
        archived = retention.merge(
            Pixel.get_by_id(pixel_id).archived, [(e.kind, 1, e.at, e.at) for e in old]
        )
        Pixel.update(archived=archived).where(Pixel.id == pixel_id).execute()
        Event.delete().where(Event.id.in_([e.id for e in old])).execute()

    before_the_first_lock(monkeypatch, other_run)
    assert retention.purge(90, now) == (3 * 11, 3)
    for pixel in pixels:
        assert len(kinds_left(pixel.id)) == 4 and tallies(pixel.id) == original[pixel.id]


def test_concurrent_purges_archive_each_event_once(app, user, database):
    """Two purges at once (two workers, or the command during the day's run) share the work:
    every old event is deleted and archived exactly once."""
    now = utcnow()
    pixels = many_receipts(user, now)
    original = {pixel.id: tallies(pixel.id) for pixel in pixels}
    summaries = {pixel.id: summary(pixel.id) for pixel in pixels}

    results = together(app, [lambda: retention.purge(90, now)] * 2)
    assert sum(deleted for deleted, _ in results) == 20 * 11
    assert sum(touched for _, touched in results) == 20
    for pixel in pixels:
        assert tallies(pixel.id) == original[pixel.id]
        assert len(kinds_left(pixel.id)) == 4
        assert summary(pixel.id) == summaries[pixel.id]
        ledger.refresh(pixel.id)
        assert summary(pixel.id) == summaries[pixel.id]


def correcting_while_purging(app, pixel_id, flip, trials=40):
    """In each trial 20 more opens become old and are purged while the sender keeps correcting
    the pixel's one recent open: to the other of open and self (`flip`), or to self again and
    again. Returns (opens + own views, the number there should be) as read after each
    correction, and the errors corrections raised."""
    now = utcnow()
    recent = Event.get(Event.pixel == pixel_id).id
    seen, errors = [], []

    def purge(done):
        try:
            return retention.purge(90, now)
        finally:
            done.set()

    def correct(done, should):
        while not done.is_set():
            event = Event.get_by_id(recent)
            try:
                ledger.correct(event, "open" if flip and event.kind == "self" else "self")
            except OperationalError as error:
                errors.append(error)
                continue
            pixel = Pixel.get_by_id(pixel_id)
            seen.append((pixel.open_count + pixel.self_count, should))

    for trial in range(trials):
        add_events(pixel_id, *[("open", now - (100 + trial) * DAY)] * 20)
        pixel = Pixel.get_by_id(pixel_id)
        done = threading.Event()
        should = pixel.open_count + pixel.self_count
        together(app, [functools.partial(purge, done), functools.partial(correct, done, should)])
    return seen, errors


def test_corrections_during_a_purge_count_every_open(app, user, database):
    """A correction made while the day's purge runs still counts the opens being archived."""
    pixel = minting.mint(user)
    add_events(pixel.id, ("open", utcnow() - DAY))
    seen, errors = correcting_while_purging(app, pixel.id, flip=True)
    assert not errors
    assert [(count, should) for count, should in seen if count != should] == []


def test_repeated_corrections_during_a_purge_are_not_refused(app, user, database):
    """Saying again what an event was (a second click) while the purge runs is no error."""
    pixel = minting.mint(user)
    add_events(pixel.id, ("open", utcnow() - DAY))
    _seen, errors = correcting_while_purging(app, pixel.id, flip=False)
    assert errors == []


def test_claim_run_once_a_day(database):
    now = utcnow().replace(microsecond=0)
    assert retention.last_run() is None
    assert retention.claim_run(now)
    assert not retention.claim_run(now + 23 * HOUR)
    assert retention.last_run() == now
    assert retention.claim_run(now + DAY)
    assert not retention.claim_run(now + DAY)
    assert retention.last_run() == now + DAY
    # The command records its run whatever the time, and the next automatic run waits a day.
    assert retention.claim_run(now + DAY + HOUR, force=True)
    assert retention.claim_run(now + DAY + HOUR, force=True)
    assert retention.last_run() == now + DAY + HOUR
    assert not retention.claim_run(now + 2 * DAY)
    assert retention.claim_run(now + 2 * DAY + HOUR)


def test_one_of_many_simultaneous_claims_wins(app, database):
    now = utcnow().replace(microsecond=0)
    assert sorted(together(app, [lambda: retention.claim_run(now)] * 8)) == [False] * 7 + [True]
    assert retention.last_run() == now
    claims = together(app, [lambda: retention.claim_run(now + DAY)] * 8)
    assert sorted(claims) == [False] * 7 + [True]
    assert retention.last_run() == now + DAY


def purges_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention:")]


def test_each_workers_job_claims_the_days_purge_once(settings, caplog):
    """A worker's retention job purges soon after the worker starts, and says in the server's
    log how much it deleted; another worker's job the same day finds the day claimed and deletes
    nothing."""
    caplog.set_level(logging.INFO)
    worker = create_app({**settings, "RETENTION_AUTO": True, "RETENTION_DAYS": 1})
    now = utcnow()
    with worker.app_context():
        pixel = minting.mint(create_user("ada@example.com", "correct horse battery"))
        add_events(pixel.id, ("open", now - 3 * DAY), ("open", now - 2 * DAY), ("open", now - HOUR))
        before = summary(pixel.id)
        assert retention.last_run() is None
    try:
        background.start_all(worker)  # gunicorn's post_worker_init
        with worker.app_context():
            assert wait_for(lambda: kinds_left(pixel.id) == ["open"])
            assert wait_for(lambda: retention.last_run() is not None)
            assert wait_for(lambda: purges_logged(caplog))
    finally:
        background.stop(worker)
    assert retention_threads() == []
    assert purges_logged(caplog) == [
        "retention: deleted 2 events older than 1 days from 1 receipts"
    ]

    with worker.app_context():
        # The run is stamped to the second, after the test began and before now.
        ran = retention.last_run()
        assert now.replace(microsecond=0) <= ran <= utcnow()
        assert summary(pixel.id) == before
        add_events(pixel.id, ("bot", now - 5 * DAY))

    other_worker = create_app({**settings, "RETENTION_AUTO": True, "RETENTION_DAYS": 1})
    claims = []
    original = retention.claim_run
    try:
        retention.claim_run = lambda *args: claims.append(original(*args)) or claims[-1]
        background.start_all(other_worker)
        assert wait_for(lambda: claims)
    finally:
        background.stop(other_worker)
        retention.claim_run = original
    assert claims == [False]
    assert len(purges_logged(caplog)) == 1  # the other worker purged nothing, and said nothing
    with other_worker.app_context():
        assert retention.last_run() == ran
        assert kinds_left(pixel.id) == ["bot", "open"]
    for app in (worker, other_worker):
        app.extensions["openreceipt.database"].close_all()


def test_a_worker_that_stays_up_purges_again_when_the_next_day_is_due(settings, monkeypatch):
    """The job keeps looking (every CHECK_SECONDS, here shortened): a server that runs for days
    purges once a day, not only after it starts."""
    monkeypatch.setattr(retention, "CHECK_SECONDS", 0.05)
    worker = create_app({**settings, "RETENTION_AUTO": True, "RETENTION_DAYS": 1})
    now = utcnow()
    with worker.app_context():
        pixel = minting.mint(create_user("ada@example.com", "correct horse battery"))
        add_events(pixel.id, ("open", now - 3 * DAY), ("open", now - HOUR))
    try:
        background.start_all(worker)
        with worker.app_context():
            assert wait_for(lambda: kinds_left(pixel.id) == ["open"])
            add_events(pixel.id, ("bot", now - 2 * DAY))
            # A day goes by: the last run is now more than a day ago.
            a_day_ago = (utcnow() - DAY - HOUR).isoformat(timespec="seconds")
            Setting.update(value=a_day_ago).where(Setting.name == retention.LAST_RUN).execute()
            assert wait_for(lambda: kinds_left(pixel.id) == ["open"])
            assert tallies(pixel.id) == {"open": 2, "bot": 1}
            assert retention.last_run() > datetime.datetime.fromisoformat(a_day_ago)
    finally:
        background.stop(worker)
        worker.extensions["openreceipt.database"].close_all()


def test_requests_never_start_background_work(settings, client, auth):
    """Not even with every job on: the jobs start from gunicorn's worker hook or
    `openreceipt jobs run`, never from a request (a pixel fetch does its own work only)."""
    app = create_app(
        {**settings, "RETENTION_AUTO": True, "SPOOL_AUTO": True, "NOTIFY_IN_WORKERS": True}
    )
    try:
        pixel = mint(app.test_client(), auth)
        assert app.test_client().get(pixel_path(pixel["url"])).status_code == 200
        assert app.test_client().get("/privacy").status_code == 200
        names = {thread.name for thread in threading.enumerate()}
        assert not {"openreceipt-retention", "openreceipt-spool", "openreceipt-notify"} & names
        assert [job.name for job in background.jobs(app)] == ["retention", "spool", "notify"]
        assert all(job.in_workers for job in background.jobs(app))
    finally:
        close_pool(app)


def test_retention_days_0_keeps_every_event(settings):
    """RETENTION_DAYS 0: the workers run no purge job, and the command deletes nothing."""
    keeper = create_app({**settings, "RETENTION_AUTO": True, "RETENTION_DAYS": 0})
    with keeper.app_context():
        pixel = minting.mint(create_user("ada@example.com", "correct horse battery"))
        add_events(pixel.id, ("open", utcnow() - 1000 * DAY))
    [job] = [job for job in background.jobs(keeper) if job.name == "retention"]
    assert not job.in_workers
    # Run anyway (`openreceipt jobs run` runs the jobs off in the workers), its step says there
    # is nothing more to do, so it waits for its next round rather than spinning.
    assert job.step() is False
    background.start_all(keeper)
    assert retention_threads() == []

    result = CommandLine(keeper).invoke(args=["purge"])
    assert result.exit_code == 0, result.output
    assert "events are kept for ever; nothing deleted" in result.output
    with keeper.app_context():
        assert kinds_left(pixel.id) == ["open"] and retention.last_run() is None
        assert retention.purge(0) == (0, 0) and kinds_left(pixel.id) == ["open"]
    keeper.extensions["openreceipt.database"].close_all()


def test_purge_command(runner, user, database):
    """`openreceipt purge` deletes now, says how much, and counts as the day's run."""
    now = utcnow()
    pixel = minting.mint(user)
    add_events(pixel.id, ("open", now - 100 * DAY), ("prefetch", now - 95 * DAY), ("open", now))
    before = summary(pixel.id)

    result = runner.invoke(args=["purge"])
    assert result.exit_code == 0, result.output
    assert "deleted 2 events older than 90 days from 1 receipts" in result.output
    assert kinds_left(pixel.id) == ["open"] and summary(pixel.id) == before
    assert now.replace(microsecond=0) <= retention.last_run() <= utcnow()
    assert not retention.claim_run()

    again = runner.invoke(args=["purge"])
    assert "deleted 0 events older than 90 days from 0 receipts" in again.output


@pytest.mark.parametrize(("value", "days"), [(None, 90), ("30", 30), (" 7 ", 7), ("0", 0)])
def test_retention_days_setting(monkeypatch, tmp_path, value, days):
    monkeypatch.setenv("OPENRECEIPT_DATA_DIR", str(tmp_path))
    if value is not None:
        monkeypatch.setenv("OPENRECEIPT_RETENTION_DAYS", value)
    config = Config(str(tmp_path))
    load(config, None)
    assert config["RETENTION_DAYS"] == days


@pytest.mark.parametrize("value", ["-1", "1.5", "ninety", "true", "", "1e3"])
def test_invalid_retention_days_stop_start_up(monkeypatch, tmp_path, value):
    monkeypatch.setenv("OPENRECEIPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPENRECEIPT_RETENTION_DAYS", value)
    with pytest.raises(ConfigError, match="OPENRECEIPT_RETENTION_DAYS must be a whole number"):
        load(Config(str(tmp_path)), None)
