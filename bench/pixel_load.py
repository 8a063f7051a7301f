"""How fast the pixel path answers under load, next to the framework's floor: one gunicorn serving
`wsgi:app` on a fresh database and one serving `bench.floor:app` (the same GIF and headers, and
nothing else), both with gunicorn.conf.py as it is, driven alike by wrk (or, without wrk, a Python
load generator) through freshly minted pixels and a mix of mail clients. During the pixel's
rounds a probe fetches a fresh pixel every 100 ms and times how long its event (and notice) takes
to appear in the database. Then checks that every fetch answered "recorded" (or "queued" or
"spooled", once the worker's writer or a replay has stored it) is one event in the database.
With --kill, kills a worker and then the whole server with kill -9 under load and checks that
no answered fetch was lost. Not a timed test: run it by hand (see bench/README.md). Exits 1 on
an answer other than 2xx, a socket error, or events that do not add up (or, with --kill, an
answered fetch lost); the ratio to the floor and the delays are reported, never fatal.

    .venv/bin/python bench/pixel_load.py [--database-url URL] [--duration 15] [--connections 64]
        [--networks one|many] [--notify first|every] [--kill]
"""

import argparse
import http.client
import itertools
import json
import math
import os
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

# bench/scratch.py, beside this script
from scratch import add_database_url_argument, scratch_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The ingest targets, pixel / floor: 0.9 with mostly repeats (--networks one, either database);
# with every fetch a new event (--networks many), 0.8 on SQLite and 0.6 on PostgreSQL.
TARGET_REPEATS, TARGET_NEW_SQLITE, TARGET_NEW_POSTGRESQL = 0.9, 0.8, 0.6
LOAD_NAMES = {"one": "repeat-heavy", "many": "every-fetch-new"}
EMAIL = "ada@example.com"
PASSWORD = "bench password, not a secret"
# wrk stops at the end of --duration whatever is in flight, and the server would store the
# events of fetches whose answers nobody reads (they would spoil the count of events): in the
# last QUIET_SECONDS of a run wrk sends nothing new, and these seconds are left out of req/s.
QUIET_SECONDS = 2
# Compared on both servers before the load; refused on its signature, it stores nothing.
UNSIGNED_PATH = "/p/bench-unsigned.gif"
# The fetch-to-visible probe: a fresh pixel fetched every PROBE_INTERVAL seconds during the
# pixel's rounds, its rows looked for every PROBE_POLL seconds; the issue's bound is
# PROBE_TARGET, and a probe not seen within PROBE_GIVE_UP is counted as never seen. Looking
# every 10 ms times a delay to within 10 ms, a hundredth of the bound; looking every 2 ms (as
# the probe once did) cost the machine a sixth of a CPU, its query and the database's answer,
# during the pixel's rounds only: a load the floor never carried.
PROBE_INTERVAL = 0.1
PROBE_POLL = 0.01
PROBE_TARGET = 1.0
SOCKET_TIMEOUT = 10  # seconds; a fetch slower than this is an error (wrk's --timeout)
PROBE_GIVE_UP = SOCKET_TIMEOUT
COMPARED_HEADERS = ("Content-Type", "Content-Length", "Cache-Control", "Pragma", "Expires")
# The answers that promise an event: stored before the answer ('recorded'), or after it, by
# the worker's writer ('queued') or by a replay of the spool ('spooled').
ANSWERED_STORED = ("recorded:", "queued:", "spooled:")

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
APPLE_MPP = "Mozilla/5.0"
IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
# The probes show the message, as a mail program and a browser do: each fetch is an open.
PROBE_AGENTS = (IPHONE_MAIL, CHROME)
# Who fetches, out of 10: Apple's privacy proxy and Gmail's image proxy make most fetches.
CLIENT_MIX = (
    ("Apple Mail Privacy Protection", APPLE_MPP, 3),
    ("Gmail image proxy", GMAIL_PROXY, 3),
    ("iPhone Mail", IPHONE_MAIL, 2),
    ("Outlook", OUTLOOK, 1),
    ("Chrome", CHROME, 1),
)

# wrk's script: each thread walks the list of fetches from its own starting point; delay()
# holds every connection back in the quiet end; response() tallies the X-Openreceipt values;
# done() prints the figures for this script to read.
WRK_SCRIPT = """\
-- Written by bench/pixel_load.py for one run.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local paths = {%(paths)s}
local agents = {%(agents)s}
local mix = {%(mix)s}  -- agent of each slot; pixel i in round r takes slot (i + r) mod #mix
local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local duration, quiet, thread_count = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local shift = tonumber(args[4])  -- the server's round: where the walk starts (see request())
  prepared = {}
  for round = 0, #mix - 1 do
    for i, path in ipairs(paths) do
      local agent = agents[mix[(i + round) %% #mix + 1]]
      table.insert(prepared, wrk.format("GET", path, {["User-Agent"] = agent}))
    end
  end
  position = math.floor(#prepared * thread_index / thread_count) + shift
  quiet_from = now() + duration - quiet
  hold = (duration + 60) * 1000  -- milliseconds: past the end of the run
  sent, answered, not_ok = 0, 0, 0
  outcomes = {}
end

function delay()
  if now() >= quiet_from then
    return hold
  end
  return 0
end

local many = %(many)s  -- each fetch from a network of its own (X-Forwarded-For), or all from one

function request()
  sent = sent + 1
  position = position %% #prepared + 1
  if not many then
    return prepared[position]
  end
  -- Threads never share a network; each round starts from network 0 again, shifted onto
  -- another pixel than in the round before (init).
  local n = sent * 4 + thread_index
  local round = math.floor((position - 1) / #paths)
  local path = paths[(position - 1) %% #paths + 1]
  local agent = agents[mix[((position - 1) %% #paths + 1 + round) %% #mix + 1]]
  local network = string.format("10.%%d.%%d.7", math.floor(n / 250) %% 250, n %% 250)
  return wrk.format("GET", path, {["User-Agent"] = agent, ["X-Forwarded-For"] = network})
end

function response(status, headers, body)
  answered = answered + 1
  if status < 200 or status > 299 then
    not_ok = not_ok + 1
  end
  local outcome = headers["X-Openreceipt"] or "(no X-Openreceipt header)"
  outcomes[outcome] = (outcomes[outcome] or 0) + 1
end

function done(summary, latency, requests)
  local total = {sent = 0, answered = 0, not_ok = 0}
  local outcomes = {}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(total) do
      total[name] = total[name] + thread:get(name)
    end
    for outcome, count in pairs(thread:get("outcomes")) do
      outcomes[outcome] = (outcomes[outcome] or 0) + count
    end
  end
  for name, value in pairs(total) do
    io.write(string.format("bench\\t%%s\\t%%d\\n", name, value))
  end
  local errors = summary.errors
  io.write(string.format("bench\\tduration_us\\t%%d\\n", summary.duration))
  io.write(string.format("bench\\tsocket_errors\\t%%d\\n",
    errors.connect + errors.read + errors.write + errors.timeout))
  io.write(string.format("bench\\tp50_us\\t%%d\\n", latency:percentile(50)))
  io.write(string.format("bench\\tp99_us\\t%%d\\n", latency:percentile(99)))
  io.write(string.format("bench\\tmax_us\\t%%d\\n", latency.max))
  for outcome, count in pairs(outcomes) do
    io.write(string.format("outcome\\t%%d\\t%%s\\n", count, outcome))
  end
end
"""


