"""Who fetched a pixel: a pure judgement over the facts of one request.

classify() takes a Fetch (the request facts, with the address already masked) and the known
networks, and returns a Verdict (kind, source, reason) in the vocabulary of DESIGN.md. The order
of the rules matters: machines that pretend to be mail clients are recognised before the clients.
"""

import datetime
import functools
import hmac
import re
from dataclasses import dataclass

from ua_parser import Parser, load_builtins

from .mailhosts import OTHER as HOSTED_ELSEWHERE
from .networks import APPLE, MICROSOFT_PROTECTION, NetworkSet
from .ranges import apple_networks, scanner_networks

OPEN = "open"
PREFETCH = "prefetch"
PREVIEW = "preview"
SELF = "self"
BOT = "bot"
KINDS = (OPEN, PREFETCH, PREVIEW, SELF, BOT)


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


@dataclass(frozen=True)
class Networks:
    """The address ranges the classifier needs, parsed once at start-up."""

    apple: NetworkSet
    microsoft_protection: NetworkSet
    scanners: NetworkSet = NetworkSet()

    @classmethod
    def default(cls):
        return cls(NetworkSet(APPLE), NetworkSet(MICROSOFT_PROTECTION))

    @classmethod
    def load(cls, data_dir):
        """The built-in ranges, Apple's egress list from `openreceipt ranges update`, and the
        operator's own list of scanners (scanner-ranges.txt in the data dir)."""
        return cls(
            apple_networks(data_dir), NetworkSet(MICROSOFT_PROTECTION), scanner_networks(data_dir)
        )


GMAIL_PREFETCH_UA = "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246"
APPLE_MPP_UA = "Mozilla/5.0"

_PREFETCH_PURPOSE = re.compile(r"prefetch|prerender|preview", re.IGNORECASE)
_OUTLOOK = re.compile(r"Microsoft Outlook|ms-office|MSOffice", re.IGNORECASE)
_BOTS = re.compile(
    # "bot" as a word or before a separator ("Googlebot/2.1"), not in a phone's name ("CUBOT X30")
    r"\bbot\b|bot[/\-;_)]|crawl|spider|slurp|curl/|wget/|python-|python/|aiohttp|httpx|go-http-client"
    r"|java/|okhttp|libwww|lwp-|perl/|ruby|php/|guzzle|axios|node-fetch|undici|got \("
    r"|headlesschrome|phantomjs|puppeteer|playwright|selenium|scrapy|httpclient|postman"
    r"|insomnia|facebookexternalhit|embedly|preview|skypeuripreview|whatsapp|telegram"
    r"|linkcheck|validator|monitor|uptime|pingdom|feedfetcher|\bfetch\b"
    # Searched in the lower-cased user agent: IGNORECASE makes this pattern four times slower.
)


def classify(fetch, networks):
    """The Verdict for one pixel fetch."""
    ua = (fetch.user_agent or "").strip()

    if fetch.method == "HEAD":
        return Verdict(
            BOT, _source(ua, fetch.ip, networks), "HEAD request: the image was not loaded"
        )
    if _PREFETCH_PURPOSE.search(fetch.purpose or ""):
        return Verdict(
            PREFETCH,
            _source(ua, fetch.ip, networks),
            "the client announced a prefetch, not a view",
        )

    # Gmail's session prefetch and content sampling come from Google, like its image proxy,
    # but happen on delivery; the proxy itself fetches when the message is opened.
    if GMAIL_PREFETCH_UA in ua:
        return Verdict(PREFETCH, "gmail-prefetch", "Gmail prefetched the message on delivery")
    if ua.endswith("Gmail-content-sampling"):
        return Verdict(PREFETCH, "gmail-prefetch", "Gmail sampled the message content")
    if "GoogleImageProxy" in ua:
        return Verdict(
            OPEN, "gmail-proxy", "Gmail's image proxy fetched it as the message was opened"
        )

    if networks.microsoft_protection.meets(fetch.ip):
        return Verdict(
            PREFETCH,
            "scanner-microsoft",
            "Microsoft 365 protection scanned the message on delivery",
        )
    if networks.scanners.meets(fetch.ip):
        return Verdict(
            PREFETCH, "scanner", "a mail security scanner (listed by the operator) fetched it"
        )
    if ua == APPLE_MPP_UA:
        if networks.apple.meets(fetch.ip):
            return Verdict(
                PREFETCH, "apple-mpp", "Apple Mail Privacy Protection downloads images on delivery"
            )
        return Verdict(
            PREFETCH,
            "machine",
            "a bare 'Mozilla/5.0' client outside Apple's ranges: a machine, not a reader",
        )

    if "YahooMailProxy" in ua:
        return Verdict(OPEN, "yahoo-proxy", "Yahoo Mail's image proxy fetched it on open")
    if not ua:
        return Verdict(BOT, "unknown", "no user agent: a script, not a mail client")
    if _OUTLOOK.search(ua):
        return Verdict(
            OPEN, "outlook", "Outlook fetched the image directly as the message was opened"
        )
    if _BOTS.search(ua.lower()):
        return Verdict(BOT, "automated", "a crawler, link checker or HTTP library")
    if ua.startswith("Mozilla/"):
        return Verdict(OPEN, "direct", "a mail client or browser fetched the image directly")
    return Verdict(OPEN, "direct", "an unrecognised client fetched the image: counted as an open")


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


def _source(ua, ip, networks):
    """The fetcher's name for requests judged on their method or headers alone."""
    if GMAIL_PREFETCH_UA in ua:
        return "gmail-prefetch"
    if "GoogleImageProxy" in ua:
        return "gmail-proxy"
    if networks.microsoft_protection.meets(ip):
        return "scanner-microsoft"
    if networks.scanners.meets(ip):
        return "scanner"
    if ua == APPLE_MPP_UA and networks.apple.meets(ip):
        return "apple-mpp"
    return "direct"


CLIENT_NAMES = {
    "gmail-proxy": "Gmail",
    "gmail-prefetch": "Gmail",
    "apple-mpp": "Apple Mail",
    "yahoo-proxy": "Yahoo Mail",
    "scanner-microsoft": "Microsoft 365",
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
