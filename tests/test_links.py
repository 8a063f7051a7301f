"""Link receipts on SQLite and PostgreSQL: a tracked link redirects to exactly its stored
destination and to nothing else; a forged, altered or deleted one gets a plain page; only http
and https are tracked; a person's click is a click (the receipt is opened, the owner told), and
none of the scanner patterns from the public threads is one (docs/evidence.md): Safe Links from
Microsoft's ranges and Azure, a gateway's published range, the sweep minutes after sending, HEAD
and prefetch requests, scanner and library user agents, the hidden honeypot link, several links
within seconds."""

import datetime
import json
from pathlib import Path

import pytest

from web.judgement import clicks
from web.judgement.classify import Fetch, PixelFacts
from web.judgement.clicks import SWEEP
from web.judgement.ranges import Networks
from web.notifications.delivery import deliver_due
from web.pixel import spool
from web.storage.engine import utcnow
from web.storage.models import DoNotTrack, Event, Link, Notice, NotifyChannel, Pixel

from .helpers import csrf_token, mint
from .receivers import Receiver

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# gophish #973: Safe Links' two GETs from 40.107.x with this user agent, on delivery.
SAFE_LINKS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/57.0.2987.133 Safari/537.36"
)
LONDON = "81.2.69.160"  # in the test GeoIP database
READER = {"User-Agent": CHROME}
INVOICE = "https://pay.example.com/invoice/42?ref=mail"
CONTRACT = "https://sign.example.org/contract"
LONG_AGO = datetime.timedelta(minutes=30)


@pytest.fixture
def settings(settings):
    return {**settings, "NOTIFY_ALLOW": "127.0.0.0/8"}


def path_of(url):
    return "/l/" + url.split("/l/", 1)[1]


def tracked(client, auth, links=(INVOICE, CONTRACT), sent_ago=LONG_AGO, **body):
    """A receipt with tracked links, its message sent `sent_ago`: (answer, pixel row)."""
    answer = mint(client, auth, subject="Invoice 42", links=list(links), **body)
    client.post(f"/api/pixels/{answer['id']}/sent", json={}, headers=auth)
    if sent_ago is not None:
        Pixel.update(sent_at=utcnow() - sent_ago).where(Pixel.public_id == answer["id"]).execute()
    return answer, Pixel.get(Pixel.public_id == answer["id"])


def follow(client, url, ip=LONDON, method="GET", headers=READER):
    return client.open(
        path_of(url), method=method, headers=headers, environ_base={"REMOTE_ADDR": ip}
    )


def kinds(pixel):
    return [
        event.kind for event in Event.select().where(Event.pixel == pixel.id).order_by(Event.id)
    ]


# --- the redirect ------------------------------------------------------------------------------