@dataclass
class Server:
    """A running gunicorn, started from the repository root with gunicorn.conf.py."""

    name: str
    app: str
    url: str
    process: subprocess.Popen
    log: Path

    def workers(self):
        return children(self.process.pid)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Load:
    """What one server answered under load; `seconds` leaves out wrk's quiet end."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    not_ok: int
    socket_errors: int
    outcomes: Counter
    cut_off: int = 0  # fetches sent and never answered when the load stopped
    cpu_seconds: float = 0.0  # the server's workers' CPU time (user + system) during the load

    @property
    def rate(self):
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self):
        """The workers' CPU time per answered request, in ms: what the server itself spends on
        one (the load generator and, for the pixel, the database server are not in it)."""
        return self.cpu_seconds * 1000 / self.requests if self.requests else 0.0

    @property
    def errors(self):
        return self.not_ok + self.socket_errors


@dataclass
class Memory:
    """Resident memory of a server's workers, in KiB: VmRSS each (shared pages counted in every
    worker), and their proportional share (PSS: shared pages split between the processes)."""

    rss: list = field(default_factory=list)
    pss: list = field(default_factory=list)


@dataclass(frozen=True)
class Stored:
    """Events in the database."""

    total: int
    # Events with a key (Event.spool_key), if the column exists: stored by the worker's writer
    # (answered 'queued') or by a replay of the spool (answered 'spooled').
    replayed: int | None


@dataclass
class Visibility:
    """Fetch to visible: for each probe answered 'recorded', 'queued' or 'spooled', the seconds
    from sending its fetch to seeing its rows in the database."""

    delays: list = field(default_factory=list)
    recorded: list = field(default_factory=list)  # the delays of those answered 'recorded'
    unseen: int = 0  # answered 'recorded', 'queued' or 'spooled', no row within PROBE_GIVE_UP
    late_spooled: int = 0  # of the late ones (or never seen), those answered 'spooled'
    answered_otherwise: Counter = field(default_factory=Counter)  # no row to wait for
    ran_out: bool = False  # every probe pixel was used before the rounds ended

    @property
    def late(self):
        """Probes not visible within PROBE_TARGET (those never seen included)."""
        return sum(1 for delay in self.delays if delay > PROBE_TARGET) + self.unseen

    def percentile_ms(self, percent, delays=None):
        return percentile(sorted(self.delays if delays is None else delays), percent) * 1000

    def describe(self, notices):
        rows = "its event and its notice" if notices else "its event"
        count = len(self.delays) + self.unseen
        if not count:
            text = "fetch to visible: no probe was answered 'recorded', 'queued' or 'spooled'"
        else:
            text = (
                f"fetch to visible ({rows} in the database; a fresh pixel fetched every "
                f"{PROBE_INTERVAL * 1000:.0f} ms during the pixel's rounds):\n"
                f"  {count:,} probes: p50 {self.percentile_ms(50):.1f} ms, "
                f"p99 {self.percentile_ms(99):.1f} ms, max "
                + (f"{max(self.delays) * 1000:.0f} ms" if self.delays else "-")
                + f"; {self.late} not visible within {PROBE_TARGET:g} s"
                + (f" ({self.unseen} not within {PROBE_GIVE_UP} s)" if self.unseen else "")
                + (
                    f" ({self.late_spooled} of them answered 'spooled', written by a replay)"
                    if self.late_spooled
                    else ""
                )
                + f": {'met' if not self.late else 'NOT met'}"
            )
            if self.recorded and len(self.recorded) < len(self.delays):
                text += (
                    f"\n  answered 'recorded' ({len(self.recorded):,} of them): "
                    f"p50 {self.percentile_ms(50, self.recorded):.1f} ms, "
                    f"p99 {self.percentile_ms(99, self.recorded):.1f} ms, "
                    f"max {max(self.recorded) * 1000:.0f} ms"
                )
        for outcome, number in self.answered_otherwise.most_common():
            text += f"\n  {number:,} probes answered {outcome!r}, no row to wait for"
        if self.ran_out:
            text += "\n  (the probe pixels ran out before the rounds ended)"
        return text


@dataclass
class ProbeRound:
    """The probes of one pixel round: their answers join the round's tally (Load)."""

    outcomes: Counter = field(default_factory=Counter)
    socket_errors: int = 0
    cut_off: int = 0  # sent, and never answered: may or may not be stored

    def added_to(self, load):
        return replace(
            load,
            outcomes=load.outcomes + self.outcomes,
            socket_errors=load.socket_errors + self.socket_errors,
            cut_off=load.cut_off + self.cut_off,
        )


@dataclass
class Probe:
    """One probe fetch on its way: sent, then answered ("" for no answer) and seen."""

    pixel_id: int
    connection: http.client.HTTPConnection
    sent: float  # time.perf_counter()
    outcome: str | None = None
    seen: float | None = None

    @property
    def expects_rows(self):
        return self.outcome is None or self.outcome.startswith(ANSWERED_STORED)

    def read_answer(self):
        try:
            response = self.connection.getresponse()
            response.read()
            self.outcome = response.headers.get("X-Openreceipt", "(no X-Openreceipt header)")
            if not 200 <= response.status < 300:
                self.outcome = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException):
            self.outcome = ""
        self.connection.close()

    def done(self, now):
        if self.outcome is not None and (self.seen is not None or not self.expects_rows):
            return True
        if now - self.sent > PROBE_GIVE_UP:
            if self.outcome is None:  # no answer in time: a socket error, as for wrk
                self.outcome = ""
                self.connection.close()
            return True
        return False


