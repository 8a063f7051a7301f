"""classify(), client_name() and NetworkSet over real user agents and address ranges."""

import dataclasses
import datetime
import ipaddress
import itertools
import random

import pytest
import ua_parser

import web.judgement.classify as classify_module
from web.judgement.classify import (
    SCANNER_WINDOW,
    Fetch,
    PixelFacts,
    Verdict,
    classify,
    judge,
)
from web.judgement.clients import client_name
from web.judgement.judge import Judge
from web.judgement.networks import NetworkSet
from web.judgement.ranges import Networks, builtin_networks
from web.privacy import anonymize
from web.vocabulary import KINDS, Kind

# Real user agents, as the fetchers send them.
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
GMAIL_PREFETCH = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0"
)
GMAIL_SAMPLING = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Gmail-content-sampling"
)
APPLE_MPP = "Mozilla/5.0"
APPLE_MAIL_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
OUTLOOK_2016 = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)"
OUTLOOK_MS_OFFICE = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"
OUTLOOK_TRIDENT = (
    "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; "
    ".NET4.0E; Microsoft Outlook 16.0.5278; ms-office; MSOffice 16)"
)
OUTLOOK_MAC = (
    "Microsoft Office/16.0 (Macintosh; Mac OS X 10.15.7; Microsoft Outlook 16.78.23121017; Pro)"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.3.1"
THUNDERBIRD_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15"
)
EDGE = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.6367.60 Safari/537.36"
)
FACEBOOK = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
CURL = "curl/8.5.0"

# Masked addresses, as classify() receives them.
APPLE_IP = "17.58.0.0"
PLAIN_IP = "81.2.69.0"
GOOGLE_IPS = ["66.102.8.0", "66.249.84.0", "74.125.0.0", "209.85.128.0", "2001:4860:4860::"]
MICROSOFT_SCANNER_IPS = [
    "40.92.0.0",
    "40.93.255.0",
    "40.107.0.0",
    "40.107.255.0",
    "52.100.0.0",
    "52.103.255.0",
    "104.47.0.0",
    "104.47.127.0",
    "2a01:111:f400::",
    "2a01:111:f403::",
]
JUST_OUTSIDE_MICROSOFT_SCANNER_IPS = [
    "40.91.255.0",
    "40.94.0.0",
    "40.106.255.0",
    "40.108.0.0",
    "52.99.255.0",
    "52.104.0.0",
    "104.46.255.0",
    "104.47.128.0",
    "2a01:111:f3ff::",
    "2a01:111:f401::",
    "2a01:111:f402::",
    "2a01:111:f404::",
]

NETWORKS = Networks.default()
MICROSOFT_PROTECTION = builtin_networks("microsoft-protection")


@pytest.fixture(scope="module")
def parser():
    return ua_parser.Parser.from_matchers(ua_parser.load_builtins())


def verdict_of(user_agent, ip=PLAIN_IP, method="GET", purpose=""):
    return classify(Fetch(user_agent, ip, method, purpose), NETWORKS)


