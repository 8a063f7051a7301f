"""Notifications: what queues a notice (in the event's own transaction), what it says, how each
channel delivers it to a real local receiver, retries, giving up, and exactly-once delivery
with several deliverers at once. Every database test runs on SQLite and PostgreSQL."""

import datetime
import email.header
import hashlib
import hmac
import ipaddress
import json
import re
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import trustme

from web.config import ConfigError, smtp_server
from web.judgement.clicks import SWEEP
from web.notifications import channels, delivery, outbox, policy
from web.notifications.delivery import deliver_due
from web.storage.engine import close_pool, utcnow
from web.storage.models import Event, Notice, NotifyChannel, Pixel, Setting, User

from .helpers import csrf_token, mint, pixel_path, sign_in
from .receivers import Receiver, start_mail_server

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
APPLE_MPP = "Mozilla/5.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
LONDON = "81.2.69.160"  # in the test GeoIP database
# A Gmail-proxy open is held GMAIL_HOLD before it is due: deliveries look a little ahead.
SOON = datetime.timedelta(seconds=20)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
MINUTE = datetime.timedelta(minutes=1)


@pytest.fixture
def settings(settings):
    """The receivers here listen on loopback, which notices may reach only when the operator
    allows it (tests/test_security_outbound.py checks that they may not otherwise)."""
    return {**settings, "NOTIFY_ALLOW": "127.0.0.0/8"}


# --- the rules, without a database ------------------------------------------------------------


@pytest.mark.parametrize(
    "opens, open_count, expected",
    [
        ("first", 0, True),
        ("first", 1, False),
        ("every", 0, True),
        ("every", 7, True),
        ("off", 0, False),
    ],
)
def test_which_opens_notify(opens, open_count, expected):
    assert policy.wanted("open", opens, False, open_count, False) is expected


@pytest.mark.parametrize(
    "delivered, was_delivered, expected",
    [(True, False, True), (True, True, False), (False, False, False), (1, False, True)],
)
def test_which_deliveries_notify(delivered, was_delivered, expected):
    assert policy.wanted("delivered", "every", delivered, 0, was_delivered) is expected


def test_quiet_period():
    now = datetime.datetime(2026, 11, 25, 12, 0)
    assert policy.past_quiet(None, 30, now)
    assert not policy.past_quiet(now - datetime.timedelta(minutes=29), 30, now)
    assert policy.past_quiet(now - datetime.timedelta(minutes=30), 30, now)
    assert policy.past_quiet(now, 0, now)


def test_gmail_proxy_opens_are_held_until_a_self_view_could_have_come():
    now = datetime.datetime(2026, 11, 25, 12, 0)
    assert policy.hold("gmail-proxy", now, now) == policy.GMAIL_HOLD
    assert policy.GMAIL_HOLD > datetime.timedelta(seconds=5)  # the beacon's reach back
    assert policy.hold("direct", now, now) == datetime.timedelta(0)
    # A fetch replayed from the spool long after is not held again.
    assert policy.hold("gmail-proxy", now - datetime.timedelta(hours=1), now).total_seconds() == 0


def test_pauses_double_up_to_an_hour():
    pauses = [delivery.pause(n, 30).total_seconds() for n in range(1, 12)]
    assert pauses[:4] == [30, 60, 120, 240]
    assert max(pauses) == 3600 and pauses == sorted(pauses)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("smtp://mail.example.com", ("starttls", "mail.example.com", 587, None, None)),
        (
            "smtps://a%40b.com:p%3Ass@mail.example.com",
            ("ssl", "mail.example.com", 465, "a@b.com", "p:ss"),
        ),
        ("smtp+plain://127.0.0.1:2525", ("none", "127.0.0.1", 2525, None, None)),
    ],
)
def test_smtp_urls(url, expected):
    server = smtp_server(url)
    assert (server.security, server.host, server.port, server.username, server.password) == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SMTP_URL": "mail.example.com"}, "OPENRECEIPT_SMTP_URL must look like smtp://"),
        ({"SMTP_URL": "smtp://h:99999"}, "OPENRECEIPT_SMTP_URL is not a URL"),
        ({"SMTP_URL": "smtp://h", "PUBLIC_URL": None}, "set OPENRECEIPT_SMTP_FROM"),
        ({"SMTP_FROM": "nobody"}, "OPENRECEIPT_SMTP_FROM must be an email address"),
        ({"NOTIFY_RETRY_SECONDS": "0"}, "OPENRECEIPT_NOTIFY_RETRY_SECONDS must be at least 1"),
        ({"NOTIFY_IN_WORKERS": "maybe"}, "OPENRECEIPT_NOTIFY_IN_WORKERS must be on or off"),
    ],
)
def test_notification_settings_are_checked(tmp_path, overrides, message):
    from web import create_app

    with pytest.raises(ConfigError) as error:
        create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off", **overrides})
    assert message in error.value.message


def test_the_sender_address_is_found(tmp_path):
    from web import create_app

    base = {"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off", "NOTIFY_IN_WORKERS": False}
    for overrides, sender in [
        ({"SMTP_URL": "smtp://me%40example.org:pw@h"}, "me@example.org"),
        (
            {"SMTP_URL": "smtp://h", "PUBLIC_URL": "https://r.example.net"},
            "openreceipt@r.example.net",
        ),
        (
            {"SMTP_URL": "smtp://h", "SMTP_FROM": "Receipts <r@example.com>"},
            "Receipts <r@example.com>",
        ),
    ]:
        app = create_app({**base, **overrides})
        assert app.config["SMTP_FROM"] == sender
        app.extensions["openreceipt.database"].close()


# --- queueing: the pixel writes the outbox ----------------------------------------------------


def open_pixel(client, pixel, user_agent=GMAIL_PROXY, address=LONDON):
    response = client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": user_agent},
        environ_base={"REMOTE_ADDR": address},
    )
    assert response.status_code == 200
    return response.headers["X-Openreceipt"]


def add_channel(user, kind="webhook", target="http://127.0.0.1:9/hook", secret="whsec_test"):
    return NotifyChannel.create(user=user, kind=kind, target=target, secret=secret)


def choose(user, **choices):
    User.update(**choices).where(User.id == user.id).execute()


def notices(**where):
    query = Notice.select().order_by(Notice.id)
    for name, value in where.items():
        query = query.where(getattr(Notice, name) == value)
    return list(query)


