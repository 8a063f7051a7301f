"""The pixel's batches (web/pixel/recording.py), on SQLite and PostgreSQL: the fetches a
worker's writer stores at once go in one transaction, each exactly once and in order, repeats
within one batch folded; what is judged before the write lock is judged again under it where
the facts changed. (The writer's queue and journal: test_writer.py.)"""

import datetime
import logging
import threading
import uuid
from dataclasses import replace

import pytest
from peewee import OperationalError

from web.judgement.classify import Fetch, Verdict
from web.notifications import policy
from web.pixel import recording
from web.receipts import donottrack, ledger
from web.storage.engine import utcnow
from web.storage.models import Event, Notice, NotifyChannel, Pixel, User

from .helpers import held, mint, pixel_path

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
# Apple Mail Privacy Protection's fetch on delivery (the bare "Mozilla/5.0" of docs/evidence.md)
APPLE_PROXY = "Mozilla/5.0"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


def fetch_of(public_id, network, user_agent=THUNDERBIRD, city="London"):
    return Fetch(
        user_agent=user_agent,
        ip=f"81.2.{network}.0",
        public_id=public_id,
        at=utcnow(),
        browser="0" * 32,
        country="GB",
        city=city,
    )


def together(app, fetches):
    """Store `fetches` in one batch, as the worker's writer stores the fetches queued at one
    moment (each with its key); their outcomes, in order."""
    keyed = [replace(fetch, key=uuid.uuid4().hex) for fetch in fetches]
    with app.app_context():
        return app.extensions["openreceipt"].recorder.record_queued(keyed)


def test_fetches_waiting_together_are_stored_once_each(app, client, auth, database):
    pixels = [mint(client, auth, subject=f"#{n}")["id"] for n in range(3)]
    fetches = [fetch_of(pixels[n % 3], n) for n in range(12)]
    assert together(app, fetches) == ["recorded: open"] * 12
    with app.app_context():
        assert Event.select().count() == 12
        counts = {p.public_id: p.open_count for p in Pixel.select()}
        assert counts == dict.fromkeys(pixels, 4)
        assert {p.state for p in Pixel.select()} == {"opened"}


def test_a_repeat_within_one_batch_is_folded(app, client, auth, database):
    pixel = mint(client, auth)["id"]
    twin = fetch_of(pixel, 7, GMAIL_PROXY)
    outcomes = together(app, [twin, fetch_of(pixel, 7, GMAIL_PROXY), fetch_of(pixel, 8)])
    assert outcomes[:2] == ["recorded: open", "not recorded: repeat of a fetch seconds ago"]
    assert outcomes[2] == "recorded: open"
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2


def test_a_replay_waits_for_a_writer_the_pixel_would_not_wait_for(app, client, auth, database):
    """The spool's replay has no mail client waiting: it waits for another writer as long as the
    database's own timeouts allow, where the pixel gives up after PIXEL_WAIT_MS (SQLite) or
    PIXEL_ROW_WAIT_MS (PostgreSQL) and spools."""
    pixel = mint(client, auth)["id"]
    fetch = replace(fetch_of(pixel, 1), key="1" * 32)
    recorder = app.extensions["openreceipt"].recorder
    with held(app, pixel) as release:
        # Let go well after the pixel's longest wait (250 ms), well before the replay's (2 s).
        timer = threading.Timer(0.75, release)
        timer.start()
        with app.app_context():
            assert recorder.record_replayed([fetch]) == ["recorded: open"]
        timer.join(10)
        assert not timer.is_alive()
    with app.app_context():
        assert Event.get().spool_key == "1" * 32


def test_a_gmail_open_is_noticed_after_gmails_hold_a_mail_programs_at_once(
    app, client, auth, user, database
):
    """An open through Gmail's proxy may still turn out to be the sender's own view: its notice
    is due GMAIL_HOLD after the fetch. A mail program's open is due when it is queued."""
    gmail, thunderbird = mint(client, auth)["id"], mint(client, auth)["id"]
    with app.app_context():
        NotifyChannel.create(
            user=user, kind="webhook", target="http://127.0.0.1:9/hook", secret="s"
        )
    fetches = [fetch_of(gmail, 1, GMAIL_PROXY), fetch_of(thunderbird, 2)]
    assert together(app, fetches) == ["recorded: open"] * 2
    with app.app_context():
        due = {n.pixel.public_id: (n.created_at, n.due_at) for n in Notice.select()}
    assert due[gmail][1] == fetches[0].at + policy.GMAIL_HOLD
    assert due[thunderbird][1] == due[thunderbird][0]