def test_a_tracked_link_goes_to_exactly_its_destination(client, auth, database):
    answer, _ = tracked(client, auth)
    assert [link["destination"] for link in answer["links"]] == [INVOICE, CONTRACT]
    for link in answer["links"]:
        response = follow(client, link["url"])
        assert response.status_code == 302
        assert response.headers["Location"] == link["destination"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "Set-Cookie" not in response.headers
    # Nothing in the request changes where it goes.
    url = answer["links"][0]["url"]
    for suffix in ("?next=https://evil.example/", "/https://evil.example/", "#x"):
        response = client.get(path_of(url) + suffix, headers=READER)
        assert response.headers.get("Location") in (None, INVOICE)
        assert "evil.example" not in response.headers.get("Location", "")


@pytest.mark.parametrize(
    "change",
    [
        lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"),  # altered signature
        # another id under the same signature (never the same one: 1 token in 64 starts with x)
        lambda token: ("x" if token[0] != "x" else "y") + token[1:],
        lambda token: token.split(".")[0],  # no signature
        lambda token: "",
    ],
    ids=["altered", "other-id", "unsigned", "empty"],
)
def test_a_forged_or_altered_link_gets_a_plain_page(client, auth, change, database):
    answer, pixel = tracked(client, auth)
    token = path_of(answer["links"][0]["url"])[len("/l/") :]
    response = client.get("/l/" + change(token), headers=READER)
    assert response.status_code == 404 and "Location" not in response.headers
    assert response.mimetype == "text/plain" and "not valid" in response.get_data(as_text=True)
    assert kinds(pixel) == []


def test_a_pixel_token_is_no_link_token(client, auth, database):
    answer, pixel = tracked(client, auth)
    pixel_token = answer["url"].split("/p/", 1)[1].removesuffix(".gif")
    assert client.get("/l/" + pixel_token, headers=READER).status_code == 404


def test_a_deleted_receipts_link_goes_nowhere(client, auth, database):
    answer, _ = tracked(client, auth)
    assert client.delete(f"/api/pixels/{answer['id']}", headers=auth).status_code == 204
    response = follow(client, answer["links"][0]["url"])
    assert response.status_code == 404 and "Location" not in response.headers
    assert Link.select().count() == 0


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://files.example.com/a",
        "mailto:ada@example.com",
        "file:///etc/passwd",
        "//evil.example/",
        "https://user:pw@pay.example.com/",
        "https://pay.example.com/a b",
        "https://",
        "https://pay.example.com/\x07",
        "x" * 10,
    ],
)
def test_only_http_and_https_links_are_tracked(client, auth, link, database):
    response = client.post("/api/pixels", json={"links": [INVOICE, link]}, headers=auth)
    assert response.status_code == 400, response.get_json()
    assert Pixel.select().count() == 0 and Link.select().count() == 0


def test_links_are_added_to_a_receipt_each_once(client, auth, database):
    answer = mint(client, auth)
    path = f"/api/pixels/{answer['id']}/links"
    first = client.post(path, json={"links": [INVOICE, INVOICE, CONTRACT]}, headers=auth)
    assert first.status_code == 200
    body = first.get_json()
    assert [link["destination"] for link in body["links"]] == [INVOICE, CONTRACT]
    again = client.post(path, json={"links": [CONTRACT]}, headers=auth).get_json()
    assert again["links"][0]["url"] == body["links"][1]["url"]
    assert again["honeypot"] == body["honeypot"]
    assert Link.select().where(Link.honeypot).count() == 1
    too_many = [f"https://example.com/{n}" for n in range(19)]
    assert client.post(path, json={"links": too_many}, headers=auth).status_code == 400
    assert Link.select().where(~Link.honeypot).count() == 2
    assert client.post(path, json={"links": "https://x.example/"}, headers=auth).status_code == 400


# --- who clicked -------------------------------------------------------------------------------