def test_first_open_queues_one_notice_per_channel(client, auth, user, database):
    hook, push = add_channel(user), add_channel(user, "push", "http://127.0.0.1:9/topic", None)
    pixel = mint(client, auth, subject="Invoice 42")
    assert open_pixel(client, pixel) == "recorded: open"
    event = Event.get()
    queued = notices()
    assert {notice.channel_id for notice in queued} == {hook.id, push.id}
    for notice in queued:
        assert (notice.reason, notice.state, notice.attempts, notice.event_id) == (
            "open",
            "pending",
            0,
            event.id,
        )
        # Held until the sender's own Gmail tab could have said it was them.
        assert notice.due_at - notice.created_at >= datetime.timedelta(seconds=7)
    # A second open (another network, minutes later) is no first open.
    assert open_pixel(client, pixel, address="81.2.70.1") == "recorded: open"
    assert len(notices()) == 2


def test_no_notice_for_previews_self_views_bots_or_prefetches(client, auth, user, database):
    add_channel(user)
    pixel = client.post(
        "/api/pixels", json={"subject": "s"}, headers={**auth, "User-Agent": THUNDERBIRD}
    ).get_json()
    assert open_pixel(client, pixel, THUNDERBIRD, "127.0.0.1") == "recorded: preview"
    assert open_pixel(client, pixel, "curl/8.5.0", "192.0.2.1") == "recorded: bot"
    assert open_pixel(client, pixel, APPLE_MPP, "17.58.1.2") == "recorded: prefetch"
    client.post(f"/api/pixels/{pixel['id']}/self-view", headers=auth)
    assert open_pixel(client, pixel, GMAIL_PROXY, "66.249.84.10") == "recorded: self"
    assert notices() == []


def test_deliveries_notify_when_chosen_and_opens_still_do(client, auth, user, database):
    add_channel(user)
    choose(user, notify_delivered=True)
    pixel = mint(client, auth)
    assert open_pixel(client, pixel, APPLE_MPP, "17.58.1.2") == "recorded: prefetch"
    assert open_pixel(client, pixel, APPLE_MPP, "17.58.9.9") == "recorded: prefetch"
    assert [notice.reason for notice in notices()] == ["delivered"]
    # Not held: no self-view can turn a prefetch into the sender's own.
    assert notices()[0].due_at <= utcnow()
    assert open_pixel(client, pixel) == "recorded: open"
    assert [notice.reason for notice in notices()] == ["delivered", "open"]


def test_every_open_within_the_quiet_period_is_one_notice(client, auth, user, database):
    add_channel(user)
    choose(user, notify_opens="every", notify_quiet_minutes=30)
    pixel = mint(client, auth)
    for n in range(4):
        assert open_pixel(client, pixel, address=f"81.2.{70 + n}.1") == "recorded: open"
    assert len(notices()) == 1
    # A notice from before the quiet period does not keep the next one back.
    Notice.update(created_at=utcnow() - datetime.timedelta(minutes=31)).execute()
    open_pixel(client, pixel, address="81.2.90.1")
    assert len(notices()) == 2
    choose(user, notify_quiet_minutes=0)
    open_pixel(client, pixel, address="81.2.91.1")
    open_pixel(client, pixel, address="81.2.92.1")
    assert len(notices()) == 4


def test_opens_off_queues_nothing_and_other_users_channels_are_not_used(
    client, auth, other_auth, user, database
):
    other = User.get(User.email == "grace@example.com")
    add_channel(other)
    choose(user, notify_opens="off")
    add_channel(user)
    pixel = mint(client, auth)
    open_pixel(client, pixel)
    assert notices() == []


def test_the_notice_is_written_with_its_event_or_not_at_all(app, client, auth, user, database):
    """The outbox row is part of the event's transaction: when it cannot be written, the event
    is not stored either (the fetch waits in the spool), and the replay stores both."""
    from web.pixel import spool

    add_channel(user)
    pixel = mint(client, auth)
    database.execute_sql("ALTER TABLE notice RENAME TO notice_away")
    try:
        assert open_pixel(client, pixel) == "spooled: database unavailable"
        assert Event.select().count() == 0
        assert Pixel.get().open_count == 0
    finally:
        database.execute_sql("ALTER TABLE notice_away RENAME TO notice")
    assert spool.replay(app)["recorded"] == 1
    [notice] = notices()
    assert notice.event_id == Event.get().id and Pixel.get().open_count == 1


# --- delivery ---------------------------------------------------------------------------------


def deliver(app, at=None):
    with app.app_context():
        return deliver_due(app, now=at or utcnow() + SOON)


def test_webhook_carries_the_notice_signed(app, client, auth, user, receiver, database):
    hook = add_channel(user, target=receiver.url + "/hook", secret="whsec_abc")
    pixel = mint(client, auth, subject="Invoice 42", label="ACME invoice")
    open_pixel(client, pixel)
    assert deliver(app, utcnow()) == {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}  # held
    assert deliver(app) == {"sent": 1, "retry": 0, "failed": 0, "skipped": 0}
    [request] = receiver.received
    notice = Notice.get()
    assert (notice.state, notice.attempts, notice.claim is not None) == ("sent", 1, True)
    assert notice.sent_at is not None and notice.last_error is None

    expected = hmac.new(
        b"whsec_abc",
        request.headers["X-Openreceipt-Timestamp"].encode() + b"." + request.body,
        hashlib.sha256,
    ).hexdigest()
    assert request.headers["X-Openreceipt-Signature"] == f"sha256={expected}"
    assert request.headers["X-Openreceipt-Delivery"] == str(notice.id)
    assert request.path == "/hook" and request.headers["Content-Type"].startswith(
        "application/json"
    )
    body = request.json()
    assert body["id"] == notice.id and body["type"] == "opened"
    assert body["title"] == "Opened: ACME invoice"
    assert body["receipt"] == {
        "id": pixel["id"],
        "label": "ACME invoice",
        "subject": "Invoice 42",
        "url": f"https://receipts.example.com/m/{pixel['id']}",
    }
    assert body["fetch"]["city"] == "London" and body["fetch"]["country"] == "GB"
    assert body["fetch"]["kind"] == "open" and body["fetch"]["source"] == "gmail-proxy"
    assert "in London, GB" in body["text"] and body["fetch"]["client"] in body["text"]
    # Never an address: neither the raw one nor the masked network.
    everything = request.body.decode() + str(request.headers)
    assert "81.2.69" not in everything and hook.secret not in everything
    # Sent once: the next round finds nothing.
    assert sum(deliver(app).values()) == 0 and len(receiver.received) == 1


