"""The pixel endpoint: always a 200 GIF, an event only for a genuine pixel, nothing raw stored."""

import json
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from web.pixel.endpoint import GIF
from web.storage.models import Event, Notice, NotifyChannel, Pixel, User

from .helpers import mint, pixel_path

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
APPLE_MPP = "Mozilla/5.0"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


def assert_gif(response):
    assert response.status_code == 200
    assert response.mimetype == "image/gif"
    assert response.get_data() == GIF
    assert response.headers["Cache-Control"] == "no-cache, no-store, must-revalidate, private"
    assert "Set-Cookie" not in response.headers


def test_gif_is_a_1x1_transparent_image():
    assert GIF.startswith(b"GIF89a")
    assert GIF[6:10] == b"\x01\x00\x01\x00"  # width 1, height 1


@pytest.fixture
def pixel(client, auth):
    return mint(client, auth, subject="Invoice #42", recipients=["bob@example.com"])


def test_genuine_fetch_is_recorded_with_masked_ip_and_place(client, pixel, database):
    response = client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": GMAIL_PROXY},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    assert_gif(response)
    assert response.headers["X-Openreceipt"] == "recorded: open"
    event = Event.get()
    assert (event.kind, event.source, event.ip, event.country, event.city) == (
        "open",
        "gmail-proxy",
        "81.2.69.0",
        "GB",
        "London",
    )
    stored = Pixel.get(Pixel.public_id == pixel["id"])
    assert (stored.state, stored.open_count) == ("opened", 1)
    assert stored.first_open_at == stored.last_open_at == event.at


def test_ipv6_is_masked_to_48(client, pixel, database):
    client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": THUNDERBIRD},
        environ_base={"REMOTE_ADDR": "2001:db8:1234:5678:9abc::1"},
    )
    event = Event.get()
    assert (event.ip, event.country, event.city, event.kind) == (
        "2001:db8:1234::",
        "DE",
        "Berlin",
        "open",
    )
    assert "Thunderbird" in event.client


def test_prefetch_moves_state_to_delivered_without_an_open(client, pixel, database):
    client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": APPLE_MPP},
        environ_base={"REMOTE_ADDR": "17.58.1.2"},
    )
    stored = Pixel.get(Pixel.public_id == pixel["id"])
    assert (stored.state, stored.open_count, stored.prefetch_count) == ("delivered", 0, 1)
    assert stored.first_open_at is None
    assert Event.get().source == "apple-mpp"


def test_state_never_moves_back(client, pixel, database):
    path = pixel_path(pixel["url"])
    client.get(path, headers={"User-Agent": GMAIL_PROXY})
    client.get(path, headers={"User-Agent": APPLE_MPP}, environ_base={"REMOTE_ADDR": "17.58.1.2"})
    client.get(path, headers={"User-Agent": "curl/8.5.0"})
    stored = Pixel.get(Pixel.public_id == pixel["id"])
    assert stored.state == "opened"
    assert (stored.open_count, stored.prefetch_count, stored.bot_count) == (1, 1, 1)
    assert stored.last_event_at == Event.select().order_by(Event.id.desc()).get().at


def test_head_is_answered_but_not_an_open(client, pixel, database):
    response = client.head(pixel_path(pixel["url"]), headers={"User-Agent": GMAIL_PROXY})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert Event.get().kind == "bot"
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 0


def test_head_announcing_a_prefetch_is_a_bot_and_no_delivery(client, pixel, user, database):
    """A HEAD with Purpose and Sec-Purpose: prefetch loads no image: the HEAD rule's verdict,
    not the prefetch header's, so the receipt is not delivered and no "delivered" notice goes
    to an owner who asked for them."""
    NotifyChannel.create(user=user, kind="webhook", target="https://hooks.example.com/x")
    User.update(notify_delivered=True).where(User.id == user.id).execute()
    response = client.head(
        pixel_path(pixel["url"]),
        headers={"User-Agent": THUNDERBIRD, "Purpose": "prefetch", "Sec-Purpose": "prefetch"},
    )
    assert (response.status_code, response.mimetype) == (200, "image/gif")
    assert response.headers["X-Openreceipt"] == "recorded: bot"
    event = Event.get()
    assert (event.kind, event.source, event.reason) == (
        "bot",
        "direct",
        "HEAD request: the image was not loaded",
    )
    stored = Pixel.get(Pixel.public_id == pixel["id"])
    assert (stored.state, stored.bot_count, stored.prefetch_count) == ("waiting", 1, 0)
    assert stored.delivered_at is None
    assert Notice.select().count() == 0
    # Control: the same announcement with a GET (from another network: no repeat) is a
    # delivery, and its notice is queued.
    client.get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": THUNDERBIRD, "Purpose": "prefetch", "Sec-Purpose": "prefetch"},
        environ_base={"REMOTE_ADDR": "81.2.69.160"},
    )
    assert Pixel.get(Pixel.public_id == pixel["id"]).state == "delivered"
    assert [notice.reason for notice in Notice.select()] == ["delivered"]


@pytest.mark.parametrize("header", ["Purpose", "Sec-Purpose"])
def test_browser_prefetch_is_not_an_open(client, pixel, database, header):
    client.get(pixel_path(pixel["url"]), headers={"User-Agent": THUNDERBIRD, header: "prefetch"})
    assert Event.get().kind == "prefetch"
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 0


