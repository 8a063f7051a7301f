"""Notifications end to end: real gunicorn workers deliver from their own threads to a real
local receiver that is down at first. Every notice arrives exactly once, however many workers
(and, on PostgreSQL, hosts) compete for it, and the retries bring the ones that failed."""

import json
import time
from urllib.parse import urlsplit

import pytest

from web import create_app
from web.storage.engine import close_pool
from web.storage.models import Notice, NotifyChannel, User

from .receivers import Receiver

EMAIL, PASSWORD = "ada@example.com", "correct horse battery"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
PIXELS, OPENS = 12, 3
# The receivers listen on loopback, which notices reach only where the operator allows it.
ALLOW = "127.0.0.0/8"


@pytest.mark.slow
def test_workers_deliver_every_notice_once_after_the_receiver_comes_up(
    database_url, gunicorn, tmp_path
):
    postgresql = database_url.startswith("postgresql")
    (tmp_path / "data").mkdir(exist_ok=True)  # where the SQLite file goes
    settings = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "notify-end-to-end",
        "TRUSTED_PROXIES": 1,
        "NOTIFY_RETRY_SECONDS": 1,
        "NOTIFY_ALLOW": ALLOW,
    }
    # Two workers each; on PostgreSQL two hosts as well, sharing the database.
    hosts = [
        gunicorn(name=f"host{n}", workers=2, **settings) for n in range(2 if postgresql else 1)
    ]
    hosts[0].openreceipt("user", "add", EMAIL, "--password-stdin", input=f"{PASSWORD}\n")
    auth = {"Authorization": f"Bearer {hosts[0].openreceipt('token', 'new', EMAIL)}"}

    receiver = Receiver(delay=0.05)  # down: nothing listens on its port yet
    local = create_app(
        {
            "DATA_DIR": str(tmp_path / "local"),
            "DATABASE_URL": database_url,
            "GEOIP_DATABASE": "off",
            "ANNOUNCE_STARTUP": False,
            "NOTIFY_IN_WORKERS": False,
            "SPOOL_AUTO": False,
            "RETENTION_AUTO": False,
        }
    )
    try:
        with local.app_context():
            user = User.get(User.email == EMAIL)
            User.update(notify_opens="every", notify_quiet_minutes=0).where(
                User.id == user.id
            ).execute()
            NotifyChannel.create(user=user, kind="webhook", target=receiver.url, secret="whsec_e2e")

        for number in range(PIXELS):
            host = hosts[number % len(hosts)]
            status, _, body = host.request("POST", "/api/pixels", {"subject": f"#{number}"}, auth)
            assert status == 201
            path = urlsplit(json.loads(body)["url"]).path
            for nth in range(OPENS):
                opener = hosts[(number + nth) % len(hosts)]
                status, headers, _ = opener.request(
                    "GET",
                    path,
                    headers={
                        "User-Agent": THUNDERBIRD,
                        "X-Forwarded-For": f"100.64.{nth}.{number}",
                    },
                )
                assert (status, headers["X-Openreceipt"]) == (200, "recorded: open")

        expected = PIXELS * OPENS
        with local.app_context():
            # A try counts once it has ended: the claim raises `attempts` before the
            # delivery, and the failure is written after it.
            deadline = time.monotonic() + 20
            while Notice.select().where(Notice.last_error.is_null(False)).count() < expected:
                assert time.monotonic() < deadline, "the workers did not try every notice"
                time.sleep(0.2)
            # every first try met a receiver that was down: none was sent
            assert Notice.select().where(Notice.state == "sent").count() == 0

        receiver.start()
        try:
            receiver.wait_for(expected, timeout=60)
            with local.app_context():
                # A notice is marked sent once its receiver answered, and only one still
                # pending can be claimed: once all are sent, a duplicate can only be one that
                # a worker claimed before and is sending still.
                deadline = time.monotonic() + 30
                while Notice.select().where(Notice.state != "sent").exists():
                    assert time.monotonic() < deadline, "the notices were not all marked sent"
                    time.sleep(0.2)
            # A worker finishes the notice it is sending before it exits: stop them all (each
            # host waits for its workers), then take in everything that reached the receiver.
            for host in hosts:
                host.stop()
            arrived = receiver.settle()
        finally:
            receiver.stop()
        with local.app_context():
            rows = list(Notice.select().order_by(Notice.id))
    finally:
        close_pool(local)
        local.extensions["openreceipt.database"].close_all()

    ids = [request.json()["id"] for request in receiver.received]
    assert len(arrived) == expected and sorted(ids) == [row.id for row in rows]
    assert {row.state for row in rows} == {"sent"}
    assert all(row.attempts >= 2 and row.last_error is None for row in rows)
    for request in receiver.received:
        assert request.json()["type"] == "opened"
        assert "100.64." not in request.body.decode()
    for host in hosts:
        assert b"Traceback" not in host.log_bytes()