def test_a_forged_signature_does_not_verify(app, client, auth, user, receiver, database):
    """What a receiver checks: the signature covers the timestamp and every byte of the body."""
    add_channel(user, target=receiver.url, secret="whsec_abc")
    open_pixel(client, mint(client, auth))
    deliver(app)
    [request] = receiver.received
    stamp, sent = (
        request.headers["X-Openreceipt-Timestamp"],
        request.headers["X-Openreceipt-Signature"],
    )
    assert channels.signature("whsec_abc", stamp, request.body) == sent
    assert channels.signature("whsec_abc", stamp, request.body + b" ") != sent
    assert channels.signature("whsec_abc", str(int(stamp) + 1), request.body) != sent
    assert channels.signature("whsec_other", stamp, request.body) != sent


def test_push_is_ntfy_style(app, client, auth, user, receiver, database):
    add_channel(user, "push", receiver.url + "/my-topic", "tk_secret")
    open_pixel(client, mint(client, auth, subject="Rechnung für März"))
    assert deliver(app)["sent"] == 1
    [request] = receiver.received
    assert request.path == "/my-topic"
    title = request.headers["Title"]
    assert title.isascii()  # RFC 2047 encoded words, as ntfy reads them
    decoded = "".join(
        part.decode(charset) if isinstance(part, bytes) else part
        for part, charset in email.header.decode_header(title)
    )
    assert decoded == "Opened: Rechnung für März"
    assert request.headers["Authorization"] == "Bearer tk_secret"
    assert request.headers["Click"].startswith("https://receipts.example.com/m/")
    text = request.body.decode()
    assert text.startswith("“Rechnung für März” was opened on ") and "London, GB" in text


@pytest.fixture(scope="module")
def certificate_authority(tmp_path_factory):
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.fixture
def mail_server(request, certificate_authority, monkeypatch):
    """A real SMTP server; the app trusts the test CA the way an operator trusts a private one:
    through SSL_CERT_FILE."""
    authority, path = certificate_authority
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    server = start_mail_server(
        authority.issue_cert("127.0.0.1"), getattr(request, "param", "starttls")
    )
    yield server
    server.stop()


def smtp_settings(settings, server, scheme="smtp"):
    return {
        **settings,
        "SMTP_URL": f"{scheme}://notices:s3cret@127.0.0.1:{server.port}",
        "SMTP_FROM": "Receipts <receipts@example.com>",
    }


@contextmanager
def mail_app(settings, server, target, scheme="smtp"):
    """An app that sends through `server`, with Ada's account and an email channel to `target`;
    yields (app, client, Ada's API auth header)."""
    from web import create_app
    from web.accounts import create_user, new_token

    app = create_app(smtp_settings(settings, server, scheme))
    try:
        with app.app_context():
            user = create_user("ada@example.com", "correct horse battery")
            auth = {"Authorization": f"Bearer {new_token(user)[1]}"}
            add_channel(user, "email", target, None)
        yield app, app.test_client(), auth
    finally:
        app.extensions["openreceipt.database"].close_all()


@pytest.mark.parametrize(
    "mail_server, scheme", [("starttls", "smtp"), ("ssl", "smtps")], indirect=["mail_server"]
)
def test_email_through_the_operators_mail_server(settings, mail_server, scheme):
    with mail_app(settings, mail_server, "ada@example.com", scheme) as (app, client, auth):
        open_pixel(client, mint(client, auth, subject="Lease notice"), THUNDERBIRD)
        assert deliver(app)["sent"] == 1
    assert mail_server.logins == ["notices"]
    [(sender, recipients, message)] = mail_server.messages
    assert sender == "receipts@example.com" and recipients == ["ada@example.com"]
    assert message["Subject"] == "Opened: Lease notice"
    assert message["To"] == "ada@example.com" and message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    assert "“Lease notice” was opened on " in body and "London, GB" in body
    assert "https://receipts.example.com/m/" in body and "81.2.69" not in message.as_string()


@pytest.mark.parametrize("mail_server", ["none"], indirect=True)
def test_smtp_url_without_starttls_on_offer_is_not_sent_in_the_clear(settings, mail_server):
    from web import create_app
    from web.storage.engine import db

    app = create_app(smtp_settings(settings, mail_server))
    try:
        with app.app_context():
            channel = NotifyChannel(kind="email", target="ada@example.com")
            problem = delivery.send_test(channel, app.config)
            db.close()
    finally:
        app.extensions["openreceipt.database"].close_all()
    assert "does not offer STARTTLS" in problem
    assert mail_server.messages == [] and mail_server.logins == []


def test_email_to_a_refused_address_is_given_up_at_once(settings, mail_server):
    with mail_app(settings, mail_server, "ada@refused.example") as (app, client, auth):
        open_pixel(client, mint(client, auth))
        assert deliver(app)["failed"] == 1
        with app.app_context():
            notice = Notice.get()
            assert notice.state == "failed" and "550" in notice.last_error


def test_retries_after_the_receiver_was_down(app, client, auth, user, database):
    receiver = Receiver()  # not started yet: nothing listens on its port
    add_channel(user, target=receiver.url)
    open_pixel(client, mint(client, auth))
    first = utcnow() + SOON
    assert deliver(app, first)["retry"] == 1
    notice = Notice.get()
    assert notice.state == "pending" and notice.attempts == 1 and notice.claim is None
    assert notice.last_error == "could not connect"
    assert notice.due_at == first + datetime.timedelta(seconds=30)
    # Not before its pause is over: then a second failure waits twice as long.
    assert sum(deliver(app, first + datetime.timedelta(seconds=29)).values()) == 0
    second = first + datetime.timedelta(seconds=30)
    assert deliver(app, second)["retry"] == 1
    assert Notice.get().due_at == second + datetime.timedelta(seconds=60)

    receiver.start()
    try:
        assert deliver(app, second + datetime.timedelta(seconds=60))["sent"] == 1
    finally:
        receiver.stop()
    notice = Notice.get()
    assert (notice.state, notice.attempts, notice.last_error) == ("sent", 3, None)
    assert len(receiver.received) == 1


def test_server_errors_are_retried_and_refusals_are_not(app, client, auth, user, database):
    receiver = Receiver(answers=[503, 429, 200]).start()
    try:
        add_channel(user, target=receiver.url)
        open_pixel(client, mint(client, auth))
        at = utcnow() + SOON
        assert deliver(app, at)["retry"] == 1
        assert "503" in Notice.get().last_error
        assert deliver(app, at + datetime.timedelta(minutes=1))["retry"] == 1
        assert deliver(app, at + datetime.timedelta(minutes=3))["sent"] == 1

        receiver.answers = [404]
        open_pixel(client, mint(client, auth))
        assert deliver(app)["failed"] == 1
        assert Notice.get(Notice.state == "failed").last_error == "refused: HTTP 404"
    finally:
        receiver.stop()


