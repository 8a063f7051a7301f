"""How the status pages hold up on a full database: the server time of the list page, a detail
page and the JSON list with 10,000 pixels and 100,000 events, next to the same pages on an almost
empty database. Not a timed test: run it by hand (see bench/README.md). Exits 1 when one of
these pages is 3 times slower or more on the full database, or answers with an error.

    .venv/bin/python bench/status_pages.py [--database-url URL] [--pixels N] [--events N]
"""

import argparse
import datetime
import logging
import math
import random
import re
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peewee import Case, PostgresqlDatabase, chunked, fn

# bench/scratch.py, beside this script
from scratch import add_database_url_argument, scratch_database
from werkzeug.exceptions import HTTPException

from web import create_app
from web.accounts import create_user, new_token
from web.receipts.ledger import COUNTERS, refresh
from web.receipts.minting import new_public_id
from web.storage.engine import db, utcnow
from web.storage.models import Event, Pixel, User
from web.vocabulary import STATE_REACHED, STATES

MAX_RATIO = 3
WARM_UP = 3
EMPTY_EVENTS = 10  # the one receipt of the "empty" database has a story to show
OTHER_PIXELS = 5  # another user's receipts, so that every page must filter by owner
CHECKED_PIXELS = 200  # receipts whose recount is checked against receipts.refresh()
# SQLite before 3.32 takes at most 999 parameters a statement.
PARAMETERS_PER_INSERT = 999
PASSWORD = "bench password, not a secret"
SEARCH = "invoice"  # a word some subjects hold, and so does the first receipt
FIRST_SUBJECT = "Invoice 2024-117 for the kitchen renovation"


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    api: bool = False
    gated: bool = True  # the three pages; the others are shown for information


@dataclass(frozen=True)
class Timing:
    status: str  # "ok", "missing" (no such route yet), or "HTTP <code>"
    median_ms: float = math.nan
    p95_ms: float = math.nan
    queries: int | None = None
    size: int = 0


# Who fetches a receipt, by the recipient's mail service: (source, masked address, country,
# city, client) for an open and for a fetch on delivery, as web.classify judges them.
FETCHERS = {
    "gmail": {
        "open": ("gmail-proxy", "66.249.84.0", "US", "Mountain View", "Gmail"),
        "prefetch": ("gmail-prefetch", "66.249.88.0", "US", "Mountain View", "Gmail"),
    },
    "apple": {
        "open": ("direct", "81.2.69.0", "GB", "London", "Mobile Safari 17, iOS"),
        "prefetch": ("apple-mpp", "17.58.63.0", "US", "Cupertino", "Apple Mail"),
    },
    "outlook": {
        "open": ("outlook", "81.2.69.0", "GB", "London", "Outlook"),
        "prefetch": ("scanner-microsoft", "40.94.87.0", "US", "Boydton", "Microsoft 365"),
    },
    "other": {
        "open": ("direct", "2001:db8:1234::", "DE", "Berlin", "Thunderbird 115, Linux"),
        "prefetch": ("machine", "81.2.69.0", "GB", "London", None),
    },
}
SENDER = ("direct", "81.2.69.0", "GB", "London", "Chrome 124, Mac OS X")
SENDER_GMAIL = ("gmail-proxy", "66.249.84.0", "US", "Mountain View", "Gmail")
BOTS = (
    ("automated", "203.0.113.0", "US", None, "curl 8"),
    ("unknown", "198.51.100.0", "NL", "Amsterdam", None),
)
REASONS = {
    "gmail-proxy": "Gmail's image proxy fetched it as the message was opened",
    "gmail-prefetch": "Gmail prefetched the message on delivery",
    "apple-mpp": "Apple Mail Privacy Protection downloads images on delivery",
    "scanner-microsoft": "Microsoft 365 protection scanned the message on delivery",
    "machine": "a bare 'Mozilla/5.0' client outside Apple's ranges: a machine, not a reader",
    "outlook": "Outlook fetched the image directly as the message was opened",
    "direct": "a mail client or browser fetched the image directly",
    "automated": "a crawler, link checker or HTTP library",
    "unknown": "no user agent: a script, not a mail client",
}
SELF_REASON = "the sender's own Gmail tab showed the message (self-view beacon)"
PREVIEW_REASON = "the sender's own browser showed the draft (same browser and network)"
# What the fetches of a sent message are, by kind; Apple Mail users' fetches are mostly Apple's.
KIND_WEIGHTS = {"open": 52, "prefetch": 22, "self": 12, "bot": 10, "preview": 4}
APPLE_KIND_WEIGHTS = {"open": 15, "prefetch": 60, "self": 12, "bot": 9, "preview": 4}

