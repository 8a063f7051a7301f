"""The pixel's group commit (Recorder.record_together), on SQLite and PostgreSQL: the fetches a
worker's threads bring at the same moment are stored in one transaction, each exactly once and
in order, repeats within one batch folded, and a fetch the database refuses fails alone."""

import threading
import time

from web.judgement.classify import Fetch
from web.pixel import recording
from web.receipts import donottrack, ledger
from web.storage.engine import utcnow
from web.storage.models import Event, Pixel

from .helpers import mint

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
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
    """Record `fetches` from threads of their own while another thread seems to be writing, so
    that they all wait and go into one batch; their outcomes (or errors), in order."""
    recorder = app.extensions["openreceipt"].recorder
    results = [None] * len(fetches)

    def record(number):
        with app.app_context():
            try:
                results[number] = recorder.record_together(fetches[number])
            except Exception as error:  # noqa: BLE001 - the test looks at it
                results[number] = error

    threads = [threading.Thread(target=record, args=(n,)) for n in range(len(fetches))]
    with recorder._waiting_lock:
        recorder._writer = True  # as if another thread were writing: each fetch waits
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(recorder._waiting) < len(fetches):
        assert time.monotonic() < deadline, "the fetches did not all wait"
        time.sleep(0.005)
    # That writer is done: it wakes the first waiting thread, which writes them all.
    with recorder._waiting_lock:
        recorder._waiting[0].wake()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    return results


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
    # The twins wait in whichever order their threads came: one is stored, the other folded.
    assert sorted(outcomes[:2]) == ["not recorded: repeat of a fetch seconds ago", "recorded: open"]
    assert outcomes[2] == "recorded: open"
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == 2


def test_a_fetch_the_database_refuses_fails_alone(app, client, auth, database):
    """PostgreSQL refuses a city longer than its column: that fetch's thread gets the error
    (the pixel logs it and answers its GIF), the others of its batch are stored. SQLite stores
    text of any length: there, all three are."""
    pixel = mint(client, auth)["id"]
    outcomes = together(
        app, [fetch_of(pixel, 1), fetch_of(pixel, 2, city="x" * 5000), fetch_of(pixel, 3)]
    )
    assert outcomes[0] == outcomes[2] == "recorded: open"
    refused = app.config["DATABASE_URL"].startswith("postgresql")
    assert isinstance(outcomes[1], Exception) if refused else outcomes[1] == "recorded: open"
    with app.app_context():
        assert Pixel.get(Pixel.public_id == pixel).open_count == (2 if refused else 3)


def test_more_fetches_than_a_batch_are_written_in_turns_and_each_thread_answered(
    app, client, auth, database, monkeypatch
):
    """More fetches at once than a batch holds: the writer writes batches until its own fetch is
    stored, then hands the writing on; every thread returns, and every fetch is stored once."""
    monkeypatch.setattr(recording, "MOST_TOGETHER", 4)
    pixels = [mint(client, auth, subject=f"#{n}")["id"] for n in range(3)]
    fetches = [fetch_of(pixels[n % 3], n) for n in range(14)]
    assert together(app, fetches) == ["recorded: open"] * 14
    recorder = app.extensions["openreceipt"].recorder
    assert recorder._waiting == [] and recorder._writer is False
    with app.app_context():
        assert Event.select().count() == 14


def screened(app, fetch):
    """The fetch judged as the pixel judges it before the write lock: (verdicts, judgement)."""
    recorder = app.extensions["openreceipt"].recorder
    verdicts = {}
    outcome, judged = recorder._screen(fetch, verdicts)
    assert outcome is None and judged is not None
    return verdicts, judged


def write_screened(app, fetch, verdicts, judged):
    return app.extensions["openreceipt"].recorder._write([(fetch, verdicts, judged)], True)[0]


def test_a_twin_stored_after_the_judgement_makes_the_fetch_a_repeat(app, client, auth, database):
    """Judged before the write lock, a fetch finds its twin stored meanwhile (another worker's):
    the store's own check sees it, and the fetch is a repeat, not a second event."""
    pixel = mint(client, auth)["id"]
    fetch = fetch_of(pixel, 7, GMAIL_PROXY)
    with app.app_context():
        verdicts, judged = screened(app, fetch)
        recorder = app.extensions["openreceipt"].recorder
        assert recorder.record_together(fetch_of(pixel, 7, GMAIL_PROXY)) == "recorded: open"
        assert (
            write_screened(app, fetch, verdicts, judged)
            == "not recorded: repeat of a fetch seconds ago"
        )
        assert Event.select().count() == 1
        assert Pixel.get(Pixel.public_id == pixel).open_count == 1


def test_facts_that_change_after_the_judgement_are_judged_again(app, client, auth, database):
    """The sender's own Gmail tab shows the message between the judgement and the store: the
    Gmail-proxy fetch judged an open is the sender's own view after all."""
    pixel = mint(client, auth)["id"]
    fetch = fetch_of(pixel, 7, GMAIL_PROXY)
    with app.app_context():
        verdicts, judged = screened(app, fetch)
        assert judged[1].kind == "open"
        ledger.self_view(Pixel.get(Pixel.public_id == pixel), at=fetch.at)
        assert write_screened(app, fetch, verdicts, judged) == "recorded: self"
        stored = Pixel.get(Pixel.public_id == pixel)
        assert (stored.open_count, stored.self_count) == (0, 1)


def test_a_recipient_listed_after_the_judgement_stops_the_fetch(app, client, auth, user, database):
    pixel = mint(client, auth, recipients=["erin@erase.example"])["id"]
    fetch = fetch_of(pixel, 7)
    with app.app_context():
        verdicts, judged = screened(app, fetch)
        donottrack.add(user, ["erin@erase.example"])
        assert (
            write_screened(app, fetch, verdicts, judged)
            == "not recorded: a recipient is on the do-not-track list"
        )
        assert Event.select().count() == 0
