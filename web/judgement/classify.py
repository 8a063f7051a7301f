"""Who fetched a pixel: a pure judgement over the facts of one request.

classify() takes a Fetch (the request facts, with the address already masked) and the known
networks, and returns a Verdict (kind, source, reason) in the vocabulary of the README. The order
of the rules matters: machines that pretend to be mail clients are recognised before the clients,
and what is neither a known machine nor positively a reader is `unknown`, never an open.
"""

import datetime
import functools
import hmac
import re
from dataclasses import dataclass

from ..vocabulary import Kind
from . import useragents
from .mailhosts import OTHER as HOSTED_ELSEWHERE


@dataclass(frozen=True)
class Fetch:
    """One fetch of a pixel as the pixel endpoint saw it, masked at once: judged and stored now,
    or spooled and judged later. Nothing in it is raw: `ip` is the masked network, `browser` the
    keyed fingerprint of user agent and network (privacy.fingerprint)."""

    user_agent: str = ""
    ip: str | None = None
    method: str = "GET"
    purpose: str = ""  # the prefetch hints the client sent (Purpose, Sec-Purpose, X-Moz …)
    public_id: str | None = None
    at: datetime.datetime | None = None
    browser: str | None = None
    country: str | None = None
    city: str | None = None
    key: str | None = None  # set when spooled: the replay stores it, once
    link_id: int | None = None  # a click: the tracked link followed (None: the pixel)
    honeypot: bool = False  # a click on the link no person can see (links/tracking.py)


@dataclass(frozen=True)
class Verdict:
    kind: str
    source: str
    reason: str


GMAIL_PREFETCH_UA = "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246"
APPLE_MPP_UA = "Mozilla/5.0"

PREFETCH_PURPOSE = re.compile(r"prefetch|prerender|preview", re.IGNORECASE)
# Outlook on Windows and Mac: "Microsoft Office/16.0 (… Microsoft Outlook …)", "… ms-office;
# MSOffice 16)", "Microsoft Office Outlook/16.0 …", "MacOutlook/16.46 …", "Outlook/16.16
# CFNetwork/…" (device-detector's and uap-core's test fixtures). Not Outlook for iOS/Android
# ("Outlook-iOS/…"), a mobile app like any other.
_OUTLOOK = re.compile(
    r"Microsoft (Office )?Outlook|ms-office|MSOffice|MacOutlook/|^Outlook/", re.IGNORECASE
)

# Gmail's image proxy: "… (via ggpht.com GoogleImageProxy)" since 2013, and the oldest form
# "… Firefox/3.0.7 (via ggpht.com)" (ua-parser's uap-core test_ua.yaml lists both).
_GMAIL_PROXY = re.compile(r"GoogleImageProxy|\(via ggpht\.com")

# Webmail image proxies that fetch when the reader opens the message: (source, pattern).
PROXIES = (
    # https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html
    ("yahoo-proxy", re.compile(r"YahooMailProxy")),
    # Outlook on the web loads images through outlookimageproxy.azurewebsites.net; open-tracking
    # code across public trackers knows its fetches by the "OutlookImageProxy" token.
    ("outlook-proxy", re.compile(r"OutlookImageProxy")),
    # https://fastmail.com/policies/bots: "all user agent strings always contain FastmailUA".
    # (Its calendar fetcher sends "FastmailUA/1.0" alone: no browser, no image proxy.)
    ("fastmail-proxy", re.compile(r"^Mozilla/.* FastmailUA/")),
    # Matomo device-detector, regexes/bots.yml: Seznam, Rambler and ukr.net mail image proxies.
    ("seznam-proxy", re.compile(r"SeznamEmailProxy")),
    ("rambler-proxy", re.compile(r"RamblerMail/.*ImageProxy")),
    ("ukrnet-proxy", re.compile(r"via secureurl\.fwdcdn\.com")),
)

# Mail security products that name themselves in their user agent: (source, pattern).
SECURITY_PRODUCTS = (
    # "Barracuda Sentinel (EE)": device-detector regexes/bots.yml; Crawler-Detect issue #552.
    ("scanner-barracuda", re.compile(r"Barracuda", re.IGNORECASE)),
    # Exchange Online's own fetcher, in GMass's list of open bots
    # (https://www.gmass.co/blog/false-opens-in-gmail/, November 2024).
    ("scanner-microsoft", re.compile(r"^Microsoft Exchange/")),
    # Crawler-Detect tests/data/user_agent/crawlers.txt: "SpamExperts/… (Virus Scan)" (N-able
    # Mail Assure); device-detector bots.yml: "Kaspersky Lab CFR link resolver".
    ("scanner", re.compile(r"SpamExperts/|Kaspersky Lab CFR link resolver")),
)