def test_a_persons_click_opens_the_receipt_and_tells_the_owner(app, client, auth, user, database):
    receiver = Receiver().start()
    try:
        NotifyChannel.create(user=user, kind="webhook", target=receiver.url, secret="whsec_a")
        answer, pixel = tracked(client, auth)
        response = follow(client, answer["links"][0]["url"])
        assert response.headers["X-Openreceipt"] == "recorded: click"
        pixel = Pixel.get_by_id(pixel.id)
        assert (pixel.state, pixel.click_count, pixel.open_count) == ("opened", 1, 0)
        [event] = Event.select()
        assert (event.kind, event.city, event.ip, event.link.destination) == (
            "click",
            "London",
            "81.2.69.0",
            INVOICE,
        )
        # Held until the clicks around it are in, then sent.
        with app.app_context():
            assert deliver_due(app, now=utcnow())["sent"] == 0
            assert deliver_due(app, now=utcnow() + SWEEP * 2)["sent"] == 1
        data = receiver.received[0].json()
        assert data["type"] == "clicked" and data["fetch"]["link"] == INVOICE
        assert data["title"] == "Clicked: Invoice 42"
        assert f"the link to {INVOICE} was clicked on" in data["text"]
        shown = client.get(f"/api/pixels/{answer['id']}", headers=auth).get_json()
        assert shown["counts"]["click"] == 1 and shown["events"][0]["link"] == INVOICE
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("ip", "headers", "method", "kind", "source"),
    [
        # Safe Links on delivery (gophish #973): Microsoft's protection range, old Chrome.
        ("40.107.5.20", {"User-Agent": SAFE_LINKS_CHROME}, "GET", "prefetch", "scanner-microsoft"),
        # Defender detonating from Azure with a current browser, minutes after sending.
        ("4.144.1.2", READER, "GET", "prefetch", "scanner-microsoft"),
        # A gateway's published range (Proofpoint's support page; URL Defense).
        ("62.209.50.7", READER, "GET", "prefetch", "scanner-proofpoint"),
        # A link checker's HEAD, a browser's prefetch, a library, no user agent at all.
        (LONDON, READER, "HEAD", "bot", "direct"),
        (LONDON, {**READER, "Sec-Purpose": "prefetch"}, "GET", "prefetch", "direct"),
        (LONDON, {"User-Agent": "python-requests/2.32.3"}, "GET", "bot", "automated"),
        (LONDON, {"User-Agent": ""}, "GET", "bot", "no-user-agent"),
        # A scanner naming itself (device-detector bots.yml: Barracuda Sentinel).
        (LONDON, {"User-Agent": "Barracuda Sentinel (EE)"}, "GET", "prefetch", "scanner-barracuda"),
    ],
    ids=[
        "safe-links",
        "azure",
        "proofpoint",
        "head",
        "prefetch",
        "library",
        "no-agent",
        "barracuda",
    ],
)
def test_scanners_never_click(client, auth, ip, headers, method, kind, source, database):
    answer, pixel = tracked(client, auth, sent_ago=datetime.timedelta(minutes=2))
    response = follow(client, answer["links"][0]["url"], ip=ip, method=method, headers=headers)
    assert response.status_code == 302  # served normally: the scanner learns nothing
    [event] = Event.select()
    assert (event.kind, event.source) == (kind, source)
    assert Pixel.get_by_id(pixel.id).click_count == 0


def test_a_click_minutes_after_sending_is_the_scanners_sweep(client, auth, database):
    # craft-campaign #546: link sweeps a median 43 s after sending, 97% within 5 minutes.
    answer, pixel = tracked(client, auth, sent_ago=datetime.timedelta(seconds=43))
    follow(client, answer["links"][0]["url"])
    [event] = Event.select()
    assert event.kind == "prefetch" and "within 5 minutes of sending" in event.reason
    assert Pixel.get_by_id(pixel.id).state == "delivered"


def test_the_honeypot_makes_that_networks_clicks_a_machines(app, client, auth, user, database):
    NotifyChannel.create(user=user, kind="webhook", target="http://127.0.0.1:9/", secret="s")
    answer, pixel = tracked(client, auth)
    # mautic #9798: a sweep follows the visible links and the hidden one within seconds.
    follow(client, answer["links"][0]["url"])
    assert kinds(pixel) == ["click"]
    follow(client, answer["honeypot"])
    assert kinds(pixel) == ["bot", "bot"]
    pixel = Pixel.get_by_id(pixel.id)
    assert (pixel.click_count, pixel.bot_count, pixel.state) == (0, 2, "waiting")
    assert "hidden link" in Event.get(Event.source == "direct").reason
    # The click's notice, held meanwhile, is dropped.
    with app.app_context():
        assert deliver_due(app, now=utcnow() + SWEEP * 2)["skipped"] == 1
    assert Notice.get().state == "skipped"
    # Another network's click is a person's.
    follow(client, answer["links"][1]["url"], ip="81.2.70.9")
    assert kinds(pixel)[-1] == "click"


def test_a_click_after_the_honeypot_hit_is_a_machines_too(client, auth, database):
    answer, pixel = tracked(client, auth)
    honeypot = follow(client, answer["honeypot"])
    assert honeypot.status_code == 200 and "Location" not in honeypot.headers
    follow(client, answer["links"][0]["url"])
    assert kinds(pixel) == ["bot", "bot"]


def test_several_links_within_seconds_are_a_sweep(client, auth, database):
    answer, pixel = tracked(client, auth)
    follow(client, answer["links"][0]["url"])
    follow(client, answer["links"][1]["url"])
    assert kinds(pixel) == ["bot", "bot"]
    assert "several of the message's links" in Event.get().reason