@pytest.mark.parametrize(
    ("user_agent", "ip", "kind", "source"),
    [
        pytest.param(GMAIL_PROXY, "66.102.8.0", Kind.OPEN, "gmail-proxy", id="gmail-proxy"),
        pytest.param(
            GMAIL_PREFETCH, "66.249.84.0", Kind.PREFETCH, "gmail-prefetch", id="gmail-prefetch"
        ),
        pytest.param(
            GMAIL_PREFETCH.removesuffix(" Mozilla/5.0"),
            "66.249.84.0",
            Kind.PREFETCH,
            "gmail-prefetch",
            id="gmail-prefetch-short",
        ),
        pytest.param(
            GMAIL_SAMPLING, "66.249.84.0", Kind.PREFETCH, "gmail-prefetch", id="gmail-sampling"
        ),
        pytest.param(APPLE_MPP, APPLE_IP, Kind.PREFETCH, "apple-mpp", id="apple-mpp"),
        pytest.param(APPLE_MPP, "17.0.0.0", Kind.PREFETCH, "apple-mpp", id="apple-mpp-first-24"),
        pytest.param(APPLE_MPP, "17.255.255.0", Kind.PREFETCH, "apple-mpp", id="apple-mpp-last-24"),
        pytest.param(APPLE_MPP, PLAIN_IP, Kind.PREFETCH, "machine", id="bare-mozilla-elsewhere"),
        pytest.param(
            APPLE_MPP, "16.255.255.0", Kind.PREFETCH, "machine", id="bare-mozilla-before-17"
        ),
        pytest.param(APPLE_MPP, "18.0.0.0", Kind.PREFETCH, "machine", id="bare-mozilla-after-17"),
        pytest.param(APPLE_MPP, None, Kind.PREFETCH, "machine", id="bare-mozilla-no-address"),
        pytest.param(APPLE_MAIL_MAC, APPLE_IP, Kind.OPEN, "direct", id="apple-mail-mac-from-apple"),
        pytest.param(IPHONE_MAIL, APPLE_IP, Kind.OPEN, "direct", id="iphone-mail-from-apple"),
        pytest.param(YAHOO_PROXY, "98.136.0.0", Kind.OPEN, "yahoo-proxy", id="yahoo-proxy"),
        pytest.param(OUTLOOK_2016, PLAIN_IP, Kind.OPEN, "outlook", id="outlook-2016"),
        pytest.param(OUTLOOK_MS_OFFICE, PLAIN_IP, Kind.OPEN, "outlook", id="outlook-ms-office"),
        pytest.param(OUTLOOK_TRIDENT, PLAIN_IP, Kind.OPEN, "outlook", id="outlook-trident"),
        pytest.param(OUTLOOK_MAC, PLAIN_IP, Kind.OPEN, "outlook", id="outlook-mac"),
        pytest.param(THUNDERBIRD, PLAIN_IP, Kind.OPEN, "direct", id="thunderbird"),
        pytest.param(THUNDERBIRD_WINDOWS, PLAIN_IP, Kind.OPEN, "direct", id="thunderbird-windows"),
        pytest.param(CHROME_WINDOWS, PLAIN_IP, Kind.OPEN, "direct", id="chrome"),
        pytest.param(CHROME_ANDROID, PLAIN_IP, Kind.OPEN, "direct", id="chrome-android"),
        pytest.param(FIREFOX, PLAIN_IP, Kind.OPEN, "direct", id="firefox"),
        pytest.param(SAFARI, PLAIN_IP, Kind.OPEN, "direct", id="safari"),
        pytest.param(EDGE, PLAIN_IP, Kind.OPEN, "direct", id="edge"),
        pytest.param(IPHONE_MAIL, PLAIN_IP, Kind.OPEN, "direct", id="iphone-mail"),
        pytest.param(APPLE_MAIL_MAC, PLAIN_IP, Kind.OPEN, "direct", id="apple-mail-mac"),
        pytest.param(CHROME_WINDOWS, "2001:db8:1234::", Kind.OPEN, "direct", id="chrome-ipv6"),
        pytest.param(CHROME_WINDOWS, None, Kind.OPEN, "direct", id="chrome-no-address"),
    ],
)
def test_classify(user_agent, ip, kind, source):
    verdict = verdict_of(user_agent, ip)
    assert (verdict.kind, verdict.source) == (kind, source)


@pytest.mark.parametrize("ip", [PLAIN_IP, APPLE_IP, None, *GOOGLE_IPS, *MICROSOFT_SCANNER_IPS])
def test_gmail_proxy_is_never_a_bot(ip):
    verdict = verdict_of(GMAIL_PROXY, ip)
    assert verdict.kind != Kind.BOT
    assert (verdict.kind, verdict.source) == (Kind.OPEN, "gmail-proxy")


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param(CHROME_WINDOWS, id="chrome"),
        pytest.param(OUTLOOK_2016, id="outlook"),
        pytest.param(THUNDERBIRD, id="thunderbird"),
        pytest.param(YAHOO_PROXY, id="yahoo"),
        pytest.param(APPLE_MPP, id="bare-mozilla"),
        pytest.param(CURL, id="curl"),
        pytest.param("python-requests/2.31.0", id="python-requests"),
        pytest.param("", id="empty"),
    ],
)
@pytest.mark.parametrize("ip", MICROSOFT_SCANNER_IPS)
def test_microsoft_protection_is_a_scanner(user_agent, ip):
    verdict = verdict_of(user_agent, ip)
    assert (verdict.kind, verdict.source) == (Kind.PREFETCH, "scanner-microsoft")


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        pytest.param("40.107.22.94", "40.107.22.0", id="ipv4"),
        pytest.param("52.101.129.7", "52.101.129.0", id="ipv4-52"),
        pytest.param("2a01:111:f400:7e1a::20", "2a01:111:f400::", id="ipv6-f400"),
        pytest.param("2a01:111:f403:c10c::3", "2a01:111:f403::", id="ipv6-f403"),
        pytest.param("::ffff:104.47.64.33", "104.47.64.0", id="ipv4-mapped"),
    ],
)
def test_microsoft_protection_is_a_scanner_after_masking(raw, masked):
    assert anonymize(raw) == masked
    assert verdict_of(CHROME_WINDOWS, anonymize(raw)).source == "scanner-microsoft"