class Prober:
    """The fetch-to-visible probe: during a pixel round, a thread fetches a pixel nobody has
    fetched yet every PROBE_INTERVAL, as a mail client that shows the message would (so that it
    is a new event, an open), and looks in the database every PROBE_POLL until the pixel's event
    row is there (with --notify, its notice row too): the time from sending the fetch to seeing
    the rows is how long a fetch takes to reach the status page and the outbox. Probes overlap
    (a slow one does not hold the next back), and the database is looked at while the answers
    are on their way, so a row stored before its answer arrives is timed when it is seen."""

    def __init__(self, server, probes, url, sqlite_path, args):
        self.server, self.url, self.sqlite_path = server, url, sqlite_path
        self.probes = iter(probes)  # (path, pixel id), each fetched once over all rounds
        self.many = args.networks == "many"
        self.notices = args.notify != "off"
        self.visibility = Visibility()
        self.sent = 0
        self.thread = None

    def start(self, seconds):
        """Send probes for `seconds` from now; join() waits for their rows, or gives up."""
        self.round = ProbeRound()
        self.thread = threading.Thread(
            target=self.run, args=(time.monotonic() + seconds,), daemon=True
        )
        self.thread.start()

    def join(self):
        self.thread.join()
        return self.round

    def run(self, until):
        pending = []
        with probe_lookup(self.url, self.sqlite_path, self.notices) as visible:
            next_at = time.monotonic()
            while True:
                now = time.monotonic()
                sending = now < until and not self.visibility.ran_out
                if sending and now >= next_at:
                    next_at = max(next_at + PROBE_INTERVAL, now)
                    self.send(pending)
                if not pending and not sending:
                    return
                waiting = [probe for probe in pending if probe.outcome is None]
                if waiting:
                    # Wait for an answer PROBE_POLL at most, then look in the database.
                    sockets = [probe.connection.sock for probe in waiting]
                    readable = set(select.select(sockets, [], [], PROBE_POLL)[0])
                    for probe in waiting:
                        if probe.connection.sock in readable:
                            probe.read_answer()
                else:
                    time.sleep(PROBE_POLL)
                unseen = {probe.pixel_id for probe in pending if probe.seen is None}
                if unseen:
                    found = visible(unseen)
                    seen = time.perf_counter()
                    for probe in pending:
                        if probe.seen is None and probe.pixel_id in found:
                            probe.seen = seen
                now = time.perf_counter()
                for probe in [probe for probe in pending if probe.done(now)]:
                    pending.remove(probe)
                    self.file(probe)

    def send(self, pending):
        try:
            path, pixel_id = next(self.probes)
        except StopIteration:
            self.visibility.ran_out = True
            return
        self.sent += 1
        headers = {"User-Agent": PROBE_AGENTS[self.sent % len(PROBE_AGENTS)]}
        if self.many:
            # A network of its own, apart from the load's (10.0-249.x.7).
            headers["X-Forwarded-For"] = f"10.251.{self.sent // 250 % 250}.{self.sent % 250}"
        parts = urlsplit(self.server.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=SOCKET_TIMEOUT)
        sent = time.perf_counter()
        try:
            connection.request("GET", path, headers=headers)
        except OSError:
            connection.close()
            self.file(Probe(pixel_id, connection, sent, outcome=""))
            return
        pending.append(Probe(pixel_id, connection, sent))

    def file(self, probe):
        """Count a finished probe: its answer in the round's tally, its delay."""
        if not probe.outcome:  # no answer: may or may not be stored
            self.round.socket_errors += 1
            self.round.cut_off += 1
            return
        self.round.outcomes[probe.outcome] += 1
        visibility = self.visibility
        if not probe.expects_rows:
            visibility.answered_otherwise[probe.outcome] += 1
            return
        if probe.seen is None:
            visibility.unseen += 1
        else:
            visibility.delays.append(probe.seen - probe.sent)
            if probe.outcome.startswith("recorded:"):
                visibility.recorded.append(probe.seen - probe.sent)
        late = probe.seen is None or probe.seen - probe.sent > PROBE_TARGET
        if late and probe.outcome.startswith("spooled:"):
            visibility.late_spooled += 1


class probe_lookup:
    """visible(pixel ids) -> those of them that have an event (and, with `notices`, a notice),
    on a connection of the probe's own that sees every commit at once (autocommit)."""

    def __init__(self, url, sqlite_path, notices):
        self.url, self.sqlite_path = url, sqlite_path
        self.mark = "?" if sqlite_path is not None else "%s"
        self.tables = ("event", "notice") if notices else ("event",)

    def __enter__(self):
        if self.sqlite_path is not None:
            self.connection = sqlite3.connect(
                f"file:{self.sqlite_path}?mode=ro", uri=True, isolation_level=None, timeout=5
            )
        else:
            self.connection = psycopg.connect(self.url, autocommit=True, connect_timeout=5)

        def visible(pixel_ids):
            found = set(pixel_ids)
            for table in self.tables:
                marks = ", ".join([self.mark] * len(found))
                sql = f"SELECT DISTINCT pixel_id FROM {table} WHERE pixel_id IN ({marks})"
                found = {row[0] for row in self.connection.execute(sql, tuple(found))}
                if not found:
                    break
            return found

        return visible

    def __exit__(self, *exc):
        self.connection.close()


@dataclass
class Result:
    """What one run found: its exit status, and the figures of bench/ingest.py's table."""

    status: int
    database: str  # SQLite or PostgreSQL
    networks: str  # one or many
    target: float  # the issue's pixel / floor target for this database and load
    loads: dict  # "pixel", "floor" -> Load
    memory: dict  # "pixel", "floor" -> Memory
    # check_events(): (ok, text, events stored, answered recorded, queued or spooled)
    events: tuple
    visibility: Visibility
    ratio: float  # pixel / floor: the median of the rounds' (ratio_of_rounds)
    kills: list = field(default_factory=list)  # Kill, with --kill


def ratio_of_rounds(rounds):
    """Pixel / floor: the median of the rounds' ratios, each of a pixel's and a floor's load
    run back to back. The floor alone moves by up to a fifth from one round to the next (the
    machine's speed, not the code's), mostly for one server's few seconds: the median leaves
    such a round out where a ratio over all the rounds' requests would count it in."""
    ratios = [
        pixel.rate / floor.rate if floor.rate else math.nan
        for pixel, floor in zip(rounds["pixel"], rounds["floor"], strict=True)
    ]
    return statistics.median(ratios)


def target_ratio(sqlite, networks):
    if networks == "one":
        return TARGET_REPEATS
    return TARGET_NEW_SQLITE if sqlite else TARGET_NEW_POSTGRESQL


def main(argv=None):
    return run_once(parse_args(argv)).status


def run_once(args):
    """One run on a database and data dir of its own, both removed at the end; a Result."""
    data_dir = Path(tempfile.mkdtemp(prefix="openreceipt-bench-"))
    try:
        with scratch_database(args.database_url) as url:
            return run(args, url, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url_argument(parser)
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds of load a server and round"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, the servers taking turns (default 3)"
    )
    parser.add_argument(
        "--networks",
        choices=("one", "many"),
        default="one",
        help="one: every fetch from the load generator's address, so most are repeats of a "
        "fetch seconds ago; many: each from a network of its own through a trusted proxy "
        "header, so each is a new event (the write path)",
    )
    parser.add_argument(
        "--notify",
        choices=("off", "first", "every"),
        default="off",
        help="the user gets notices by webhook (a receiver in this script) of the first open of "
        "each receipt, or of every open (no quiet period); the workers send them during the load",
    )
    parser.add_argument(
        "--queue-only",
        action="store_true",
        help="with --notify: the pixel queues notices but no worker sends them "
        "(OPENRECEIPT_NOTIFY_IN_WORKERS=off), which leaves what queueing alone costs",
    )
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument(
        "--threads",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="wrk's threads (the Python load uses one thread a connection)",
    )
    parser.add_argument("--pixels", type=int, default=200, help="pixels minted and fetched")
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="the load generator: wrk when installed (auto), or the Python one",
    )
    parser.add_argument(
        "--kill",
        action="store_true",
        help="after the rounds, kill -9 one worker of the pixel under load, then the whole "
        "server (master and workers), and count what the answered fetches left in the database",
    )
    args = parser.parse_args(argv)
    if args.duration <= QUIET_SECONDS + 1:
        parser.error(f"--duration must be more than {QUIET_SECONDS + 1} seconds")
    if min(args.connections, args.threads, args.pixels) < 1:
        parser.error("--connections, --threads and --pixels must be at least 1")
    args.threads = min(args.threads, args.connections)
    if args.queue_only and args.notify == "off":
        parser.error("--queue-only goes with --notify first|every")
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"
    elif args.load == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed")
    return args