DOMAINS = {
    "gmail": ("gmail.com", "googlemail.com", "acme-studio.com"),
    "apple": ("icloud.com", "me.com"),
    "outlook": ("outlook.com", "hotmail.com", "contoso-legal.co.uk"),
    "other": ("posteo.de", "fastmail.com", "uni-heidelberg.de", "example.org"),
}
DOMAIN_PROFILES = {domain: profile for profile, names in DOMAINS.items() for domain in names}
PROFILE_WEIGHTS = {"gmail": 50, "apple": 15, "outlook": 20, "other": 15}
MAIL_HOSTING = {"gmail": "google", "apple": "other", "outlook": "other", "other": "unknown"}
NAMES = (
    "anna.schmidt", "ben", "chloe.martin", "david.okafor", "elena", "f.rossi", "grace.hopper",
    "hiroshi.tanaka", "ines.garcia", "jonas", "katarzyna.nowak", "liam.obrien", "maria", "noah",
    "olivia.brown", "pierre.dubois", "quinn", "rahul.mehta", "sofia", "tom.baker", "ursula",
    "victor.hugo", "wei.zhang", "ximena", "yusuf", "zoe.clarke", "accounts", "hello", "support",
)  # fmt: skip
SUBJECTS = (
    "Invoice {n} for {topic}",
    "Re: {topic}",
    "Re: Re: {topic}",
    "Fwd: {topic}",
    "Quote for {topic}",
    "Following up on {topic}",
    "{topic}: signed contract attached",
    "Question about {topic}",
    "Minutes of our call about {topic}",
    "Reminder: invoice {n} is due",
    "{topic} – next steps",
    "Draft proposal: {topic}",
)
TOPICS = (
    "the kitchen renovation", "the Q3 report", "the apartment on Rue Oberkampf", "our offsite",
    "the logo redesign", "your application", "the server migration", "Lisbon in May",
    "the lease renewal", "the board meeting", "the translation job", "the conference talk",
    "the school trip", "the insurance claim", "the new website", "the pilot project",
)  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    rng = random.Random(args.seed)
    data_dir = Path(tempfile.mkdtemp(prefix="openreceipt-bench-"))
    try:
        with scratch_database(args.database_url) as url:
            url = url or f"sqlite:///{data_dir / 'openreceipt.db'}"
            return run(args, url, data_dir, rng)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url_argument(parser)
    parser.add_argument("--pixels", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per page")
    parser.add_argument(
        "--empty-pixels",
        type=int,
        default=1,
        help="receipts of the user (of 10 events each) in the empty database; 25 make the list "
        "pages show as many rows as on the full one",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the generated receipts")
    args = parser.parse_args(argv)
    if min(args.pixels, args.repeat, args.empty_pixels) < 1 or args.events < 0:
        parser.error("--pixels, --empty-pixels and --repeat must be at least 1, --events 0 or more")
    return args


def run(args, url, data_dir, rng):
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": url,
            "GEOIP_DATABASE": "off",
            "MX_LOOKUP": False,
            "ANNOUNCE_STARTUP": False,
        }
    )
    database = app.extensions["openreceipt.database"]
    now = utcnow()
    try:
        with app.app_context():
            user = create_user("ada@example.com", PASSWORD)
            token = new_token(user, "bench")[1]
            first = add_pixels(user, args.empty_pixels, rng, now, first_subject=FIRST_SUBJECT)
            add_events(first, [EMPTY_EVENTS] * len(first), rng, now)
            others = add_pixels(create_user("grace@example.com", PASSWORD), OTHER_PIXELS, rng, now)
            add_events(others, [3] * OTHER_PIXELS, rng, now)
            recount()
            check_recount(rng)
            empty_rows = row_counts()
        client = signed_in_client(app)
        auth = {"Authorization": f"Bearer {token}"}
        print(f"database: {describe(database)}")
        print(f"empty: {format_rows(empty_rows)}; timing...", flush=True)
        pages = status_pages(first[0].public_id, first[0].public_id)
        empty = measure(app, client, pages, auth, args.repeat)

        started = time.perf_counter()
        with app.app_context():
            fill(user, args.pixels, args.events, rng, now)
            filled = time.perf_counter()
            recount()
            check_recount(rng)
            settle(database)
            busiest, busiest_events = busiest_pixel(user)
            full_rows = row_counts()
        print(
            f"full: {format_rows(full_rows)}; the busiest receipt has {busiest_events:,} events "
            f"(filled in {filled - started:.1f} s, recounted and checked in "
            f"{time.perf_counter() - filled:.1f} s); timing...",
            flush=True,
        )
        pages = status_pages(busiest, first[0].public_id)
        full = measure(app, client, pages, auth, args.repeat)
        return report(pages, empty, full, args.repeat)
    finally:
        if not database.is_closed():
            database.close()