@pytest.mark.parametrize(
    ("user_agent", "kind", "source"),
    [
        pytest.param(CHROME_WINDOWS, Kind.OPEN, "direct", id="chrome"),
        pytest.param(OUTLOOK_2016, Kind.OPEN, "outlook", id="outlook"),
        pytest.param(APPLE_MPP, Kind.PREFETCH, "machine", id="bare-mozilla"),
        pytest.param(CURL, Kind.BOT, "automated", id="curl"),
    ],
)
@pytest.mark.parametrize("ip", JUST_OUTSIDE_MICROSOFT_SCANNER_IPS)
def test_just_outside_microsoft_protection_is_not_a_scanner(user_agent, kind, source, ip):
    verdict = verdict_of(user_agent, ip)
    assert verdict.source != "scanner-microsoft"
    assert (verdict.kind, verdict.source) == (kind, source)


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param(CURL, id="curl"),
        pytest.param("curl/7.68.0", id="curl-old"),
        pytest.param("Wget/1.21.4", id="wget"),
        pytest.param("python-requests/2.31.0", id="python-requests"),
        pytest.param("Python/3.11 aiohttp/3.9.5", id="aiohttp"),
        pytest.param("python-urllib3/2.2.1", id="urllib3"),
        pytest.param("Go-http-client/1.1", id="go-http-1"),
        pytest.param("Go-http-client/2.0", id="go-http-2"),
        pytest.param("Java/17.0.2", id="java"),
        pytest.param("Apache-HttpClient/4.5.14 (Java/17.0.9)", id="apache-httpclient"),
        pytest.param("okhttp/4.12.0", id="okhttp"),
        pytest.param(GOOGLEBOT, id="googlebot"),
        pytest.param(BINGBOT, id="bingbot"),
        pytest.param(HEADLESS_CHROME, id="headless-chrome"),
        pytest.param(FACEBOOK, id="facebookexternalhit"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(None, id="none"),
    ],
)
@pytest.mark.parametrize("ip", [PLAIN_IP, *GOOGLE_IPS[:2], None])
def test_bots(user_agent, ip):
    assert verdict_of(user_agent, ip).kind == Kind.BOT


@pytest.mark.parametrize(
    ("user_agent", "ip", "source"),
    [
        pytest.param(GMAIL_PROXY, "66.102.8.0", "gmail-proxy", id="gmail-proxy"),
        pytest.param(GMAIL_PREFETCH, "66.249.84.0", "gmail-prefetch", id="gmail-prefetch"),
        pytest.param(APPLE_MPP, APPLE_IP, "apple-mpp", id="apple-mpp"),
        pytest.param(CHROME_WINDOWS, "40.107.0.0", "scanner-microsoft", id="microsoft"),
        pytest.param(CHROME_WINDOWS, PLAIN_IP, "direct", id="chrome"),
        pytest.param(THUNDERBIRD, PLAIN_IP, "direct", id="thunderbird"),
        pytest.param(CURL, PLAIN_IP, "direct", id="curl"),
    ],
)
def test_head_is_a_bot(user_agent, ip, source):
    verdict = verdict_of(user_agent, ip, method="HEAD")
    assert (verdict.kind, verdict.source) == (Kind.BOT, source)


@pytest.mark.parametrize(
    "purpose",
    [
        pytest.param("prefetch", id="purpose-prefetch"),
        pytest.param("prefetch;prerender", id="sec-purpose-prerender"),
        # The endpoint joins Purpose, Sec-Purpose, X-Purpose and X-Moz with spaces.
        pytest.param("prefetch prefetch  ", id="purpose-and-sec-purpose"),
        pytest.param("  preview prefetch", id="x-purpose-and-x-moz"),
    ],
)
@pytest.mark.parametrize(
    ("user_agent", "ip", "source"),
    [
        pytest.param(CHROME_WINDOWS, PLAIN_IP, "direct", id="chrome"),
        pytest.param(GMAIL_PROXY, "66.102.8.0", "gmail-proxy", id="gmail-proxy"),
        pytest.param(APPLE_MPP, APPLE_IP, "apple-mpp", id="apple-mpp"),
    ],
)
def test_head_announcing_a_prefetch_is_a_bot_not_a_delivery(user_agent, ip, source, purpose):
    """The HEAD rule comes before the prefetch-header rule: a HEAD loads no image, whatever it
    announces, so it is a bot's fetch and never a delivery (nor a "delivered" notice)."""
    verdict = verdict_of(user_agent, ip, method="HEAD", purpose=purpose)
    assert verdict == Verdict(Kind.BOT, source, "HEAD request: the image was not loaded")
    # Control: the same fetch as a GET is the announced prefetch.
    assert verdict_of(user_agent, ip, purpose=purpose) == Verdict(
        Kind.PREFETCH, source, "the client announced a prefetch, not a view"
    )