def test_one_link_twice_is_one_click(client, auth, database):
    answer, pixel = tracked(client, auth)
    follow(client, answer["links"][0]["url"])
    repeat = follow(client, answer["links"][0]["url"])
    assert repeat.headers["X-Openreceipt"] == "not recorded: repeat of a fetch seconds ago"
    assert kinds(pixel) == ["click"]


def test_the_senders_own_browser_is_no_click(client, auth, database):
    # Minted from this browser and network; the sender tries the link before sending.
    answer = client.post(
        "/api/pixels",
        json={"links": [INVOICE]},
        headers={**auth, **READER},
        environ_base={"REMOTE_ADDR": LONDON},
    ).get_json()
    pixel = Pixel.get(Pixel.public_id == answer["id"])
    follow(client, answer["links"][0]["url"])
    assert kinds(pixel) == ["self"]


def test_a_stopped_receipt_still_redirects_and_records_nothing(client, auth, database):
    answer, pixel = tracked(client, auth)
    Pixel.update(tracking_stopped_at=utcnow()).where(Pixel.id == pixel.id).execute()
    response = follow(client, answer["links"][0]["url"])
    assert response.status_code == 302 and response.headers["Location"] == INVOICE
    assert kinds(pixel) == []


def test_a_click_is_corrected_as_a_click_never_as_an_open(client, auth, database):
    answer, pixel = tracked(client, auth)
    follow(client, answer["links"][0]["url"])
    event = Event.get()
    path = f"/api/events/{event.id}/kind"
    assert client.post(path, json={"kind": "open"}, headers=auth).status_code == 400
    assert client.post(path, json={"kind": "bot"}, headers=auth).get_json()["state"] == "waiting"
    back = client.post(path, json={"kind": "click"}, headers=auth).get_json()
    assert (back["state"], back["counts"]["click"]) == ("opened", 1)


def test_the_receipts_page_and_the_export_show_the_link(signed_in, client, auth, database):
    answer, pixel = tracked(client, auth)
    follow(client, answer["links"][0]["url"])
    page = client.get(f"/m/{answer['id']}").get_data(as_text=True)
    assert "clicked" in page and f'Link: <span class="wrap">{INVOICE.replace("&", "&amp;")}' in page
    exported = json.loads(client.get("/settings/export.json").get_data(as_text=True))
    [receipt] = exported["pixels"]
    assert receipt["links"] == [INVOICE, CONTRACT]
    assert receipt["events"][0]["link"] == INVOICE and receipt["click_count"] == 1
    csv = client.get("/settings/export.csv").get_data(as_text=True)
    assert "event_link" in csv.splitlines()[0] and INVOICE in csv


# SQLite: a missing table fails as a database away does (OperationalError); PostgreSQL calls it
# a programming error, so the outage is simulated on SQLite only.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_database_away_gets_a_page_to_try_again(app, client, auth, database):
    answer, _ = tracked(client, auth)
    database.execute_sql("ALTER TABLE link RENAME TO link_away")
    try:
        response = follow(client, answer["links"][0]["url"])
    finally:
        database.execute_sql("ALTER TABLE link_away RENAME TO link")
    assert response.status_code == 503 and "Location" not in response.headers
    assert "try again shortly" in response.get_data(as_text=True)


