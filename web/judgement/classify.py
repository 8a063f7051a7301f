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
from dataclasses import dataclass, field

from ua_parser import Parser, load_builtins

from . import useragents
from .mailhosts import OTHER as HOSTED_ELSEWHERE
from .networks import NetworkSet
from .ranges import apple_networks, builtin_networks, scanner_networks

OPEN = "open"
PREFETCH = "prefetch"
PREVIEW = "preview"
SELF = "self"
BOT = "bot"
UNKNOWN = "unknown"
KINDS = (OPEN, PREFETCH, PREVIEW, SELF, BOT, UNKNOWN)


@dataclass(frozen=True)
class Fetch:
    """What one pixel request tells: user agent, masked address, method, prefetch hints."""

    user_agent: str = ""
    ip: str | None = None
    method: str = "GET"
    purpose: str = ""


@dataclass(frozen=True)
class Verdict:
    kind: str
    source: str
    reason: str


# Mail security gateways that publish the ranges they fetch from (files in web/data/ranges/,
# each with its source and date): a fetch from them is a scan on delivery.
GATEWAYS = {
    "scanner-proofpoint": "proofpoint",
    "scanner-mimecast": "mimecast",
    "scanner-barracuda": "barracuda",
    "scanner-cisco": "cisco",
}


@dataclass(frozen=True)
class Networks:
    """The address ranges the classifier needs, parsed once at start-up."""

    apple: NetworkSet
    microsoft_protection: NetworkSet
    azure: NetworkSet = NetworkSet()
    gateways: dict = field(default_factory=dict)  # source -> NetworkSet
    scanners: NetworkSet = NetworkSet()

    @classmethod
    def default(cls):
        """The built-in ranges only (a fresh install)."""
        return cls.load(None)

    @classmethod
    def load(cls, data_dir):
        """The built-in ranges, Apple's egress list from `openreceipt ranges update`, and the
        operator's own list of scanners (scanner-ranges.txt in the data dir)."""
        return cls(
            apple=apple_networks(data_dir),
            microsoft_protection=NetworkSet(builtin_networks("microsoft-protection")),
            azure=NetworkSet(builtin_networks("azure")),
            gateways={
                source: NetworkSet(builtin_networks(name)) for source, name in GATEWAYS.items()
            },
            scanners=scanner_networks(data_dir),
        )

    def gateway(self, ip):
        """The source of the mail security gateway whose published ranges hold `ip`, if any."""
        for source, networks in self.gateways.items():
            if networks.meets(ip):
                return source
        return None


GMAIL_PREFETCH_UA = "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246"
APPLE_MPP_UA = "Mozilla/5.0"

_PREFETCH_PURPOSE = re.compile(r"prefetch|prerender|preview", re.IGNORECASE)
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
    "gmail-prefetch": (PREFETCH, "Gmail prefetched the message on delivery"),
    "gmail-proxy": (OPEN, "Gmail's image proxy fetched it as the message was opened"),
    "yahoo-proxy": (OPEN, "Yahoo Mail's image proxy fetched it on open"),
    "outlook-proxy": (OPEN, "Outlook.com's image proxy fetched it as the message was opened"),
    "fastmail-proxy": (OPEN, "Fastmail's image proxy fetched it as the message was opened"),
    "seznam-proxy": (OPEN, "Seznam Email's image proxy fetched it as the message was opened"),
    "rambler-proxy": (OPEN, "Rambler Mail's image proxy fetched it as the message was opened"),
    "ukrnet-proxy": (OPEN, "ukr.net mail's image proxy fetched it as the message was opened"),
    "scanner-microsoft": (PREFETCH, "Microsoft 365 protection scanned the message on delivery"),
    "scanner-proofpoint": (PREFETCH, "Proofpoint's mail gateway scanned the message on delivery"),
    "scanner-mimecast": (PREFETCH, "Mimecast's mail gateway scanned the message on delivery"),
    "scanner-barracuda": (PREFETCH, "Barracuda's mail security scanned the message on delivery"),
    "scanner-cisco": (PREFETCH, "Cisco Secure Email scanned the message on delivery"),
    "scanner": (PREFETCH, "a mail security scanner (listed by the operator) fetched it"),
    "apple-mpp": (PREFETCH, "Apple Mail Privacy Protection downloads images on delivery"),
}


def fetcher(ua, ip, networks):
    """The named fetcher behind a request — a mail provider's proxy or prefetch, a security
    scanner, Apple's privacy protection — or None for a program fetching for itself."""
    if GMAIL_PREFETCH_UA in ua or ua.endswith("Gmail-content-sampling"):
        return "gmail-prefetch"
    if _GMAIL_PROXY.search(ua):
        return "gmail-proxy"
    if networks.microsoft_protection.meets(ip):
        return "scanner-microsoft"
    gateway = networks.gateway(ip)
    if gateway:
        return gateway
    if networks.scanners.meets(ip):
        return "scanner"
    if ua == APPLE_MPP_UA and networks.apple.meets(ip):
        return "apple-mpp"
    for source, pattern in SECURITY_PRODUCTS:
        if pattern.search(ua):
            return source
    for source, pattern in PROXIES:
        if pattern.search(ua):
            return source
    return None


