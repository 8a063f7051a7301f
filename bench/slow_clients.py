"""Slow clients and the pixel: sockets that send a request one header line every few seconds (a
mail client on a bad line, or an attack that does it on purpose), and pixel fetches timed while
they are open. Not a timed test: run it by hand (see bench/README.md).

    .venv/bin/python bench/slow_clients.py [--slow 8] [--workers 2] [--interval 5]
        [--duration 20] [--target 1]

Starts `gunicorn wsgi:app` from the repository root with gunicorn.conf.py as it is and
WEB_CONCURRENCY=--workers, mints one pixel, times --fetches pixel fetches with no slow client,
then opens --slow sockets that trickle header lines and times fetches for --duration seconds.
Exits 1 when a fetch with the slow sockets open took longer than --target seconds (or none was
answered at all).
"""

import argparse
import http.client
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

# bench/pixel_load.py, beside this script: the same server, user and pixels.
from pixel_load import EMAIL, GMAIL_PROXY, PASSWORD, mint, openreceipt, start_server


def main(argv=None):
    args = parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="openreceipt-bench-"))
    try:
        return run(args, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=8, help="slow sockets open at once")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--interval", type=float, default=5, help="seconds between a slow socket's header lines"
    )
    parser.add_argument(
        "--duration", type=float, default=20, help="seconds of fetches with the slow sockets open"
    )
    parser.add_argument("--fetches", type=int, default=10, help="fetches with no slow socket")
    parser.add_argument(
        "--target", type=float, default=1, help="seconds a fetch may take (the exit status)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10, help="seconds after which a fetch counts as lost"
    )
    return parser.parse_args(argv)


def run(args, data_dir):
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENRECEIPT_")}
    env.update(
        OPENRECEIPT_DATA_DIR=str(data_dir),
        OPENRECEIPT_MX_LOOKUP="off",
        WEB_CONCURRENCY=str(args.workers),
    )
    logs = data_dir / "logs"
    logs.mkdir()
    server = start_server("pixel", "wsgi:app", env, logs)
    try:
        openreceipt(env, "user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
        token = openreceipt(env, "token", "new", EMAIL, "--name", "bench")
        [path] = mint(server, token, 1)
        print(f"machine: {os.cpu_count()} CPUs, load average {load_average()} before the run")
        print(f"gunicorn: gunicorn.conf.py as is, {worker_line(server.log)}")

        quiet = [fetch(server, path, args.timeout) for _ in range(args.fetches)]
        print(f"no slow client:   {summary(quiet, args.target)}", flush=True)

        stop = threading.Event()
        slow = [
            threading.Thread(target=trickle, args=(server, n, args.interval, stop), daemon=True)
            for n in range(args.slow)
        ]
        for thread in slow:
            thread.start()
        time.sleep(1)  # every slow socket accepted, and its first lines sent
        loaded, deadline = [], time.monotonic() + args.duration
        while time.monotonic() < deadline:
            loaded.append(fetch(server, path, args.timeout))
            time.sleep(0.5)
        stop.set()
        print(
            f"{args.slow} slow sockets: {summary(loaded, args.target)} "
            f"(a header line every {args.interval:g} s, for {args.duration:g} s)"
        )
    finally:
        server.stop()

    answered = [seconds for seconds in loaded if seconds is not None]
    if not answered or max(answered) > args.target or len(answered) < len(loaded):
        print(f"NOT MET: a pixel fetch took longer than {args.target:g} s with slow clients open")
        return 1
    print(f"OK: every pixel fetch answered within {args.target:g} s with slow clients open")
    return 0


def trickle(server, number, interval, stop):
    """One slow client: a request line, then a header line every `interval` seconds, never the
    blank line that ends the headers, until `stop`."""
    parts = urlsplit(server.url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(f"GET /p/slow-{number}.gif HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode())
            line = 0
            while not stop.wait(interval):
                line += 1
                sock.sendall(f"X-Slow-{line}: {'x' * 20}\r\n".encode())
    except OSError:
        pass  # the server closed it: then it holds nothing either


def fetch(server, path, timeout):
    """Seconds one pixel fetch took on a connection of its own; None when it got no GIF in time."""
    parts = urlsplit(server.url)
    started = time.monotonic()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": GMAIL_PROXY})
        response = connection.getresponse()
        body = response.read()
    except OSError:
        return None
    finally:
        connection.close()
    if response.status != 200 or not body.startswith(b"GIF"):
        return None
    return time.monotonic() - started


def summary(times, target):
    answered = sorted(seconds for seconds in times if seconds is not None)
    if not answered:
        return f"{len(times)} fetches, none answered"
    within = sum(1 for seconds in answered if seconds <= target)
    return (
        f"{len(times)} fetches, {len(answered)} answered, {within} within {target:g} s; "
        f"median {statistics.median(answered) * 1000:.0f} ms, slowest {answered[-1] * 1000:.0f} ms"
    )


def worker_line(log):
    """What gunicorn says of its worker class, e.g. "worker gthread"."""
    for line in log.read_text(errors="replace").splitlines():
        if "Using worker: " in line:
            return "worker " + line.split("Using worker: ", 1)[1].strip()
    return "worker unknown"


def load_average():
    return Path("/proc/loadavg").read_text().split()[0]


if __name__ == "__main__":
    sys.exit(main())
