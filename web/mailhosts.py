"""Where the recipients' mail is hosted — by Google or not — from MX records.

A Gmail image-proxy fetch of a message none of whose recipients use Google's mail can only be the
sender's own Gmail showing it. Lookups run in a small thread pool with a short deadline, so a mint
request never waits long; answers are cached; no network means "unknown"."""

import concurrent.futures
import ipaddress
import threading
import time

import dns.exception
import dns.nameserver
import dns.resolver

GOOGLE = "google"
OTHER = "other"
UNKNOWN = "unknown"

GOOGLE_MAIL_DOMAINS = {"gmail.com", "googlemail.com"}
# aspmx.l.google.com, alt1.aspmx.l.google.com, smtp.google.com (Workspace), *.googlemail.com
GOOGLE_EXCHANGES = (".google.com.", ".googlemail.com.")

WAIT_SECONDS = 0.3  # how long a request waits for the answers
LOOKUP_SECONDS = 3.0  # how long a lookup may go on in the background
CACHE_SECONDS = 3600
UNKNOWN_CACHE_SECONDS = 60


def domain_of(address):
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def combine(answers):
    """One answer for a message: Google if any recipient is at Google, other only when every
    recipient is known to be elsewhere, else unknown."""
    answers = list(answers)
    if GOOGLE in answers:
        return GOOGLE
    if answers and all(answer == OTHER for answer in answers):
        return OTHER
    return UNKNOWN


class MailHosts:
    """MX look-ups with a cache and a deadline. `nameservers`: "host[:port]" strings, or None for
    the system's resolver configuration."""

    def __init__(self, nameservers=None):
        try:
            self._resolver = dns.resolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            self._resolver = dns.resolver.Resolver(configure=False)
        if nameservers:
            self._resolver.nameservers = [_nameserver(text) for text in nameservers]
        self._resolver.lifetime = LOOKUP_SECONDS
        self._resolver.timeout = LOOKUP_SECONDS / 2
        self._cache = {}
        self._lock = threading.Lock()
        # Threads start on first use, in the worker process, never in gunicorn's master.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="mx")

    def domain_hosting(self, domain):
        """GOOGLE, OTHER or UNKNOWN for one domain; blocks up to LOOKUP_SECONDS, cached."""
        if domain in GOOGLE_MAIL_DOMAINS:
            return GOOGLE
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
        exchanges = [str(record.exchange).lower() for record in records]
        if any(name.endswith(GOOGLE_EXCHANGES) for name in exchanges):
            return GOOGLE
        return OTHER

    def hosting(self, recipients, on_late=None, wait=WAIT_SECONDS):
        """The combined answer for a message's recipients, within `wait` seconds. Lookups still
        running then make it UNKNOWN for now; `on_late(answer)` gets the final answer when they
        finish, if it differs (in a background thread)."""
        domains = sorted({domain_of(address) for address in recipients if "@" in address})
        if not domains:
            return UNKNOWN
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


def parse_nameserver(text):
    """(address, port) of "127.0.0.1", "127.0.0.1:5353", "2001:db8::53" or "[2001:db8::53]:53"."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif host.count(":") == 1:
        host, port = host.split(":")
    ipaddress.ip_address(host)  # a resolver is named by its address; raises ValueError
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return host, int(port)


def _nameserver(text):
    return dns.nameserver.Do53Nameserver(*parse_nameserver(text))