@pytest.mark.parametrize(
    "purpose",
    [
        pytest.param("prefetch", id="purpose-prefetch"),
        pytest.param("Prefetch", id="purpose-capitalised"),
        pytest.param("prefetch;prerender", id="sec-purpose-prerender"),
        pytest.param("prefetch;anonymous-client-ip", id="sec-purpose-private-prefetch"),
        pytest.param("preview", id="x-purpose-preview"),
    ],
)
@pytest.mark.parametrize(
    ("user_agent", "ip", "source"),
    [
        pytest.param(CHROME_WINDOWS, PLAIN_IP, "direct", id="chrome"),
        pytest.param(SAFARI, PLAIN_IP, "direct", id="safari"),
        pytest.param(GMAIL_PROXY, "66.102.8.0", "gmail-proxy", id="gmail-proxy"),
    ],
)
def test_announced_prefetch_is_not_an_open(user_agent, ip, source, purpose):
    verdict = verdict_of(user_agent, ip, purpose=purpose)
    assert (verdict.kind, verdict.source) == (Kind.PREFETCH, source)


@pytest.mark.parametrize(
    ("user_agent", "kind", "source"),
    [
        pytest.param(CHROME_WINDOWS, Kind.OPEN, "direct", id="chrome"),
        pytest.param(FIREFOX, Kind.OPEN, "direct", id="firefox"),
        pytest.param(SAFARI, Kind.OPEN, "direct", id="safari"),
        pytest.param(CHROME_ANDROID, Kind.OPEN, "direct", id="chrome-android"),
        pytest.param(THUNDERBIRD, Kind.OPEN, "direct", id="thunderbird"),
        pytest.param(OUTLOOK_2016, Kind.OPEN, "outlook", id="outlook"),
        pytest.param(GMAIL_PROXY, Kind.OPEN, "gmail-proxy", id="gmail-proxy"),
    ],
)
@pytest.mark.parametrize("ip", GOOGLE_IPS)
def test_google_addresses_are_not_machines(user_agent, kind, source, ip):
    """Googlers and Google Fi / Workspace users read mail too: only the UA can say 'machine'."""
    verdict = verdict_of(user_agent, ip)
    assert (verdict.kind, verdict.source) == (kind, source)


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param("SomeUnknownClient/1.0", id="unknown-program"),
        pytest.param("Mozilla/5.0 (Linux; Android 14)", id="phone-platform-only"),
        pytest.param("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", id="platform-only"),
        pytest.param("x" * 300, id="noise"),
    ],
)
@pytest.mark.parametrize("ip", [PLAIN_IP, *GOOGLE_IPS[:1], None])
def test_deny_by_default(user_agent, ip):
    """What is neither a known machine nor positively a reader is `unknown`, never an open."""
    assert verdict_of(user_agent, ip).kind == Kind.UNKNOWN


# A browser in Azure (outside Exchange Online Protection's ranges), as Microsoft Defender's Safe
# Links and Safe Attachments checks come: https://github.com/gophish/gophish/issues/973
AZURE_IP = "20.42.73.0"
SENT = datetime.datetime(2025, 3, 14, 9, 0, 0)


@pytest.mark.parametrize(
    ("after_sending", "sent", "kind", "source"),
    [
        pytest.param(5, True, Kind.PREFETCH, "scanner-microsoft", id="seconds-after-sending"),
        pytest.param(
            SCANNER_WINDOW.total_seconds(),
            True,
            Kind.PREFETCH,
            "scanner-microsoft",
            id="window-end",
        ),
        pytest.param(
            SCANNER_WINDOW.total_seconds() + 1, True, Kind.OPEN, "direct", id="after-window"
        ),
        pytest.param(3600, True, Kind.OPEN, "direct", id="an-hour-later"),
        pytest.param(5, False, Kind.PREFETCH, "scanner-microsoft", id="never-marked-sent"),
    ],
)
def test_browser_in_azure_soon_after_sending_is_a_scanner(after_sending, sent, kind, source):
    facts = PixelFacts(sent_at=SENT if sent else None)
    now = SENT + datetime.timedelta(seconds=after_sending)
    verdict = judge(Fetch(EDGE, AZURE_IP), facts, NETWORKS, now)
    assert (verdict.kind, verdict.source) == (kind, source)
    # Not a browser in Azure: the time after sending changes nothing.
    assert judge(Fetch(EDGE, PLAIN_IP), facts, NETWORKS, now).kind == Kind.OPEN
    assert judge(Fetch(GMAIL_PROXY, AZURE_IP), facts, NETWORKS, now).kind == Kind.OPEN