def test_a_link_tracked_on_the_receipts_page(signed_in, client, auth, database):
    answer = mint(client, auth, subject="Lease notice")
    page = client.get(f"/m/{answer['id']}")
    token = csrf_token(page)
    done = client.post(
        f"/m/{answer['id']}/links",
        data={"link": "https://docs.example.com/lease.pdf", "csrf_token": token},
        follow_redirects=True,
    ).get_data(as_text=True)
    [link] = Link.select().where(~Link.honeypot)
    assert link.destination == "https://docs.example.com/lease.pdf"
    assert "Tracked: paste https://receipts.example.com/l/" in done
    assert 'id="link-1"' in done  # with its Copy button
    tracked_url = done.split('id="link-1" class="copy" readonly value="', 1)[1].split('"', 1)[0]
    assert follow(client, tracked_url).headers["Location"] == link.destination
    refused = client.post(
        f"/m/{answer['id']}/links",
        data={"link": "javascript:alert(1)", "csrf_token": token},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "Not tracked: only http:// and https:// links can be tracked" in refused
    assert Link.select().where(~Link.honeypot).count() == 1


def test_a_stopped_receipt_gets_no_tracked_links(client, auth, database):
    answer = mint(client, auth)
    Pixel.update(tracking_stopped_at=utcnow()).where(Pixel.public_id == answer["id"]).execute()
    refused = client.post(
        f"/api/pixels/{answer['id']}/links", json={"links": [INVOICE]}, headers=auth
    )
    assert refused.status_code == 400 and "do-not-track" in refused.get_json()["error"]
    assert Link.select().count() == 0


def test_a_do_not_track_recipient_gets_neither_pixel_nor_links(client, auth, user, database):
    DoNotTrack.create(user=user, entry="bob@example.com")
    refused = client.post(
        "/api/pixels", json={"recipients": ["bob@example.com"], "links": [INVOICE]}, headers=auth
    )
    assert refused.status_code == 409
    assert Pixel.select().count() == 0 and Link.select().count() == 0


def test_a_click_the_database_cannot_take_waits_in_the_spool(app, client, auth, database):
    answer, pixel = tracked(client, auth)
    [link] = Link.select().where(Link.destination == INVOICE)
    database.execute_sql("ALTER TABLE event RENAME TO event_away")
    try:
        response = follow(client, answer["links"][0]["url"])
    finally:
        database.execute_sql("ALTER TABLE event_away RENAME TO event")
    # The person goes on at once; the click waits, masked, with its link.
    assert response.status_code == 302 and response.headers["Location"] == INVOICE
    assert response.headers["X-Openreceipt"] == "spooled: database unavailable"
    [line] = (Path(app.config["DATA_DIR"]) / "spool" / "active.jsonl").read_text().splitlines()
    spooled = json.loads(line)
    assert (spooled["link_id"], spooled["ip"]) == (link.id, "81.2.69.0")
    assert spool.replay(app)["recorded"] == 1
    [event] = Event.select()
    assert (event.kind, event.link_id) == ("click", link.id)
    assert Pixel.get_by_id(pixel.id).click_count == 1


def test_a_click_is_never_corrected_to_an_open_nor_a_fetch_to_a_click(client, auth, database):
    """Each refusal says why, and changes nothing."""
    answer, pixel = tracked(client, auth)
    follow(client, answer["links"][0]["url"])
    client.get(
        answer["url"].split("receipts.example.com", 1)[-1],
        headers=READER,
        environ_base={"REMOTE_ADDR": "81.2.70.1"},
    )
    clicked = Event.get(Event.pixel == pixel.id, Event.link.is_null(False))
    fetched = Event.get(Event.pixel == pixel.id, Event.link.is_null())
    refusals = [
        (clicked, "open", "a tracked link's request can be a click, not an open"),
        (fetched, "click", "a fetch of the image can be an open, not a click"),
    ]
    for event, kind, why in refusals:
        refused = client.post(f"/api/events/{event.id}/kind", json={"kind": kind}, headers=auth)
        assert refused.status_code == 400 and refused.get_json()["error"] == why
        assert Event.get_by_id(event.id).kind == event.kind
    assert kinds(pixel) == ["click", "open"]


def test_a_persons_open_and_clicks_in_their_other_messages_are_no_sweep(client, auth, database):
    """What the sweep rule counts is this message's links followed by the same network within
    seconds: not the image shown as the message opened, not a link of another message read at
    the same time, not a second link of this one followed an hour later."""
    answer, pixel = tracked(client, auth)
    image = client.get(
        answer["url"].split("receipts.example.com", 1)[-1],
        headers=READER,
        environ_base={"REMOTE_ADDR": LONDON},
    )
    assert image.headers["X-Openreceipt"] == "recorded: open"
    follow(client, answer["links"][0]["url"])
    other_answer, other = tracked(client, auth)
    follow(client, other_answer["links"][1]["url"])
    assert kinds(pixel) == ["open", "click"] and kinds(other) == ["click"]
    an_hour_ago = utcnow() - datetime.timedelta(hours=1)
    Event.update(at=an_hour_ago).where(Event.pixel == pixel.id).execute()
    follow(client, answer["links"][1]["url"])
    assert kinds(pixel) == ["open", "click", "click"]

    # A scanner sweeping a third message makes its own clicks a machine's, and no one else's.
    swept_answer, swept = tracked(client, auth)
    for link in swept_answer["links"]:
        follow(client, link["url"], ip="192.0.2.10")
    assert kinds(swept) == ["bot", "bot"]
    assert kinds(pixel) == ["open", "click", "click"] and kinds(other) == ["click"]


# judge_click() itself, one request at a time: every verdict's kind, source and the reason the
# receipt's page shows for it.
AZURE_ADDRESS = "4.144.0.0"  # Microsoft's cloud (web/judgement/data/ranges/azure.txt)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
MINUTE = datetime.timedelta(minutes=1)
CLICK_JUDGED = [
    # (what the request sends, minutes since sending, verdict)
    ({"honeypot": True}, 60, ("bot", "honeypot", clicks.HONEYPOT_REASON)),
    ({"method": "HEAD"}, 60, ("bot", "direct", "HEAD request: the link was checked, not followed")),
    ({"purpose": "prefetch"}, 60, ("prefetch", "direct", "the link was prefetched, not clicked")),
    (
        {"user_agent": GMAIL_PROXY},
        60,
        ("bot", "gmail-proxy", "a mail provider's image proxy fetched the link: nobody clicked it"),
    ),
    (
        {"user_agent": "Mozilla/5.0"},
        60,
        ("prefetch", "machine", "a bare 'Mozilla/5.0' client: a machine"),
    ),
    ({"user_agent": ""}, 60, ("bot", "no-user-agent", "no user agent: a script, not a browser")),
    *[
        (
            {"ip": AZURE_ADDRESS},
            minutes,
            (
                "prefetch",
                "scanner-microsoft",
                "a browser in Microsoft's cloud within 5 minutes of sending: Defender / Safe "
                "Links checking the message's links",
            ),
        )
        for minutes in (1, 5, None)  # None: never marked sent
    ],
    ({"ip": AZURE_ADDRESS}, 6, ("click", "direct", "a browser followed the link")),
    (
        {"user_agent": THUNDERBIRD},
        60,
        ("prefetch", "direct", "the mail program fetched the link itself (a preview)"),
    ),
    (
        {"user_agent": "Frobnicator/3.1"},
        60,
        ("unknown", "unrecognised", "an unrecognised program followed the link: no click"),
    ),
    (
        {"browser": "sender"},
        60,
        (
            "self",
            "direct",
            "the sender's own browser (same browser and network as when the receipt was made)",
        ),
    ),
    ({}, 4, ("prefetch", "direct", clicks.WINDOW_REASON)),
    ({}, 5, ("prefetch", "direct", clicks.WINDOW_REASON)),
    ({}, 6, ("click", "direct", "a browser followed the link")),
    ({}, None, ("click", "direct", "a browser followed the link")),
]


@pytest.mark.parametrize(("sent", "minutes", "expected"), CLICK_JUDGED)
def test_each_kind_of_click_is_judged_and_says_why(sent, minutes, expected):
    now = utcnow()
    request = {"user_agent": CHROME, "ip": "81.2.69.0", "browser": "someone", "link_id": 1}
    fetch = Fetch(**{**request, **sent})
    sent_at = None if minutes is None else now - minutes * MINUTE
    facts = PixelFacts(mint_fingerprint="sender", sent_at=sent_at)
    verdict = clicks.judge_click(fetch, facts, Networks.default(), now)
    assert (verdict.kind, verdict.source, verdict.reason) == expected
