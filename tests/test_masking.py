"""anonymize() and redact(): what leaves a request is a masked address, never the raw one;
fingerprint() and kept_recipients(): what is kept of a browser and of the recipients."""

import ipaddress
import random

import pytest

from web.privacy import IPV4_PREFIX, _plain_ipv4, anonymize, fingerprint, kept_recipients
from web.serverlog import redact
from web.storage.models import Pixel


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        pytest.param("81.2.69.160", "81.2.69.0", id="ipv4"),
        pytest.param("81.2.69.0", "81.2.69.0", id="ipv4-already-masked"),
        pytest.param("81.2.69.255", "81.2.69.0", id="ipv4-broadcast"),
        pytest.param("10.0.0.1", "10.0.0.0", id="ipv4-private"),
        pytest.param("127.0.0.1", "127.0.0.0", id="ipv4-loopback"),
        pytest.param("2001:db8:1234:5678::1", "2001:db8:1234::", id="ipv6"),
        pytest.param(
            "2001:0db8:1234:5678:9abc:def0:1234:5678", "2001:db8:1234::", id="ipv6-exploded"
        ),
        pytest.param("2001:DB8:1234:5678::1", "2001:db8:1234::", id="ipv6-upper-case"),
        pytest.param("2a01:111:f400:fe00::5", "2a01:111:f400::", id="ipv6-microsoft"),
        pytest.param("::1", "::", id="ipv6-loopback"),
        pytest.param("::ffff:81.2.69.160", "81.2.69.0", id="ipv4-mapped"),
        pytest.param("::ffff:5102:45a0", "81.2.69.0", id="ipv4-mapped-hex"),
        pytest.param("2002:5102:45a0::1", "81.2.69.0", id="6to4"),
        pytest.param("2002:5102:45a0:ffff:1:2:3:4", "81.2.69.0", id="6to4-other-subnet"),
        pytest.param("fe80::1%eth0", "fe80::", id="zone"),
        pytest.param("fe80::1%25", "fe80::", id="zone-numeric"),
        pytest.param("fe80::1%", "fe80::", id="zone-empty"),
        pytest.param("fe80::1%%", "fe80::", id="zone-percent"),
        pytest.param("81.2.69.160:5678", "81.2.69.0", id="ipv4-port"),
        pytest.param("[2001:db8:1234:5678::1]:443", "2001:db8:1234::", id="ipv6-port"),
        pytest.param("[2001:db8:1234:5678::1]", "2001:db8:1234::", id="ipv6-brackets"),
        pytest.param("[::ffff:81.2.69.160]:443", "81.2.69.0", id="ipv4-mapped-port"),
        pytest.param("[fe80::1%eth0]:443", "fe80::", id="zone-port"),
        pytest.param(" 81.2.69.160 ", "81.2.69.0", id="spaces"),
        pytest.param("\t2001:db8:1234:5678::1\n", "2001:db8:1234::", id="tab-newline"),
    ],
)
def test_anonymize_masks(address, masked):
    assert anonymize(address) == masked


@pytest.mark.parametrize(
    "address",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("unknown", id="unknown"),
        pytest.param("999.1.1.1", id="octet-too-large"),
        pytest.param("1.2.3", id="three-octets"),
        pytest.param("1.2.3.4.5", id="five-octets"),
        pytest.param("081.2.69.160", id="leading-zero"),
        pytest.param("81.02.69.160", id="leading-zero-two-digits"),
        pytest.param("1.2.03.4", id="leading-zero-after-single-digits"),
        pytest.param("81.2.69.256", id="octet-256"),
        pytest.param("256.2.69.160", id="first-octet-256"),
        pytest.param("a.b.c.d", id="four-letters"),
        pytest.param("81.2.69.a", id="letter-octet"),
        pytest.param("\u0668\u0661.2.69.160", id="arabic-indic-digits"),
        pytest.param("81.2.69.160/24", id="network"),
        pytest.param("81.2.69.160:", id="empty-port"),
        pytest.param("2001:db8::1::2", id="two-double-colons"),
        pytest.param("2001:db8:gggg::1", id="ipv6-bad-hex"),
        pytest.param("[2001:db8::1", id="unclosed-bracket"),
        pytest.param("example.com", id="hostname"),
        pytest.param("81.2.69.160, 10.0.0.1", id="forwarded-list"),
        pytest.param("<script>alert(1)</script>", id="markup"),
        pytest.param("\x00\xff\u2603", id="garbage"),
        pytest.param("1" * 100_000, id="very-long-digits"),
        pytest.param("81.2.69.160" * 10_000, id="very-long-repeated"),
        pytest.param(":" * 10_000, id="very-long-colons"),
    ],
)
def test_anonymize_refuses_what_is_not_an_address(address):
    assert anonymize(address) is None