def test_given_up_after_the_bounded_time_and_shown_in_settings(app, client, auth, user, database):
    add_channel(user, target=Receiver().url + "/down")
    open_pixel(client, mint(client, auth, label="Contract"))
    at = utcnow() + SOON
    assert deliver(app, at)["retry"] == 1
    # Still tried while younger than NOTIFY_GIVE_UP_HOURS (24)...
    assert deliver(app, at + datetime.timedelta(hours=23))["retry"] == 1
    # ...and given up at the first failure after.
    assert deliver(app, at + datetime.timedelta(hours=24, minutes=1))["failed"] == 1
    assert sum(deliver(app, at + datetime.timedelta(days=3)).values()) == 0
    notice = Notice.get()
    assert notice.state == "failed" and notice.attempts == 3

    sign_in(client)
    page = client.get("/settings").get_data(as_text=True)
    assert "Notices that could not be delivered" in page
    assert "Contract" in page and "1 given up" in page
    assert "could not connect" in page


def test_a_gmail_open_that_was_the_sender_sends_nothing(
    app, client, auth, user, receiver, database
):
    """The sender's Gmail tab shows the pixel (a Gmail-proxy fetch); the bookmarklet's beacon
    comes a moment later and makes it `self`: the held notice is skipped, not sent."""
    add_channel(user, target=receiver.url)
    pixel = mint(client, auth)
    assert open_pixel(client, pixel, GMAIL_PROXY, "66.249.84.10") == "recorded: open"
    beacon = client.post(f"/api/pixels/{pixel['id']}/self-view", headers=auth)
    assert beacon.get_json()["reclassified"] == 1
    assert deliver(app) == {"sent": 0, "retry": 0, "failed": 0, "skipped": 1}
    notice = Notice.get()
    assert notice.state == "skipped" and "judged otherwise" in notice.last_error
    assert receiver.received == []
    # A real first open later still gets its notice: the skipped one keeps no quiet period.
    assert open_pixel(client, pixel, THUNDERBIRD) == "recorded: open"
    assert deliver(app)["sent"] == 1 and len(receiver.received) == 1


def test_deleting_the_receipt_or_the_channel_drops_its_notices(client, auth, user, database):
    hook = add_channel(user)
    first, second = mint(client, auth), mint(client, auth)
    open_pixel(client, first)
    open_pixel(client, second)
    assert len(notices()) == 2
    Pixel.get(Pixel.public_id == first["id"]).delete_instance(recursive=True)
    assert len(notices()) == 1
    hook.delete_instance(recursive=True)
    assert notices() == []