@pytest.mark.parametrize("ip", [AZURE_IP, PLAIN_IP, "40.107.0.0"])
def test_outlook_com_proxy_is_an_open_even_from_azure(ip):
    """Outlook on the web loads images through outlookimageproxy.azurewebsites.net; trackers know
    its fetches by the "OutlookImageProxy" token. Seconds after sending, from Azure, it is still
    the proxy (Exchange Online Protection's own ranges stay a scan)."""
    user_agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) OutlookImageProxy"
    verdict = judge(Fetch(user_agent, ip), PixelFacts(sent_at=SENT), NETWORKS, SENT)
    expected = "scanner-microsoft" if ip == "40.107.0.0" else "outlook-proxy"
    assert verdict.source == expected


def test_phone_model_ending_in_bot_is_a_person():
    user_agent = (
        "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.6099.144 Mobile Safari/537.36"
    )
    verdict = verdict_of(user_agent)
    assert (verdict.kind, verdict.source) == (Kind.OPEN, "direct")


ALL_USER_AGENTS = [
    GMAIL_PROXY,
    GMAIL_PREFETCH,
    GMAIL_SAMPLING,
    APPLE_MPP,
    APPLE_MAIL_MAC,
    IPHONE_MAIL,
    YAHOO_PROXY,
    OUTLOOK_2016,
    OUTLOOK_MS_OFFICE,
    THUNDERBIRD,
    CHROME_WINDOWS,
    FIREFOX,
    SAFARI,
    GOOGLEBOT,
    HEADLESS_CHROME,
    FACEBOOK,
    CURL,
    "Wget/1.21.4",
    "SomeUnknownClient/1.0",
    "",
    None,
]


@pytest.mark.parametrize(
    "user_agent", [pytest.param(ua, id=f"ua{n}") for n, ua in enumerate(ALL_USER_AGENTS)]
)
def test_every_verdict_is_in_the_vocabulary_with_a_reason(user_agent):
    for ip in [PLAIN_IP, APPLE_IP, "40.107.0.0", "2a01:111:f403::", "66.102.8.0", None]:
        for method in ["GET", "HEAD"]:
            for purpose in ["", "prefetch"]:
                verdict = verdict_of(user_agent, ip, method, purpose)
                assert verdict.kind in KINDS
                assert verdict.source and verdict.source == verdict.source.strip()
                assert verdict.reason == verdict.reason.strip()
                assert len(verdict.reason.split()) >= 3, verdict


@pytest.mark.parametrize(
    ("user_agent", "ip", "name"),
    [
        pytest.param(GMAIL_PROXY, "66.102.8.0", "Gmail", id="gmail-proxy"),
        pytest.param(GMAIL_PREFETCH, "66.249.84.0", "Gmail", id="gmail-prefetch"),
        pytest.param(APPLE_MPP, APPLE_IP, "Apple Mail", id="apple-mpp"),
        pytest.param(YAHOO_PROXY, "98.136.0.0", "Yahoo Mail", id="yahoo-proxy"),
        pytest.param(OUTLOOK_2016, PLAIN_IP, "Outlook", id="outlook"),
        pytest.param(OUTLOOK_MS_OFFICE, PLAIN_IP, "Outlook", id="outlook-ms-office"),
        pytest.param(CHROME_WINDOWS, "40.107.0.0", "Microsoft 365", id="microsoft-scanner"),
        pytest.param("", PLAIN_IP, None, id="empty-ua"),
        pytest.param(None, PLAIN_IP, None, id="no-ua"),
    ],
)
def test_client_name_exact(parser, user_agent, ip, name):
    source = verdict_of(user_agent, ip).source
    assert client_name(user_agent, source, parser) == name


@pytest.mark.parametrize(
    ("user_agent", "parts"),
    [
        pytest.param(THUNDERBIRD, ["Thunderbird", "Linux"], id="thunderbird"),
        pytest.param(THUNDERBIRD_WINDOWS, ["Thunderbird", "Windows"], id="thunderbird-windows"),
        pytest.param(CHROME_WINDOWS, ["Chrome", "Windows"], id="chrome-windows"),
        pytest.param(CHROME_ANDROID, ["Chrome", "Android"], id="chrome-android"),
        pytest.param(FIREFOX, ["Firefox"], id="firefox"),
        pytest.param(SAFARI, ["Safari", "Mac OS X"], id="safari"),
        pytest.param(IPHONE_MAIL, ["iOS"], id="iphone-mail"),
        pytest.param(CHROME_WINDOWS + " " + "x" * 10_000, ["Chrome", "Windows"], id="very-long"),
    ],
)
def test_client_name_from_user_agent(parser, user_agent, parts):
    verdict = verdict_of(user_agent)
    assert verdict.source == "direct"
    name = client_name(user_agent, verdict.source, parser)
    assert name is not None
    for part in parts:
        assert part in name


def test_client_name_empty_direct_is_none(parser):
    assert client_name("", "direct", parser) is None


