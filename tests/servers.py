"""Real gunicorn processes for end-to-end tests, started the way the README starts them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# What the tests read and do that a real server keeps from its clients: the pixel's outcome in
# X-Openreceipt (most tests check it), and minting faster than a user may (a fuzzer, an audit of
# 200 clients, the bookmarklet in a browser). tests/test_security_server.py checks both with
# settings of its own.
TEST_SERVER_SETTINGS = {"DEBUG_HEADERS": True, "MINTS_PER_MINUTE": 0}


def free_port(host="127.0.0.1"):
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class Gunicorn:
    """A running `gunicorn wsgi:app` with its own data dir and log files."""

    url: str
    env: dict
    logs: Path
    process: subprocess.Popen

    def openreceipt(self, *args, input=None):
        """Run the openreceipt command against this server's settings; returns its stdout."""
        result = subprocess.run(
            [str(BIN / "openreceipt"), *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.strip()

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body bytes) of one HTTP request to the server."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers or {}
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def log_bytes(self):
        return b"".join(path.read_bytes() for path in sorted(self.logs.iterdir()))


def start_gunicorn(tmp_path, settings, workers=2, host="127.0.0.1"):
    """Start `gunicorn wsgi:app` from the repository root with OPENRECEIPT_* `settings`."""
    port = free_port(host)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRECEIPT_")}
    settings = {**TEST_SERVER_SETTINGS, **settings}
    env.update({f"OPENRECEIPT_{key}": str(value) for key, value in settings.items()})
    env["OPENRECEIPT_BIND"] = f"{host}:{port}"
    env["WEB_CONCURRENCY"] = str(workers)
    with (logs / "stdout.log").open("wb") as stdout, (logs / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "wsgi:app",
                "--access-logfile",
                str(logs / "access.log"),
                "--error-logfile",
                str(logs / "error.log"),
            ],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    server = Gunicorn(f"http://{host}:{port}", env, logs, process)
    # Every worker ready, not only the socket: a worker that is stopped while it boots, before
    # it has its own signal handlers, misses the signal and is killed only after 30 s.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {server.log_bytes().decode(errors='replace')}")
        if server.log_bytes().count(b"] Worker ready (pid: ") >= workers:
            with socket.create_connection((host, port), timeout=5):
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("gunicorn did not start within 30 s")