@pytest.mark.parametrize(
    "address",
    ["81.2.69.160", "0.0.0.0", "1.2.3.4", "10.0.0.255", "100.200.250.255", "255.255.255.255"],
)
def test_a_plain_ipv4_address_is_masked_without_the_full_parse(address):
    """The pixel's common case: _plain_ipv4 gives every plain dotted address its /24 itself (it
    is what spares each fetch ipaddress's cost), the same /24 the full parse gives."""
    network = ipaddress.ip_network((address, IPV4_PREFIX), strict=False)
    assert _plain_ipv4(address) == str(network.network_address)


@pytest.mark.parametrize(
    "address", ["1.2.03.4", "1.2.3", "1.2.3.4:80", "::1", "1.2.3.256", "a.b.c.d"]
)
def test_anything_but_a_plain_ipv4_address_is_left_to_the_full_parse(address):
    assert _plain_ipv4(address) is None


def test_fingerprint_tells_browsers_networks_and_keys_apart():
    """The keyed hash of the mint request's browser: the same browser on the same network gives
    the same one; another user agent, network or key another; it fits its column."""
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    same = fingerprint("key", ua, "81.2.69.0")
    assert same == fingerprint("key", ua, "81.2.69.0")
    others = {
        fingerprint("key", ua + " ", "81.2.69.0"),
        fingerprint("key", ua, "81.2.70.0"),
        fingerprint("other key", ua, "81.2.69.0"),
        fingerprint("key", "", "81.2.69.0"),
        fingerprint("key", ua, None),
    }
    assert same not in others and len(others) == 5
    assert fingerprint("key", None, None) == fingerprint("key", "", "")
    assert len(same) <= Pixel.mint_fingerprint.max_length
    assert ua not in same and "81.2.69" not in same


def test_fingerprint_takes_any_text():
    """A user agent is whatever text came (JSON may carry a lone surrogate): it is hashed, and
    two such texts still differ."""
    assert fingerprint("key", "\ud800", "81.2.69.0") != fingerprint("key", "\udc00", "81.2.69.0")


def test_kept_recipients_keep_addresses_domains_or_nothing():
    addresses = ["bob@example.de", '"a@b"@mail.example', "carol@example.de"]
    assert kept_recipients(addresses, "address") == addresses
    assert kept_recipients(addresses, "domain") == ["example.de", "mail.example"]
    assert kept_recipients(addresses, "none") == []


def _sample_addresses(count=300, seed=20240501):
    """Random addresses whose host part is not all zero, so the raw text differs from its mask."""
    rng = random.Random(seed)
    samples = []
    while len(samples) < count:
        v4 = ipaddress.IPv4Address(rng.getrandbits(32))
        v6 = ipaddress.IPv6Address(rng.getrandbits(128))
        if int(v4) & 0xFF:
            sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | 1)
            samples.append(("v4", str(v4), v4))
            samples.append(("mapped", f"::ffff:{v4}", v4))
            samples.append(("6to4", str(sixtofour), v4))
        if int(v6) & ((1 << 80) - 1) and v6.ipv4_mapped is None and v6.sixtofour is None:
            samples.append(("v6", str(v6), v6))
            samples.append(("v6-exploded", v6.exploded, v6))
    return [
        pytest.param(form, raw, ip, id=f"{form}-{number}")
        for number, (form, raw, ip) in enumerate(samples)
    ]