def test_a_stored_client_name_is_cut_to_its_column(parser):
    """A recipient writes the user agent: an absurd version number makes a name longer than the
    event's 100-character column, and the stored name is its first 100 characters."""
    version = "1" * 120 + ".0"
    user_agent = f"Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/{version}"
    name = client_name(user_agent, "direct", parser)
    assert len(name) > 100 and name.startswith("Firefox 111")
    assert Judge(NETWORKS, parser).client(user_agent, "direct") == name[:100]


# NetworkSet


@pytest.mark.parametrize(
    ("networks", "address", "inside"),
    [
        pytest.param(["17.0.0.0/8"], "17.0.0.0", True, id="v4-first"),
        pytest.param(["17.0.0.0/8"], "17.255.255.255", True, id="v4-last"),
        pytest.param(["17.0.0.0/8"], "16.255.255.255", False, id="v4-one-before"),
        pytest.param(["17.0.0.0/8"], "18.0.0.0", False, id="v4-one-after"),
        pytest.param(["104.47.0.0/17"], "104.47.127.255", True, id="v4-17-last"),
        pytest.param(["104.47.0.0/17"], "104.47.128.0", False, id="v4-17-one-after"),
        pytest.param(["0.0.0.0/8"], "0.0.0.0", True, id="v4-lowest"),
        pytest.param(["255.255.255.0/24"], "255.255.255.255", True, id="v4-highest"),
        pytest.param(["81.2.69.160/32"], "81.2.69.160", True, id="v4-single"),
        pytest.param(["81.2.69.160/32"], "81.2.69.161", False, id="v4-single-next"),
        pytest.param(["2a01:111:f400::/48"], "2a01:111:f400::", True, id="v6-first"),
        pytest.param(
            ["2a01:111:f400::/48"],
            "2a01:111:f400:ffff:ffff:ffff:ffff:ffff",
            True,
            id="v6-last",
        ),
        pytest.param(
            ["2a01:111:f400::/48"],
            "2a01:111:f3ff:ffff:ffff:ffff:ffff:ffff",
            False,
            id="v6-one-before",
        ),
        pytest.param(["2a01:111:f400::/48"], "2a01:111:f401::", False, id="v6-one-after"),
        pytest.param(["::/128"], "::", True, id="v6-lowest"),
        pytest.param(
            ["ffff:ffff:ffff:ffff::/64"],
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            True,
            id="v6-highest",
        ),
        pytest.param(["10.0.0.0/8", "2001:db8::/32"], "10.1.2.3", True, id="mixed-v4"),
        pytest.param(["10.0.0.0/8", "2001:db8::/32"], "2001:db8:ffff::1", True, id="mixed-v6"),
        pytest.param(["10.0.0.0/8", "2001:db8::/32"], "11.0.0.0", False, id="mixed-v4-outside"),
        pytest.param(["10.0.0.0/8", "2001:db8::/32"], "2001:db9::", False, id="mixed-v6-outside"),
        # The same integers in the other family are not the same address.
        pytest.param(["10.0.0.0/8"], "::a00:1", False, id="v4-set-v6-same-int"),
        pytest.param(["::a00:0/104"], "10.0.0.1", False, id="v6-set-v4-same-int"),
        pytest.param(["10.0.0.0/8"], "::ffff:10.0.0.1", False, id="v4-set-mapped"),
        pytest.param(["10.0.0.0/8", "10.1.0.0/16"], "10.255.0.0", True, id="overlap-outer"),
        pytest.param(["10.1.0.0/16", "10.0.0.0/8"], "10.1.2.3", True, id="overlap-inner"),
        pytest.param(["10.0.0.0/25", "10.0.0.128/25"], "10.0.0.127", True, id="adjacent-seam-lo"),
        pytest.param(["10.0.0.0/25", "10.0.0.128/25"], "10.0.0.128", True, id="adjacent-seam-hi"),
        pytest.param(["10.0.0.0/25", "10.0.1.0/24"], "10.0.0.200", False, id="gap"),
        pytest.param(["10.0.1.0/24", "10.0.0.0/25"], "10.0.1.0", True, id="gap-after"),
        pytest.param(
            ["10.0.0.0/16", "10.0.1.0/24", "10.1.0.0/16"], "10.0.255.255", True, id="three-merged"
        ),
        pytest.param(["10.0.0.5/8"], "10.200.0.0", True, id="host-bits-ignored"),
        pytest.param([" 10.0.0.0/8\n"], "10.0.0.1", True, id="whitespace-in-network"),
        pytest.param([], "10.0.0.1", False, id="empty-set-v4"),
        pytest.param([], "2001:db8::1", False, id="empty-set-v6"),
        pytest.param(["2001:db8::/32"], "10.0.0.1", False, id="v6-only-set-v4-address"),
    ],
)
def test_network_set_membership(networks, address, inside):
    assert (address in NetworkSet(networks)) is inside