def classify(fetch, networks):
    """The Verdict for one pixel fetch."""
    ua = (fetch.user_agent or "").strip()
    named = fetcher(ua, fetch.ip, networks)

    if fetch.method == "HEAD":
        return Verdict(BOT, named or "direct", "HEAD request: the image was not loaded")
    if _PREFETCH_PURPOSE.search(fetch.purpose or ""):
        return Verdict(PREFETCH, named or "direct", "the client announced a prefetch, not a view")
    if named:
        kind, reason = FETCHERS[named]
        return Verdict(kind, named, reason)

    if ua == APPLE_MPP_UA:
        return Verdict(
            PREFETCH,
            "machine",
            "a bare 'Mozilla/5.0' client outside Apple's ranges: a machine, not a reader",
        )
    if not ua:
        return Verdict(BOT, "no-user-agent", "no user agent: a script, not a mail client")
    if _OUTLOOK.search(ua):
        return Verdict(
            OPEN, "outlook", "Outlook fetched the image directly as the message was opened"
        )
    program = useragents.identify(ua)
    if program.role == useragents.MACHINE:
        named = f" ({program.name})" if program.name else ""
        return Verdict(BOT, "automated", f"a crawler, monitor, link preview or HTTP library{named}")
    if program.role == useragents.MAIL_PROGRAM:
        return Verdict(OPEN, "direct", "a mail program fetched the image as the message was shown")
    if program.role == useragents.BROWSER:
        return Verdict(OPEN, "direct", "a browser fetched the image as the message was shown")
    return Verdict(
        UNKNOWN,
        "unrecognised",
        "an unrecognised program fetched the image: not counted as an open",
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


def judge(fetch, facts, networks, now, fingerprint=None, use_mail_hosting=True):
    """The Verdict for a fetch of a known pixel: classify() on the request, then what the pixel's
    history says about the sender's own views. `fingerprint` is the fetch's, as privacy.fingerprint
    computes it for the mint request."""
    verdict = classify(fetch, networks)
    if verdict.kind != OPEN:
        return verdict
    if (
        verdict.source in DIRECT_SOURCES
        and facts.sent_at is None
        and fingerprint
        and facts.mint_fingerprint
        and hmac.compare_digest(fingerprint, facts.mint_fingerprint)
    ):
        return Verdict(
            PREVIEW,
            verdict.source,
            "the sender's own browser showed the draft (same browser and network as when the "
            "pixel was made, before sending)",
        )
    if verdict.source == "direct" and networks.azure.meets(fetch.ip):
        if facts.sent_at is None or now - facts.sent_at <= SCANNER_WINDOW:
            return Verdict(PREFETCH, "scanner-microsoft", SCANNER_WINDOW_REASON)
    if verdict.source == "gmail-proxy":
        if within_self_view(now, facts.last_self_view_at):
            return Verdict(SELF, verdict.source, SELF_VIEW_REASON)
        if use_mail_hosting and facts.mail_hosting == HOSTED_ELSEWHERE:
            return Verdict(
                SELF,
                verdict.source,
                "no recipient's mail is hosted by Google, so only the sender's own Gmail fetches "
                "it through Gmail's proxy",
            )
    return verdict


SELF_VIEW_REASON = "the sender's own Gmail tab showed the message (self-view beacon)"


CLIENT_NAMES = {
    "gmail-proxy": "Gmail",
    "gmail-prefetch": "Gmail",
    "apple-mpp": "Apple Mail",
    "yahoo-proxy": "Yahoo Mail",
    "scanner-microsoft": "Microsoft 365",
    "outlook-proxy": "Outlook.com",
    "fastmail-proxy": "Fastmail",
    "seznam-proxy": "Seznam Email",
    "rambler-proxy": "Rambler Mail",
    "ukrnet-proxy": "ukr.net mail",
    "scanner-proofpoint": "Proofpoint",
    "scanner-mimecast": "Mimecast",
    "scanner-barracuda": "Barracuda",
    "scanner-cisco": "Cisco Secure Email",
}


def user_agent_parser():
    """A ua-parser Parser with its own result cache, for one application."""
    return Parser.from_matchers(_builtin_matchers())


@functools.cache
def _builtin_matchers():
    # Compiling ua-parser's few hundred expressions takes a quarter second: once per process.
    return load_builtins()


def client_name(user_agent, source, parser):
    """A short human name for the fetching client: the mail service for proxies, else the
    browser or mail program and its system as ua-parser reads them ("Thunderbird 115, Linux")."""
    if source in CLIENT_NAMES:
        return CLIENT_NAMES[source]
    if source == "outlook":
        return "Outlook"
    if not user_agent:
        return None
    result = parser.parse(user_agent[:512])
    agent = result.user_agent
    name = None
    if agent and agent.family and agent.family != "Other":
        name = f"{agent.family} {agent.major}" if agent.major else agent.family
    system = result.os.family if result.os and result.os.family != "Other" else None
    if name and system:
        return f"{name}, {system}"
    return name or system