@pytest.mark.parametrize(("form", "raw", "ip"), _sample_addresses())
def test_anonymize_never_returns_the_raw_address(form, raw, ip):
    masked = anonymize(raw)
    assert masked is not None
    assert raw not in masked
    assert str(ip) not in masked
    assert ip.exploded not in ipaddress.ip_address(masked).exploded
    prefix = 24 if ip.version == 4 else 48
    assert ipaddress.ip_address(masked) == ipaddress.ip_network((ip, prefix), strict=False)[0]
    assert anonymize(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        pytest.param(
            'GET /p/abc.gif from 81.2.69.160 "Mozilla/5.0"',
            'GET /p/abc.gif from 81.2.69.0 "Mozilla/5.0"',
            id="ipv4",
        ),
        pytest.param(
            "X-Forwarded-For: 81.2.69.160, 10.1.2.3",
            "X-Forwarded-For: 81.2.69.0, 10.1.2.0",
            id="ipv4-list",
        ),
        pytest.param(
            "client=2001:db8:1234:5678::1 closed",
            "client=2001:db8:1234:: closed",
            id="ipv6",
        ),
        pytest.param(
            "ip=2001:DB8:1234:5678:9abc:def0:1234:5678 end",
            "ip=2001:db8:1234:: end",
            id="ipv6-full",
        ),
        pytest.param(
            "connect from [2001:db8:1234:5678::1]:443 refused",
            "connect from [2001:db8:1234::]:443 refused",
            id="ipv6-brackets-port",
        ),
        pytest.param("peer ::ffff:81.2.69.160 gone", "peer 81.2.69.0 gone", id="ipv4-mapped"),
        pytest.param("peer 2002:5102:45a0::1 gone", "peer 81.2.69.0 gone", id="6to4"),
        pytest.param("link fe80::1%eth0 up", "link fe80::%eth0 up", id="zone"),
        pytest.param(
            "(81.2.69.160) '81.2.69.161' \"81.2.69.162\"",
            "(81.2.69.0) '81.2.69.0' \"81.2.69.0\"",
            id="quoted",
        ),
        pytest.param(
            "http://81.2.69.160/x http://[2001:db8:1234:5678::1]/y",
            "http://81.2.69.0/x http://[2001:db8:1234::]/y",
            id="urls",
        ),
        pytest.param(
            "81.2.69.160 and 2001:db8:1234:5678::1 and ::ffff:10.9.8.7",
            "81.2.69.0 and 2001:db8:1234:: and 10.9.8.0",
            id="several",
        ),
    ],
)
def test_redact_masks_every_address(line, redacted):
    assert redact(line) == redacted


# gunicorn's own line: base.Worker.handle_error() logs "Invalid request from ip={ip}: {error}".
@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        pytest.param(
            "Invalid request from ip=81.2.69.160: Invalid HTTP Version",
            "Invalid request from ip=81.2.69.0: Invalid HTTP Version",
            id="gunicorn-invalid-request-ipv4",
        ),
        pytest.param(
            "Invalid request from ip=2001:db8:1234:5678::1: Invalid HTTP Version",
            "Invalid request from ip=2001:db8:1234::: Invalid HTTP Version",
            id="gunicorn-invalid-request-ipv6",
        ),
        pytest.param(
            "Invalid request from ip=::ffff:81.2.69.160: Invalid HTTP Version",
            "Invalid request from ip=81.2.69.0: Invalid HTTP Version",
            id="gunicorn-invalid-request-mapped",
        ),
        pytest.param("refused 81.2.69.160.", "refused 81.2.69.0.", id="end-of-sentence"),
        pytest.param("refused 81.2.69.160...", "refused 81.2.69.0...", id="ellipsis"),
        pytest.param(
            "refused 2001:db8:1234:5678::1.", "refused 2001:db8:1234::.", id="end-of-sentence-ipv6"
        ),
    ],
)
def test_redact_masks_an_address_followed_by_colon_or_dot(line, redacted):
    assert redact(line) == redacted


@pytest.mark.parametrize(
    ("line", "raw", "masked"),
    [
        pytest.param("client 81.2.69.160:5678 closed", "81.2.69.160", "81.2.69.0", id="ipv4"),
        pytest.param(
            "client [2001:db8:1234:5678::1]:5678 closed",
            "2001:db8:1234:5678::1",
            "2001:db8:1234::",
            id="ipv6",
        ),
    ],
)
def test_redact_masks_an_address_with_a_port(line, raw, masked):
    # Whether the port survives is not a privacy matter; the address must not.
    redacted = redact(line)
    assert raw not in redacted
    assert masked in redacted
    assert redacted.startswith("client ") and redacted.endswith(" closed")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("[2024-05-01 18:09:23 +0000] [42] [INFO] Booting worker", id="time"),
        pytest.param("12:34:56.789 request took 3:02:01", id="times"),
        pytest.param("started 18:09:23.123456", id="time-microseconds"),
        pytest.param("Microsoft Outlook 16.0.4266; Pro", id="version-3-part"),
        pytest.param("Safari/537.36 Thunderbird/115.3.1 Chrome/124.0.6367.91", id="ua-versions"),
        pytest.param("Chrome/120.0.0.0 Safari/537.36", id="version-looks-like-network"),
        pytest.param("deadbeef cafe:babe dead:beef:cafe 0xff", id="hex-words"),
        pytest.param("sha256=9f86d081884c7d659a2feaa0c55ad015", id="hex-digest"),
        pytest.param(
            "fingerprint AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89", id="colon-fingerprint"
        ),
        pytest.param("GET /p/abc.SU5tl-I9w9R5K4_5ft.gif HTTP/1.1 200 43 1ms", id="request-line"),
        pytest.param("no address here at all", id="plain"),
        pytest.param("", id="empty"),
    ],
)
def test_redact_leaves_other_text_alone(line):
    assert redact(line) == line