@pytest.mark.parametrize(
    ("networks", "length"),
    [
        pytest.param([], 0, id="empty"),
        pytest.param(["10.0.0.0/8", "10.1.0.0/16"], 1, id="overlap"),
        pytest.param(["10.0.0.0/8", "10.0.0.0/8"], 1, id="duplicate"),
        pytest.param(["10.0.0.0/25", "10.0.0.128/25"], 1, id="adjacent"),
        pytest.param(["10.0.0.128/25", "10.0.0.0/25"], 1, id="adjacent-unsorted"),
        pytest.param(["10.0.0.0/25", "10.0.1.0/24"], 2, id="gap"),
        pytest.param(["10.0.0.0/8", "2001:db8::/32"], 2, id="mixed"),
        pytest.param(["0.0.0.0/32", "::/128"], 2, id="zero-in-both-families"),
        pytest.param(MICROSOFT_PROTECTION, 6, id="microsoft"),
        pytest.param(["2a01:111:f400::/48", "2a01:111:f401::/48"], 1, id="adjacent-v6"),
    ],
)
def test_network_set_merges(networks, length):
    assert len(NetworkSet(networks)) == length


@pytest.mark.parametrize(
    "address",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("unknown", id="unknown"),
        pytest.param("10.0.0", id="three-octets"),
        pytest.param("10.0.0.256", id="octet-too-large"),
        pytest.param("10.0.0.1/8", id="network"),
        pytest.param("010.0.0.1", id="leading-zero"),
        pytest.param("10.0.0.1:443", id="port"),
        pytest.param("2001:db8::1::2", id="two-double-colons"),
        pytest.param("x" * 10_000, id="very-long"),
    ],
)
def test_network_set_invalid_address_is_not_inside(address):
    networks = NetworkSet(["0.0.0.0/0", "::/0"])
    assert "10.0.0.1" in networks  # the set holds everything that is an address
    assert (address in networks) is False


@pytest.fixture(scope="module")
def random_prefixes():
    """200,000 distinct random IPv4 /24 prefixes (as integers of the top 24 bits)."""
    rng = random.Random(20240501)
    prefixes = set()
    while len(prefixes) < 200_000:
        prefixes.add(rng.getrandbits(24))
    return prefixes


@pytest.fixture(scope="module")
def large_set(random_prefixes):
    networks = [f"{p >> 16}.{(p >> 8) & 0xFF}.{p & 0xFF}.0/24" for p in random_prefixes]
    return NetworkSet(networks)


def test_large_network_set_merges_runs(random_prefixes, large_set):
    ordered = sorted(random_prefixes)
    runs = 1 + sum(1 for low, high in itertools.pairwise(ordered) if high != low + 1)
    assert len(large_set) == runs


def test_large_network_set_agrees_with_a_direct_check(random_prefixes, large_set):
    rng = random.Random(7)
    members = rng.sample(sorted(random_prefixes), 1000)
    candidates = []
    for prefix in members:
        base = prefix << 8
        # first, last and a random host of a member, and the addresses just outside it
        candidates += [base, base + 255, base + rng.randrange(256), base - 1, base + 256]
    candidates += [rng.getrandbits(32) for _ in range(5000)]
    candidates = [value for value in candidates if 0 <= value < 2**32]

    def in_a_member_prefix(value):
        return (value >> 8) in random_prefixes

    expected_inside = sum(in_a_member_prefix(value) for value in candidates)
    assert 3000 <= expected_inside < len(candidates)  # the sample holds both answers
    for value in candidates:
        address = str(ipaddress.IPv4Address(value))
        assert (address in large_set) is in_a_member_prefix(value), address
    # And a literal scan over every network for a few of them.
    spans = [(prefix << 8, (prefix << 8) | 0xFF) for prefix in random_prefixes]
    for value in candidates[:20] + candidates[-20:]:
        scanned = any(start <= value <= end for start, end in spans)
        assert (str(ipaddress.IPv4Address(value)) in large_set) is scanned
    # IPv6 addresses are never inside a set of IPv4 networks, even with the same integer.
    assert str(ipaddress.IPv6Address(members[0] << 8)) not in large_set