def status_pages(busiest, first):
    """The pages to time: the issue's three, then more for information."""
    return [
        Page("list page  GET /", "/"),
        Page("detail page  GET /m/<busiest>", f"/m/{busiest}"),
        Page("JSON list  GET /api/pixels", "/api/pixels", api=True),
        Page("list page, search  GET /?q=", f"/?q={SEARCH}", gated=False),
        Page("list page, filter  GET /?state=", "/?state=opened", gated=False),
        Page(f"detail page, {EMPTY_EVENTS} events", f"/m/{first}", gated=False),
        # What the pages' script (static/live.js) asks every few seconds while a page is open.
        Page("live list  GET /live/receipts", "/live/receipts", gated=False),
        Page("live detail  GET /live/m/<busiest>", f"/live/m/{busiest}", gated=False),
    ]


def settle(database):
    """On PostgreSQL, what autovacuum does within a minute of such a load: planner statistics
    and the visibility map (index-only scans). SQLite's planner needs no statistics here."""
    if isinstance(database, PostgresqlDatabase):
        database.execute_sql("VACUUM ANALYZE")


def describe(database):
    if isinstance(database, PostgresqlDatabase):
        with database.connection_context():
            version = database.execute_sql("SHOW server_version").fetchone()[0]
            schema = database.execute_sql("SELECT current_schema()").fetchone()[0]
        return f"PostgreSQL {version}, schema {schema}"
    return f"SQLite {sqlite3.sqlite_version}, {database.database}"