def test_a_batch_nobody_wrote_to_meanwhile_is_read_once(app, client, auth, database, caplog):
    """The batch's read before the write lock still holds under it when nothing changed since:
    PostgreSQL tells by the versions of the receipts' rows, SQLite by reading again only the
    events stored since (none) and the receipts' facts (the same). Either way, it is judged
    once."""
    pixel = mint(client, auth)["id"]
    recorder = app.extensions["openreceipt"].recorder
    with caplog.at_level(logging.DEBUG, logger="peewee"), app.app_context():
        assert recorder.record_now([fetch_of(pixel, 1)]) == ["recorded: open"]
    statements = [r.getMessage() for r in caplog.records]
    assert len([s for s in statements if "LEFT JOIN" in s]) == 1
    postgresql = app.config["DATABASE_URL"].startswith("postgresql")
    assert len([s for s in statements if "WHERE e.id >" in s]) == (0 if postgresql else 1)


def test_a_batch_whose_receipts_only_counted_others_meanwhile_is_not_judged_again(
    app, client, auth, database, caplog
):
    """Between the screen and the write lock another fetch of the same receipt, from another
    network, is stored (on PostgreSQL the receipt's row has a new version): the facts are the
    same and nothing came from the batch's networks, so what the screen judged still holds,
    and it is not read again."""
    pixel = mint(client, auth)["id"]
    recorder = app.extensions["openreceipt"].recorder
    with app.app_context():
        pending = screened(app, fetch_of(pixel, 7))
        assert recorder.record_now([fetch_of(pixel, 8)]) == ["recorded: open"]
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            assert write_screened(app, pending) == "recorded: open"
        reads = [r for r in caplog.records if "LEFT JOIN" in r.getMessage()]
        assert reads == []
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2


def screened(app, fetch):
    """The fetch judged as the pixel judges it before the write lock, still to be stored."""
    (pending,) = app.extensions["openreceipt"].recorder._screen([fetch])
    assert pending.outcome is None and pending.judged is not None
    return pending


def write_screened(app, pending):
    return app.extensions["openreceipt"].recorder._commit([pending], recording.SHORT_WAITS)[0]


def test_a_twin_stored_after_the_judgement_makes_the_fetch_a_repeat(app, client, auth, database):
    """Judged before the write lock, a fetch finds its twin stored meanwhile (another worker's):
    the store's own check sees it, and the fetch is a repeat, not a second event."""
    pixel = mint(client, auth)["id"]
    fetch = fetch_of(pixel, 7, GMAIL_PROXY)
    with app.app_context():
        pending = screened(app, fetch)
        recorder = app.extensions["openreceipt"].recorder
        assert recorder.record_now([fetch_of(pixel, 7, GMAIL_PROXY)]) == ["recorded: open"]
        assert write_screened(app, pending) == "not recorded: repeat of a fetch seconds ago"
        assert Event.select().count() == 1
        assert Pixel.get(Pixel.public_id == pixel).open_count == 1


def test_postgresql_writes_a_plan_that_holds_with_its_lock_in_one_message(
    app, client, auth, database
):
    """PostgreSQL: a plan whose judgement still holds once the receipts' rows are locked goes
    to the server with the lock and the COMMIT as one message and is stored, even when another
    client on the same network fetched the receipt meanwhile; one whose twin (the same client
    on the same network) was stored meanwhile writes nothing that way (and is judged again
    under the lock: a repeat); one that finds the row held past its wait fails as a whole and
    leaves the connection fit for the next. SQLite writes every plan under its lock, statement
    by statement."""
    pixel = mint(client, auth)["id"]
    recorder = app.extensions["openreceipt"].recorder
    postgresql = app.config["DATABASE_URL"].startswith("postgresql")
    with app.app_context():
        sql = recording._sql()
        first = screened(app, fetch_of(pixel, 7))
        assert recorder.record_now([fetch_of(pixel, 7, GMAIL_PROXY)]) == ["recorded: open"]
        assert recorder._wrote_at_once(sql, [first], [pixel], recording.LONG_WAITS) is postgresql
        assert Event.select().count() == (2 if postgresql else 1)

        twin = screened(app, fetch_of(pixel, 8, GMAIL_PROXY))
        assert recorder.record_now([fetch_of(pixel, 8, GMAIL_PROXY)]) == ["recorded: open"]
        stored = Event.select().count()
        assert recorder._wrote_at_once(sql, [twin], [pixel], recording.LONG_WAITS) is False
        assert Event.select().count() == stored
        assert write_screened(app, twin) == "not recorded: repeat of a fetch seconds ago"

        late = screened(app, fetch_of(pixel, 9))
        if postgresql:
            with held(app, pixel), pytest.raises(OperationalError, match="lock timeout"):
                recorder._wrote_at_once(sql, [late], [pixel], recording.SHORT_WAITS)
        assert write_screened(app, late) == "recorded: open"
        assert Event.select().count() == stored + 1
        assert Pixel.get(Pixel.public_id == pixel).open_count == stored + 1