@pytest.mark.slow
def test_openreceipt_notify_runs_as_a_service_of_its_own(settings, tmp_path):
    """OPENRECEIPT_NOTIFY_IN_WORKERS=off and `openreceipt notify` in a process of its own: it
    sends what the pixel queues while it runs, and stops cleanly on Ctrl-C."""
    import os
    import signal
    import subprocess

    from .helpers import mint, pixel_path
    from .servers import BIN, ROOT

    receiver = Receiver().start()
    app = create_app(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRECEIPT_")}
    env.update(
        OPENRECEIPT_DATA_DIR=settings["DATA_DIR"],
        OPENRECEIPT_DATABASE_URL=settings["DATABASE_URL"],
        OPENRECEIPT_GEOIP_DATABASE="off",
        OPENRECEIPT_NOTIFY_IN_WORKERS="off",
        OPENRECEIPT_NOTIFY_ALLOW=ALLOW,
    )
    service = subprocess.Popen(
        [str(BIN / "openreceipt"), "notify"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        from web.accounts import create_user, new_token

        with app.app_context():
            user = create_user(EMAIL, PASSWORD)
            auth = {"Authorization": f"Bearer {new_token(user)[1]}"}
            NotifyChannel.create(user=user, kind="push", target=receiver.url + "/topic")
        client = app.test_client()
        pixel = mint(client, auth, subject="Notice to quit")
        client.get(pixel_path(pixel["url"]), headers={"User-Agent": THUNDERBIRD})
        [push] = receiver.wait_for(1, timeout=20)
        assert push.headers["Title"] == "Opened: Notice to quit"
    finally:
        service.send_signal(signal.SIGINT)
        output, errors = service.communicate(timeout=20)
        receiver.stop()
        close_pool(app)
    assert service.returncode == 0, errors
    assert "notify: 1 notices sent" in errors  # the job's own line in the log


@pytest.mark.slow
def test_workers_deliver_from_the_start_without_serving_a_request(settings, gunicorn):
    """A notice queued while the server was down (here: by another process) is sent by the
    workers of a server that has served no request since it started."""
    from web.accounts import create_user, new_token

    from .helpers import mint, pixel_path

    receiver = Receiver().start()
    app = create_app(settings)
    try:
        with app.app_context():
            user = create_user(EMAIL, PASSWORD)
            auth = {"Authorization": f"Bearer {new_token(user)[1]}"}
            NotifyChannel.create(user=user, kind="webhook", target=receiver.url, secret="s")
        client = app.test_client()
        client.get(pixel_path(mint(client, auth)["url"]), headers={"User-Agent": THUNDERBIRD})
        with app.app_context():
            assert Notice.get().state == "pending"
        gunicorn(
            DATA_DIR=settings["DATA_DIR"],
            DATABASE_URL=settings["DATABASE_URL"],
            SECRET_KEY=app.config["SECRET_KEY"],
            NOTIFY_ALLOW=ALLOW,
        )
        assert len(receiver.wait_for(1, timeout=20)) == 1
    finally:
        receiver.stop()
        close_pool(app)