# What each named fetcher's fetch means, and why.
FETCHERS = {
    "gmail-prefetch": (Kind.PREFETCH, "Gmail prefetched the message on delivery"),
    "gmail-proxy": (Kind.OPEN, "Gmail's image proxy fetched it as the message was opened"),
    "yahoo-proxy": (Kind.OPEN, "Yahoo Mail's image proxy fetched it on open"),
    "outlook-proxy": (Kind.OPEN, "Outlook.com's image proxy fetched it as the message was opened"),
    "fastmail-proxy": (Kind.OPEN, "Fastmail's image proxy fetched it as the message was opened"),
    "seznam-proxy": (Kind.OPEN, "Seznam Email's image proxy fetched it as the message was opened"),
    "rambler-proxy": (Kind.OPEN, "Rambler Mail's image proxy fetched it as the message was opened"),
    "ukrnet-proxy": (Kind.OPEN, "ukr.net mail's image proxy fetched it as the message was opened"),
    "scanner-microsoft": (
        Kind.PREFETCH,
        "Microsoft 365 protection scanned the message on delivery",
    ),
    "scanner-proofpoint": (
        Kind.PREFETCH,
        "Proofpoint's mail gateway scanned the message on delivery",
    ),
    "scanner-mimecast": (Kind.PREFETCH, "Mimecast's mail gateway scanned the message on delivery"),
    "scanner-barracuda": (
        Kind.PREFETCH,
        "Barracuda's mail security scanned the message on delivery",
    ),
    "scanner-cisco": (Kind.PREFETCH, "Cisco Secure Email scanned the message on delivery"),
    "scanner": (Kind.PREFETCH, "a mail security scanner (listed by the operator) fetched it"),
    "apple-mpp": (Kind.PREFETCH, "Apple Mail Privacy Protection downloads images on delivery"),
}


def fetcher(ua, ip, networks):
    """The named fetcher behind a request — a mail provider's proxy or prefetch, a security
    scanner, Apple's privacy protection — or None for a program fetching for itself."""
    first, last = _named_by_agent(ua)
    if first:
        return first
    if networks.microsoft_protection.meets(ip):
        return "scanner-microsoft"
    gateway = networks.gateway(ip)
    if gateway:
        return gateway
    if networks.scanners.meets(ip):
        return "scanner"
    if ua == APPLE_MPP_UA and networks.apple.meets(ip):
        return "apple-mpp"
    return last


# Distinct user agents whose names are kept: 4 MB at most (user agents are cut to 1 KB).
AGENTS_NAMED = 4096


@functools.lru_cache(maxsize=AGENTS_NAMED)
def _named_by_agent(ua):
    """What the user agent alone names (fetcher()): (Gmail's proxy or prefetch, which no network
    overrides; a security product or a webmail proxy, which the networks' names go before). A
    few clients fetch mail over and over: each user agent is matched once."""
    if GMAIL_PREFETCH_UA in ua or ua.endswith("Gmail-content-sampling"):
        return "gmail-prefetch", None
    if _GMAIL_PROXY.search(ua):
        return "gmail-proxy", None
    for source, pattern in (*SECURITY_PRODUCTS, *PROXIES):
        if pattern.search(ua):
            return None, source
    return None, None


def classify(fetch, networks):
    """The Verdict for one pixel fetch."""
    ua = (fetch.user_agent or "").strip()
    named = fetcher(ua, fetch.ip, networks)

    if fetch.method == "HEAD":
        return Verdict(Kind.BOT, named or "direct", "HEAD request: the image was not loaded")
    if PREFETCH_PURPOSE.search(fetch.purpose or ""):
        return Verdict(
            Kind.PREFETCH, named or "direct", "the client announced a prefetch, not a view"
        )
    if named:
        kind, reason = FETCHERS[named]
        return Verdict(kind, named, reason)

    if ua == APPLE_MPP_UA:
        return Verdict(
            Kind.PREFETCH,
            "machine",
            "a bare 'Mozilla/5.0' client outside Apple's ranges: a machine, not a reader",
        )
    if not ua:
        return Verdict(Kind.BOT, "no-user-agent", "no user agent: a script, not a mail client")
    if _OUTLOOK.search(ua):
        return Verdict(
            Kind.OPEN, "outlook", "Outlook fetched the image directly as the message was opened"
        )
    program = useragents.identify(ua)
    if program.role == useragents.MACHINE:
        return automated(program)
    if program.role == useragents.MAIL_PROGRAM:
        return Verdict(
            Kind.OPEN, "direct", "a mail program fetched the image as the message was shown"
        )
    if program.role == useragents.BROWSER:
        return Verdict(Kind.OPEN, "direct", "a browser fetched the image as the message was shown")
    return Verdict(
        Kind.UNKNOWN,
        "unrecognised",
        "an unrecognised program fetched the image: not counted as an open",
    )