@pytest.mark.parametrize(
    "path",
    [
        "/p/garbage.gif",
        "/p/x",
        "/p/a.b.c.gif",
        "/p/" + "A" * 5000 + ".gif",
        "/p/%00%ff%fe.gif",
        "/p/ünïcödé.gif",
        "/p/../../etc/passwd",
        "/p/abc/def/ghi.gif",
    ],
    ids=["garbage", "no-suffix", "dots", "huge", "bytes", "unicode", "traversal", "nested"],
)
def test_invalid_tokens_answer_a_gif_and_store_nothing(client, database, path):
    response = client.get(path, headers={"User-Agent": GMAIL_PROXY})
    assert_gif(response)
    assert response.headers["X-Openreceipt"].startswith("not recorded")
    assert Event.select().count() == 0


def test_forged_signature_is_not_recorded(client, pixel, database):
    path = pixel_path(pixel["url"])
    public_id, signature = path[len("/p/") : -len(".gif")].split(".", 1)
    forged = f"/p/{public_id}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}.gif"
    response = client.get(forged, headers={"User-Agent": GMAIL_PROXY})
    assert_gif(response)
    assert response.headers["X-Openreceipt"] == "not recorded: invalid signature"
    assert Event.select().count() == 0


def test_signed_token_of_a_missing_pixel_is_not_recorded(client, app, database):
    token = app.extensions["openreceipt"].signer.sign("doesnotexist0000")
    response = client.get(f"/p/{token}.gif")
    assert_gif(response)
    assert response.headers["X-Openreceipt"] == "not recorded: no such pixel"
    assert Event.select().count() == 0


def test_token_signed_with_a_rotated_key_still_records(settings, pixel, database):
    from web import create_app

    rotated = create_app(
        {
            **settings,
            "SECRET_KEY": "a brand new key",
            "SECRET_KEY_FALLBACKS": [database_key(settings)],
        }
    )
    response = rotated.test_client().get(
        pixel_path(pixel["url"]), headers={"User-Agent": GMAIL_PROXY}
    )
    assert response.headers["X-Openreceipt"] == "recorded: open"
    # Without the old key in the fallbacks, the same URL is refused.
    stranger = create_app({**settings, "SECRET_KEY": "a brand new key"})
    response = stranger.test_client().get(pixel_path(pixel["url"]))
    assert response.headers["X-Openreceipt"] == "not recorded: invalid signature"


def database_key(settings):
    from pathlib import Path

    return (Path(settings["DATA_DIR"]) / "secret_key").read_text().strip()


def test_huge_and_odd_headers_still_get_a_gif(client, pixel, database):
    response = client.get(
        pixel_path(pixel["url"]),
        headers={
            "User-Agent": "Mozilla/5.0 " + "x" * 20_000,
            "Cookie": "a=" + "b" * 30_000,
            "Accept-Language": "de-DE,de;q=0.9,\udcff",
            "Purpose": "\x00\x01",
        },
    )
    assert_gif(response)
    event = Event.get()
    # "Mozilla/5.0 xxx…" names no engine and no program: recorded, but not as an open.
    assert event.kind == "unknown" and len(event.reason) <= 200


def test_database_failure_still_answers_a_gif(client, app, pixel, database):
    from web.storage.models import Event as EventModel

    sqlite = isinstance(EventModel._meta.database.obj, SqliteDatabase)
    EventModel._meta.database.execute_sql("DROP TABLE event" + ("" if sqlite else " CASCADE"))
    response = client.get(pixel_path(pixel["url"]), headers={"User-Agent": GMAIL_PROXY})
    assert_gif(response)
    assert response.headers["X-Openreceipt"] == "spooled: database unavailable"
    # The failed write left the pixel's counters untouched (one transaction)...
    assert Pixel.get(Pixel.public_id == pixel["id"]).open_count == 0
    # ...and the fetch waits in the spool, masked.
    [line] = (Path(app.config["DATA_DIR"]) / "spool" / "active.jsonl").read_text().splitlines()
    assert json.loads(line)["public_id"] == pixel["id"] and '"ip": "127.0.0.0"' in line


def test_pixel_never_touches_the_login_session(client, pixel):
    client.get(pixel_path(pixel["url"]), headers={"Cookie": "openreceipt_session=forged"})
    response = client.get(pixel_path(pixel["url"]))
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")


def test_post_to_a_pixel_is_not_an_error_page(client, pixel):
    response = client.post(pixel_path(pixel["url"]))
    assert response.status_code == 405


@pytest.mark.parametrize(
    ("hops", "forwarded", "stored"),
    [
        (0, "81.2.69.160", "10.9.8.0"),  # header ignored: the peer is the client
        (1, "81.2.69.160", "81.2.69.0"),
        (1, "203.0.113.9, 81.2.69.160", "81.2.69.0"),  # only the last hop is ours
        (2, "81.2.69.160, 198.51.100.7", "81.2.69.0"),
        (1, "not-an-address", None),
        (1, "[2001:db8:1234::1]:443", "2001:db8:1234::"),
    ],
    ids=["untrusted", "one-hop", "spoofed-prefix", "two-hops", "garbage", "ipv6-port"],
)
def test_client_address_comes_from_trusted_hops_only(
    settings, pixel, database, hops, forwarded, stored
):
    from web import create_app

    app = create_app({**settings, "TRUSTED_PROXIES": hops})
    app.test_client().get(
        pixel_path(pixel["url"]),
        headers={"User-Agent": THUNDERBIRD, "X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert Event.get().ip == stored