def test_several_deliverers_at_once_send_each_notice_once(app, client, auth, user, database):
    """Four threads, each with its own connection, deliver the same 30 notices at the same time
    to a slow receiver: every notice arrives exactly once and is marked sent once."""
    receiver = Receiver(delay=0.02).start()
    try:
        add_channel(user, target=receiver.url)
        for _ in range(30):
            open_pixel(client, mint(client, auth))
        at = utcnow() + SOON
        results, start = [], threading.Barrier(4)

        def deliverer():
            start.wait()
            with app.app_context():
                while True:
                    counts = deliver_due(app, now=at, limit=5)
                    results.append(counts)
                    if (
                        not any(counts.values())
                        and not Notice.select()
                        .where(Notice.state == "pending", Notice.due_at <= at)
                        .exists()
                    ):
                        break

        threads = [threading.Thread(target=deliverer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
    finally:
        receiver.stop()
    ids = [request.json()["id"] for request in receiver.received]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert sum(counts["sent"] for counts in results) == 30
    assert {(n.state, n.attempts) for n in notices()} == {("sent", 1)}


def test_a_stale_claim_cannot_overwrite_what_another_deliverer_did(
    app, client, auth, user, database
):
    """A deliverer whose lease ran out (it hung) and a second one that took the notice over:
    the first one's late result is not recorded over the second one's."""
    add_channel(user)
    open_pixel(client, mint(client, auth))
    at = utcnow() + SOON
    notice = Notice.get()
    stale = outbox.claim(at)
    assert stale.notice_id == notice.id
    assert outbox.claim(at) is None  # taken: nothing else is due
    assert outbox.claim(at + outbox.LEASE - datetime.timedelta(seconds=1)) is None
    later = at + outbox.LEASE + datetime.timedelta(seconds=1)
    fresh = outbox.claim(later)
    assert fresh.token != stale.token and Notice.get().attempts == 2
    fresh.sent()
    stale.failed("the first deliverer's late result")  # its claim was taken over: no effect
    assert (Notice.get().state, Notice.get().last_error) == ("sent", None)


def test_the_oldest_due_notice_is_claimed_first(app, client, auth, user, database):
    add_channel(user)
    for _ in range(3):
        open_pixel(client, mint(client, auth), THUNDERBIRD)
    first, second, third = notices()
    Notice.update(due_at=utcnow() - datetime.timedelta(minutes=5)).where(
        Notice.id == third.id
    ).execute()
    Notice.update(due_at=utcnow() + datetime.timedelta(hours=1)).where(
        Notice.id == first.id
    ).execute()
    now = utcnow()
    assert [outbox.claim(now).notice_id for _ in range(2)] == [third.id, second.id]
    assert outbox.claim(now) is None


# --- settings ---------------------------------------------------------------------------------


def post_form(client, path, **fields):
    page = client.get("/settings")
    return client.post(path, data={**fields, "csrf_token": csrf_token(page)}, follow_redirects=True)


def test_settings_add_channels_and_choose_events(signed_in, database):
    client = signed_in
    page = client.get("/settings").get_data(as_text=True)
    assert 'id="notifications"' in page and "No channel yet" in page
    assert "the operator has not set up a mail server" in page  # no SMTP_URL in these tests

    page = post_form(client, "/settings/channels", kind="push", target="ftp://x").get_data(
        as_text=True
    )
    assert "Nothing was added: the address must be an http(s) URL" in page
    page = post_form(client, "/settings/channels", kind="email", target="").get_data(as_text=True)
    assert "need the operator to set OPENRECEIPT_SMTP_URL" in page
    page = post_form(
        client, "/settings/channels", kind="webhook", target="https://u:p@hooks.example.com/x"
    ).get_data(as_text=True)
    assert "put no password in the URL" in page
    assert NotifyChannel.select().count() == 0

    post_form(
        client, "/settings/channels", kind="push", target="https://ntfy.example/t0p", token="tk_1"
    )
    page = post_form(
        client, "/settings/channels", kind="webhook", target="https://hooks.example.com/in"
    ).get_data(as_text=True)
    hook = NotifyChannel.get(NotifyChannel.kind == "webhook")
    push = NotifyChannel.get(NotifyChannel.kind == "push")
    assert hook.secret.startswith("whsec_") and hook.secret in page
    assert push.secret == "tk_1" and "tk_1" not in page  # the push token is not shown again
    assert "Send a test notification" in page

    page = post_form(client, "/settings/notify", opens="every", delivered="on", quiet="5")
    assert "Notification choices saved." in page.get_data(as_text=True)
    saved = User.get()
    assert (saved.notify_opens, saved.notify_delivered, saved.notify_quiet_minutes) == (
        "every",
        True,
        5,
    )
    page = post_form(client, "/settings/notify", opens="sometimes", quiet="5").get_data(
        as_text=True
    )
    assert "Choose when to be told of opens" in page
    page = post_form(client, "/settings/notify", opens="first", quiet="-1").get_data(as_text=True)
    assert "The quiet period is a number of minutes" in page
    assert User.get().notify_opens == "every"

    page = post_form(client, f"/settings/channels/{push.id}/delete").get_data(as_text=True)
    assert "Removed: push notices" in page and NotifyChannel.select().count() == 1


def test_send_a_test_notification(signed_in, user, receiver, database):
    client = signed_in
    hook = add_channel(user, target=receiver.url + "/hook", secret="whsec_t")
    page = post_form(client, f"/settings/channels/{hook.id}/test").get_data(as_text=True)
    assert f"A test notification went to {receiver.url}/hook" in page
    [request] = receiver.received
    assert request.json()["type"] == "test"
    assert (
        channels.signature("whsec_t", request.headers["X-Openreceipt-Timestamp"], request.body)
        == (request.headers["X-Openreceipt-Signature"])
    )
    down = add_channel(user, "push", Receiver().url + "/topic", None)
    # The next test at once, not one turn later (tests/test_security_outbound.py has turns).
    Setting.delete().where(Setting.name.startswith(delivery.TEST_TURN)).execute()
    page = post_form(client, f"/settings/channels/{down.id}/test").get_data(as_text=True)
    assert "The test notification to" in page and "failed: could not connect" in page
    assert Notice.select().count() == 0  # tests are not queued


def readme_webhook_example():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return json.loads(re.search(r"```json\n(\{.*?\})\n```", readme, re.S).group(1))


def test_a_test_notification_has_the_shape_of_a_real_one(signed_in, user, receiver, database):
    """A receiver can be written against the test: the same fields as a real notice (the
    README's example), a receipt whose fields are null, no fetch, signed, and a delivery id of
    its own, new at every test."""
    example = readme_webhook_example()
    hook = add_channel(user, target=receiver.url + "/hook", secret="whsec_t")
    for _ in range(2):
        Setting.delete().where(Setting.name.startswith(delivery.TEST_TURN)).execute()
        post_form(signed_in, f"/settings/channels/{hook.id}/test")
    first, second = receiver.received
    body = first.json()
    assert sorted(body) == sorted(example)
    assert body["type"] == "test" and body["id"] is None and body["fetch"] is None
    assert body["title"] == "openreceipt: test notification" and "test" in body["text"]
    assert sorted(body["receipt"]) == sorted(example["receipt"])
    assert set(body["receipt"].values()) == {None}
    deliveries = [request.headers[channels.DELIVERY_HEADER] for request in (first, second)]
    assert all(delivery_id.startswith("test-") for delivery_id in deliveries)
    assert deliveries[0] != deliveries[1]
    timestamp = first.headers["X-Openreceipt-Timestamp"]
    assert (
        channels.signature("whsec_t", timestamp, first.body)
        == (first.headers["X-Openreceipt-Signature"])
    )


def test_a_tests_result_is_shown_where_the_page_lands_and_on_its_channel(
    signed_in, user, receiver, database
):
    client = signed_in
    hook = add_channel(user, target=receiver.url + "/hook")
    down = add_channel(user, "push", Receiver().url + "/topic", None)
    untested = add_channel(user, target=receiver.url + "/other")
    token = csrf_token(client.get("/settings"))
    pressed = client.post(f"/settings/channels/{hook.id}/test", data={"csrf_token": token})
    assert pressed.status_code == 302 and pressed.headers["Location"].endswith("#notifications")
    page = client.get(pressed.headers["Location"]).get_data(as_text=True)
    top, section = page.split('id="notifications"')
    said = f"A test notification went to {receiver.url}/hook."
    assert said in section and said not in top  # where the page jumps to, not above it

    def row(page, channel):
        return page.split(f'id="channel-{channel.id}"')[1].split("</tr>")[0]

    assert "Test sent at " in row(page, hook) and "No notice sent yet" not in row(page, hook)
    assert "No notice sent yet." in row(page, untested) and "Test" not in row(page, untested)
    Setting.delete().where(Setting.name.startswith(delivery.TEST_TURN)).execute()
    page = post_form(client, f"/settings/channels/{down.id}/test").get_data(as_text=True)
    said = r"Test at [\d-]+ [\d:]+ UTC: not delivered \(could not connect\)\."
    assert re.search(said, row(page, down))
    # Still said after the page is left and come back to; gone with its channel.
    assert "Test sent at " in row(client.get("/settings").get_data(as_text=True), hook)
    post_form(client, f"/settings/channels/{hook.id}/delete")
    assert not Setting.select().where(Setting.name == f"channel-test:{hook.id}").exists()


def test_channels_of_other_users_are_out_of_reach(signed_in, database):
    from web.accounts import create_user

    client = signed_in
    other = create_user("grace@example.com", "another long password")
    theirs = add_channel(other)
    assert post_form(client, f"/settings/channels/{theirs.id}/test").status_code == 404
    assert post_form(client, f"/settings/channels/{theirs.id}/delete").status_code == 404
    assert NotifyChannel.select().count() == 1
    assert "127.0.0.1:9/hook" not in client.get("/settings").get_data(as_text=True)


def test_the_notify_command_delivers_what_is_due(
    app, client, auth, user, receiver, runner, database
):
    add_channel(user, target=receiver.url)
    open_pixel(client, mint(client, auth), THUNDERBIRD)  # a direct open: due at once
    result = runner.invoke(args=["notify", "--once"])
    assert result.exit_code == 0, result.output
    assert "1 notices sent, 0 to be tried again, 0 given up" in result.output
    assert len(receiver.received) == 1 and Notice.get().state == "sent"


def test_export_holds_the_choices_and_channels_but_no_secret(runner, user, database):
    add_channel(user, secret="whsec_never_exported")
    add_channel(user, "push", "https://ntfy.example/topic", "tk_never_exported")
    choose(user, notify_opens="every", notify_delivered=True, notify_quiet_minutes=5)
    result = runner.invoke(args=["export", "ada@example.com", "--format", "json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)["notifications"]
    assert (exported["opens"], exported["delivered"], exported["quiet_minutes"]) == (
        "every",
        True,
        5,
    )
    assert [(c["kind"], c["target"]) for c in exported["channels"]] == [
        ("webhook", "http://127.0.0.1:9/hook"),
        ("push", "https://ntfy.example/topic"),
    ]
    assert "never_exported" not in result.stdout


def test_retention_takes_the_notices_of_the_events_it_deletes(client, auth, user, database):
    from web.receipts import retention

    add_channel(user)
    open_pixel(client, mint(client, auth))
    assert len(notices()) == 1
    Event.update(at=utcnow() - datetime.timedelta(days=100)).execute()
    assert retention.purge(90) == (1, 1)
    assert notices() == []


def test_a_silent_receiver_gets_a_test_notice_that_gives_up():
    """A receiver that takes the connection and never answers: the test in the settings page
    (which waits in the request) gives up and says so. (That it takes TEST_TIMEOUT, a few
    seconds, is the timeout's to keep, not a clock's here to measure.)"""
    import socket

    problems = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        sender = threading.Thread(
            target=lambda: problems.append(
                delivery.send_test(
                    NotifyChannel(kind="webhook", target=url, secret="s"),
                    {"PUBLIC_URL": None, "NOTIFY_ALLOW": LOOPBACK},
                )
            )
        )
        sender.start()
        sender.join(delivery.TEST_TIMEOUT + 60)  # a deadline for a hang, not a measure
        assert not sender.is_alive(), "the test notice never gave up on a silent receiver"
    [problem] = problems
    assert "timed out" in problem


def test_the_readme_shows_the_webhook_body_as_it_is(app, client, auth, user, receiver, database):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = json.loads(re.search(r"```json\n(\{.*?\})\n```", readme, re.S).group(1))
    add_channel(user, target=receiver.url)
    open_pixel(client, mint(client, auth, subject="Invoice 42"), THUNDERBIRD)
    deliver(app)
    body = receiver.received[0].json()
    assert sorted(body) == sorted(example)
    for part in ("receipt", "fetch"):
        assert sorted(body[part]) == sorted(example[part])
    assert body["fetch"]["client"] == example["fetch"]["client"]
    assert (
        body["text"].split(" was opened on ")[1].split(" UTC")[1]
        == (example["text"].split(" UTC")[1])
    )


def test_a_subject_over_several_lines_makes_a_one_line_title(app, client, auth, user, database):
    pixel = mint(client, auth, subject="Invoice\r\nBcc: someone@example.com\n" + "x" * 500)
    open_pixel(client, pixel, THUNDERBIRD)
    message = channels.compose("open", Pixel.get(), Event.get(), None)
    assert "\n" not in message.title and "\r" not in message.title
    assert message.title.startswith("Opened: Invoice Bcc: someone@example.com xxx")
    assert len(message.title) <= len("Opened: ") + channels.NAME_LENGTH


def test_an_unexpected_failure_is_a_failed_try_and_not_a_stuck_notice(
    app, client, auth, user, database, monkeypatch, caplog
):
    add_channel(user)
    open_pixel(client, mint(client, auth), THUNDERBIRD)

    def broken(*args):
        raise KeyError("something nobody expected")

    monkeypatch.setattr(channels, "send_webhook", broken)
    assert deliver(app)["retry"] == 1
    notice = Notice.get()
    assert notice.state == "pending" and notice.claim is None
    assert notice.last_error == "failed: an unexpected error (the server's log has it)"
    assert "KeyError: 'something nobody expected'" in caplog.text


def test_an_open_hidden_behind_the_senders_own_view_still_gets_its_notice(
    app, client, auth, user, receiver, database
):
    """The sender's Gmail tab shows the message (a Gmail-proxy open, held), and two seconds
    later the recipient opens it: being no longer the first open, theirs queues nothing. The
    beacon then makes the first one the sender's: the notice tells of the recipient's open."""
    add_channel(user, target=receiver.url)
    pixel = mint(client, auth, subject="Offer")
    assert open_pixel(client, pixel, GMAIL_PROXY, "66.249.84.10") == "recorded: open"
    assert open_pixel(client, pixel, THUNDERBIRD, LONDON) == "recorded: open"
    assert len(notices()) == 1
    client.post(f"/api/pixels/{pixel['id']}/self-view", headers=auth)
    assert deliver(app)["sent"] == 1
    [request] = receiver.received
    fetch = request.json()["fetch"]
    assert (fetch["source"], fetch["city"]) == ("direct", "London")
    assert Notice.get().event_id == Event.get(Event.kind == "open").id


def test_a_receiver_that_dawdles_is_given_up_on_at_the_deadline(user, database):
    slow = Receiver(delay=3).start()
    try:
        channel = NotifyChannel(kind="webhook", target=slow.url, secret="s")
        message = channels.compose("test", None, None, None)
        with pytest.raises(channels.DeliveryError, match="^timed out$"):
            channels.send(channel, message, {"NOTIFY_ALLOW": LOOPBACK}, timeout=10, deadline=1)
    finally:
        slow.stop()


def test_a_long_title_in_another_script_stays_on_one_header_line():
    title = "Opened: " + "Счёт за услуги по договору № 42 от 1 ноября " * 3
    header = channels._header_text(title)
    assert header.isascii() and "\n" not in header and "\r" not in header
    decoded = "".join(
        part.decode(charset) if isinstance(part, bytes) else part
        for part, charset in email.header.decode_header(header)
    )
    assert decoded == " ".join(title.split())


def test_email_notices_go_to_the_account_address_only(settings):
    from web import create_app
    from web.accounts import create_user

    app = create_app({**settings, "SMTP_URL": "smtp://127.0.0.1:1", "SMTP_FROM": "r@example.com"})
    try:
        with app.app_context():
            create_user("ada@example.com", "correct horse battery")
        client = app.test_client()
        sign_in(client)
        page = post_form(
            client, "/settings/channels", kind="email", target="someone.else@example.org"
        ).get_data(as_text=True)
        assert "email notices go to your own address, ada@example.com" in page
        page = post_form(client, "/settings/channels", kind="email", target="a@x.com,b@y.com")
        assert "Nothing was added" in page.get_data(as_text=True)
        page = post_form(client, "/settings/channels", kind="email", target="").get_data(
            as_text=True
        )
        assert "Added: email notices to ada@example.com" in page
        with app.app_context():
            assert [(c.kind, c.target) for c in NotifyChannel.select()] == [
                ("email", "ada@example.com")
            ]
    finally:
        close_pool(app)


# --- what a notice waits for, and why one is dropped ----------------------------------------


def test_a_click_is_held_until_a_sweep_around_it_would_be_in():
    now = datetime.datetime(2026, 11, 25, 12, 0)
    second = datetime.timedelta(seconds=1)
    assert policy.CLICK_HOLD > SWEEP
    assert policy.hold("direct", now, now, "click") == policy.CLICK_HOLD
    assert policy.hold("direct", now - 10 * second, now, "click") == policy.CLICK_HOLD - 10 * second
    # Held whatever its source, and a click replayed from the spool long after is not held.
    assert policy.hold("gmail-proxy", now, now, "click") == policy.CLICK_HOLD
    assert (
        policy.hold("direct", now - datetime.timedelta(hours=1), now, "click").total_seconds() == 0
    )


def policy_notice(reason, state="waiting", stopped=None, opens="first", delivered=True):
    """A queued notice as no_longer_wanted() reads it: its receipt and the receipt's owner."""
    owner = SimpleNamespace(notify_opens=opens, notify_delivered=delivered)
    pixel = SimpleNamespace(state=state, tracking_stopped_at=stopped, owner=owner)
    return SimpleNamespace(reason=reason, pixel=pixel)


@pytest.mark.parametrize(
    "notice, kind, why",
    [
        (policy_notice("open"), "open", None),
        (policy_notice("open", opens="every"), "open", None),
        (policy_notice("open", opens="off"), "open", "notices of opens were turned off"),
        (
            policy_notice("open"),
            "self",
            "the fetch was judged otherwise since (e.g. it was the sender's own view)",
        ),
        (
            policy_notice("open"),
            None,
            "the fetch was judged otherwise since (e.g. it was the sender's own view)",
        ),
        (policy_notice("delivered"), "prefetch", None),
        # Opens off does not silence deliveries, nor deliveries off opens.
        (policy_notice("delivered", opens="off"), "prefetch", None),
        (policy_notice("open", delivered=False), "open", None),
        (
            policy_notice("delivered", delivered=False),
            "prefetch",
            "notices of deliveries were turned off",
        ),
        (policy_notice("click", opens="off"), "click", None),
        (policy_notice("not-opened"), None, None),
        (policy_notice("not-opened", state="opened"), None, "it was opened since"),
        (
            policy_notice("not-opened", stopped=datetime.datetime(2026, 11, 25)),
            None,
            "a recipient is on the do-not-track list",
        ),
    ],
)
def test_why_a_queued_notice_is_no_longer_wanted(notice, kind, why):
    event = None if kind is None else SimpleNamespace(kind=kind)
    assert policy.no_longer_wanted(notice, event) == why


def test_turning_opens_off_drops_the_queued_notice_and_says_why(app, client, auth, user, database):
    add_channel(user)
    open_pixel(client, mint(client, auth))
    choose(user, notify_opens="off")
    assert deliver(app) == {"sent": 0, "retry": 0, "failed": 0, "skipped": 1}
    notice = Notice.get()
    assert (notice.state, notice.last_error) == ("skipped", "notices of opens were turned off")


def test_the_delivery_notice_tells_of_the_first_delivery(client, auth, user, database):
    add_channel(user)
    choose(user, notify_delivered=True, notify_quiet_minutes=0)
    pixel = mint(client, auth)
    assert open_pixel(client, pixel, APPLE_MPP, "17.58.1.2") == "recorded: prefetch"
    first = Event.get()
    assert open_pixel(client, pixel, APPLE_MPP, "17.58.9.9") == "recorded: prefetch"
    [notice] = notices()
    assert (notice.reason, notice.event_id) == ("delivered", first.id)


def click(client, link, address=LONDON):
    response = client.get(
        "/l/" + link["url"].split("/l/", 1)[1],
        headers={"User-Agent": CHROME},
        environ_base={"REMOTE_ADDR": address},
    )
    assert response.status_code == 302
    return Event.select().order_by(Event.id.desc()).first()


def sent_with_a_link(client, auth):
    """A receipt with a tracked link, its message sent half an hour ago (no sweep on sending)."""
    answer = mint(client, auth, links=["https://pay.example.com/invoice/42"])
    client.post(f"/api/pixels/{answer['id']}/sent", json={}, headers=auth)
    half_an_hour_ago = utcnow() - datetime.timedelta(minutes=30)
    Pixel.update(sent_at=half_an_hour_ago).where(Pixel.public_id == answer["id"]).execute()
    return answer


def test_the_first_click_and_the_first_open_each_notify(client, auth, user, database):
    """With "the first one": the first click notifies after an open did, and the first open
    after a click did; a click's notice is held until a sweep around it would be in."""
    channel = add_channel(user)
    opened_first = sent_with_a_link(client, auth)
    assert open_pixel(client, opened_first, THUNDERBIRD) == "recorded: open"
    event = click(client, opened_first["links"][0])
    assert event.kind == "click"
    assert [n.reason for n in notices(pixel=event.pixel_id)] == ["open", "click"]
    [held] = notices(reason="click")
    assert held.channel_id == channel.id and held.event_id == event.id
    assert held.due_at - held.created_at >= policy.CLICK_HOLD - datetime.timedelta(seconds=1)
    # A second click is no first click.
    click(client, opened_first["links"][0], "81.2.70.1")
    assert len(notices(pixel=event.pixel_id)) == 2

    clicked_first = sent_with_a_link(client, auth)
    event = click(client, clicked_first["links"][0])
    assert open_pixel(client, clicked_first, THUNDERBIRD, "81.2.71.1") == "recorded: open"
    assert [n.reason for n in notices(pixel=event.pixel_id)] == ["click", "open"]


# --- what the settings show of the notices ------------------------------------------------------


def test_each_channel_tallies_its_own_notices(client, auth, other_auth, user, database):
    """Per channel of the user's: how many notices are in each state, when the last one was
    sent, and the error of the latest try that failed of a notice still being tried; another
    user's channels and notices play no part."""
    hook, push, quiet = add_channel(user), add_channel(user, "push"), add_channel(user)
    other_channel = add_channel(User.get(User.email == "grace@example.com"))
    # Changed since: listed in the order the channels were added all the same.
    NotifyChannel.update(secret="whsec_new").where(NotifyChannel.id == hook.id).execute()
    hook = NotifyChannel.get_by_id(hook.id)
    pixel = Pixel.get(Pixel.public_id == mint(client, auth)["id"])
    now = utcnow().replace(microsecond=0)

    def notice(channel, state, sent_ago=None, error=None, due_in=0):
        sent_at = None if sent_ago is None else now - datetime.timedelta(minutes=sent_ago)
        return Notice.create(
            channel=channel,
            pixel=pixel,
            reason="open",
            state=state,
            sent_at=sent_at,
            last_error=error,
            due_at=now + datetime.timedelta(minutes=due_in),
        )

    notice(hook, "sent", sent_ago=30)
    notice(hook, "sent", sent_ago=10)
    notice(hook, "failed", error="gave up: refused")
    notice(hook, "pending", error="older try: timed out", due_in=60)
    notice(hook, "pending", error="latest try: 503", due_in=5)
    notice(hook, "pending")
    notice(hook, "skipped", error="it was opened since")
    notice(push, "sent", sent_ago=20)
    notice(push, "failed", error="could not connect")
    notice(other_channel, "sent", sent_ago=1)
    notice(other_channel, "pending", error="not yours")

    assert outbox.channel_tallies(user) == [
        (
            hook,
            {
                "counts": {"sent": 2, "failed": 1, "pending": 3, "skipped": 1},
                "last_sent": now - 10 * MINUTE,
                "error": "latest try: 503",
            },
        ),
        (push, {"counts": {"sent": 1, "failed": 1}, "last_sent": now - 20 * MINUTE, "error": None}),
        (quiet, {"counts": {}, "last_sent": None, "error": None}),
    ]


def test_the_notices_given_up_are_the_users_own_newest_first(
    client, auth, other_auth, user, database
):
    hook = add_channel(user)
    other_channel = add_channel(User.get(User.email == "grace@example.com"))
    mine = Pixel.get(Pixel.public_id == mint(client, auth)["id"])
    theirs = Pixel.get(Pixel.public_id == mint(client, other_auth)["id"])
    Notice.create(channel=hook, pixel=mine, reason="open", state="sent")
    Notice.create(channel=hook, pixel=mine, reason="open", state="pending", last_error="503")
    failed = [
        Notice.create(channel=hook, pixel=mine, reason="open", state="failed", last_error=f"#{n}")
        for n in range(4)
    ]
    Notice.create(channel=other_channel, pixel=theirs, reason="open", state="failed")
    Notice.create(channel=hook, pixel=mine, reason="open", state="skipped", last_error="opened")
    shown = outbox.given_up(user, 3)
    assert [notice.id for notice in shown] == [n.id for n in reversed(failed)][:3]
    assert [(n.channel.id, n.pixel.id) for n in shown] == [(hook.id, mine.id)] * 3


# --- a notice whose open turned out to be the sender's own ----------------------------------------


def test_the_open_told_of_instead_is_the_first_one_without_a_notice_on_that_channel(
    app, client, auth, user, receiver, database
):
    """The held notice of a Gmail open that the beacon then made the sender's own tells of the
    first open since that has no notice on the same channel: not an earlier one, not one its
    channel already told of, not another receipt's; one on another channel only counts."""
    first_hook = add_channel(user, target=receiver.url + "/a")
    answer = mint(client, auth, subject="Offer")
    pixel = Pixel.get(Pixel.public_id == answer["id"])
    choose(user, notify_opens="off")
    open_pixel(client, answer, THUNDERBIRD, "81.2.60.1")  # before: no notice
    choose(user, notify_opens="every", notify_quiet_minutes=0)
    assert open_pixel(client, answer, GMAIL_PROXY, "66.249.84.10") == "recorded: open"
    assert open_pixel(client, answer, THUNDERBIRD, LONDON) == "recorded: open"
    choose(user, notify_opens="off")
    open_pixel(client, mint(client, auth), THUNDERBIRD, "81.2.80.1")  # another receipt's
    choose(user, notify_opens="every", notify_quiet_minutes=30)
    second_hook = add_channel(user, target=receiver.url + "/b")
    # Within the quiet period of the first channel's notice; the second's first notice.
    assert open_pixel(client, answer, THUNDERBIRD, "81.2.70.1") == "recorded: open"
    # A reminder that was let go when the receipt was opened: a notice of no event.
    Notice.create(channel=first_hook, pixel=pixel, reason="not-opened", state="skipped")
    _before, gmail, on_both, only_on_second = (
        Event.select().where(Event.pixel == pixel.id).order_by(Event.id)
    )
    assert [n.event_id for n in notices(channel=first_hook.id)] == [gmail.id, on_both.id, None]
    assert [n.event_id for n in notices(channel=second_hook.id)] == [only_on_second.id]

    assert client.post(f"/api/pixels/{answer['id']}/self-view", headers=auth).status_code == 200
    held = notices(channel=first_hook.id)[0]
    gmail = Event.get_by_id(gmail.id)
    assert gmail.kind == "self"
    assert outbox.unnoticed_open(held, gmail) == only_on_second
    # A fetch made at the very moment of the Gmail one, stored later (replayed from the spool).
    replayed = Event.create(
        pixel=pixel, at=gmail.at, kind="open", source="direct", reason="an open"
    )
    assert outbox.unnoticed_open(held, gmail) == replayed

    assert deliver(app) == {"sent": 3, "retry": 0, "failed": 0, "skipped": 0}
    assert Notice.get_by_id(held.id).event_id == replayed.id
    assert sorted(request.path for request in receiver.received) == ["/a", "/a", "/b"]


def test_a_gmail_open_told_of_instead_is_held_in_turn(app, client, auth, user, receiver, database):
    """The open a notice tells of instead is a Gmail one too, fetched a moment ago: the notice
    waits until the sender's own tab could have said it was them, without counting a try."""
    add_channel(user, target=receiver.url)
    answer = mint(client, auth)
    assert open_pixel(client, answer, GMAIL_PROXY, "66.249.84.10") == "recorded: open"
    client.post(f"/api/pixels/{answer['id']}/self-view", headers=auth)
    moment = utcnow() + SOON
    later = Event.create(
        pixel=Pixel.get(Pixel.public_id == answer["id"]),
        at=moment - datetime.timedelta(seconds=2),
        kind="open",
        source="gmail-proxy",
        reason="an open",
    )
    assert deliver(app, moment) == {"sent": 0, "retry": 1, "failed": 0, "skipped": 0}
    notice = Notice.get()
    assert (notice.state, notice.event_id, notice.attempts, notice.claim) == (
        "pending",
        later.id,
        0,
        None,
    )
    assert notice.due_at == later.at + policy.GMAIL_HOLD and receiver.received == []
    assert deliver(app, notice.due_at - datetime.timedelta(seconds=1))["sent"] == 0
    assert deliver(app, notice.due_at)["sent"] == 1
    notice = Notice.get()
    assert (notice.state, notice.attempts) == ("sent", 1) and len(receiver.received) == 1