def test_a_twin_without_a_network_is_found_as_one_with_a_network_is(app, client, auth, database):
    """A fetch without a network (no address came with it: a socket with no proxy in front)
    has a twin in an event without one: stored meanwhile, it makes the fetch a repeat, and
    PostgreSQL's one-message write (which compares networks with =, and a missing one with IS
    NULL) writes nothing. An event without a network is no twin of a fetch from one."""
    pixel = mint(client, auth)["id"]
    recorder = app.extensions["openreceipt"].recorder
    postgresql = app.config["DATABASE_URL"].startswith("postgresql")
    nowhere = replace(fetch_of(pixel, 7, GMAIL_PROXY), ip=None)
    with app.app_context():
        sql = recording._sql()
        first = screened(app, nowhere)
        assert recorder.record_now([replace(nowhere, at=utcnow())]) == ["recorded: open"]
        assert recorder._wrote_at_once(sql, [first], [pixel], recording.LONG_WAITS) is False
        assert write_screened(app, first) == "not recorded: repeat of a fetch seconds ago"

        somewhere = screened(app, fetch_of(pixel, 7, GMAIL_PROXY))
        wrote = recorder._wrote_at_once(sql, [somewhere], [pixel], recording.LONG_WAITS)
        assert wrote is postgresql
        if not postgresql:
            assert write_screened(app, somewhere) == "recorded: open"
        assert sorted(str(event.ip) for event in Event.select()) == ["81.2.7.0", "None"]


def test_facts_that_change_after_the_judgement_are_judged_again(app, client, auth, database):
    """The sender's own Gmail tab shows the message between the judgement and the store: the
    Gmail-proxy fetch judged an open is the sender's own view after all."""
    pixel = mint(client, auth)["id"]
    fetch = fetch_of(pixel, 7, GMAIL_PROXY)
    with app.app_context():
        pending = screened(app, fetch)
        assert pending.judged[1].kind == "open"
        ledger.self_view(Pixel.get(Pixel.public_id == pixel), at=fetch.at)
        assert write_screened(app, pending) == "recorded: self"
        stored = Pixel.get(Pixel.public_id == pixel)
        assert (stored.open_count, stored.self_count) == (0, 1)


def test_a_recipient_listed_after_the_judgement_stops_the_fetch(app, client, auth, user, database):
    pixel = mint(client, auth, recipients=["erin@erase.example"])["id"]
    fetch = fetch_of(pixel, 7)
    with app.app_context():
        pending = screened(app, fetch)
        donottrack.add(user, ["erin@erase.example"])
        assert (
            write_screened(app, pending) == "not recorded: a recipient is on the do-not-track list"
        )
        assert Event.select().count() == 0


def test_a_receipt_deleted_after_the_judgement_gets_no_event(app, client, auth, database):
    """The receipt is deleted between the judgement and the store: no event, no error (its
    row is gone, so it cannot be locked, and the fetch is judged again on what is there)."""
    pixel = mint(client, auth)["id"]
    fetch = fetch_of(pixel, 7)
    with app.app_context():
        pending = screened(app, fetch)
        Pixel.delete().where(Pixel.public_id == pixel).execute()
        assert write_screened(app, pending) == "not recorded: no such pixel"
        assert Event.select().count() == 0


