"""How fast the pixel path answers under load, next to the framework's floor: one gunicorn serving
`wsgi:app` on a fresh database and one serving `bench.floor:app` (the same GIF and headers, and
nothing else), both with gunicorn.conf.py as it is, driven alike by wrk (or, without wrk, a Python
load generator) through freshly minted pixels and a mix of mail clients. Then checks that every
fetch answered "recorded" (or "spooled", once replayed) is one event in the database. Not a
timed test: run it by hand (see bench/README.md). Exits 1 on an answer other than 2xx, a socket
error, or events that do not add up; the ratio to the floor is reported, never fatal.

    .venv/bin/python bench/pixel_load.py [--database-url URL] [--duration 15] [--connections 64]
        [--networks one|many] [--notify first|every]
"""

import argparse
import http.client
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

# bench/scratch.py, beside this script
from scratch import add_database_url_argument, scratch_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET_RATIO = 0.6  # the target, on SQLite
EMAIL = "ada@example.com"
PASSWORD = "bench password, not a secret"
# wrk stops at the end of --duration whatever is in flight, and the server would store the
# events of fetches whose answers nobody reads (they would spoil the count of events): in the
# last QUIET_SECONDS of a run wrk sends nothing new, and these seconds are left out of req/s.
QUIET_SECONDS = 2
# Compared on both servers before the load; refused on its signature, it stores nothing.
UNSIGNED_PATH = "/p/bench-unsigned.gif"
SOCKET_TIMEOUT = 10  # seconds; a fetch slower than this is an error (wrk's --timeout)
COMPARED_HEADERS = ("Content-Type", "Content-Length", "Cache-Control", "Pragma", "Expires")

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
  prepared = {}
  for round = 0, #mix - 1 do
    for i, path in ipairs(paths) do
      local agent = agents[mix[(i + round) %% #mix + 1]]
      table.insert(prepared, wrk.format("GET", path, {["User-Agent"] = agent}))
    end
  end
  position = math.floor(#prepared * thread_index / thread_count)
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
  local n = sent * 4 + thread_index  -- threads never share a network
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

    @property
    def rate(self):
        return self.requests / self.seconds if self.seconds else 0.0

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
    replayed: int | None  # events that came from the spool (Event.spool_key), if the column exists


def main(argv=None):
    args = parse_args(argv)
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
            f"({', '.join(f'{name} {weight}' for name, _, weight in CLIENT_MIX)} in 10)",
            flush=True,
        )

        # Rounds, the two servers taking turns (and turns at going first): a machine whose
        # speed drifts during the run then weighs on both alike.
        rounds, memory = {"floor": [], "pixel": []}, {}
        for number in range(args.rounds):
            order = (floor, pixel) if number % 2 == 0 else (pixel, floor)
            for server in order:
                print(f"round {number + 1}: loading {server.name} ({server.app})...", flush=True)
                if args.load == "wrk":
                    rounds[server.name].append(wrk_load(server, paths, args, data_dir))
                else:
                    rounds[server.name].append(python_load(server, paths, args))
                memory[server.name] = worker_memory(server)
        for number, (a, b) in enumerate(zip(rounds["pixel"], rounds["floor"], strict=True)):
            print(
                f"round {number + 1}: pixel {a.rate:.0f} req/s, floor {b.rate:.0f} req/s, "
                f"ratio {a.rate / b.rate:.2f}"
            )
        loads = {name: combined(results) for name, results in rounds.items()}
        if receiver:
            report_notices(url, sqlite_path, receiver, wait=0 if args.queue_only else 30)
        pixel.stop()
        floor.stop()

    replay = replay_spool(env)
    after = stored_events(url, sqlite_path)
    spool_left, spool_rejected = spool_lines(data_dir)
    return report(
        url,
        loads,
        memory,
        (before, after),
        replay,
        (spool_left, spool_rejected),
        (pixel, floor),
    )


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
    )


def database_file(url, data_dir):
    return Path(url[len("sqlite:///") :]) if url else data_dir / "openreceipt.db"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(name, app, env, logs):
    """`gunicorn APP` from the repository root, so gunicorn.conf.py applies; it listens where
    OPENRECEIPT_BIND says, like the README's server."""
    port = free_port()
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
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "User-Agent": "openreceipt-bench",
    }
    paths = []
    for number in range(count):
        body = {
            "subject": f"Invoice 2025-{number:04d}",
            "recipients": [f"reader{number}@example.com"],
            "label": f"bench-{number}",
        }
        status, _, answer = request(server, "POST", "/api/pixels", headers, json.dumps(body))
        if status != 201:
            raise SystemExit(f"bench: minting a pixel answered HTTP {status}: {answer[:300]!r}")
        paths.append(urlsplit(json.loads(answer)["url"]).path)
    return paths


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


def wrk_load(server, paths, args, data_dir):
    """Run wrk against a server with the fetches of `paths`."""
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