def add_pixels(owner, count, rng, now, first_subject=None):
    """Insert `count` receipts of `owner` made over the last 90 days (the first one, given a
    subject, sent three hours ago); returns them, unsaved, with their ids."""
    rows = []
    for index in range(count):
        profile = pick(rng, PROFILE_WEIGHTS)
        subject = random_subject(rng)
        created = now - seconds(rng.uniform(60, 90 * 86400))
        # One in 12 is a draft never sent: the bookmarklet made the receipt, the mail stayed.
        sent = None if rng.random() < 1 / 12 else created + seconds(rng.uniform(20, 2400))
        if first_subject and index == 0:
            subject, created = first_subject, now - seconds(3 * 3600)
            sent = created + seconds(300)
        rows.append(
            Pixel(
                public_id=new_public_id(),
                owner=owner,
                label=rng.choice(TOPICS).capitalize() if rng.random() < 0.1 else None,
                subject=subject,
                recipients=recipients(rng, profile),
                created_at=created,
                sent_at=min(sent, now) if sent else None,
                mint_fingerprint=secrets.token_hex(16),
                mail_hosting=MAIL_HOSTING[profile],
            )
        )
    fields = [
        Pixel.public_id,
        Pixel.owner,
        Pixel.label,
        Pixel.subject,
        Pixel.recipients,
        Pixel.created_at,
        Pixel.sent_at,
        Pixel.mint_fingerprint,
        Pixel.mail_hosting,
    ]
    with db.atomic():
        for batch in chunked(rows, PARAMETERS_PER_INSERT // len(fields)):
            values = [[getattr(pixel, field.name) for field in fields] for pixel in batch]
            Pixel.insert_many(values, fields=fields).execute()
    ids = dict(
        Pixel.select(Pixel.public_id, Pixel.id).where(Pixel.owner == owner).tuples().iterator()
    )
    for pixel in rows:
        pixel.id = ids[pixel.public_id]
    return rows


def random_subject(rng):
    template = rng.choice(SUBJECTS)
    return template.format(
        n=f"{rng.randrange(2023, 2026)}-{rng.randrange(1, 400):03}", topic=rng.choice(TOPICS)
    )


def recipients(rng, profile):
    addresses = []
    for index in range(rng.choice((1, 1, 1, 1, 2, 2, 3))):
        # The first recipient's mail service is the message's; others are anybody's.
        domains = DOMAINS[profile if index == 0 else pick(rng, PROFILE_WEIGHTS)]
        address = f"{rng.choice(NAMES)}@{rng.choice(domains)}"
        if address not in addresses:
            addresses.append(address)
    return addresses


def fill(user, pixel_count, event_count, rng, now):
    """The full database: `pixel_count` more receipts of the user, and `event_count` events
    spread over them the way mail is read: many receipts fetched a few times, a few hundreds of
    times, some not yet at all."""
    pixels = add_pixels(user, pixel_count, rng, now)
    weights = []
    for pixel in pixels:
        if pixel.sent_at is None:
            weights.append(0.3)  # a draft's few previews
        elif rng.random() < 0.15:
            weights.append(0.0)  # not delivered yet
        else:
            weights.append(rng.lognormvariate(0, 1.1))
    add_events(pixels, spread(event_count, weights), rng, now)


def spread(total, weights):
    """`total` split in proportion to `weights`, in whole numbers that add up exactly."""
    scale = total / (sum(weights) or 1)
    shares = [weight * scale for weight in weights]
    counts = [int(share) for share in shares]
    short = total - sum(counts)
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for index in by_remainder[:short]:
        counts[index] += 1
    return counts


def add_events(pixels, counts, rng, now):
    """Insert counts[i] events for pixels[i], in time order, each as the classifier would have
    stored it (counters are left to recount())."""
    fields = [
        Event.pixel,
        Event.at,
        Event.kind,
        Event.source,
        Event.reason,
        Event.ip,
        Event.country,
        Event.city,
        Event.client,
    ]
    rows = []
    for pixel, count in zip(pixels, counts, strict=True):
        rows.extend(sorted(pixel_events(pixel, count, rng, now), key=lambda row: row[1]))
    with db.atomic():
        for batch in chunked(rows, PARAMETERS_PER_INSERT // len(fields)):
            Event.insert_many(batch, fields=fields).execute()


def pixel_events(pixel, count, rng, now):
    profile = DOMAIN_PROFILES[pixel.recipients[0].partition("@")[2]]
    weights = APPLE_KIND_WEIGHTS if profile == "apple" else KIND_WEIGHTS
    draft_end = pixel.sent_at or min(pixel.created_at + seconds(2400), now)
    for _ in range(count):
        kind = "preview" if pixel.sent_at is None else pick(rng, weights)
        if kind == "preview":
            at = pixel.created_at + (draft_end - pixel.created_at) * rng.random()
            source, ip, country, city, client = SENDER
            reason = PREVIEW_REASON
        elif kind == "prefetch":
            at = min(pixel.sent_at + seconds(rng.expovariate(1 / 120)), now)
            source, ip, country, city, client = FETCHERS[profile]["prefetch"]
            reason = REASONS[source]
        else:
            # Most reading happens soon after sending; some messages are read again for weeks.
            at = pixel.sent_at + (now - pixel.sent_at) * rng.betavariate(0.7, 4)
            if kind == "self":
                source, ip, country, city, client = SENDER_GMAIL
                reason = SELF_REASON
            elif kind == "bot":
                source, ip, country, city, client = rng.choice(BOTS)
                reason = REASONS[source]
            else:
                source, ip, country, city, client = FETCHERS[profile]["open"]
                reason = REASONS[source]
                if ip.endswith(".0"):
                    ip = f"{ip.rsplit('.', 2)[0]}.{rng.randrange(256)}.0"
        yield (pixel.id, at, kind, source, reason, ip, country, city, client)


def pick(rng, weights):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def seconds(value):
    return datetime.timedelta(seconds=value)


def recount():
    """What receipts.refresh() does for one pixel, for all of them in two UPDATE statements."""
    event = Event.alias("e")

    def of_pixel(aggregate, *conditions):
        return event.select(aggregate).where(event.pixel == Pixel.id, *conditions)

    changes = {
        counter: of_pixel(fn.COUNT(event.id), event.kind == kind)
        for kind, counter in COUNTERS.items()
    }
    changes[Pixel.first_open_at] = of_pixel(fn.MIN(event.at), event.kind == "open")
    changes[Pixel.last_open_at] = of_pixel(fn.MAX(event.at), event.kind == "open")
    changes[Pixel.delivered_at] = of_pixel(fn.MIN(event.at), event.kind.in_(["open", "prefetch"]))
    changes[Pixel.last_event_at] = of_pixel(fn.MAX(event.at))
    # The state is that of the furthest kind seen; SET sees the old counters, hence a second pass.
    furthest_first = sorted(STATE_REACHED.items(), key=lambda item: -STATES.index(item[1]))
    state = Case(
        None, [(COUNTERS[kind] > 0, reached) for kind, reached in furthest_first], STATES[0]
    )
    then = {
        Pixel.state: state,
        Pixel.activity_at: fn.COALESCE(Pixel.last_event_at, Pixel.created_at),
    }
    with db.atomic():
        Pixel.update(changes).execute()
        Pixel.update(then).execute()


def check_recount(rng):
    """Stop, loudly, if recount() disagrees with receipts.refresh() on a sample of pixels (the
    busiest, some never fetched, the rest at random)."""
    ids = [row[0] for row in Pixel.select(Pixel.id).tuples()]
    busiest = (
        Event.select(Event.pixel).group_by(Event.pixel).order_by(fn.COUNT(Event.id).desc()).limit(3)
    )
    idle = Pixel.select(Pixel.id).where(Pixel.last_event_at.is_null()).limit(3)
    sample = {row.pixel_id for row in busiest} | {row.id for row in idle}
    sample |= set(rng.sample(ids, min(CHECKED_PIXELS, len(ids))))
    fields = Pixel._meta.sorted_fields
    query = Pixel.select(*fields).where(Pixel.id.in_(sample))
    with db.atomic():
        before = {pixel.id: pixel.__data__ for pixel in query.clone()}
        for pixel_id in sample:
            refresh(pixel_id)
        after = {pixel.id: pixel.__data__ for pixel in query.clone()}
    wrong = [
        f"pixel {pixel_id} {name}: recount {before[pixel_id][name]!r}, refresh {value!r}"
        for pixel_id in sorted(sample)
        for name, value in after[pixel_id].items()
        if before[pixel_id].get(name) != value
    ]
    if wrong:
        raise SystemExit(
            "bench: the set-based recount disagrees with receipts.refresh():\n  "
            + "\n  ".join(wrong[:20])
        )


def busiest_pixel(user):
    """The public id of the user's receipt with the most events, and how many."""
    row = (
        Pixel.select(Pixel.public_id, fn.COUNT(Event.id).alias("events"))
        .join(Event)
        .where(Pixel.owner == user)
        .group_by(Pixel.id, Pixel.public_id)
        .order_by(fn.COUNT(Event.id).desc())
        .first()
    )
    return row.public_id, row.events


def row_counts():
    return {
        "users": User.select().count(),
        "pixels": Pixel.select().count(),
        "events": Event.select().count(),
    }


def format_rows(counts):
    return ", ".join(f"{count:,} {name}" for name, count in counts.items())


def signed_in_client(app):
    """A test client signed in through the real /login form, CSRF token and all."""
    client = app.test_client()
    form = client.get("/login").get_data(as_text=True)
    csrf_token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    response = client.post(
        "/login", data={"email": "ada@example.com", "password": PASSWORD, "csrf_token": csrf_token}
    )
    if response.status_code != 302 or client.get("/").status_code != 200:
        raise SystemExit(f"bench: signing in failed (HTTP {response.status_code})")
    return client


def measure(app, client, pages, auth, repeat):
    """Median and 95th percentile of the server time of `repeat` requests a page, after a
    warm-up; the pages take turns, so that a burst of load elsewhere hits them all alike."""
    timings, times = {}, {}
    for page in pages:
        if not has_route(app, page.path):
            timings[page.name] = Timing("missing")
            continue
        for _ in range(WARM_UP):
            status = get(client, page, auth).status_code
            if status != 200:
                timings[page.name] = Timing(f"HTTP {status}")
                break
        else:
            times[page] = []
    for _ in range(repeat):
        for page, taken in times.items():
            started = time.perf_counter()
            get(client, page, auth)
            taken.append((time.perf_counter() - started) * 1000)
    for page, taken in times.items():
        with counted_queries() as queries:
            size = len(get(client, page, auth).get_data())
        taken.sort()
        p95 = taken[math.ceil(0.95 * len(taken)) - 1]
        timings[page.name] = Timing("ok", statistics.median(taken), p95, queries[0], size)
    return timings


def get(client, page, auth):
    return client.get(page.path, headers=auth if page.api else {})


def has_route(app, path):
    try:
        app.url_map.bind("localhost").match(path.split("?")[0], method="GET")
    except HTTPException:
        return False
    return True


class QueryCounter(logging.Handler):
    """Peewee logs every statement it runs at DEBUG on the 'peewee' logger."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        self.count += 1


@contextmanager
def counted_queries():
    logger = logging.getLogger("peewee")
    counter, level, found = QueryCounter(), logger.level, [None]
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        found[0] = counter.count


def report(pages, empty, full, repeat):
    """Print the table; returns the exit status."""
    print(f"\nserver time of {repeat} requests, in ms (median, p95); queries per request\n")
    header = (
        f"{'page':<34} {'empty':>7} {'p95':>7} {'full':>7} {'p95':>7} {'ratio':>6}"
        f"  {'queries':>9}  {'KiB':>11}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    for page in pages:
        before, after = empty[page.name], full[page.name]
        if before.status != "ok" or after.status != "ok":
            status = before.status if before.status != "ok" else after.status
            print(f"{page.name:<34} {status}")
            if status != "missing":
                failures.append(f"{page.name}: {status}")
            continue
        ratio = after.median_ms / before.median_ms
        mark = ""
        if not page.gated:
            mark = "  (info)"
        elif ratio >= MAX_RATIO:
            mark = "  << too slow"
            failures.append(f"{page.name}: {ratio:.1f} times slower on the full database")
        print(
            f"{page.name:<34} {before.median_ms:7.2f} {before.p95_ms:7.2f} "
            f"{after.median_ms:7.2f} {after.p95_ms:7.2f} {ratio:6.2f}"
            f"  {before.queries:>4}/{after.queries:<4}  "
            f"{before.size / 1024:5.1f}/{after.size / 1024:<5.1f}{mark}"
        )
    print()
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print(f"OK: every page of the issue stays under {MAX_RATIO} times its empty-database time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