def test_one_batch_counts_each_receipt_once_for_all_its_events(app, client, auth, database):
    """Many events of one receipt in one batch: every one counted, the first and last open, the
    delivery and the latest event the outermost of the batch's times (which arrive in any
    order), and the state the furthest any of them reached."""
    pixel = mint(client, auth)["id"]
    other = mint(client, auth, subject="other")["id"]
    start = utcnow()
    at = [start + datetime.timedelta(seconds=s) for s in (3, 1, 5, 2, 4)]
    fetches = [
        replace(fetch_of(pixel, 1), at=at[0]),
        replace(fetch_of(pixel, 2), at=at[1]),
        replace(fetch_of(pixel, 3, GMAIL_PROXY), at=at[2]),
        replace(fetch_of(pixel, 4, APPLE_PROXY), at=at[3]),  # a delivery, not an open
        replace(fetch_of(other, 5, APPLE_PROXY), at=at[4]),
    ]
    assert together(app, fetches) == ["recorded: open"] * 3 + ["recorded: prefetch"] * 2
    with app.app_context():
        stored = Pixel.get(Pixel.public_id == pixel)
        assert (stored.open_count, stored.prefetch_count, stored.bot_count) == (3, 1, 0)
        assert (stored.first_open_at, stored.last_open_at) == (at[1], at[2])
        assert (stored.delivered_at, stored.last_event_at) == (at[1], at[2])
        assert stored.activity_at == at[2] and stored.state == "opened"
        only_delivered = Pixel.get(Pixel.public_id == other)
        assert (only_delivered.open_count, only_delivered.prefetch_count) == (0, 1)
        assert only_delivered.first_open_at is None and only_delivered.last_open_at is None
        assert (only_delivered.delivered_at, only_delivered.state) == (at[4], "delivered")
        assert Event.select().count() == 5


def test_a_later_batch_moves_times_outwards_only(app, client, auth, database):
    """A batch whose events are older than what is counted (a replay of the spool) adds its
    counts, and moves the first open and the delivery earlier, the last ones never back."""
    pixel = mint(client, auth)["id"]
    now = utcnow()
    assert together(app, [replace(fetch_of(pixel, 1), at=now)]) == ["recorded: open"]
    older = [replace(fetch_of(pixel, n), at=now - datetime.timedelta(minutes=n)) for n in (2, 3)]
    assert together(app, older) == ["recorded: open"] * 2
    with app.app_context():
        stored = Pixel.get(Pixel.public_id == pixel)
        assert stored.open_count == 3
        assert stored.first_open_at == now - datetime.timedelta(minutes=3)
        assert stored.delivered_at == now - datetime.timedelta(minutes=3)
        assert stored.last_open_at == stored.last_event_at == stored.activity_at == now


def test_opens_of_one_receipt_in_one_batch_notify_once(app, client, auth, user, database):
    """Two first opens of one receipt in the same batch, its owner notified of the first open
    only (the default): the second is counted before it asks, and queues no notice."""
    pixel = mint(client, auth)["id"]
    with app.app_context():
        NotifyChannel.create(
            user=user, kind="webhook", target="http://127.0.0.1:9/hook", secret="s"
        )
    assert together(app, [fetch_of(pixel, 1), fetch_of(pixel, 2)]) == ["recorded: open"] * 2
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2
        (notice,) = Notice.select()
        assert (
            notice.reason == "open"
            and notice.event_id == Event.select().order_by(Event.id).first().id
        )


def test_the_repeat_window_holds_ten_seconds_either_way_and_no_more(app, client, auth, database):
    """The same fetcher within 10 s of an event, before or after it, exactly 10 s included, is
    a repeat; a microsecond further is an event of its own."""
    pixel = mint(client, auth)["id"]
    now = utcnow()
    ten, tick = datetime.timedelta(seconds=10), datetime.timedelta(microseconds=1)

    def at(moment):
        return together(app, [replace(fetch_of(pixel, 1), at=moment)])[0]

    assert at(now) == "recorded: open"
    assert at(now + ten) == "not recorded: repeat of a fetch seconds ago"
    assert at(now - ten) == "not recorded: repeat of a fetch seconds ago"
    assert at(now + ten + tick) == "recorded: open"
    assert at(now - ten - tick) == "recorded: open"
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 3


def test_a_batch_moves_the_state_to_the_furthest_any_of_its_events_reached(
    app, client, auth, database
):
    """The sender's own browser (which shows the receipt is in the message) and a machine's
    fetch on delivery in one batch: the receipt is delivered, the further of the two states,
    whatever their names' order."""
    pixel = mint(client, auth)["id"]
    with app.app_context():
        Pixel.update(mint_fingerprint="0" * 32).where(Pixel.public_id == pixel).execute()
    senders = fetch_of(pixel, 1)  # the minting browser's fingerprint: the sender's own view
    delivery = replace(fetch_of(pixel, 2, APPLE_PROXY), browser="1" * 32)
    outcomes = together(app, [senders, delivery])
    assert outcomes[1] == "recorded: prefetch" and outcomes[0] in {
        "recorded: preview",
        "recorded: self",
    }
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).state == "delivered"


