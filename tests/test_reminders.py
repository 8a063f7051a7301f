"""Reminders ("tell me if it is not opened within N days"), on SQLite and PostgreSQL, on a
controlled clock: off unless asked for, due N days after sending, queued once for every channel,
cancelled by an open (before it is queued: nothing queued; after: the notice is skipped), by a
do-not-track stop, and never for a message that shows no sign of having been sent; what the
notice says; the API, the receipt's page and the settings' default."""

import datetime

import pytest

from web.accounts import new_token
from web.notifications import channels, reminders
from web.notifications.delivery import deliver_due
from web.storage.engine import utcnow
from web.storage.models import Notice, NotifyChannel, Pixel, User
from web.vocabulary import Scope

from .helpers import csrf_token, mint, pixel_path

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
DAY = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)


@pytest.fixture
def settings(settings):
    return {**settings, "NOTIFY_ALLOW": "127.0.0.0/8"}


def sent(client, auth, **body):
    """A receipt minted with `body` and marked sent now; its row."""
    pixel = mint(client, auth, **body)
    assert client.post(f"/api/pixels/{pixel['id']}/sent", json={}, headers=auth).status_code == 200
    return Pixel.get(Pixel.public_id == pixel["id"]), pixel


def queue_due(app, at):
    with app.app_context():
        return reminders.queue_due(at)


def deliver(app, at):
    with app.app_context():
        return deliver_due(app, now=at)


def test_no_reminder_unless_asked_for(client, auth, database):
    pixel, body = sent(client, auth, subject="Invoice 42")
    assert (pixel.remind_after_days, pixel.remind_at) == (None, None)
    assert client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()["reminder"] is None


def test_not_opened_in_time_reminds_once_on_every_channel(
    app, client, auth, user, receiver, database
):
    NotifyChannel.create(user=user, kind="webhook", target=receiver.url + "/a", secret="whsec_a")
    NotifyChannel.create(user=user, kind="webhook", target=receiver.url + "/b", secret="whsec_b")
    pixel, body = sent(client, auth, subject="Invoice 42", remind_after_days=3)
    assert body["reminder"]["after_days"] == 3
    assert pixel.remind_at == pixel.sent_at + 3 * DAY
    due = pixel.remind_at
    assert queue_due(app, due - SECOND) == 0 and Notice.select().count() == 0
    assert queue_due(app, due) == 1
    assert queue_due(app, due + DAY) == 0  # once
    assert [n.reason for n in Notice.select()] == ["not-opened", "not-opened"]
    assert deliver(app, due)["sent"] == 2
    paths = sorted(request.path for request in receiver.received)
    assert paths == ["/a", "/b"]
    data = receiver.received[0].json()
    assert data["type"] == "not-opened" and data["fetch"] is None
    assert data["receipt"]["id"] == body["id"]
    assert data["title"] == "Not opened yet: Invoice 42"
    assert "“Invoice 42” has not been opened in 3 days (sent on " in data["text"]
    assert deliver(app, due + DAY)["sent"] == 0
    assert Pixel.get_by_id(pixel.id).reminded_at == due
    shown = client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()["reminder"]
    assert shown == {"after_days": 3, "due_at": shown["due_at"], "reminded_at": shown["due_at"]}


