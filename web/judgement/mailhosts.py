"""Where the recipients' mail is hosted — which provider, and whether Google — from MX records.

A Gmail image-proxy fetch of a message none of whose recipients use Google's mail can only be the
sender's own Gmail showing it. And each provider lets a receipt show different things (Apple's
Mail Privacy Protection fetches on delivery, HEY strips tracking images): the receipt says so.
Lookups run in a small thread pool with a short deadline, so a mint request never waits long;
answers are cached; no network means "unknown"."""

import concurrent.futures
import threading
import time
from dataclasses import dataclass

import dns.exception
import dns.nameserver
import dns.resolver

GOOGLE = "google"
OTHER = "other"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Provider:
    """A mail provider: how to know it (MX host suffixes, its own domains) and what a receipt
    can show for it (`caveat`, with the public `source` of that statement)."""

    name: str
    exchanges: tuple
    domains: tuple
    caveat: str | None = None
    source: str | None = None


# MX suffixes and domains: jace/mxsniff (mxsniff/providers.py) and chatmail/provider-db
# (_providers/*.md), checked against each provider's own set-up pages where one exists.
PROVIDERS = {
    GOOGLE: Provider(
        "Google (Gmail, Workspace)",
        (".google.com.", ".googlemail.com."),  # aspmx.l.google.com, smtp.google.com, …
        ("gmail.com", "googlemail.com"),
        "Gmail loads images through its proxy when the message is opened: an open shows as "
        "Gmail, from Google's network, never the reader's place.",
        "https://gmail.googleblog.com/2013/12/images-now-showing.html",
    ),
    "microsoft": Provider(
        "Microsoft 365 / Outlook.com",
        (".mail.protection.outlook.com.", ".olc.protection.outlook.com.", ".mx.microsoft."),
        ("outlook.com", "hotmail.com", "live.com", "msn.com"),
        "Outlook on the desktop blocks remote images until the reader allows them, and "
        "Microsoft's scanners check new mail on delivery: a receipt may say 'delivered' and "
        "never 'opened'.",
        "https://support.microsoft.com/en-us/office/block-or-unblock-automatic-picture-"
        "downloads-in-email-messages-15e08854-6808-49b1-9a0a-50b81f2d617a",
    ),
    "apple": Provider(
        "Apple iCloud",
        (".mail.icloud.com.",),
        ("icloud.com", "me.com", "mac.com"),
        "Mail Privacy Protection downloads every image when the mail arrives, not when it is "
        "read: expect 'delivered', and maybe never 'opened'.",
        "https://www.apple.com/legal/privacy/data/en/mail-privacy-protection/",
    ),
    "yahoo": Provider(
        "Yahoo / AOL",
        (".yahoodns.net.",),
        ("yahoo.com", "ymail.com", "rocketmail.com", "aol.com"),
        "Yahoo Mail loads images through its proxy when the message is opened: an open shows "
        "as Yahoo Mail, never the reader's place.",
        "https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    ),
    "proton": Provider(
        "Proton Mail",
        (".protonmail.ch.",),
        ("proton.me", "protonmail.com", "protonmail.ch", "pm.me"),
        "Proton removes known trackers and loads other remote images through a proxy, or not "
        "at all: a receipt may show nothing, or a fetch that is not a read.",
        "https://proton.me/support/email-tracker-protection",
    ),
    "fastmail": Provider(
        "Fastmail",
        (".messagingengine.com.",),
        ("fastmail.com", "fastmail.fm"),
        "Fastmail loads images through its proxy with a generic user agent: an open shows as "
        "Fastmail, never the reader's place or program.",
        "https://fastmail.com/policies/bots",
    ),
    "hey": Provider(
        "HEY",
        (".hey.com.",),
        ("hey.com",),
        "HEY strips tracking images and proxies the rest: expect no receipt at all.",
        "https://m.signalvnoise.com/spy-pixels-are-evolving-like-malware-so-heys-adapting/",
    ),
    "zoho": Provider("Zoho Mail", (".zoho.com.", ".zoho.eu.", ".zoho.in."), ("zohomail.com",)),
    "gmx": Provider(
        "GMX / WEB.DE", (".gmx.net.", ".gmx.com.", ".web.de."), ("gmx.net", "gmx.de", "web.de")
    ),
    "yandex": Provider(
        "Yandex Mail", (".yandex.net.", ".yandex.ru."), ("yandex.ru", "yandex.com", "ya.ru")
    ),
    OTHER: Provider("another or self-hosted mail server", (), ()),
}
_BY_DOMAIN = {domain: key for key, provider in PROVIDERS.items() for domain in provider.domains}


def provider_of(exchanges):
    """The PROVIDERS key for a domain's mail exchanges (lower-case, with the final dot)."""
    for key, provider in PROVIDERS.items():
        if any(name.endswith(provider.exchanges) for name in exchanges):
            return key
    return OTHER


@dataclass(frozen=True)
class Hosting:
    """What the look-ups say of a message's recipients: GOOGLE, OTHER or UNKNOWN for the
    sender's-own-view rule, and the providers found (PROVIDERS keys)."""

    summary: str
    providers: tuple = ()


WAIT_SECONDS = 0.3  # how long a request waits for the answers
LOOKUP_SECONDS = 3.0  # how long a lookup may go on in the background
CACHE_SECONDS = 3600
UNKNOWN_CACHE_SECONDS = 60


def domain_of(address):
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def combine(answers):
    """One answer for a message, from each domain's provider: Google if any recipient is at
    Google, other only when every recipient is known to be elsewhere, else unknown."""
    answers = list(answers)
    providers = tuple(sorted({answer for answer in answers if answer != UNKNOWN}))
    if GOOGLE in answers:
        return Hosting(GOOGLE, providers)
    if answers and UNKNOWN not in answers:
        return Hosting(OTHER, providers)
    return Hosting(UNKNOWN, providers)


class MailHosts:
    """MX look-ups with a cache and a deadline. `nameservers`: (address, port) pairs (the
    DNS_SERVERS setting), or None for the system's resolver configuration."""

    def __init__(self, nameservers=None):
        try:
            self._resolver = dns.resolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            self._resolver = dns.resolver.Resolver(configure=False)
        if nameservers:
            self._resolver.nameservers = [_nameserver(server) for server in nameservers]
        self._resolver.lifetime = LOOKUP_SECONDS
        self._resolver.timeout = LOOKUP_SECONDS / 2
        self._cache = {}
        self._lock = threading.Lock()
        # Threads start on first use, in the worker process, never in gunicorn's master.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="mx")

    def domain_hosting(self, domain):
        """The PROVIDERS key (OTHER for any other server) or UNKNOWN for one domain; blocks up
        to LOOKUP_SECONDS, cached."""
        if domain in _BY_DOMAIN:
            return _BY_DOMAIN[domain]
        with self._lock:
            cached = self._cache.get(domain)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        answer = self._look_up(domain)
        lifetime = UNKNOWN_CACHE_SECONDS if answer == UNKNOWN else CACHE_SECONDS
        with self._lock:
            self._cache[domain] = (time.monotonic() + lifetime, answer)
        return answer

    def _look_up(self, domain):
        if not domain or not self._resolver.nameservers:
            return UNKNOWN
        try:
            records = self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NoAnswer:
            return OTHER  # the domain exists without MX: its mail goes to its own address
        except (dns.exception.DNSException, OSError, ValueError):
            # NXDOMAIN included: resolvers cut off from the internet answer it for every name,
            # and a wrong "other" would turn a reader's open into the sender's own view.
            return UNKNOWN
        return provider_of([str(record.exchange).lower() for record in records])

    def lookup(self, recipients, on_late=None, wait=WAIT_SECONDS):
        """The Hosting of a message's recipients, within `wait` seconds. Lookups still running
        then make it UNKNOWN for now; `on_late(hosting)` gets the final answer when they
        finish, if it differs (in a background thread)."""
        domains = sorted({domain_of(address) for address in recipients if "@" in address})
        if not domains:
            return Hosting(UNKNOWN)
        futures = [self._pool.submit(self.domain_hosting, domain) for domain in domains]
        done, pending = concurrent.futures.wait(futures, timeout=wait)
        if not pending:
            return combine(future.result() for future in futures)
        early = combine([future.result() for future in done] + [UNKNOWN])
        if on_late is not None:
            threading.Thread(
                target=_finish, args=(futures, early, on_late), name="mx-late", daemon=True
            ).start()
        return early


def _finish(futures, early, on_late):
    concurrent.futures.wait(futures)
    final = combine(future.result() for future in futures)
    if final != early:
        on_late(final)


def _nameserver(server):
    host, port = server
    return dns.nameserver.Do53Nameserver(host, port)
