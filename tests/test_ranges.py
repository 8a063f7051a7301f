"""Apple's egress ranges: `openreceipt ranges update` against a local HTTP server, and the
classifier using what it stored."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from web import create_app
from web.judgement.networks import NetworkSet
from web.judgement.ranges import APPLE_EGRESS_FILE, apple_networks, parse_egress_csv

from .helpers import mint, pixel_path

# The shape of https://mask-api.icloud.com/egress-ip-ranges.csv: prefix,country,region,city,
SAMPLE = """172.224.224.0/27,GB,GB-EN,London,
172.224.224.32/31,GB,GB-EN,London,
2a02:26f7:b3c0:4000::/64,DE,DE-BE,Berlin,
104.28.0.0/27,US,US-CA,Los Angeles,
not-a-prefix,XX,,,
"""


class Served(BaseHTTPRequestHandler):
    body = SAMPLE.encode()
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def egress_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Served)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/egress-ip-ranges.csv"
    httpd.shutdown()
    httpd.server_close()


def test_parse_keeps_valid_prefixes_only():
    assert parse_egress_csv(SAMPLE) == [
        "172.224.224.0/27",
        "172.224.224.32/31",
        "2a02:26f7:b3c0:4000::/64",
        "104.28.0.0/27",
    ]


def test_update_stores_prefixes_and_the_classifier_uses_them(settings, runner, egress_server, auth):
    result = runner.invoke(args=["ranges", "update", "--url", egress_server])
    assert result.exit_code == 0, result.output
    assert "stored 4 Apple egress prefixes" in result.output
    stored = (settings_dir(settings) / APPLE_EGRESS_FILE).read_text().split()
    assert stored[0] == "172.224.224.0/27" and len(stored) == 4

    downloaded = NetworkSet(stored)
    assert "172.224.224.0" in downloaded and "2a02:26f7:b3c0:4000::" in downloaded
    assert "172.224.225.0" not in downloaded
    # The server uses them with Apple's own blocks and the shipped summary.
    networks = apple_networks(settings_dir(settings))
    assert all(NetworkSet([prefix]).meets(prefix.split("/")[0]) for prefix in stored)
    assert "172.224.224.0" in networks and "17.1.2.0" in networks

    # A restarted server judges Mail Privacy Protection from those ranges.
    client = create_app(settings).test_client()
    body = mint(client, auth)
    client.get(
        pixel_path(body["url"]),
        headers={"User-Agent": "Mozilla/5.0"},
        environ_base={"REMOTE_ADDR": "172.224.224.9"},
    )
    event = client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()["events"][0]
    assert (event["kind"], event["source"]) == ("prefetch", "apple-mpp")


@pytest.mark.parametrize(
    ("masked", "meets"),
    [
        ("172.224.224.0", True),  # the /24 holding 172.224.224.0/27 and .32/31
        ("172.224.225.0", False),
        ("104.28.0.0", True),
        ("2a02:26f7:b3c0::", True),  # the /48 holding 2a02:26f7:b3c0:4000::/64
        ("2a02:26f7:b3c1::", False),
        ("", False),
        ("nonsense", False),
    ],
)
def test_small_prefixes_meet_the_masked_block_that_holds_them(tmp_path, masked, meets):
    """A masked address stands for its whole /24 or /48: a /31 inside it counts."""
    assert NetworkSet(parse_egress_csv(SAMPLE)).meets(masked) is meets


def test_mail_privacy_protection_through_a_tiny_egress_prefix(
    settings, runner, egress_server, auth
):
    runner.invoke(args=["ranges", "update", "--url", egress_server])
    client = create_app(settings).test_client()
    body = mint(client, auth)
    client.get(
        pixel_path(body["url"]),
        headers={"User-Agent": "Mozilla/5.0"},
        environ_base={"REMOTE_ADDR": "172.224.224.33"},  # in 172.224.224.32/31
    )
    event = client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()["events"][0]
    assert (event["kind"], event["source"], event["ip"]) == (
        "prefetch",
        "apple-mpp",
        "172.224.224.0",
    )


def test_without_a_download_the_built_in_set_is_used(settings, app):
    """A fresh install knows Apple's blocks and the relay's egress (the shipped summary): the
    addresses Mail Privacy Protection was seen fetching from through Akamai, Fastly and
    Cloudflare."""
    networks = app.extensions["openreceipt"].judge.networks
    assert "17.58.0.0" in networks.apple and "2620:149:a::" in networks.apple
    for masked in ("172.224.226.0", "146.75.168.0", "104.28.37.0", "2a04:4e41:4::"):
        assert networks.apple.meets(masked), masked
    for masked in ("81.2.69.0", "8.8.8.0", "2001:db8::"):
        assert not networks.apple.meets(masked), masked


def test_failed_update_keeps_the_stored_list(settings, runner, egress_server):
    runner.invoke(args=["ranges", "update", "--url", egress_server])
    Served.body = b"<html>maintenance</html>"
    try:
        result = runner.invoke(args=["ranges", "update", "--url", egress_server])
    finally:
        Served.body = SAMPLE.encode()
    assert result.exit_code == 1 and "holds no IP prefixes" in result.output
    assert len((settings_dir(settings) / APPLE_EGRESS_FILE).read_text().split()) == 4


def test_unreachable_source_is_a_clear_error(runner, settings):
    from .servers import free_port

    result = runner.invoke(
        args=["ranges", "update", "--url", f"http://127.0.0.1:{free_port()}/x.csv"]
    )
    assert result.exit_code == 1 and "cannot download" in result.output
    assert not (settings_dir(settings) / APPLE_EGRESS_FILE).exists()


def settings_dir(settings):
    from pathlib import Path

    return Path(settings["DATA_DIR"])


def test_operator_listed_scanners_are_prefetches(settings, auth):
    from pathlib import Path

    Path(settings["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    (Path(settings["DATA_DIR"]) / "scanner-ranges.txt").write_text(
        "# our recipients' gateway\n203.0.113.0/25  # scanner A\n\n2001:db8:5ca::/48\n"
    )
    client = create_app(settings).test_client()
    body = mint(client, auth)
    thunderbird = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
    for address in ("203.0.113.77", "2001:db8:5ca:1::9", "198.51.100.7"):
        client.get(
            pixel_path(body["url"]),
            headers={"User-Agent": thunderbird},
            environ_base={"REMOTE_ADDR": address},
        )
    events = client.get(f"/api/pixels/{body['id']}", headers=auth).get_json()["events"]
    assert [(e["kind"], e["source"]) for e in events] == [
        ("prefetch", "scanner"),
        ("prefetch", "scanner"),
        ("open", "direct"),
    ]


def test_a_wrong_scanner_line_stops_start_up(settings):
    from pathlib import Path

    from web.config import ConfigError

    Path(settings["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    (Path(settings["DATA_DIR"]) / "scanner-ranges.txt").write_text(
        "203.0.113.0/25\nscanner.example\n"
    )
    with pytest.raises(ConfigError, match="line 2: 'scanner.example' is not an IP prefix"):
        create_app(settings)