def run(args, url, data_dir):
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENRECEIPT_")}
    env["OPENRECEIPT_DATA_DIR"] = str(data_dir)
    env["OPENRECEIPT_MX_LOOKUP"] = "off"
    # The tally of outcomes reads the pixel's X-Openreceipt header; the floor sends one too.
    env["OPENRECEIPT_DEBUG_HEADERS"] = "on"
    # Minting the benchmark's pixels is faster than a user may mint.
    env["OPENRECEIPT_MINTS_PER_MINUTE"] = "0"
    if args.networks == "many":
        # Behind one proxy, as the README's HTTPS section runs it: X-Forwarded-For names the
        # client's network, so the fetches are not one reader's repeats.
        env["OPENRECEIPT_TRUSTED_PROXIES"] = "1"
    if url:
        env["OPENRECEIPT_DATABASE_URL"] = url
    if args.queue_only:
        env["OPENRECEIPT_NOTIFY_IN_WORKERS"] = "off"
    if args.notify != "off":
        # The receiver is this script, on the loopback address, which notices may not reach
        # unless it is allowed (README: "Where notices may go").
        env["OPENRECEIPT_NOTIFY_ALLOW"] = "127.0.0.1/32"
    sqlite_path = None if url and not url.startswith("sqlite") else database_file(url, data_dir)
    logs = data_dir / "logs"
    logs.mkdir()

    with ExitStack() as servers:
        pixel = start_server("pixel", "wsgi:app", env, logs)
        servers.callback(pixel.stop)
        floor = start_server("floor", "bench.floor:app", env, logs)
        servers.callback(floor.stop)

        openreceipt(env, "user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
        token = openreceipt(env, "token", "new", EMAIL, "--name", "bench")
        receiver = None
        if args.notify != "off":
            receiver = NoticeReceiver()
            servers.callback(receiver.stop)
            add_webhook(url, sqlite_path, receiver.url, args.notify)
        paths = mint(pixel, token, args.pixels)
        # The probes' pixels: never in the load's list, each fetched once, by a probe.
        probes = mint_probes(pixel, token, probes_needed(args), url, sqlite_path)
        prober = Prober(pixel, probes, url, sqlite_path, args)
        # --kill: pixels of its own, so that no kill-phase fetch repeats one of the rounds'.
        kill_paths = mint_pixels(pixel, token, args.pixels, label="kill") if args.kill else []
        compare_answers(pixel, floor)
        before = stored_events(url, sqlite_path)

        load_average = Path("/proc/loadavg").read_text().split()[0]
        print(f"machine: {os.cpu_count()} CPUs, load average {load_average} before the load")
        print(f"database: {describe_database(url, sqlite_path)}")
        workers = {len(server.workers()) for server in (pixel, floor)}
        print(
            f"gunicorn: gunicorn.conf.py as is, {' and '.join(map(str, sorted(workers)))} "
            "workers a server; OPENRECEIPT_MX_LOOKUP=off, GeoIP the packaged GeoLite2 City"
        )
        if receiver:
            sender = "queued only" if args.queue_only else "sent by the workers"
            print(f"notifications: a webhook for {args.notify} opens, {sender}")
        print(
            f"load: {args.load}, {args.connections} connections"
            + (f", {args.threads} threads" if args.load == "wrk" else "")
            + f", {args.duration} s a server, {args.pixels} pixels x {len(CLIENT_MIX)} clients "
            f"({', '.join(f'{name} {weight}' for name, _, weight in CLIENT_MIX)} in 10); "
            f"during the pixel's rounds a probe fetches a fresh pixel every "
            f"{PROBE_INTERVAL * 1000:.0f} ms",
            flush=True,
        )

        # Rounds, the two servers taking turns (and turns at going first): a machine whose
        # speed drifts during the run then weighs on both alike.
        rounds, memory = {"floor": [], "pixel": []}, {}
        for number in range(args.rounds):
            order = (floor, pixel) if number % 2 == 0 else (pixel, floor)
            for server in order:
                print(f"round {number + 1}: loading {server.name} ({server.app})...", flush=True)
                if server is pixel:
                    prober.start(args.duration - QUIET_SECONDS)
                cpu_before = cpu_seconds(server.workers())
                if args.load == "wrk":
                    load = wrk_load(server, paths, args, data_dir, shift=number)
                else:
                    load = python_load(server, paths, args, shift=number)
                load = replace(load, cpu_seconds=cpu_seconds(server.workers()) - cpu_before)
                if server is pixel:
                    # The probes' fetches are answered fetches too: their answers join the
                    # tally that the stored events are checked against.
                    load = prober.join().added_to(load)
                rounds[server.name].append(load)
                memory[server.name] = worker_memory(server)
        for number, (a, b) in enumerate(zip(rounds["pixel"], rounds["floor"], strict=True)):
            print(
                f"round {number + 1}: pixel {a.rate:.0f} req/s, floor {b.rate:.0f} req/s, "
                f"ratio {a.rate / b.rate:.2f}"
            )
        ratio = ratio_of_rounds(rounds)
        loads = {name: combined(results) for name, results in rounds.items()}
        if receiver:
            report_notices(url, sqlite_path, receiver, wait=0 if args.queue_only else 30)
        pixel.stop()
        floor.stop()

    replay = replay_spool(env)
    after = stored_events(url, sqlite_path)
    spool_left, spool_rejected = spool_lines(data_dir)
    sqlite = sqlite_path is not None
    target = target_ratio(sqlite, args.networks)
    status = report(
        loads,
        memory,
        (before, after),
        replay,
        (spool_left, spool_rejected),
        (pixel, floor),
        prober.visibility,
        ratio,
        target,
        "SQLite" if sqlite else "PostgreSQL",
        args,
    )
    result = Result(
        status=status,
        database="SQLite" if sqlite else "PostgreSQL",
        networks=args.networks,
        target=target,
        loads=loads,
        memory=memory,
        events=check_events(
            loads["pixel"],
            (before, after),
            replay,
            (spool_left, spool_rejected),
            every_fetch_new=args.networks == "many",
        ),
        visibility=prober.visibility,
        ratio=ratio,
    )
    if args.kill:
        paths = [path for path, _ in kill_paths]
        result.kills = kill_phase(args, env, paths, url, sqlite_path, data_dir, logs)
        if not all(kill.ok for kill in result.kills):
            result.status = 1
    return result


class NoticeReceiver:
    """A webhook receiver that counts the notices it gets, and each notice id's deliveries."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        ids = self.ids = Counter()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ids[json.loads(body)["id"]] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def add_webhook(url, sqlite_path, target, opens):
    """The user's choice of opens (no quiet period) and a webhook channel, written directly."""
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    statements = [
        ('UPDATE "user" SET notify_opens = {p}, notify_quiet_minutes = 0', (opens,)),
        (
            "INSERT INTO notify_channel (user_id, kind, target, secret, created_at) "
            "SELECT id, 'webhook', {p}, 'whsec_bench', {p} FROM \"user\"",
            (target, now),
        ),
    ]
    with connect(url, sqlite_path) as (connection, p):
        for sql, params in statements:
            connection.execute(sql.format(p=p), params)


class connect:
    """(connection, parameter mark) of the benchmark's database, committed on leaving."""

    def __init__(self, url, sqlite_path):
        self.url, self.sqlite_path = url, sqlite_path

    def __enter__(self):
        if self.sqlite_path is not None:
            self.connection = sqlite3.connect(self.sqlite_path, timeout=30)
            return self.connection, "?"
        self.connection = psycopg.connect(self.url, connect_timeout=5)
        return self.connection, "%s"

    def __exit__(self, *exc):
        with closing(self.connection):
            if exc[0] is None:
                self.connection.commit()


def report_notices(url, sqlite_path, receiver, wait=30):
    """Wait for the workers to send every queued notice (up to `wait` s), then print the tally."""
    deadline = time.monotonic() + wait
    while True:
        with connect(url, sqlite_path) as (connection, _):
            states = dict(
                connection.execute("SELECT state, COUNT(*) FROM notice GROUP BY state").fetchall()
            )
        if not states.get("pending") or time.monotonic() > deadline:
            break
        time.sleep(1)
    twice = sum(1 for count in receiver.ids.values() if count > 1)
    print(
        f"notices: {sum(states.values()):,} queued, {states.get('sent', 0):,} marked sent, "
        f"{states.get('pending', 0):,} pending, {states.get('failed', 0):,} given up; "
        f"the receiver got {len(receiver.ids):,} notices, {twice} of them more than once"
    )


def combined(loads):
    """Several rounds of one server as one: counts and seconds added up, so the rate is over
    all of them; the latency percentiles are the rounds' medians, the maximum their maximum."""
    return Load(
        requests=sum(load.requests for load in loads),
        seconds=sum(load.seconds for load in loads),
        p50_ms=statistics.median(load.p50_ms for load in loads),
        p99_ms=statistics.median(load.p99_ms for load in loads),
        max_ms=max(load.max_ms for load in loads),
        not_ok=sum(load.not_ok for load in loads),
        socket_errors=sum(load.socket_errors for load in loads),
        outcomes=sum((load.outcomes for load in loads), Counter()),
        cut_off=sum(load.cut_off for load in loads),
        cpu_seconds=sum(load.cpu_seconds for load in loads),
    )


def database_file(url, data_dir):
    return Path(url[len("sqlite:///") :]) if url else data_dir / "openreceipt.db"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(name, app, env, logs, port=None):
    """`gunicorn APP` from the repository root, so gunicorn.conf.py applies; it listens where
    OPENRECEIPT_BIND says (on `port`, or a free one), like the README's server."""
    port = port or free_port()
    log = logs / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), app],
            cwd=ROOT,
            env={**env, "OPENRECEIPT_BIND": f"127.0.0.1:{port}"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Server(name, app, f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: gunicorn {app} exited:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        server.stop()
        raise SystemExit(f"bench: gunicorn {app} did not start within 60 s:\n{tail(log)}")
    # The workers fork once the preloaded app listens; wait until they are all there.
    seen, steady_since = -1, time.monotonic()
    while time.monotonic() - steady_since < 1 and time.monotonic() < deadline:
        count = len(server.workers())
        if count != seen or count == 0:
            seen, steady_since = count, time.monotonic()
        time.sleep(0.1)
    return server


def tail(path, lines=30):
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def openreceipt(env, *args, input=None):
    """The openreceipt command with the server's settings; returns its standard output."""
    result = subprocess.run(
        [str(BIN / "openreceipt"), *args],
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode:
        raise SystemExit(f"bench: openreceipt {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout.strip()


def request(server, method, path, headers=None, body=None):
    """(status, headers, body) of one request on a connection of its own."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=SOCKET_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def mint(server, token, count):
    """Mint `count` pixels through the API; returns the path of each pixel's URL."""
    return [path for path, _ in mint_pixels(server, token, count)]


def mint_pixels(server, token, count, label="bench"):
    """Mint `count` pixels through the API; returns (path of its URL, public id) of each."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "User-Agent": "openreceipt-bench",
    }
    minted = []
    for number in range(count):
        body = {
            "subject": f"Invoice 2025-{number:04d}",
            "recipients": [f"reader{number}@example.com"],
            "label": f"{label}-{number}",
        }
        status, _, answer = request(server, "POST", "/api/pixels", headers, json.dumps(body))
        if status != 201:
            raise SystemExit(f"bench: minting a pixel answered HTTP {status}: {answer[:300]!r}")
        pixel = json.loads(answer)
        minted.append((urlsplit(pixel["url"]).path, pixel["id"]))
    return minted


def probes_needed(args):
    """Probe pixels for every round's probes, and a few more."""
    return math.ceil(args.rounds * (args.duration - QUIET_SECONDS) / PROBE_INTERVAL) + 20


def mint_probes(server, token, count, url, sqlite_path):
    """The probes' pixels: (path, pixel id in the database) of each."""
    minted = mint_pixels(server, token, count, label="probe")
    with connect(url, sqlite_path) as (connection, _):
        ids = dict(connection.execute("SELECT public_id, id FROM pixel").fetchall())
    return [(path, ids[public_id]) for path, public_id in minted]


def compare_answers(pixel, floor):
    """Stop unless the floor answers an unsigned pixel exactly as the pixel does (status, body,
    headers; X-Openreceipt aside)."""
    answers = {}
    for server in (pixel, floor):
        status, headers, body = request(server, "GET", UNSIGNED_PATH, {"User-Agent": CHROME})
        answers[server.name] = (
            status,
            body,
            {name: headers.get(name) for name in COMPARED_HEADERS},
            headers.get("Set-Cookie"),
        )
        outcome = headers.get("X-Openreceipt")
        if status != 200 or outcome is None:
            raise SystemExit(f"bench: {server.app} answered an unsigned pixel with HTTP {status}")
    if answers["pixel"] != answers["floor"]:
        raise SystemExit(
            "bench: the floor does not answer like the pixel:\n"
            f"  pixel: {answers['pixel']!r}\n  floor: {answers['floor']!r}"
        )


def lua_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def slots():
    """The agent of each of the 10 slots, by weight (1-based, for Lua), interleaved."""
    weights = [weight for _, _, weight in CLIENT_MIX]
    order = []
    while any(weights):
        for index, left in enumerate(weights):
            if left:
                order.append(index + 1)
                weights[index] -= 1
    return order


def wrk_load(server, paths, args, data_dir, shift=0):
    """Run wrk against a server with the fetches of `paths`, the walk through them shifted by
    `shift` fetches: with --networks many, each round numbers its networks from 0 again, and
    the shift puts each network on another pixel than in the round before (a fetch of the same
    pixel from the same network within 10 s would be a repeat, not a new event)."""
    script = data_dir / "fetches.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "paths": ", ".join(lua_string(path) for path in paths),
            "agents": ", ".join(lua_string(agent) for _, agent, _ in CLIENT_MIX),
            "mix": ", ".join(str(slot) for slot in slots()),
            "many": "true" if args.networks == "many" else "false",
        }
    )
    command = [
        shutil.which("wrk"),
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={args.duration}s",
        f"--timeout={SOCKET_TIMEOUT}s",
        f"--script={script}",
        server.url,
        "--",
        str(args.duration),
        str(QUIET_SECONDS),
        str(args.threads),
        str(shift),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    values, outcomes = {}, Counter()
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == "bench":
            values[parts[1]] = int(parts[2])
        elif parts[0] == "outcome":
            outcomes[parts[2]] += int(parts[1])
    if result.returncode or "duration_us" not in values:
        raise SystemExit(f"bench: wrk failed:\n{result.stdout}\n{result.stderr}")
    return Load(
        requests=values["answered"],
        seconds=values["duration_us"] / 1e6 - QUIET_SECONDS,
        p50_ms=values["p50_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
        max_ms=values["max_us"] / 1000,
        not_ok=values["not_ok"],
        socket_errors=values["socket_errors"],
        outcomes=outcomes,
        # wrk calls request() once more than it sends, to check what it returns.
        cut_off=values["sent"] - 1 - values["answered"],
    )


PYTHON_NETWORKS = itertools.count()


def python_load(server, paths, args, shift=0):
    """The same fetches as the wrk script, from one thread a connection; each thread finishes
    its fetch in flight when the time is up, so nothing is cut off. `shift`: as for wrk_load()."""
    agents = [agent for _, agent, _ in CLIENT_MIX]
    mix = slots()
    fetches = [
        (path, agents[mix[(index + 1 + round_) % len(mix)] - 1])
        for round_ in range(len(mix))
        for index, path in enumerate(paths)
    ]
    parts = urlsplit(server.url)
    # The networks go on from round to round: none is used twice (up to 62,500 fetches).
    sequence, networks = itertools.count(shift), PYTHON_NETWORKS
    lock = threading.Lock()
    latencies, outcomes = [], Counter()
    failures = Counter()

    def fetch_until(deadline):
        mine, seen = [], Counter()
        not_ok = socket_errors = 0
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=SOCKET_TIMEOUT)
        while time.monotonic() < deadline:
            path, agent = fetches[next(sequence) % len(fetches)]
            started = time.perf_counter()
            try:
                headers = {"User-Agent": agent}
                if args.networks == "many":
                    n = next(networks)
                    headers["X-Forwarded-For"] = f"10.{n // 250 % 250}.{n % 250}.7"
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                socket_errors += 1
                connection.close()
                continue
            mine.append(time.perf_counter() - started)
            if not 200 <= response.status < 300:
                not_ok += 1
            seen[response.headers.get("X-Openreceipt", "(no X-Openreceipt header)")] += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            outcomes.update(seen)
            failures.update(not_ok=not_ok, socket_errors=socket_errors)

    started = time.monotonic()
    deadline = started + args.duration
    workers = [
        threading.Thread(target=fetch_until, args=(deadline,)) for _ in range(args.connections)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies.sort()
    return Load(
        requests=len(latencies),
        seconds=time.monotonic() - started,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=latencies[-1] * 1000 if latencies else math.nan,
        not_ok=failures["not_ok"],
        socket_errors=failures["socket_errors"],
        outcomes=outcomes,
    )


def percentile(ordered, percent):
    if not ordered:
        return math.nan
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


def children(pid):
    """The processes whose parent is `pid` (gunicorn's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: the fields after it are fixed.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pids):
    """The CPU time (user + system, all threads) the processes have used so far, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone (a worker restarted): its time is lost to both sides of the sum
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def worker_memory(server):
    memory = Memory()
    for pid in server.workers():
        rss = kib(Path(f"/proc/{pid}/status"), "VmRSS:")
        pss = kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
        if rss is not None:
            memory.rss.append(rss)
            memory.pss.append(pss)
    return memory


def kib(path, label):
    try:
        for line in path.read_text().splitlines():
            if line.startswith(label):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def replay_spool(env):
    """Run `openreceipt spool replay` when openreceipt has it; returns its output, or None."""
    probe = subprocess.run(
        [str(BIN / "openreceipt"), "spool", "replay", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if probe.returncode:
        return None
    result = subprocess.run(
        [str(BIN / "openreceipt"), "spool", "replay"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode:
        output += f"\n(exit status {result.returncode})"
    return output


def spool_lines(data_dir):
    """Fetches still waiting in the spool, and lines the database refused for good."""
    left = rejected = 0
    for path in sorted((data_dir / "spool").glob("*.jsonl")):
        lines = sum(1 for line in path.read_bytes().splitlines() if line.strip())
        if path.name == "rejected.jsonl":
            rejected += lines
        else:
            left += lines
    return left, rejected


def stored_events(url, sqlite_path):
    if sqlite_path is not None:
        with closing(sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)) as connection:
            columns = {row[1] for row in connection.execute("PRAGMA table_info(event)")}
            keyed = "COUNT(spool_key)" if "spool_key" in columns else "NULL"
            total, replayed = connection.execute(f"SELECT COUNT(*), {keyed} FROM event").fetchone()
        return Stored(total, replayed)
    with psycopg.connect(url, connect_timeout=5) as connection:
        columns = {
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'event'"
            )
        }
        keyed = "COUNT(spool_key)" if "spool_key" in columns else "NULL"
        total, replayed = connection.execute(f"SELECT COUNT(*), {keyed} FROM event").fetchone()
    return Stored(total, replayed)


def describe_database(url, sqlite_path):
    if sqlite_path is not None:
        return f"SQLite {sqlite3.sqlite_version} (WAL), a new file {sqlite_path}"
    with psycopg.connect(url, connect_timeout=5) as connection:
        version = connection.execute("SHOW server_version").fetchone()[0]
        schema = connection.execute("SELECT current_schema()").fetchone()[0]
    return f"PostgreSQL {version.split()[0]}, a new schema {schema} (dropped at the end)"


def report(
    loads, memory, stored, replay, spool, servers, visibility, ratio, target, database, args
):
    """Print the figures and the check of the events; returns the exit status."""
    floor, pixel = loads["floor"], loads["pixel"]
    print()
    header = (
        f"{'':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'non-2xx':>7} {'socket err':>10} {'CPU ms/req':>10}"
    )
    print(header)
    print("-" * len(header))
    for server in reversed(servers):
        load = loads[server.name]
        print(
            f"{server.name + '  ' + server.app:<22} {load.rate:7.0f} {load.p50_ms:7.1f} "
            f"{load.p99_ms:7.1f} {load.max_ms:7.0f} {load.not_ok:7d} {load.socket_errors:10d} "
            f"{load.cpu_ms:10.2f}"
        )
    print("CPU ms/req: the workers' CPU time (user + system) over the rounds, per answered request")
    met = "met" if ratio >= target else "not met"
    overall = pixel.rate / floor.rate if floor.rate else math.nan
    print(
        f"\npixel / floor: {ratio:.2f} (the median of the rounds' ratios; {overall:.2f} over all "
        f"their requests); target >= {target} for {LOAD_NAMES[args.networks]} on {database} "
        f"(ingest target): {met}"
    )

    print("\nworkers' memory, MiB: VmRSS each, and the sum of PSS (shared pages counted once)")
    for name in ("floor", "pixel"):
        used = memory[name]
        each = ", ".join(f"{rss / 1024:.1f}" for rss in used.rss)
        pss = sum(value or 0 for value in used.pss) / 1024
        print(
            f"  {name}: {len(used.rss)} workers, RSS sum {sum(used.rss) / 1024:.1f} "
            f"({each}); PSS sum {pss:.1f}"
        )

    print(f"\n{visibility.describe(notices=args.notify != 'off')}")

    answered = sum(pixel.outcomes.values())
    print(f"\npixel fetches answered, by X-Openreceipt ({answered:,}, the probes' included):")
    for outcome, count in pixel.outcomes.most_common():
        print(f"  {outcome:<50} {count:>8,} {count / max(answered, 1):7.1%}")

    failures = []
    errors = {name: load.errors for name, load in loads.items() if load.errors}
    if errors:
        failures.append("errors: " + ", ".join(f"{name} {count}" for name, count in errors.items()))
    if replay is not None:
        print("\nopenreceipt spool replay:")
        print("\n".join(f"  {line}" for line in replay.splitlines()) or "  (no output)")
    verdict = check_events(pixel, stored, replay, spool, every_fetch_new=args.networks == "many")
    print(f"\n{verdict[1]}")
    if not verdict[0]:
        failures.append("the events do not add up")
    print()
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    if args.networks == "many":
        print(
            "OK: no errors, and every fetch answered 'recorded', 'queued' or 'spooled' is one "
            "stored event"
        )
    else:
        print(
            "OK: no errors; every fetch answered 'recorded' is one stored event, and every one "
            "answered 'queued' or 'spooled' one at most (none if found a repeat when stored)"
        )
    return 0


def check_events(pixel, stored, replay, spool, every_fetch_new=False):
    """(ok, one paragraph, events stored, fetches answered 'recorded', 'queued' or 'spooled'):
    do the stored events match the answers? Fetches answered "recorded" are events now, without
    a key (Event.spool_key); fetches answered "queued" are events once the worker's writer has
    stored them, and fetches answered "spooled" once replayed, both with a key, unless the writer
    or the replay judges one a repeat (which a live fetch would have been too). With every fetch
    new (`every_fetch_new`, --networks many) none can be a repeat: then the keyed events must be
    as many as those answers. Without a spool_key column the kinds cannot be told apart: then
    all of them must be there."""
    before, after = stored
    counts = Counter()
    for outcome, n in pixel.outcomes.items():
        if outcome.startswith(ANSWERED_STORED):
            counts[outcome.split(":")[0]] += n
    recorded, queued, spooled = counts["recorded"], counts["queued"], counts["spooled"]
    answered = recorded + queued + spooled
    left, rejected = spool
    total = after.total - before.total
    slack = pixel.cut_off
    lines = [
        f"events stored: {total:,}; fetches answered 'recorded': {recorded:,}, "
        f"'queued': {queued:,}, 'spooled': {spooled:,}"
    ]
    if slack:
        lines.append(
            f"  {slack} fetches were cut off in flight when the load stopped: "
            "each may or may not have been stored"
        )
    if (queued or spooled) and replay is None:
        lines.append("  no 'openreceipt spool replay' command: only the workers' own replays count")
    if left or rejected:
        lines.append(f"  the spool still holds {left} fetches; {rejected} lines were rejected")
    ok = not left and not rejected
    if after.replayed is None:
        ok = ok and answered <= total <= answered + slack
    else:
        keyed = after.replayed - (before.replayed or 0)
        live = total - keyed
        later = queued + spooled
        if keyed >= later:
            missing = ""
        elif every_fetch_new:
            missing = f" ({later - keyed:,} not stored, though with every fetch new none repeats)"
        else:
            missing = f" ({later - keyed:,} not stored: repeats found when stored)"
        lines.append(
            f"  stored live: {live:,} events for {recorded:,} answers 'recorded'; by the writer "
            f"or the spool: {keyed:,} events for {queued:,} 'queued' + {spooled:,} 'spooled' "
            f"answers{missing}"
        )
        ok = ok and recorded <= live <= recorded + slack and keyed <= later + slack
        ok = ok and total <= answered + slack  # a fetch cut off is one event at most
        if every_fetch_new:
            ok = ok and keyed >= later
    lines[0] += f": {'OK' if ok else 'MISMATCH'}"
    return ok, "\n".join(lines), total, answered


# --kill: what a kill -9 under load leaves of the answered fetches.
KILL_SCENARIOS = (
    ("worker", "one worker"),
    ("server", "master and workers"),
)


@dataclass
class Kill:
    """One kill -9 under load: the fetches answered, by outcome, against the events stored."""

    scenario: str
    what: str  # what was killed, when, and how the server came back
    answered: Counter  # "recorded", "queued", "spooled", "other"
    stored: int  # events of the scenario's fetches
    replayed: int  # of them, keyed (Event.spool_key set): stored by the writer or the spool
    lost: int  # answered 'recorded', 'queued' or 'spooled', and no event: must be 0
    in_flight: int  # sent, never answered: may or may not be stored
    in_flight_stored: int
    refused: int  # no connection (the server was down): never sent
    twice: int  # events beyond one a fetch: must be 0
    unexplained: int  # events of fetches answered 'not recorded', or of no fetch sent
    spool: tuple  # (lines left, lines rejected) after the replay

    @property
    def ok(self):
        return not (self.lost or self.twice or self.unexplained)


class KillLoad:
    """The kill phase's load: one Python thread a connection and a new connection a fetch, as
    python_load(), but each fetch numbered (its X-Forwarded-For network, a /24 of its own, says
    its number, and so does its event's masked address) and filed under what became of it:
    answered (with its X-Openreceipt), in flight when the server died (sent, no answer), or
    refused (no connection: never sent). A thread files its fetch in flight before it stops."""

    def __init__(self, server, paths, connections, numbers):
        agents = [agent for _, agent, _ in CLIENT_MIX]
        mix = slots()
        self.fetches = [
            (path, agents[mix[(index + 1 + round_) % len(mix)] - 1])
            for round_ in range(len(mix))
            for index, path in enumerate(paths)
        ]
        self.port = urlsplit(server.url).port
        self.numbers = numbers  # shared by the scenarios: no network is used twice
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answered, self.in_flight, self.refused = {}, set(), 0
        self.threads = [threading.Thread(target=self.fetch) for _ in range(connections)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def fetch(self):
        answered, in_flight, refused = {}, set(), 0
        while not self.stopping.is_set():
            number = next(self.numbers)
            path, agent = self.fetches[number % len(self.fetches)]
            headers = {"User-Agent": agent, "X-Forwarded-For": kill_network(number)}
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SOCKET_TIMEOUT)
            try:
                connection.connect()
            except OSError:
                refused += 1
                connection.close()
                self.stopping.wait(0.02)  # the server is down: try again shortly
                continue
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                in_flight.add(number)
                continue
            finally:
                connection.close()
            outcome = response.headers.get("X-Openreceipt", "(no X-Openreceipt header)")
            answered[number] = (
                outcome if 200 <= response.status < 300 else f"HTTP {response.status}"
            )
        with self.lock:
            self.answered.update(answered)
            self.in_flight |= in_flight
            self.refused += refused


def kill_network(number):
    """The X-Forwarded-For of the kill phase's fetch `number`: a /24 of its own."""
    return f"{10 + number // 65536}.{number // 256 % 256}.{number % 256}.7"


def kill_number(ip):
    """The fetch number of an event's masked address (a.b.c.0), or None."""
    try:
        first, second, third, _ = (int(part) for part in (ip or "").split("."))
    except ValueError:
        return None
    return (first - 10) * 65536 + second * 256 + third


def kill_phase(args, env, paths, url, sqlite_path, data_dir, logs):
    """kill -9 one worker of the pixel under load, then (on a server started afresh) the master
    and all its workers at once, starting the server again on the same port, data dir and
    database; after each, count what the answered fetches left in the database. Returns the
    Kills, and prints them."""
    env = {**env, "OPENRECEIPT_TRUSTED_PROXIES": "1"}
    numbers = itertools.count()
    print(
        f"\nkill -9 under load: the pixel alone, a Python load of {args.connections} connections, "
        f"every fetch a new event (a /24 of its own) on {len(paths)} pixels of their own; "
        f"{args.duration} s a scenario, the kill at {args.duration / 2:g} s",
        flush=True,
    )
    kills = []
    for scenario, name in KILL_SCENARIOS:
        print(f"kill: {name}...", flush=True)
        kills.append(
            kill_once(scenario, name, args, env, paths, url, sqlite_path, data_dir, logs, numbers)
        )
    report_kills(kills)
    return kills


def kill_once(scenario, name, args, env, paths, url, sqlite_path, data_dir, logs, numbers):
    server = start_server(f"kill-{scenario}", "wsgi:app", env, logs)
    first_id = last_event_id(url, sqlite_path)
    load = KillLoad(server, paths, args.connections, numbers)
    started = time.monotonic()
    load.start()
    try:
        time.sleep(args.duration / 2)
        workers = server.workers()
        if scenario == "worker":
            victim = workers[len(workers) // 2]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < 30:
                now = server.workers()
                if victim not in now and len(now) >= len(workers):
                    break
                time.sleep(0.005)
            what = (
                f"killed worker {victim} of {len(workers)} at {killed - started:.1f} s; the "
                f"master had forked its replacement {time.monotonic() - killed:.2f} s later"
            )
        else:
            for pid in (server.process.pid, *workers):
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            server.process.wait()
            wait_gone(workers)
            port = urlsplit(server.url).port
            server = start_server(f"kill-{scenario}-again", "wsgi:app", env, logs, port=port)
            what = (
                f"killed the master and its {len(workers)} workers at {killed - started:.1f} s; "
                f"started again on the same port, data dir and database, all its workers up "
                f"{time.monotonic() - killed:.1f} s later"
            )
        # The rest of the load, and at least 2 s of it after the kill.
        time.sleep(max(started + args.duration - time.monotonic(), 2))
    finally:
        load.stop()
        server.stop()
    replay_spool(env)
    rows = events_since(url, sqlite_path, first_id)
    stored = Counter(kill_number(ip) for ip, _ in rows)
    wanted = {n for n, outcome in load.answered.items() if outcome.startswith(ANSWERED_STORED)}
    answered = Counter(
        outcome.split(":")[0] if outcome.startswith(ANSWERED_STORED) else "other"
        for outcome in load.answered.values()
    )
    return Kill(
        scenario=name,
        what=what,
        answered=answered,
        stored=len(rows),
        replayed=sum(1 for _, keyed in rows if keyed),
        lost=len(wanted - stored.keys()),
        in_flight=len(load.in_flight),
        in_flight_stored=len(load.in_flight & stored.keys()),
        refused=load.refused,
        twice=sum(count - 1 for count in stored.values() if count > 1),
        unexplained=sum(
            count
            for number, count in stored.items()
            if number not in wanted and number not in load.in_flight
        ),
        spool=spool_lines(data_dir),
    )


def wait_gone(pids, timeout=30):
    """Wait until none of `pids` runs (a zombie waiting for init to reap it is gone enough)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = []
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
                running.append(pid)
        if not running:
            return
        time.sleep(0.01)
    raise SystemExit(f"bench: processes {pids} still run {timeout} s after kill -9")


def last_event_id(url, sqlite_path):
    with connect(url, sqlite_path) as (connection, _):
        return connection.execute("SELECT COALESCE(MAX(id), 0) FROM event").fetchone()[0]


def events_since(url, sqlite_path, first_id):
    """(masked address, keyed? (stored by the writer or the spool)) of each event after
    `first_id`."""
    with connect(url, sqlite_path) as (connection, p):
        return connection.execute(
            f"SELECT ip, spool_key IS NOT NULL FROM event WHERE id > {p} ORDER BY id", (first_id,)
        ).fetchall()


def report_kills(kills):
    print()
    for kill in kills:
        print(f"{kill.scenario}: {kill.what}")
    header = (
        f"\n{'kill -9 of':<20} {'answered':>8} {'recorded':>8} {'queued':>8} {'spooled':>8} "
        f"{'other':>6} {'events':>7} {'keyed':>6} {'LOST':>5} {'in flight':>9} {'stored':>7} "
        f"{'refused':>7} {'twice':>5}"
    )
    print(header)
    print("-" * (len(header) - 1))
    for kill in kills:
        answered = kill.answered
        print(
            f"{kill.scenario:<20} {sum(answered.values()):8,} {answered['recorded']:8,} "
            f"{answered['queued']:8,} {answered['spooled']:8,} {answered['other']:6,} "
            f"{kill.stored:7,} {kill.replayed:6,} {kill.lost:5,} {kill.in_flight:9,} "
            f"{kill.in_flight_stored:7,} {kill.refused:7,} {kill.twice:5,}"
        )
    note = (
        "(answered: fetches with an answer, by X-Openreceipt; events: stored for this "
        "scenario's fetches, 'keyed' of them stored by the worker's writer or the spool "
        "(spool_key set); LOST: answered 'recorded', 'queued' or 'spooled' and not stored; "
        "in flight: sent and never answered, 'stored' of them stored anyway; refused: no "
        "connection while the server was down, never sent)"
    )
    print(textwrap.fill(note, width=100))
    for kill in kills:
        left, rejected = kill.spool
        if left or rejected:
            print(f"{kill.scenario}: the spool still holds {left} fetches; {rejected} rejected")
        if kill.unexplained:
            print(
                f"{kill.scenario}: {kill.unexplained} events of fetches answered 'not recorded' "
                "or never sent"
            )
    if all(kill.ok for kill in kills):
        print(
            "OK: every fetch answered 'recorded', 'queued' or 'spooled' is stored, once, after "
            "each kill"
        )
    else:
        print("FAIL: answered fetches lost, stored twice, or events that no answer explains")


if __name__ == "__main__":
    sys.exit(main())