def automated(program):
    """The Verdict for a program a bot list names (useragents.MACHINE)."""
    named = f" ({program.name})" if program.name else ""
    return Verdict(
        Kind.BOT, "automated", f"a crawler, monitor, link preview or HTTP library{named}"
    )


@dataclass(frozen=True)
class PixelFacts:
    """What the server knows about a pixel when one of its fetches arrives."""

    mint_fingerprint: str | None = None
    sent_at: datetime.datetime | None = None
    last_self_view_at: datetime.datetime | None = None
    mail_hosting: str | None = None


# Gmail-proxy fetches from 5 s before to 15 s after a self-view beacon are the sender's own view.
SELF_VIEW_BEFORE = datetime.timedelta(seconds=5)
SELF_VIEW_AFTER = datetime.timedelta(seconds=15)
# Fetches by the reader's own software, not through a provider's proxy.
DIRECT_SOURCES = {"direct", "outlook"}


# Microsoft Defender for Office 365 (Safe Links, Safe Attachments) opens a new message's links
# and images from Azure with ordinary browser user agents, seconds to minutes after delivery
# (docs/evidence.md, "Scanners by time"). A browser in Azure within this window after sending,
# or before the sender marked the message sent (when no one can tell how soon it came), is
# taken for that check; the price is a reader on a cloud PC in Azure who opens at once.
SCANNER_WINDOW = datetime.timedelta(minutes=5)
SCANNER_WINDOW_REASON = (
    "a browser in Microsoft's cloud within 5 minutes of sending: Defender / Safe Links "
    "checking the message on delivery"
)


def within_self_view(fetched_at, beacon_at):
    """Whether a fetch at `fetched_at` belongs to the sender's view announced at `beacon_at`."""
    return beacon_at is not None and -SELF_VIEW_BEFORE <= fetched_at - beacon_at <= SELF_VIEW_AFTER


SELF_VIEW_REASON = "the sender's own Gmail tab showed the message (self-view beacon)"


def judge(fetch, facts, networks, now, fingerprint=None, use_mail_hosting=True, classified=None):
    """The Verdict for a fetch of a known pixel: classify() on the request (or `classified`, its
    verdict when the caller has it already), then what the pixel's history says about the
    sender's own views. `fingerprint` is the fetch's, as privacy.fingerprint computes it for
    the mint request."""
    verdict = classified or classify(fetch, networks)
    if verdict.kind != Kind.OPEN:
        return verdict
    if (
        verdict.source in DIRECT_SOURCES
        and facts.sent_at is None
        and fingerprint
        and facts.mint_fingerprint
        and hmac.compare_digest(fingerprint, facts.mint_fingerprint)
    ):
        return Verdict(
            Kind.PREVIEW,
            verdict.source,
            "the sender's own browser showed the draft (same browser and network as when the "
            "pixel was made, before sending)",
        )
    if verdict.source == "direct" and networks.azure.meets(fetch.ip):
        if facts.sent_at is None or now - facts.sent_at <= SCANNER_WINDOW:
            return Verdict(Kind.PREFETCH, "scanner-microsoft", SCANNER_WINDOW_REASON)
    if verdict.source == "gmail-proxy":
        if within_self_view(now, facts.last_self_view_at):
            return Verdict(Kind.SELF, verdict.source, SELF_VIEW_REASON)
        if use_mail_hosting and facts.mail_hosting == HOSTED_ELSEWHERE:
            return Verdict(
                Kind.SELF,
                verdict.source,
                "no recipient's mail is hosted by Google, so only the sender's own Gmail fetches "
                "it through Gmail's proxy",
            )
    return verdict