# judge() on the fetches each verdict is for: its kind, source and the reason the receipt's
# page shows.
JUDGED_WITH_REASONS = [
    # (user agent, address, facts, verdict)
    (
        CHROME_WINDOWS,
        PLAIN_IP,
        {},
        ("open", "direct", "a browser fetched the image as the message was shown"),
    ),
    (
        THUNDERBIRD,
        PLAIN_IP,
        {},
        ("open", "direct", "a mail program fetched the image as the message was shown"),
    ),
    (
        OUTLOOK_2016,
        PLAIN_IP,
        {},
        ("open", "outlook", "Outlook fetched the image directly as the message was opened"),
    ),
    (
        "Frobnicator/3.1",
        PLAIN_IP,
        {},
        (
            "unknown",
            "unrecognised",
            "an unrecognised program fetched the image: not counted as an open",
        ),
    ),
    (
        APPLE_MPP,
        PLAIN_IP,
        {},
        (
            "prefetch",
            "machine",
            "a bare 'Mozilla/5.0' client outside Apple's ranges: a machine, not a reader",
        ),
    ),
    ("", PLAIN_IP, {}, ("bot", "no-user-agent", "no user agent: a script, not a mail client")),
    (
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        PLAIN_IP,
        {},
        ("bot", "automated", "a crawler, monitor, link preview or HTTP library (Googlebot)"),
    ),
    (
        # crawler-user-agents (monperrus/crawler-user-agents), pattern "lipperhey", one of its
        # instances: a machine that only that list knows, by no name, so the reason gives none.
        "Mozilla/5.0 (compatible; Lipperhey Link Explorer; http://www.lipperhey.com/)",
        PLAIN_IP,
        {},
        ("bot", "automated", "a crawler, monitor, link preview or HTTP library"),
    ),
    (
        CHROME_WINDOWS,
        PLAIN_IP,
        {"mint_fingerprint": "sender", "sent_at": None},
        (
            "preview",
            "direct",
            "the sender's own browser showed the draft (same browser and network as when the "
            "pixel was made, before sending)",
        ),
    ),
    (
        EDGE,
        AZURE_IP,
        {},
        (
            "prefetch",
            "scanner-microsoft",
            "a browser in Microsoft's cloud within 5 minutes of sending: Defender / Safe Links "
            "checking the message on delivery",
        ),
    ),
    (
        GMAIL_PROXY,
        "66.102.8.0",
        {"mail_hosting": "other"},
        (
            "self",
            "gmail-proxy",
            "no recipient's mail is hosted by Google, so only the sender's own Gmail fetches it "
            "through Gmail's proxy",
        ),
    ),
]


@pytest.mark.parametrize(("user_agent", "ip", "facts", "expected"), JUDGED_WITH_REASONS)
def test_each_verdict_says_why(user_agent, ip, facts, expected):
    """The server's defaults (use_mail_hosting on); the fetch's own fingerprint "sender"."""
    pixel = PixelFacts(**{"sent_at": SENT, **facts})
    verdict = judge(Fetch(user_agent, ip), pixel, NETWORKS, SENT, fingerprint="sender")
    assert (verdict.kind, verdict.source, verdict.reason) == expected


def test_a_scanner_the_operator_lists_is_a_delivery_not_an_open():
    """An address in the operator's scanner ranges (scanner-ranges.txt in the data dir)
    fetches on delivery, whatever browser it claims to be."""
    networks = dataclasses.replace(NETWORKS, scanners=NetworkSet(["198.51.100.0/24"]))
    verdict = classify(Fetch(CHROME_WINDOWS, "198.51.100.7"), networks)
    assert (verdict.kind, verdict.source) == ("prefetch", "scanner")
    assert verdict.reason == "a mail security scanner (listed by the operator) fetched it"
    assert classify(Fetch(CHROME_WINDOWS, "198.51.101.7"), networks).kind == "open"


def test_the_servers_judge_classifies_each_request_once_and_tells_requests_apart(
    parser, monkeypatch
):
    """Judge keeps classify()'s verdict per request (the same proxies fetch over and over): a
    request seen before is not classified again, nor by judge(), which gets the verdict handed
    on; one that differs in its user agent, network, method or prefetch hint is, with the
    verdict it would get on its own."""
    server_judge = Judge(NETWORKS, parser)
    facts = PixelFacts(sent_at=SENT)
    later = SENT + datetime.timedelta(hours=1)
    microsoft = next(iter(builtin_networks("microsoft-protection"))).split("/")[0]
    requests = [
        Fetch(THUNDERBIRD, "81.2.69.0"),
        Fetch(THUNDERBIRD, "81.2.69.0", method="HEAD"),
        Fetch(THUNDERBIRD, "81.2.69.0", purpose="prefetch"),
        Fetch(APPLE_MPP, "81.2.69.0"),
        Fetch(THUNDERBIRD, microsoft),
    ]
    for fetch in requests * 2:
        assert server_judge.verdict(fetch, facts, later) == judge(fetch, facts, NETWORKS, later)
    assert len({server_judge.verdict(fetch, facts, later) for fetch in requests}) == len(requests)
    cached = server_judge._classified.cache_info()
    assert (cached.misses, cached.hits) == (len(requests), len(requests) * 2)

    def classified_again(*args):
        raise AssertionError("judge() classified a request the server's judge had classified")

    monkeypatch.setattr(classify_module, "classify", classified_again)
    for fetch in requests:
        server_judge.verdict(fetch, facts, later)
