"""Who followed a tracked link: a click counts only on positive evidence of a person, and mail
security scanners, which follow every link of a new message, go first (docs/evidence.md,
"Scanners by time"; the README's "Link receipts" says what a click can and cannot prove).

What a single request shows is judged here; what several show together — the hidden honeypot
link followed, or several links followed at once from one network — is judged when the click is
stored (links/tracking.py), and turns the clicks around it into a machine's."""

import datetime
import hmac

from ..vocabulary import Kind
from . import useragents
from .classify import (
    APPLE_MPP_UA,
    FETCHERS,
    PREFETCH_PURPOSE,
    SCANNER_WINDOW,
    Verdict,
    automated,
    fetcher,
)

# putyourlightson/craft-campaign #546: scanners' link sweeps a median 43 s after sending, 97%
# within 5 minutes (docs/evidence.md). A click in that time cannot be told from theirs.
CLICK_SCANNER_WINDOW = SCANNER_WINDOW
WINDOW_REASON = (
    "followed within 5 minutes of sending, when mail security scanners follow every link of a "
    "new message: a person's click this early cannot be told from theirs"
)
# Clicks from one network this close to a honeypot hit, or to a click on another of the
# message's links, are a scanner's sweep (receipts/ledger.settle_clicks): mautic #9798 (a hidden
# link, and every click within 10 s of its hit removed, "up to 20, 30 or even more seconds" with
# more links), warmbly's click burst (pull request #438).
SWEEP = datetime.timedelta(seconds=30)
HONEYPOT_REASON = "followed the hidden link that no person can see or click: a scanner"


def judge_click(fetch, facts, networks, now):
    """The Verdict for one request of a tracked link (`fetch.link_id` set)."""
    ua = (fetch.user_agent or "").strip()
    if fetch.honeypot:
        return Verdict(Kind.BOT, "honeypot", HONEYPOT_REASON)
    named = fetcher(ua, fetch.ip, networks)
    if fetch.method == "HEAD":
        return Verdict(
            Kind.BOT, named or "direct", "HEAD request: the link was checked, not followed"
        )
    if PREFETCH_PURPOSE.search(fetch.purpose or ""):
        return Verdict(Kind.PREFETCH, named or "direct", "the link was prefetched, not clicked")
    if named:
        kind, reason = FETCHERS[named]
        if kind == Kind.PREFETCH:  # a scanner, Apple's or Gmail's fetch on delivery
            return Verdict(Kind.PREFETCH, named, reason)
        return Verdict(
            Kind.BOT, named, "a mail provider's image proxy fetched the link: nobody clicked it"
        )
    if ua == APPLE_MPP_UA:
        return Verdict(Kind.PREFETCH, "machine", "a bare 'Mozilla/5.0' client: a machine")
    if not ua:
        return Verdict(Kind.BOT, "no-user-agent", "no user agent: a script, not a browser")
    if networks.azure.meets(fetch.ip) and (
        facts.sent_at is None or now - facts.sent_at <= CLICK_SCANNER_WINDOW
    ):
        return Verdict(
            Kind.PREFETCH,
            "scanner-microsoft",
            "a browser in Microsoft's cloud within 5 minutes of sending: Defender / Safe Links "
            "checking the message's links",
        )
    program = useragents.identify(ua)
    if program.role == useragents.MACHINE:
        return automated(program)
    if program.role == useragents.MAIL_PROGRAM:
        return Verdict(
            Kind.PREFETCH, "direct", "the mail program fetched the link itself (a preview)"
        )
    if program.role != useragents.BROWSER:
        return Verdict(
            Kind.UNKNOWN, "unrecognised", "an unrecognised program followed the link: no click"
        )
    if (
        fetch.browser
        and facts.mint_fingerprint
        and hmac.compare_digest(fetch.browser, facts.mint_fingerprint)
    ):
        return Verdict(
            Kind.SELF,
            "direct",
            "the sender's own browser (same browser and network as when the receipt was made)",
        )
    if facts.sent_at is not None and now - facts.sent_at <= CLICK_SCANNER_WINDOW:
        return Verdict(Kind.PREFETCH, "direct", WINDOW_REASON)
    return Verdict(Kind.CLICK, "direct", "a browser followed the link")