def test_a_proxys_fetch_is_stored_with_the_mail_service_as_its_client(
    app, client, auth, user, database
):
    """A mail provider's proxy is named by the service it serves (Gmail), not by the user
    agent it sends; so on a receipt whose owner is notified, stored event by event, too."""
    plain, notified = mint(client, auth)["id"], None
    with app.app_context():
        other = User.create(email="bo@example.com", password_hash="x")
        NotifyChannel.create(user=other, kind="webhook", target="http://127.0.0.1:9/h", secret="s")
        notified = Pixel.create(public_id="notifiedpixel001", owner=other).public_id
    fetches = [fetch_of(plain, 1, GMAIL_PROXY), fetch_of(notified, 2, GMAIL_PROXY)]
    assert together(app, fetches) == ["recorded: open"] * 2
    with app.app_context():
        assert [event.client for event in Event.select().order_by(Event.id)] == ["Gmail"] * 2


def test_a_reason_longer_than_its_column_is_cut_to_fit(app, client, auth, database, monkeypatch):
    """A verdict's reason can name a program from a bot list: however long, the event keeps
    its first 200 characters (the column's size, which PostgreSQL enforces)."""
    pixel = mint(client, auth)["id"]
    judge = app.extensions["openreceipt"].recorder.judge
    monkeypatch.setattr(judge, "verdict", lambda *_: Verdict("bot", "automated", "x" * 300))
    assert together(app, [fetch_of(pixel, 1)]) == ["recorded: bot"]
    with app.app_context():
        assert Event.get().reason == "x" * 200


def test_a_mail_programs_fetch_is_stored_with_its_name_and_system(app, client, auth, database):
    """A fetch by the reader's own mail program is named from its user agent; one with no user
    agent has no name (never a made-up one)."""
    pixel = mint(client, auth)["id"]
    fetches = [fetch_of(pixel, 1), fetch_of(pixel, 2, user_agent="")]
    assert together(app, fetches) == ["recorded: open", "recorded: bot"]
    with app.app_context():
        names = [event.client for event in Event.select().order_by(Event.id)]
        assert names == ["Thunderbird 128, Linux", None]


def test_a_spooled_line_found_twice_in_one_replay_is_stored_once(app, client, auth, database):
    """The same spooled fetch twice in one replay's group (a spool file restored from a backup
    over lines already there): its key makes it one event, the second already replayed."""
    pixel = mint(client, auth)["id"]
    fetch = replace(fetch_of(pixel, 1), key="2" * 32)
    other = replace(fetch_of(pixel, 2), key="3" * 32)
    with app.app_context():
        outcomes = app.extensions["openreceipt"].recorder.record_replayed([fetch, other, fetch])
        assert outcomes == ["recorded: open", "recorded: open", recording.REPLAYED]
        assert sorted(e.spool_key for e in Event.select()) == ["2" * 32, "3" * 32]
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2


def test_the_pixel_spools_rather_than_wait_out_a_long_write(app, client, auth, database):
    """Another writer holds the receipt for seconds: the pixel gives up after its short
    wait and spools the fetch (a mail client is waiting for the image), where a plain write would
    have waited for the writer and recorded it."""
    pixel = mint(client, auth)
    with held(app, pixel["id"]) as release:
        timer = threading.Timer(3, release)
        timer.start()
        response = client.get(
            pixel_path(pixel["url"]),
            headers={"User-Agent": THUNDERBIRD},
            environ_base={"REMOTE_ADDR": "81.2.1.9"},
        )
        assert response.headers["X-Openreceipt"] == "spooled: database unavailable"
        timer.join(10)
        assert not timer.is_alive()


def test_a_receipt_whose_owner_is_notified_leaves_the_batchs_others_stored(
    app, client, auth, other_auth, user, database
):
    """A batch with a receipt whose owner has a channel (its events stored one by one, each asked
    whether it notifies) and another's receipt (stored with the batch): both are stored."""
    notified, other = mint(client, auth)["id"], mint(client, other_auth)["id"]
    with app.app_context():
        NotifyChannel.create(
            user=user, kind="webhook", target="http://127.0.0.1:9/hook", secret="s"
        )
    # In this order (a replay's group keeps its order, where waiting threads may not).
    fetches = [fetch_of(notified, 1), fetch_of(other, 2), fetch_of(notified, 3)]
    fetches = [replace(fetch, key=f"{n:032x}") for n, fetch in enumerate(fetches)]
    with app.app_context():
        outcomes = app.extensions["openreceipt"].recorder.record_replayed(fetches)
        assert outcomes == ["recorded: open"] * 3
        counts = {p.public_id: p.open_count for p in Pixel.select()}
        assert counts == {notified: 2, other: 1}
        assert Event.select().count() == 3