def python_load(server, paths, args):
    """The same fetches as the wrk script, from one thread a connection; each thread finishes
    its fetch in flight when the time is up, so nothing is cut off."""
    agents = [agent for _, agent, _ in CLIENT_MIX]
    mix = slots()
    fetches = [
        (path, agents[mix[(index + 1 + round_) % len(mix)] - 1])
        for round_ in range(len(mix))
        for index, path in enumerate(paths)
    ]
    parts = urlsplit(server.url)
    sequence, networks = itertools.count(), itertools.count()
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


def report(url, loads, memory, stored, replay, spool, servers):
    """Print the figures and the check of the events; returns the exit status."""
    floor, pixel = loads["floor"], loads["pixel"]
    print()
    header = (
        f"{'':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'non-2xx':>7} {'socket err':>10}"
    )
    print(header)
    print("-" * len(header))
    for server in reversed(servers):
        load = loads[server.name]
        print(
            f"{server.name + '  ' + server.app:<22} {load.rate:7.0f} {load.p50_ms:7.1f} "
            f"{load.p99_ms:7.1f} {load.max_ms:7.0f} {load.not_ok:7d} {load.socket_errors:10d}"
        )
    ratio = pixel.rate / floor.rate if floor.rate else math.nan
    sqlite = url is None or url.startswith("sqlite")
    met = "met" if ratio >= TARGET_RATIO else "not met"
    where = "" if sqlite else " (the target is for SQLite)"
    print(f"\npixel / floor: {ratio:.2f}; target >= {TARGET_RATIO} on SQLite: {met}{where}")

    print("\nworkers' memory, MiB: VmRSS each, and the sum of PSS (shared pages counted once)")
    for name in ("floor", "pixel"):
        used = memory[name]
        each = ", ".join(f"{rss / 1024:.1f}" for rss in used.rss)
        pss = sum(value or 0 for value in used.pss) / 1024
        print(
            f"  {name}: {len(used.rss)} workers, RSS sum {sum(used.rss) / 1024:.1f} "
            f"({each}); PSS sum {pss:.1f}"
        )

    answered = sum(pixel.outcomes.values())
    print(f"\npixel fetches answered, by X-Openreceipt ({answered:,}):")
    for outcome, count in pixel.outcomes.most_common():
        print(f"  {outcome:<50} {count:>8,} {count / max(answered, 1):7.1%}")

    failures = []
    errors = {name: load.errors for name, load in loads.items() if load.errors}
    if errors:
        failures.append("errors: " + ", ".join(f"{name} {count}" for name, count in errors.items()))
    if replay is not None:
        print("\nopenreceipt spool replay:")
        print("\n".join(f"  {line}" for line in replay.splitlines()) or "  (no output)")
    verdict = check_events(pixel, stored, replay, spool)
    print(f"\n{verdict[1]}")
    if not verdict[0]:
        failures.append("the events do not add up")
    print()
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("OK: no errors, and every fetch answered 'recorded' or 'spooled' is one stored event")
    return 0


def check_events(pixel, stored, replay, spool):
    """(ok, one paragraph): do the stored events match the answers? Fetches answered "recorded"
    are events now; fetches answered "spooled" are events once replayed (unless the replay judges
    one a repeat, which a live fetch would have been too). Without a spool_key column the two
    cannot be told apart: then all of them must be there."""
    before, after = stored
    recorded = sum(n for outcome, n in pixel.outcomes.items() if outcome.startswith("recorded:"))
    spooled = sum(n for outcome, n in pixel.outcomes.items() if outcome.startswith("spooled:"))
    left, rejected = spool
    total = after.total - before.total
    slack = pixel.cut_off
    lines = [
        f"events stored: {total:,}; fetches answered 'recorded': {recorded:,}, "
        f"'spooled': {spooled:,}"
    ]
    if slack:
        lines.append(
            f"  {slack} fetches were cut off in flight when the load stopped: "
            "each may or may not have been stored"
        )
    if spooled and replay is None:
        lines.append("  no 'openreceipt spool replay' command: only the workers' own replays count")
    if left or rejected:
        lines.append(f"  the spool still holds {left} fetches; {rejected} lines were rejected")
    ok = not left and not rejected
    if after.replayed is None:
        ok = ok and recorded + spooled <= total <= recorded + spooled + slack
    else:
        live = total - (after.replayed - (before.replayed or 0))
        replayed = total - live
        lines.append(
            f"  recorded live: {live:,} events for {recorded:,} answers; from the spool: "
            f"{replayed:,} events for {spooled:,} answers"
            + (f" ({spooled - replayed:,} not recorded on replay)" if replayed < spooled else "")
        )
        ok = ok and recorded <= live <= recorded + slack and replayed <= spooled + slack
    lines[0] += f": {'OK' if ok else 'MISMATCH'}"
    return ok, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
