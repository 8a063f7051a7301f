"""Where notices may go: webhook and push URLs reach public addresses only, unless the
operator allows networks (OPENRECEIPT_NOTIFY_ALLOW), however the address is spelt and whatever
the name resolves to by the time of sending. A user is told a category of failure, never what
answered; test notifications are one per user at a time and hold a worker briefly; failures
for good are given up at once; channels are checked fully when they are added, duplicates
included. Every database test runs on SQLite and PostgreSQL, with the real receivers of
tests/receivers.py."""

import datetime
import ipaddress
import os
import select
import socket
import ssl
import threading
import time
from types import SimpleNamespace

import pytest
import trustme

from web import create_app
from web.accounts import create_user
from web.config import ConfigError, SmtpServer
from web.notifications import channels, delivery, outbound
from web.notifications.delivery import deliver_due
from web.storage.engine import utcnow
from web.storage.models import Notice, NotifyChannel, Setting

from .helpers import csrf_token, mint, pixel_path, sign_in, wait_for
from .receivers import Receiver, start_mail_server

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
LOOPBACK = "a loopback address"
# The addresses of the review: internal ones, in every spelling that reaches them.
INTERNAL = {
    "http://127.0.0.1:8080/hook": LOOPBACK,
    "http://[::1]/hook": LOOPBACK,
    "http://0.0.0.0:25/": "an unspecified address",
    "http://localhost:5432/": LOOPBACK,
    "http://2130706433/hook": LOOPBACK,
    "http://0x7f.0.0.1/hook": LOOPBACK,
    "http://127.1/hook": LOOPBACK,
    "http://[::ffff:127.0.0.1]/hook": LOOPBACK,
    "http://169.254.169.254/latest/meta-data/": "a link-local address",
    "http://[fd00:ec2::254]/latest/meta-data/": "a private address",
    "http://10.1.2.3/": "a private address",
    "http://[2002:7f00:1::1]/": LOOPBACK,  # 6to4 of 127.0.0.1
    "http://100.64.0.1/": "a non-public address",
}
PUBLIC = "93.184.215.14"  # example.com's, once: a public address that is never connected to


@pytest.fixture
def allow():
    """OPENRECEIPT_NOTIFY_ALLOW: nothing but public addresses, unless a test says otherwise."""
    return None


@pytest.fixture
def settings(settings, allow):
    # An operator's mail server (never reached here), so that email channels can be added.
    return {
        **settings,
        "NOTIFY_ALLOW": allow,
        "SMTP_URL": "smtp://127.0.0.1:1",
        "SMTP_FROM": "receipts@example.com",
    }


@pytest.fixture(scope="module")
def authority():
    return trustme.CA()


@pytest.fixture
def rebinding_dns(monkeypatch):
    """A resolver whose answers for some names change from one look-up to the next, the way a
    rebinding DNS server's do: names -> the addresses to answer in turn (the last one stays).
    The system resolver cannot be pointed at a test DNS server, so getaddrinfo itself answers
    for those names; every other name is resolved as usual. Returns (the answers to give, the
    names looked up)."""
    answers, lookups = {}, []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


def post_form(client, path, **fields):
    page = client.get("/settings")
    return client.post(path, data={**fields, "csrf_token": csrf_token(page)}, follow_redirects=True)


def add_channel(client, target, kind="webhook", **fields):
    return post_form(client, "/settings/channels", kind=kind, target=target, **fields)


def press_test(client, channel):
    """Press "Send a test notification"; returns the page."""
    return post_form(client, f"/settings/channels/{channel.id}/test").get_data(as_text=True)


def next_turn():
    """Let the next test notification go at once, as if TEST_EVERY had passed."""
    Setting.delete().where(Setting.name.startswith(delivery.TEST_TURN)).execute()


def signed_in_clients(app, count):
    """`count` clients, each signed in as Ada, with its CSRF token. Without the `database`
    fixture's app context around them: within it, all requests share one `g`, and so one cached
    CSRF token."""
    clients = []
    for _ in range(count):
        client = app.test_client()
        sign_in(client)
        clients.append((client, csrf_token(client.get("/settings"))))
    return clients