def test_an_open_before_the_reminder_cancels_it(app, client, auth, user, database):
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    pixel, body = sent(client, auth, remind_after_days=2)
    opened = client.get(
        pixel_path(body["url"]),
        headers={"User-Agent": THUNDERBIRD},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    assert opened.headers["X-Openreceipt"] == "recorded: open"
    assert queue_due(app, pixel.remind_at + DAY) == 0
    assert [notice.reason for notice in Notice.select()] == ["open"]  # the open's own
    assert Pixel.get_by_id(pixel.id).remind_at is None  # not looked at again


def test_an_open_after_the_reminder_was_queued_skips_its_notice(
    app, client, auth, user, receiver, database
):
    NotifyChannel.create(user=user, kind="webhook", target=receiver.url, secret="whsec_a")
    pixel, body = sent(client, auth, remind_after_days=1)
    assert queue_due(app, pixel.remind_at) == 1
    client.get(
        pixel_path(body["url"]),
        headers={"User-Agent": THUNDERBIRD},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    counts = deliver(app, utcnow() + DAY)
    reminder = Notice.get(Notice.reason == "not-opened")
    assert (reminder.state, reminder.last_error) == ("skipped", "it was opened since")
    assert counts["skipped"] >= 1
    assert all(request.json()["type"] != "not-opened" for request in receiver.received)


def test_a_stopped_receipt_is_not_reminded_of(app, client, auth, user, database):
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    pixel, _ = sent(client, auth, remind_after_days=1)
    Pixel.update(tracking_stopped_at=utcnow()).where(Pixel.id == pixel.id).execute()
    assert queue_due(app, pixel.remind_at) == 0 and Notice.select().count() == 0


def test_a_message_never_sent_is_not_reminded_of_until_marked_sent(
    app, client, auth, user, database
):
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    body = mint(client, auth, remind_after_days=2)
    pixel = Pixel.get(Pixel.public_id == body["id"])
    assert pixel.remind_at == pixel.created_at + 2 * DAY  # until it is known to have been sent
    assert queue_due(app, pixel.remind_at) == 0  # a draft left unsent: no unread message
    assert Notice.select().count() == 0 and Pixel.get_by_id(pixel.id).remind_at is None
    client.post(f"/api/pixels/{body['id']}/sent", json={}, headers=auth)
    pixel = Pixel.get_by_id(pixel.id)
    assert pixel.remind_at == pixel.sent_at + 2 * DAY
    assert queue_due(app, pixel.remind_at) == 1 and Notice.select().count() == 1


def test_a_reminder_says_what_the_providers_let_the_receipt_see(client, auth, database):
    pixel, _ = sent(client, auth, subject="Lease notice", remind_after_days=1)
    Pixel.update(mail_providers="apple", delivered_at=pixel.sent_at + SECOND).where(
        Pixel.id == pixel.id
    ).execute()
    message = channels.compose("not-opened", Pixel.get_by_id(pixel.id), None, "https://r.example")
    assert message.title == "Not opened yet: Lease notice"
    assert "has not been opened in 1 day (sent on" in message.text
    assert " It was delivered on " in message.text
    assert "Delivered to Apple iCloud: Mail Privacy Protection downloads every image" in (
        message.text
    )
    assert message.link == f"https://r.example/m/{pixel.public_id}"


@pytest.mark.parametrize("days", [0, 91, -1, "3", True, 2.5, "x"])
def test_the_api_refuses_days_out_of_range(client, auth, days, database):
    response = client.post("/api/pixels", json={"remind_after_days": days}, headers=auth)
    assert response.status_code == 400 and "remind_after_days" in response.get_json()["error"]
    assert Pixel.select().count() == 0


def test_the_api_sets_changes_and_removes_a_reminder(app, client, auth, database):
    pixel, body = sent(client, auth)
    path = f"/api/pixels/{body['id']}/reminder"
    set_ = client.post(path, json={"after_days": 5}, headers=auth)
    assert set_.status_code == 200 and set_.get_json()["reminder"]["after_days"] == 5
    assert Pixel.get_by_id(pixel.id).remind_at == pixel.sent_at + 5 * DAY
    assert client.post(path, json={"after_days": 0}, headers=auth).status_code == 400
    assert client.post(path, json={}, headers=auth).status_code == 400
    removed = client.post(path, json={"after_days": None}, headers=auth)
    assert removed.status_code == 200 and removed.get_json()["reminder"] is None
    assert Pixel.get_by_id(pixel.id).remind_at is None
    client.post(path, json={"after_days": 1}, headers=auth)
    assert queue_due(app, pixel.sent_at + DAY) == 1
    assert client.post(path, json={"after_days": 4}, headers=auth).status_code == 409


def test_a_bookmarklet_key_sets_a_reminder_and_learns_nothing_more(
    app, client, auth, user, database
):
    with app.app_context():
        key = new_token(user, "laptop", Scope.BOOKMARKLET)[1]
    body = mint(client, auth)
    answer = client.post(
        f"/api/pixels/{body['id']}/reminder",
        json={"after_days": 3},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200 and answer.get_json() == {"id": body["id"], "after_days": 3}


def test_the_settings_default_goes_to_new_receipts(signed_in, client, auth, user, database):
    page = client.get("/settings")
    form = {"opens": "first", "quiet": "30", "remind": "4", "csrf_token": csrf_token(page)}
    assert client.post("/settings/notify", data=form).status_code == 302
    assert User.get_by_id(user.id).remind_after_days == 4
    assert mint(client, auth)["reminder"]["after_days"] == 4
    # Asked for none, it gets none.
    assert mint(client, auth, remind_after_days=None)["reminder"] is None
    refused = client.post("/settings/notify", data={**form, "remind": "365"})
    assert "The reminder is a number of days from 1 to 90" in refused.get_data(as_text=True)
    client.post("/settings/notify", data={**form, "remind": ""})
    assert User.get_by_id(user.id).remind_after_days is None
    assert mint(client, auth)["reminder"] is None


def test_the_receipts_page_sets_and_shows_a_reminder(signed_in, client, auth, database):
    pixel, body = sent(client, auth)
    page = client.get(f"/m/{body['id']}")
    assert 'id="remind-days"' in page.get_data(as_text=True)
    answer = client.post(
        f"/m/{body['id']}/reminder", data={"days": "2", "csrf_token": csrf_token(page)}
    )
    assert answer.status_code == 302
    assert Pixel.get_by_id(pixel.id).remind_after_days == 2
    shown = client.get(f"/m/{body['id']}").get_data(as_text=True)
    assert "You will be told if it is not opened within 2 days." in shown
    assert "Due " in shown
    refused = client.post(
        f"/m/{body['id']}/reminder",
        data={"days": "abc", "csrf_token": csrf_token(page)},
        follow_redirects=True,
    )
    assert "Not changed: days must be a whole number from 1 to 90" in refused.get_data(as_text=True)
    assert Pixel.get_by_id(pixel.id).remind_after_days == 2


def test_the_longest_reminder_is_90_days_and_a_refusal_says_why(client, auth, database):
    assert mint(client, auth, remind_after_days=90)["reminder"]["after_days"] == 90
    refused = client.post("/api/pixels", json={"remind_after_days": 91}, headers=auth)
    assert "days must be a whole number from 1 to 90" in refused.get_json()["error"]


def test_a_reminder_goes_to_the_owners_channels_only(app, client, auth, other_auth, user, database):
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    other = User.get(User.email == "grace@example.com")
    NotifyChannel.create(user=other, kind="webhook", target="http://127.0.0.1:9/", secret="t")
    pixel, _ = sent(client, auth, remind_after_days=1)
    assert queue_due(app, pixel.remind_at) == 1
    [notice] = Notice.select()
    assert notice.channel.user_id == user.id and notice.pixel_id == pixel.id


def test_setting_or_restarting_a_reminder_changes_that_receipt_only(client, auth, database):
    first, first_body = sent(client, auth, remind_after_days=2)
    second = Pixel.get(Pixel.public_id == mint(client, auth, remind_after_days=5)["id"])
    path = f"/api/pixels/{first_body['id']}/reminder"
    assert client.post(path, json={"after_days": 3}, headers=auth).status_code == 200
    assert Pixel.get_by_id(first.id).remind_at == first.sent_at + 3 * DAY
    assert (Pixel.get_by_id(second.id).remind_after_days, Pixel.get_by_id(second.id).remind_at) == (
        5,
        second.created_at + 5 * DAY,
    )
    # Marking the second sent moves its reminder, and only its.
    client.post(f"/api/pixels/{second.public_id}/sent", json={}, headers=auth)
    second = Pixel.get_by_id(second.id)
    assert second.remind_at == second.sent_at + 5 * DAY
    assert Pixel.get_by_id(first.id).remind_at == first.sent_at + 3 * DAY


def test_each_round_reminds_the_oldest_due_first_and_at_most_a_batch(
    app, client, auth, user, monkeypatch, database
):
    """Receipts without a reminder, ones already reminded of and ones not due yet take no place
    in a round: every due one is reminded of (or let go, when opened meanwhile), the longest
    overdue first, BATCH (here 2) a round."""
    monkeypatch.setattr(reminders, "BATCH", 2)
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    now = utcnow()
    for _ in range(3):
        sent(client, auth)  # no reminder
    for _ in range(2):
        done, _ = sent(client, auth, remind_after_days=1)
        Pixel.update(remind_at=now - 5 * DAY, reminded_at=now - 4 * DAY).where(
            Pixel.id == done.id
        ).execute()
    opened, opened_body = sent(client, auth, remind_after_days=1)
    client.get(
        pixel_path(opened_body["url"]),
        headers={"User-Agent": THUNDERBIRD},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    later, _ = sent(client, auth, remind_after_days=10)
    due = []
    for days_ago in (1, 3, 2):
        pixel, _ = sent(client, auth, remind_after_days=1)
        Pixel.update(remind_at=now - days_ago * DAY).where(Pixel.id == pixel.id).execute()
        due.append(pixel.id)
    Pixel.update(remind_at=now - 6 * DAY).where(Pixel.id == opened.id).execute()

    def reminded():
        return [n.pixel_id for n in Notice.select().where(Notice.reason == "not-opened")]

    # The longest overdue: the opened one (nothing to remind of: it is let go), then the one
    # three days overdue.
    assert queue_due(app, now) == 1
    assert Pixel.get_by_id(opened.id).remind_at is None
    assert reminded() == [due[1]]
    assert queue_due(app, now) == 2
    assert sorted(reminded()) == sorted(due)
    assert queue_due(app, now) == 0
    # The one not due yet keeps its reminder.
    assert Pixel.get_by_id(later.id).remind_at == later.sent_at + 10 * DAY
    assert queue_due(app, later.remind_at) == 1 and len(reminded()) == 4


def before_the_first_lock(monkeypatch, action):
    """Call action(pixel id) once, just before queue_due locks the first receipt it reminds
    of: what another worker, or the owner, did at that moment."""
    original = reminders.locked

    def lock(query, *args, **kwargs):
        if not seen:
            seen.append(query.sql()[1][0])  # the id the query asks for
            action(seen[0])
        return original(query, *args, **kwargs)

    seen = []
    monkeypatch.setattr(reminders, "locked", lock)
    return seen


def test_a_reminder_moved_later_just_before_its_turn_waits(
    app, client, auth, user, monkeypatch, database
):
    """The owner moves a due reminder a week later while the round is on its way to it: it is
    not sent now, and the round goes on with the others."""
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    pixels = [sent(client, auth, remind_after_days=1)[0] for _ in range(3)]
    at = max(pixel.remind_at for pixel in pixels)

    def moved(pixel_id):
        reminders.set_days(Pixel.get_by_id(pixel_id), 7)

    seen = before_the_first_lock(monkeypatch, moved)
    assert queue_due(app, at) == 2
    assert sorted(n.pixel_id for n in Notice.select()) == sorted(
        pixel.id for pixel in pixels if pixel.id != seen[0]
    )
    waiting = Pixel.get_by_id(seen[0])
    assert waiting.reminded_at is None and waiting.remind_at == waiting.sent_at + 7 * DAY


def test_a_reminder_another_worker_sent_just_before_is_not_sent_again(
    app, client, auth, user, monkeypatch, database
):
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    pixels = [sent(client, auth, remind_after_days=1)[0] for _ in range(2)]
    at = max(pixel.remind_at for pixel in pixels)
    before_the_first_lock(monkeypatch, lambda _pixel_id: reminders.queue_due(at))
    assert queue_due(app, at) == 0  # the other worker reminded of both
    assert sorted(n.pixel_id for n in Notice.select()) == sorted(p.id for p in pixels)