def at_once(work, clients):
    """work(client, token) for each client, all in threads let go at the same moment."""
    start = threading.Barrier(len(clients), timeout=30)

    def run(client, token):
        start.wait()
        work(client, token)

    threads = [threading.Thread(target=run, args=pair) for pair in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def open_and_deliver(app, client, auth):
    """A direct open of a new receipt (its notices due at once), then a round of deliveries."""
    pixel = mint(client, auth, subject="Lease")
    client.get(pixel_path(pixel["url"]), headers={"User-Agent": THUNDERBIRD})
    with app.app_context():
        return deliver_due(app, now=utcnow() + datetime.timedelta(seconds=1))


# --- the operator's setting -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "10.1.2.3/8", "127.0.0.0/8;::1"])
def test_a_bad_allow_setting_stops_start_up_with_one_line(tmp_path, value):
    with pytest.raises(ConfigError) as error:
        create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off", "NOTIFY_ALLOW": value})
    assert error.value.message == (
        "OPENRECEIPT_NOTIFY_ALLOW must list networks like 10.0.0.0/8 or fd00::/8, separated by "
        f"commas, got {value!r}"
    )


def test_the_allow_setting_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRECEIPT_NOTIFY_ALLOW", " 10.0.0.0/8, fd00::/8 ,192.168.1.5,")
    app = create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off"})
    try:
        assert app.config["NOTIFY_ALLOW"] == tuple(
            map(ipaddress.ip_network, ["10.0.0.0/8", "fd00::/8", "192.168.1.5/32"])
        )
    finally:
        app.extensions["openreceipt.database"].close_all()


@pytest.mark.parametrize(
    "address, allowed, refused",
    [
        ("::ffff:10.0.0.1", (), "a private address"),
        ("::127.0.0.1", (), "a reserved address"),  # IPv4-compatible
        ("64:ff9b::a00:1", (), "a reserved address"),  # NAT64 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", (), "a private address"),  # Teredo
        ("224.0.0.1", (), "a multicast address"),
        ("ff02::1", (), "a multicast address"),
        ("fe80::1", (), "a link-local address"),
        ("::", (), "an unspecified address"),
        (PUBLIC, (), None),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", (), None),
        ("2002:5db8:d70e::1", (), None),  # 6to4 of a public address
        ("10.0.0.1", ("10.0.0.0/8",), None),
        ("::ffff:10.0.0.1", ("10.0.0.0/8",), None),
        ("10.0.0.1", ("fd00::/8",), "a private address"),
    ],
)
def test_which_addresses_are_refused(address, allowed, refused):
    networks = tuple(map(ipaddress.ip_network, allowed))
    assert outbound.refusal(ipaddress.ip_address(address), networks) == refused


# --- when a channel is added ------------------------------------------------------------------


def test_internal_addresses_are_refused_as_channels(signed_in, database):
    for url, kind in INTERNAL.items():
        page = add_channel(signed_in, url).get_data(as_text=True)
        assert f"Nothing was added: not allowed: {kind}" in page, url
    page = add_channel(signed_in, "http://[::1]/topic", kind="push").get_data(as_text=True)
    assert f"Nothing was added: not allowed: {LOOPBACK}" in page
    assert NotifyChannel.select().count() == 0
    # A public address is a channel (nothing is sent until a notice or a test).
    page = add_channel(signed_in, f"https://{PUBLIC}/hook").get_data(as_text=True)
    assert f"Added: webhook notices to https://{PUBLIC}/hook" in page


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_the_operator_may_allow_networks(signed_in, database):
    assert "Added: webhook notices" in add_channel(signed_in, "http://127.0.0.1:8080/hook").text
    # Only those: ::1 is not in 127.0.0.0/8, nor the metadata address.
    for url in ("http://[::1]/hook", "http://169.254.169.254/"):
        assert "Nothing was added: not allowed" in add_channel(signed_in, url).text
    assert NotifyChannel.select().count() == 1


@pytest.mark.parametrize(
    "kind, target, token, problem",
    [
        ("webhook", "https://hooks.example.com/a b", "", "may not contain spaces or control"),
        ("webhook", "https://hooks.example.com/in\x00", "", "may not contain control characters"),
        ("push", "https://ntfy.example/t\x00pic", "", "may not contain control characters"),
        ("email", "ada@example.com\x00", "", "may not contain control characters"),
        ("push", "https://ntfy.example/topic", "tk_\x00", "the access token is up to 200"),
        ("push", "https://ntfy.example/topic", "tk_1\r\nX-Evil: 1", "the access token is"),
        ("push", "https://ntfy.example/topic", "t" * 201, "the access token is up to 200"),
        ("webhook", "https://hooks.example.com/\r\nHost: x", "", "may not contain control"),
        ("webhook", "javascript:alert(1)", "", "must be an http(s) URL"),
        ("webhook", "https:///no-host", "", "must be an http(s) URL"),
        ("webhook", "https://u@hooks.example.com/", "", "put no password in the URL"),
        ("webhook", "https://hooks.example.com:99999/", "", "is not a valid URL"),
        ("webhook", "https://hooks.example.com/" + "x" * 2000, "", "longer than 2000"),
        ("webhook", "https://bücher.example/hook", "", "write the address in ASCII"),
    ],
)
def test_channel_addresses_are_checked_fully(signed_in, database, kind, target, token, problem):
    response = add_channel(signed_in, target, kind=kind, token=token)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Nothing was added: " in page and problem in page
    assert NotifyChannel.select().count() == 0


def test_a_channel_kind_with_a_nul_is_a_bad_request(signed_in, database):
    assert (
        add_channel(signed_in, "https://hooks.example.com/in", kind="push\x00").status_code == 400
    )


@pytest.mark.parametrize(
    "typed, tidy",
    [
        ("HTTPS://Hooks.Example.COM./in", "https://hooks.example.com/in"),
        ("https://hooks.example.com:443/in", "https://hooks.example.com/in"),
        ("http://hooks.example.com:80/in", "http://hooks.example.com/in"),
        ("https://hooks.example.com:8443/in", "https://hooks.example.com:8443/in"),
        ("https://hooks.example.com:/in", "https://hooks.example.com/in"),
        ("https://hooks.example.com/in#a", "https://hooks.example.com/in"),
        ("https://hooks.example.com/in?", "https://hooks.example.com/in"),
        ("https://hooks.example.com/./in", "https://hooks.example.com/in"),
        ("https://hooks.example.com/a/../in/.", "https://hooks.example.com/in/"),
        ("https://hooks.example.com/%69n?t=%7e%2f", "https://hooks.example.com/in?t=~%2F"),
        ("https://hooks.example.com", "https://hooks.example.com/"),
        ("https://[2606:2800:021F:0::1]:443/in", "https://[2606:2800:21f::1]/in"),
        ("http://1572394766/in", "http://93.184.215.14/in"),
        # Kept: the path is the receiver's to interpret (see outbound.tidy_url).
        ("https://hooks.example.com//in", "https://hooks.example.com//in"),
        ("https://hooks.example.com/IN", "https://hooks.example.com/IN"),
    ],
)
def test_a_receivers_url_has_one_spelling(typed, tidy):
    assert outbound.tidy_url(typed) == tidy
    assert outbound.tidy_url(tidy) == tidy


NEAR_DUPLICATES = [
    "https://hooks.example.com:443/in",
    "https://hooks.example.com/in#a",
    "https://hooks.example.com./in",
    "https://hooks.example.com/./in",
    "https://hooks.example.com/x/../in",
    "https://hooks.example.com/%69n",
    "HTTPS://HOOKS.example.com.:443/./in#top",
]


def test_near_duplicate_channels_are_refused(signed_in, user, database):
    """The review added each of these beside https://hooks.example.com/in, and every notice
    went out once per spelling."""
    assert "Added: webhook" in add_channel(signed_in, "https://hooks.example.com/in").text
    for same in NEAR_DUPLICATES:
        page = add_channel(signed_in, same).get_data(as_text=True)
        assert "Nothing was added: you have webhook notices to https://hooks.example.com/in" in (
            page
        ), same
    assert [c.target for c in NotifyChannel.select()] == ["https://hooks.example.com/in"]
    # A channel saved before URLs were tidied this far is the same receiver too.
    NotifyChannel.create(user=user, kind="push", target="https://ntfy.example.com:443/t#x")
    page = add_channel(signed_in, "https://ntfy.example.com/t", "push").get_data(as_text=True)
    assert "Nothing was added: you have push notices to https://ntfy.example.com:443/t#x" in page
    # What is sent is what is saved: the tidy form.
    page = add_channel(signed_in, "https://Other.Example.COM.:443/a/./b/../hook#x").text
    assert "Added: webhook notices to https://other.example.com/a/hook." in page
    assert NotifyChannel.select().count() == 3


def test_duplicate_channels_are_refused(signed_in, database):
    assert "Added: webhook" in add_channel(signed_in, "https://hooks.example.com/in").text
    for same in ("https://hooks.example.com/in", " HTTPS://Hooks.Example.COM/in "):
        page = add_channel(signed_in, same).get_data(as_text=True)
        assert "Nothing was added: you have webhook notices to https://hooks.example.com/in" in page
    # The same URL as a push channel is another channel; the path is not the host's to fold.
    assert "Added: push" in add_channel(signed_in, "https://hooks.example.com/in", "push").text
    assert "Added: webhook" in add_channel(signed_in, "https://hooks.example.com/IN").text
    assert NotifyChannel.select().count() == 3


def test_the_same_channel_sent_at_the_same_moment_is_added_once(app, user):
    """Six forms adding the same webhook at once (the button pressed again and again, or a
    script): one channel, and every other form is told it exists."""
    pages = []

    def add(client, token):
        fields = {"kind": "webhook", "target": "https://hooks.example.com/in", "csrf_token": token}
        response = client.post("/settings/channels", data=fields, follow_redirects=True)
        pages.append(response.get_data(as_text=True))

    at_once(add, signed_in_clients(app, 6))
    with app.app_context():
        assert NotifyChannel.select().count() == 1
    assert sum("Added: webhook" in page for page in pages) == 1
    assert sum("you have webhook notices to" in page for page in pages) == 5


# --- when a notice is sent --------------------------------------------------------------------


def test_channels_saved_before_are_not_delivered_to_internal_addresses(
    app, client, auth, user, receiver, database
):
    """Channels added before addresses were checked: every spelling of the receiver's loopback
    address is refused at the connection, at once and for good, and listed in settings."""
    port = receiver.port
    for host in ("127.0.0.1", "localhost", "2130706433", "0x7f.0.0.1", "127.1", "[::ffff:7f00:1]"):
        NotifyChannel.create(user=user, kind="webhook", target=f"http://{host}:{port}/hook")
    assert open_and_deliver(app, client, auth)["failed"] == 6
    assert receiver.received == []
    failed = list(Notice.select())
    assert {(n.state, n.attempts, n.last_error) for n in failed} == {
        ("failed", 1, f"not allowed: {LOOPBACK}")
    }
    sign_in(client)
    page = client.get("/settings").get_data(as_text=True)
    assert "Notices that could not be delivered" in page
    assert page.count(f"not allowed: {LOOPBACK}") == 6


def test_a_test_notification_is_no_port_scanner(signed_in, user, receiver, database):
    """An open port (the receiver) and a closed one get the same answer, and nothing is sent."""
    answers = []
    for port in (receiver.port, Receiver().port):
        channel = NotifyChannel.create(user=user, kind="push", target=f"http://127.1:{port}/t")
        page = press_test(signed_in, channel)
        answers.append(page.count(f"failed: not allowed: {LOOPBACK}"))
        next_turn()
    assert answers == [1, 1] and receiver.received == []


def test_a_name_that_turns_internal_after_it_was_saved_gets_nothing(
    app, signed_in, auth, user, receiver, rebinding_dns, database
):
    """DNS rebinding: the name answers a public address when the channel is added, and the
    receiver's loopback address from then on."""
    answers, _ = rebinding_dns
    answers["hooks.rebind.test"] = [PUBLIC, "127.0.0.1"]
    url = f"http://hooks.rebind.test:{receiver.port}/hook"
    assert f"Added: webhook notices to {url}" in add_channel(signed_in, url).text
    assert press_test(signed_in, NotifyChannel.get()).count(f"failed: not allowed: {LOOPBACK}")
    assert open_and_deliver(app, signed_in, auth)["failed"] == 1
    assert Notice.get().last_error == f"not allowed: {LOOPBACK}"
    assert receiver.received == []


@pytest.mark.parametrize("allow", ["127.0.0.1/32"])
def test_a_send_connects_to_the_address_it_checked(
    app, client, auth, user, receiver, rebinding_dns, database
):
    """The name answers an allowed address to the first look-up and another one after: the
    send looks it up once and connects to what it checked (a second look-up, to connect by
    name, would reach the receiver on 127.0.0.2), with the name in the Host header."""
    elsewhere = Receiver(port=receiver.port, host="127.0.0.2").start()
    try:
        answers, lookups = rebinding_dns
        answers["hooks.rebind.test"] = ["127.0.0.1", "127.0.0.2"]
        url = f"http://hooks.rebind.test:{receiver.port}/hook"
        NotifyChannel.create(user=user, kind="webhook", target=url, secret="s")
        assert open_and_deliver(app, client, auth)["sent"] == 1
    finally:
        elsewhere.stop()
    [request] = receiver.received
    assert request.headers["Host"] == f"hooks.rebind.test:{receiver.port}"
    assert elsewhere.received == [] and lookups == ["hooks.rebind.test"]


@pytest.mark.parametrize("allow", ["127.0.0.1/32"])
def test_https_at_the_checked_address_still_checks_the_name(
    app, client, auth, user, authority, rebinding_dns, monkeypatch, tmp_path, database
):
    """HTTPS to the address checked: the certificate must be the URL's name's, and the name is
    sent as the TLS server name."""
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    answers, _ = rebinding_dns
    answers["hooks.rebind.test"] = answers["other.rebind.test"] = ["127.0.0.1"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("hooks.rebind.test").configure_cert(context)
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    secure = Receiver(context=context).start()
    try:
        good = f"https://hooks.rebind.test:{secure.port}/hook"
        wrong = f"https://other.rebind.test:{secure.port}/hook"
        NotifyChannel.create(user=user, kind="webhook", target=good, secret="s")
        NotifyChannel.create(user=user, kind="webhook", target=wrong, secret="s")
        assert open_and_deliver(app, client, auth) == {
            "sent": 1,
            "retry": 1,
            "failed": 0,
            "skipped": 0,
        }
    finally:
        secure.stop()
    assert len(secure.received) == 1 and "hooks.rebind.test" in names
    retried = Notice.get(Notice.state == "pending")
    assert retried.channel.target == wrong
    assert retried.last_error == "could not connect securely (TLS)"


# --- what the user is told --------------------------------------------------------------------


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_what_answered_is_never_shown(app, signed_in, auth, user, authority, database):
    """A webhook at a mail server's port, and one whose receiver says 404: the test and the
    notices say "no valid HTTP answer" and "refused: HTTP 404", not the mail server's banner
    (220 ... Python SMTP ...) nor the status line."""
    mail = start_mail_server(authority.issue_cert("127.0.0.1"))
    refusing = Receiver(answers=[404, 404]).start()
    try:
        banner = NotifyChannel.create(
            user=user, kind="webhook", target=f"http://127.0.0.1:{mail.port}/", secret="s"
        )
        gone = NotifyChannel.create(user=user, kind="push", target=refusing.url + "/topic")
        page = press_test(signed_in, banner)
        assert "failed: no valid HTTP answer" in page
        next_turn()
        page = press_test(signed_in, gone)
        assert "failed: refused: HTTP 404" in page
        counts = open_and_deliver(app, signed_in, auth)
        assert (counts["retry"], counts["failed"]) == (1, 1)
        page = signed_in.get("/settings").get_data(as_text=True)
    finally:
        refusing.stop()
        mail.stop()
    assert "the last try failed: no valid HTTP answer" in page
    assert "refused: HTTP 404" in page
    for leak in ("Python SMTP", "BadStatusLine", "Not Found", "Errno", "Error"):
        assert leak not in page, leak


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_failures_for_good_are_given_up_at_once(app, client, auth, user, database):
    """A URL saved before it was checked (a space in it), and a receiver that says 410: given
    up at the first try, not tried for 24 hours. 429 and 503 are tried again."""
    refusing = Receiver(answers=[410, 429, 503]).start()
    try:
        NotifyChannel.create(user=user, kind="webhook", target=refusing.url + "/a b", secret="s")
        NotifyChannel.create(user=user, kind="webhook", target=refusing.url + "/x", secret="s")
        assert open_and_deliver(app, client, auth)["failed"] == 2
        assert {n.last_error for n in Notice.select()} == {
            "not a valid address: the address may not contain spaces or control characters",
            "refused: HTTP 410",
        }
        assert open_and_deliver(app, client, auth)["retry"] == 1  # 429 (and the space again)
        assert open_and_deliver(app, client, auth)["retry"] == 1  # 503
    finally:
        refusing.stop()
    assert len(refusing.received) == 3
    pending = Notice.select().where(Notice.state == "pending")
    assert sorted(n.last_error for n in pending) == ["failed: HTTP 429", "failed: HTTP 503"]


# --- "Send a test notification" -------------------------------------------------------------


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_one_test_notification_at_a_time(signed_in, user, receiver, database):
    channel = NotifyChannel.create(user=user, kind="webhook", target=receiver.url, secret="s")
    assert "A test notification went to" in press_test(signed_in, channel)
    page = press_test(signed_in, channel)
    assert "One test notification every 10 seconds: wait a moment, then try again." in page
    other = NotifyChannel.create(user=user, kind="push", target=receiver.url + "/topic")
    assert "One test notification every 10 seconds" in press_test(signed_in, other)
    assert len(receiver.received) == 1
    # Ten seconds later, the next one goes.
    Setting.update(value=(utcnow() - delivery.TEST_EVERY).isoformat(timespec="microseconds")).where(
        Setting.name.startswith(delivery.TEST_TURN)
    ).execute()
    assert "A test notification went to" in press_test(signed_in, other)
    assert len(receiver.received) == 2


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_test_notifications_sent_at_once_send_one(app, user):
    """Eight presses at the same moment at a slow receiver: one test goes, and holds one worker;
    the others are told to wait at once."""
    slow = Receiver(delay=2).start()  # slow, but within TEST_TIMEOUT
    try:
        with app.app_context():
            channel = NotifyChannel.create(user=user, kind="webhook", target=slow.url, secret="s")
        results = []

        def press(client, token):
            began = time.monotonic()
            response = client.post(
                f"/settings/channels/{channel.id}/test",
                data={"csrf_token": token},
                follow_redirects=True,
            )
            results.append((response.get_data(as_text=True), time.monotonic() - began))

        at_once(press, signed_in_clients(app, 8))
    finally:
        slow.stop()
    assert len(slow.received) == 1
    went = [took for page, took in results if "A test notification went to" in page]
    waited = [took for page, took in results if "wait a moment" in page]
    assert len(went) == 1 and len(waited) == 7
    assert max(waited) < 1.5  # not held behind the slow one


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_a_test_notification_holds_a_worker_briefly(signed_in, user, database):
    dawdling = Receiver(delay=30).start()
    try:
        channel = NotifyChannel.create(user=user, kind="webhook", target=dawdling.url, secret="s")
        began = time.monotonic()
        page = press_test(signed_in, channel)
        took = time.monotonic() - began
    finally:
        dawdling.stop()
    assert "failed: timed out" in page
    assert took < delivery.TEST_DEADLINE + 1 <= 6


def test_the_test_turns_keep_nothing(user, database):
    """A turn is a row for TEST_EVERY, deleted by the next turn of anybody after that."""
    other = create_user("grace@example.com", "another long password")
    now = utcnow()
    assert delivery.take_test_turn(user, now)
    assert not delivery.take_test_turn(user, now + datetime.timedelta(seconds=9))
    assert delivery.take_test_turn(other, now + datetime.timedelta(seconds=9))
    assert delivery.take_test_turn(other, now + datetime.timedelta(seconds=20))
    assert [row.name for row in Setting.select().where(Setting.name.startswith("notify-"))] == [
        f"notify-test:{other.id}"
    ]


# --- a receiver that never finishes answering -------------------------------------------------


class Trickler:
    """A receiver on 127.0.0.1 that never finishes its answer: it sends `opening`, then one
    byte every `every` seconds (well within a step's timeout), for as long as the connection
    lasts; with `context` (an ssl.SSLContext), inside TLS. It counts the connections it got,
    and those the other side ended."""

    def __init__(self, opening, every=0.5, context=None):
        self.opening, self.every, self.context = opening, every, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = self.ended = 0
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection):
        try:
            if self.context is not None:
                connection = self.context.wrap_socket(connection, server_side=True)
            connection.sendall(self.opening)
            while not self.stopping.is_set():
                readable, _, _ = select.select([connection], [], [], self.every)
                if not readable:
                    connection.sendall(b"a")
                elif not connection.recv(65536):
                    break  # the other side ended it
        except OSError:  # ... or reset it
            pass
        finally:
            connection.close()
        if not self.stopping.is_set():
            self.ended += 1

    def stop(self):
        self.stopping.set()
        self.listener.close()


def sockets_to(port):
    """This process's open sockets connected to port `port` (of 127.0.0.1): its descriptors
    that are sockets, looked up in the kernel's table of TCP connections."""
    mine = set()
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            mine.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port, inode = int(fields[2].rpartition(":")[2], 16), fields[9]
                if remote_port == port and inode in mine:
                    found.append(inode)
    return found


@pytest.fixture
def send_threads(monkeypatch):
    """The threads channels.send() starts, as they are started."""
    started = []

    class Recorded(threading.Thread):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(channels, "threading", SimpleNamespace(Thread=Recorded))
    return started


def assert_nothing_left(trickler, threads, sends):
    """Shortly after the deadline: no send thread alive, no socket of ours open to the
    receiver, and the receiver saw each connection end."""
    assert len(threads) == sends
    assert wait_for(lambda: not any(thread.is_alive() for thread in threads), 3)
    assert [thread for thread in threads if thread.is_alive()] == []
    assert wait_for(lambda: sockets_to(trickler.port) == [], 3), sockets_to(trickler.port)
    assert wait_for(lambda: trickler.ended == trickler.connections == sends, 3)


LOOPBACK_ALLOWED = (ipaddress.ip_network("127.0.0.0/8"),)
TRICKLES = {
    # An HTTP answer whose header never ends, the same over TLS, a body that never ends, and a
    # mail server's greeting that never ends.
    "webhook": b"HTTP/1.1 200 OK\r\nX: ",
    "https": b"HTTP/1.1 200 OK\r\nX: ",
    "push": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    "email": b"220-mail.example.com ",
}


@pytest.mark.parametrize("kind", TRICKLES)
def test_a_trickling_receiver_is_cut_off_at_the_deadline(
    kind, send_threads, authority, monkeypatch, tmp_path
):
    """A receiver that sends a byte every half second resets every step's timeout: the send's
    thread and socket used to live as long as it liked (one more at every test notification
    and every retry, until the worker ran out of threads and descriptors). At the deadline the
    connection is shut down, and the thread ends."""
    context = None
    if kind == "https":
        authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1").configure_cert(context)
    trickler = Trickler(TRICKLES[kind], context=context)
    config = {
        "NOTIFY_ALLOW": LOOPBACK_ALLOWED,
        "SMTP": SmtpServer("none", "127.0.0.1", trickler.port, None, None),
        "SMTP_FROM": "receipts@example.com",
    }
    target = {
        "https": f"https://127.0.0.1:{trickler.port}/hook",
        "email": "ada@example.com",
    }.get(kind, f"http://127.0.0.1:{trickler.port}/hook")
    channel = NotifyChannel(kind="webhook" if kind == "https" else kind, target=target, secret="s")
    message = channels.compose("test", None, None, None)
    try:
        began = time.monotonic()
        with pytest.raises(channels.DeliveryError, match="^timed out$"):
            channels.send(channel, message, config, timeout=3, deadline=1.5)
        assert time.monotonic() - began < 1.5 + channels.CUT_GRACE
        assert_nothing_left(trickler, send_threads, 1)
    finally:
        trickler.stop()


@pytest.mark.parametrize("allow", ["127.0.0.0/8"])
def test_test_notifications_and_retries_leave_nothing_behind(
    app, signed_in, auth, user, database, monkeypatch, send_threads
):
    """Pressing "Send a test notification", and a notice's delivery, at a trickling webhook: each
    fails as timed out, and neither leaves a thread or a socket behind."""

    def sooner(channel, message, config, timeout=3, deadline=1.5):
        return channels.send(channel, message, config, min(timeout, 3), min(deadline, 1.5))

    monkeypatch.setattr(delivery, "send", sooner)
    trickler = Trickler(TRICKLES["webhook"])
    try:
        channel = NotifyChannel.create(
            user=user, kind="webhook", target=f"http://127.0.0.1:{trickler.port}/h", secret="s"
        )
        assert "failed: timed out" in press_test(signed_in, channel)
        assert open_and_deliver(app, signed_in, auth)["retry"] == 1
        assert Notice.get().last_error == "timed out"
        assert_nothing_left(trickler, send_threads, 2)
    finally:
        trickler.stop()
