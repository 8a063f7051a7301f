"""The files in deploy/, as shipped: the systemd unit starts gunicorn with gunicorn.conf.py and the
example settings, and nginx and Caddy (Debian's packages) put a real gunicorn on an HTTPS receipt
domain. Each file is rendered into the test's directory with only its placeholders replaced (paths,
ports, the certificate), so what runs is the file an operator copies, not a copy of it here."""

import configparser
import grp
import http.client
import json
import multiprocessing
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import trustme

from web.config import OPTION

from .conftest import unavailable
from .helpers import wait_for
from .servers import ROOT, free_port
from .test_browser import CHROMIUM, CHROMIUM_ARGS
from .test_security_server import login_cookie, secure
from .test_spool import GMAIL_PROXY

DEPLOY = ROOT / "deploy"
GUIDE = ROOT / "docs" / "deploy.md"
# The placeholders the shipped files use, and that the guide tells operators to replace.
PUBLIC_HOST = "receipts.example.com"
CHECKOUT = "/opt/openreceipt"
SETTINGS_FILE = "/etc/openreceipt/openreceipt.env"
DATA_DIR = "/var/lib/openreceipt"
UPSTREAM = "127.0.0.1:8000"
# The reader connects from an address of its own, in a /24 apart from the proxy's 127.0.0.1: a
# stored 127.0.5.0 can only have come from the proxy's X-Forwarded-For, masked.
READER = "127.0.5.7"
SPOOFED = "203.0.113.9"
HSTS = "max-age=31536000"
EMAIL, PASSWORD = "ada@example.com", "correct horse battery"
LIVE_MS = 10_000  # the status pages poll every 4 s: a change shows within two polls at most


def rendered(name, replacements=None):
    """deploy/<name> with each placeholder replaced. A placeholder that is no longer in the file
    fails the test, rather than letting it run something else than what ships."""
    text = (DEPLOY / name).read_text()
    for old, new in (replacements or {}).items():
        assert old in text, f"deploy/{name} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def settings_from(text):
    """The NAME=value lines of an EnvironmentFile (comments and blank lines left out)."""
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            settings[name] = value
    return settings


def unit(text=None):
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(text or rendered("openreceipt.service"))
    return parser


# -- The files agree with each other and with the guide -------------------------------------------


def test_the_unit_runs_gunicorn_with_the_projects_configuration():
    service = unit()["Service"]
    assert service["WorkingDirectory"] == CHECKOUT
    assert service["EnvironmentFile"] == SETTINGS_FILE
    assert shlex.split(service["ExecStart"]) == [
        f"{CHECKOUT}/.venv/bin/gunicorn",
        "-c",
        f"{CHECKOUT}/gunicorn.conf.py",
        "wsgi:app",
    ]
    assert (service["Type"], service["User"], service["Restart"]) == (
        "notify",
        "openreceipt",
        "on-failure",
    )
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": DATA_DIR,
        "StateDirectory": Path(DATA_DIR).name,
        "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key) for key in hardening} == hardening


def test_the_settings_name_the_unit_and_proxies_they_run_with():
    settings = settings_from(rendered("openreceipt.env"))
    assert settings == {
        "OPENRECEIPT_DATA_DIR": DATA_DIR,
        "OPENRECEIPT_PUBLIC_URL": f"https://{PUBLIC_HOST}",
        "OPENRECEIPT_TRUSTED_PROXIES": "1",
        "OPENRECEIPT_BIND": UPSTREAM,
        "OPENRECEIPT_OPERATOR_CONTACT": "privacy@example.com",
    }
    # Every setting, the commented examples too, is one openreceipt knows (an unknown one would
    # stop start-up).
    named = re.findall(r"^#?OPENRECEIPT_(\w+)=", rendered("openreceipt.env"), re.MULTILINE)
    assert sorted(set(named) - set(OPTION)) == []
    nginx, caddy = rendered("nginx.conf"), rendered("Caddyfile")
    assert nginx.count(f"proxy_pass http://{UPSTREAM};") == 1
    assert nginx.count(f"server_name {PUBLIC_HOST};") == 2
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx
    assert f"reverse_proxy {UPSTREAM} {{" in caddy
    assert re.search(rf"^{re.escape(PUBLIC_HOST)} {{$", caddy, re.MULTILINE)


def test_the_settings_file_reads_the_same_for_systemd_and_a_shell(tmp_path):
    """The guide runs the openreceipt command with `set -a; . openreceipt.env`: the shell must
    read the file as systemd does."""
    path = tmp_path / "openreceipt.env"
    path.write_text(rendered("openreceipt.env"))
    shell = subprocess.run(
        ["sh", "-c", f"set -a && . {shlex.quote(str(path))} && env -0"],
        env={"PATH": os.defpath},
        capture_output=True,
        check=True,
        timeout=10,
    )
    read = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    expected = settings_from(path.read_text())
    assert {name: read.get(name) for name in expected} == expected


def test_the_guide_links_every_file_and_names_their_paths():
    guide = GUIDE.read_text()
    links = re.findall(r"\]\(([^)#\s]+)", guide)
    for link in links:
        if "://" not in link:
            assert (GUIDE.parent / link).exists(), f"docs/deploy.md links to a missing {link}"
    for name in ("openreceipt.service", "openreceipt.env", "nginx.conf", "Caddyfile"):
        assert f"../deploy/{name}" in links
    for path in (CHECKOUT, SETTINGS_FILE, DATA_DIR, "/etc/systemd/system/openreceipt.service"):
        assert path in guide
    assert "journalctl -u openreceipt | grep setup" in guide


# -- The unit -------------------------------------------------------------------------------------


def test_systemd_accepts_the_unit(tmp_path):
    """systemd's own checks, on the unit with the checkout's paths (verify wants the programs it
    names to exist): no warning at all, and the hardening rated "OK" (exposure 2.0 or less)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: not a systemd machine")
    settings = tmp_path / "openreceipt.env"
    settings.write_text(rendered("openreceipt.env"))
    path = tmp_path / "openreceipt.service"
    path.write_text(
        rendered("openreceipt.service", {CHECKOUT: str(ROOT), SETTINGS_FILE: str(settings)})
    )
    verify = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr


@pytest.mark.slow
def test_the_units_command_starts_gunicorn_with_its_configuration(tmp_path):
    """ExecStart, in WorkingDirectory, with the example settings (a data directory and a port of
    the test's): gunicorn.conf.py is applied (gthread workers, as many as it says, its hook's
    "Worker ready", the access log without addresses, the bind from the settings), gunicorn
    tells systemd it is ready, and the first-run link in the journal starts with PUBLIC_URL."""
    port = free_port()
    settings = settings_from(
        rendered(
            "openreceipt.env",
            {DATA_DIR: str(tmp_path / "data"), UPSTREAM: f"127.0.0.1:{port}"},
        )
    )
    service = unit(rendered("openreceipt.service", {CHECKOUT: str(ROOT)}))["Service"]
    command = shlex.split(service["ExecStart"])
    notify_address = f"openreceipt-test-{os.getpid()}-{port}"
    environment = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",  # systemd's
        "LANG": "C.UTF-8",
        "NOTIFY_SOCKET": "@" + notify_address,
        **settings,
    }
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
        out.open("wb") as stdout,
        err.open("wb") as stderr,
    ):
        notify.bind("\0" + notify_address)
        notify.settimeout(60)
        process = subprocess.Popen(
            command,
            cwd=service["WorkingDirectory"],
            env=environment,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            assert notify.recv(4096).startswith(b"READY=1")
            workers = min(2 * multiprocessing.cpu_count() + 1, 8)  # gunicorn.conf.py's number
            assert wait_for(lambda: err.read_bytes().count(b"] Worker ready (pid: ") == workers, 30)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            with closing(connection):
                # As the guide's curl asks, and as the proxy will: with the public host.
                connection.request(
                    "GET",
                    "/p/nothing.gif",
                    headers={"Host": PUBLIC_HOST, "User-Agent": "deploy-test"},
                )
                response = connection.getresponse()
                assert (response.status, response.read()[:6]) == (200, b"GIF89a")
            assert wait_for(lambda: b"/p/nothing.gif" in out.read_bytes(), 30)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    log = err.read_bytes().decode()
    assert f"Listening at: http://127.0.0.1:{port} " in log
    assert "Using worker: gthread" in log
    assert log.count("Booting worker with pid") == workers
    [setup_line] = [line for line in log.splitlines() if "setup" in line]
    assert f"Create the first account at https://{PUBLIC_HOST}/setup/" in setup_line
    [access] = [line for line in out.read_text().splitlines() if "/p/nothing.gif" in line]
    assert re.fullmatch(
        r'\[[^]]+\] "GET /p/nothing.gif HTTP/1.1" 200 \d+ \d+ms "deploy-test"', access
    )


# -- nginx and Caddy in front of gunicorn ---------------------------------------------------------


@dataclass
class Certificate:
    chain: Path
    key: Path
    client: ssl.SSLContext  # trusts the test's authority, as browsers trust Let's Encrypt


@pytest.fixture
def certificate(tmp_path):
    authority = trustme.CA()
    issued = authority.issue_cert(PUBLIC_HOST)
    directory = tmp_path / "certificate"
    directory.mkdir()
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return Certificate(chain, key, client)


@dataclass
class Proxy:
    name: str
    https_port: int
    http_port: int
    directory: Path
    process: subprocess.Popen

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def logs(self):
        return "".join(
            path.read_text(errors="replace")
            for path in sorted(self.directory.rglob("*.log"))
            if path.is_file()
        )


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


NGINX_MAIN = """\
# Stands in for Debian's /etc/nginx/nginx.conf, which includes the site inside http {{}}.
{user}
worker_processes 1;
events {{
    worker_connections 128;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    gzip on;
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/openreceipt.conf;
}}
"""


def start_nginx(directory, upstream, certificate):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        unavailable("nginx is not installed (Debian's nginx package)")
    https_port, http_port = free_port(), free_port()
    webroot = directory / "webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    (webroot / ".well-known" / "acme-challenge" / "probe").write_text("challenge answered\n")
    v6 = ipv6_loopback()
    site = rendered(
        "nginx.conf",
        {
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen [::]:80;": f"listen [::1]:{http_port};" if v6 else "",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
            "listen [::]:443 ssl http2;": f"listen [::1]:{https_port} ssl http2;" if v6 else "",
            f"/etc/letsencrypt/live/{PUBLIC_HOST}/fullchain.pem": str(certificate.chain),
            f"/etc/letsencrypt/live/{PUBLIC_HOST}/privkey.pem": str(certificate.key),
            f"proxy_pass http://{UPSTREAM};": f"proxy_pass http://{upstream};",
            "root /var/www/html;": f"root {webroot};",
            "/var/log/nginx/openreceipt.error.log": str(directory / "openreceipt.error.log"),
        },
    )
    (directory / "openreceipt.conf").write_text(site)
    # Started by root, nginx would run its workers as nobody, who cannot enter the test's
    # directory; otherwise the directive is ignored (and no root is needed: high ports).
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
    (directory / "nginx.conf").write_text(NGINX_MAIN.format(user=user, d=directory))
    command = [
        nginx,
        "-p",
        f"{directory}/",
        "-c",
        str(directory / "nginx.conf"),
        "-e",
        str(directory / "error.log"),
        "-g",
        f"daemon off; pid {directory}/nginx.pid;",
    ]
    return command, os.environ.copy(), https_port, http_port


def start_caddy(directory, upstream, certificate):
    caddy = shutil.which("caddy")
    if caddy is None:
        unavailable("caddy is not installed (Debian's caddy package)")
    https_port, http_port = free_port(), free_port()
    caddyfile = rendered(
        "Caddyfile",
        {
            # The test's own global options: no admin endpoint, its ports, loopback only.
            "\n{\n": (
                f"\n{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n"
                f"\thttp_port {http_port}\n\thttps_port {https_port}\n"
            ),
            # The test's certificate, where a server gets one from Let's Encrypt by itself.
            f"\n{PUBLIC_HOST} {{\n": (
                f"\n{PUBLIC_HOST} {{\n\ttls {certificate.chain} {certificate.key}\n"
            ),
            f"reverse_proxy {UPSTREAM} {{": f"reverse_proxy {upstream} {{",
        },
    )
    (directory / "Caddyfile").write_text(caddyfile)
    environment = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(directory),
        "XDG_DATA_HOME": str(directory / "data"),
        "XDG_CONFIG_HOME": str(directory / "config"),
    }
    command = [caddy, "run", "--config", str(directory / "Caddyfile"), "--adapter", "caddyfile"]
    return command, environment, https_port, http_port


@pytest.fixture
def proxy(request, tmp_path, certificate):
    """start(upstream) -> a running Proxy of the test's kind ("nginx" or "caddy") in front of
    upstream (host:port), from the shipped file; stopped at the end."""
    started = []

    def start(upstream):
        name = request.param
        directory = tmp_path / name
        directory.mkdir()
        prepare = {"nginx": start_nginx, "caddy": start_caddy}[name]
        command, environment, https_port, http_port = prepare(directory, upstream, certificate)
        with (directory / "process.log").open("wb") as output:
            process = subprocess.Popen(
                command, env=environment, stdout=output, stderr=subprocess.STDOUT
            )
        front = Proxy(name, https_port, http_port, directory, process)
        started.append(front)
        deadline = time.monotonic() + 20
        for port in (https_port, http_port):
            while True:
                if process.poll() is not None:
                    pytest.fail(f"{name} exited:\n{front.logs()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{name} did not listen:\n{front.logs()}"
                    time.sleep(0.05)
        return front

    yield start
    for front in started:
        front.stop()


def fetch(port, method, path, headers=None, body=None, tls=None, source=READER, timeout=10):
    """(status, headers, body) of one request to the receipt domain, as a reader's browser or
    mail client sends it: its name in SNI and Host, from a loopback address of its own, reaching
    the proxy on its local port. tls: the client's SSLContext, or None for plain HTTP."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=PUBLIC_HOST)
    connection = http.client.HTTPConnection(PUBLIC_HOST, port, timeout=timeout)
    connection.sock = sock
    with closing(connection):
        if isinstance(body, dict):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(
            method, path, body=body, headers={"Host": PUBLIC_HOST, **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, response.headers, response.read()


@contextmanager
def slow_bodies(port, tls, count):
    """`count` clients that each send a sign-in form's headers, then its body a byte every half
    second, never finishing it, for as long as the block lasts. (A form: the server reads it
    before it answers anything, where an API call without a token is answered at once.)"""
    stop = threading.Event()
    connected = threading.Barrier(count + 1, timeout=20)

    def trickle():
        try:
            with (
                socket.create_connection(
                    ("127.0.0.1", port), timeout=30, source_address=(READER, 0)
                ) as raw,
                tls.wrap_socket(raw, server_hostname=PUBLIC_HOST) as sock,
            ):
                sock.sendall(
                    f"POST /login HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nContent-Length: 10000\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n\r\nemail=".encode()
                )
                connected.wait()
                while not stop.wait(0.5):
                    sock.sendall(b"a")
        except (OSError, threading.BrokenBarrierError):
            pass

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        connected.wait()
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads)


def only_hsts(headers):
    return headers.get_all("Strict-Transport-Security") == [HSTS]


def cookie_pair(headers):
    return login_cookie(headers).split(";", 1)[0]


@dataclass
class Deployment:
    """gunicorn with the example settings behind a shipped proxy, and requests to it over HTTPS
    from the reader's address."""

    server: object  # tests.servers.Gunicorn
    front: Proxy
    tls: ssl.SSLContext

    def https(self, method, path, headers=None, body=None, **options):
        return fetch(self.front.https_port, method, path, headers, body, tls=self.tls, **options)

    def first_account(self):
        """Open the first-run link from the log (the journal, on a server) through the proxy, as
        a browser does, and make the first account; returns the session's Cookie header."""
        [link] = re.findall(rb"Create the first account at (\S+) ", self.server.log_bytes())
        link = link.decode()
        assert link.startswith(f"https://{PUBLIC_HOST}/setup/")
        setup = link.removeprefix(f"https://{PUBLIC_HOST}")
        status, headers, page = self.https("GET", setup)
        assert status == 200 and only_hsts(headers)
        cookie = login_cookie(headers)
        assert secure(cookie)
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
        form = urlencode(
            {"csrf_token": token, "email": EMAIL, "password": PASSWORD, "confirm": PASSWORD}
        )
        posted = {
            "Cookie": cookie.split(";", 1)[0],
            "Content-Type": "application/x-www-form-urlencoded",
        }
        # The app believes the proxy's X-Forwarded-Proto: over HTTPS, CSRF protection insists
        # on a same-origin Referer, and refuses the form without one.
        status, _, _ = self.https("POST", setup, posted, form)
        assert status == 400
        status, headers, _ = self.https("POST", setup, {**posted, "Referer": link}, form)
        assert status == 302 and headers["Location"] in ("/", f"https://{PUBLIC_HOST}/")
        assert secure(login_cookie(headers))
        return cookie_pair(headers)

    def mint(self, subject):
        auth = {"Authorization": f"Bearer {self.server.openreceipt('token', 'new', EMAIL)}"}
        status, headers, minted = self.https("POST", "/api/pixels", auth, {"subject": subject})
        assert status == 201 and only_hsts(headers)
        return auth, json.loads(minted)


@pytest.fixture
def deployed(gunicorn, proxy, certificate):
    """deployed(**settings) -> a Deployment: one gunicorn worker (its 16 threads are the whole
    server) with the example settings and `settings`, behind the test's proxy."""

    def deploy(**settings):
        example = settings_from(rendered("openreceipt.env"))
        for name in ("OPENRECEIPT_DATA_DIR", "OPENRECEIPT_BIND"):  # the test's own
            del example[name]
        server = gunicorn(
            workers=1,
            **{name.removeprefix("OPENRECEIPT_"): value for name, value in example.items()},
            **settings,
        )
        return Deployment(server, proxy(server.url.removeprefix("http://")), certificate.client)

    return deploy


@pytest.mark.slow
@pytest.mark.parametrize("proxy", ["nginx", "caddy"], indirect=True)
def test_a_receipt_domain_behind_the_proxy(deployed):
    """The whole way from the first run to a stored fetch, on https://receipts.example.com,
    through the proxy's shipped configuration."""
    site = deployed()
    server, front, https = site.server, site.front, site.https
    session = site.first_account()

    # Minting through the proxy hands out https://receipts.example.com pixel URLs.
    auth, minted = site.mint("Invoice #42")
    assert re.fullmatch(rf"https://{re.escape(PUBLIC_HOST)}/p/[^/]+\.gif", minted["url"])
    pixel = minted["url"].removeprefix(f"https://{PUBLIC_HOST}")

    # A body larger than openreceipt takes (64 KB) gets its JSON 413, not the proxy's own page.
    status, _, refusal = https("POST", "/api/pixels", auth, {"subject": "x" * 70_000})
    assert status == 413 and "error" in json.loads(refusal)

    # A fetch that claims another address and plain HTTP: the proxy's word counts, not the
    # client's. Then one with a 30 KB user agent, which mail clients must not see refused.
    claims = {"User-Agent": GMAIL_PROXY, "X-Forwarded-For": SPOOFED, "X-Forwarded-Proto": "http"}
    for headers in (claims, {"User-Agent": "Mozilla/5.0 " + "x" * 30_000}):
        status, answer, image = https("GET", pixel, headers)
        assert (status, answer["Content-Type"], image[:6]) == (200, "image/gif", b"GIF89a")
        assert answer["X-Openreceipt"].startswith("recorded: ")
        assert "Set-Cookie" not in answer and only_hsts(answer)
    status, _, detail = https("GET", f"/api/pixels/{minted['id']}", auth)
    stored = [event["ip"] for event in json.loads(detail)["events"]]
    assert stored == ["127.0.5.0", "127.0.5.0"]  # the reader's network: not its address,
    # not the spoofed 203.0.113.0, not the proxy's own 127.0.0.0

    # The status page and its live updates (static/live.js polls the JSON with ETags).
    signed_in = {"Cookie": session}
    status, _, page = https("GET", "/", signed_in)
    assert status == 200
    live = re.search(rb'data-live="([^"]+)"', page).group(1).decode().replace("&amp;", "&")
    status, headers, script = https("GET", "/static/live.js", signed_in)
    assert status == 200 and b"setInterval" in script
    status, headers, rows = https("GET", live, signed_in)
    assert (status, headers.get_content_type()) == (200, "application/json")
    assert only_hsts(headers)
    [row] = json.loads(rows)["rows"]
    assert row["title"] == "Invoice #42"
    status, _, _ = https("GET", live, {**signed_in, "If-None-Match": headers["ETag"]})
    assert status == 304
    status, headers, story = https("GET", f"/live/m/{minted['id']}", signed_in)
    assert status == 200 and json.loads(story)["counts"]

    # Slow clients stop at the proxy: with more request bodies trickling in than gunicorn has
    # threads (16), a pixel fetch is still answered at once.
    with slow_bodies(front.https_port, site.tls, 20):
        time.sleep(1)
        status, _, image = https("GET", pixel, {"User-Agent": GMAIL_PROXY}, timeout=5)
        assert (status, image[:6]) == (200, b"GIF89a")

    # Plain HTTP goes to HTTPS.
    status, headers, _ = fetch(front.http_port, "GET", "/p/anything.gif?x=1")
    assert status in (301, 308)
    assert re.fullmatch(
        rf"https://{re.escape(PUBLIC_HOST)}(:{front.https_port})?/p/anything\.gif\?x=1",
        headers["Location"],
    )
    if front.name == "nginx":
        # ...except Let's Encrypt's challenges, answered from certbot's webroot.
        status, _, answer = fetch(front.http_port, "GET", "/.well-known/acme-challenge/probe")
        assert (status, answer) == (200, b"challenge answered\n")

    # With openreceipt down, the proxy's own error page is HTTPS-only too; and no log of the
    # proxy or of openreceipt holds the reader's address.
    server.stop()
    status, headers, _ = https("GET", pixel)
    assert status == 502 and only_hsts(headers)
    front.stop()
    if front.name == "caddy":
        assert '"remote_ip":"127.0.5.0"' in front.logs()  # the failure is logged, masked
    leaks = [
        str(path)
        for directory in (front.directory, server.logs, server.logs.parent / "data")
        for path in directory.rglob("*")
        if path.is_file() and READER.encode() in path.read_bytes()
    ]
    assert leaks == []


@contextmanager
def chromium_on_the_domain():
    """Debian's Chromium, launched as tests/test_browser.py launches it, that finds
    receipts.example.com on loopback, where the proxy listens."""
    if not Path(CHROMIUM).exists():
        unavailable(f"Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {PUBLIC_HOST} 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.postgresql
@pytest.mark.parametrize("proxy", ["nginx", "caddy"], indirect=True)
def test_the_status_page_updates_itself_through_the_proxy(deployed, postgresql_url):
    """Chromium on https://receipts.example.com through the proxy, openreceipt on PostgreSQL (the
    settings file's other database): a fetch shows on the open list of receipts within seconds,
    without a reload, as static/live.js polls its JSON through the proxy."""
    from playwright.sync_api import expect

    site = deployed(DATABASE_URL=postgresql_url)
    name, value = site.first_account().split("=", 1)
    _, minted = site.mint("Invoice #43")
    origin = f"https://{PUBLIC_HOST}:{site.front.https_port}"
    with chromium_on_the_domain() as browser:
        # The test's certificate authority is not the browser's; everything else is as served.
        context = browser.new_context(ignore_https_errors=True)
        context.add_cookies(
            [{"name": name, "value": value, "url": origin, "secure": True, "httpOnly": True}]
        )
        page = context.new_page()
        polls = []
        page.on("response", lambda r: polls.append(r.status) if "/live/" in r.url else None)
        page.goto(origin + "/")
        mark = page.locator("#receipts tbody tr", has_text="Invoice #43").locator(".mark")
        expect(mark).to_have_text("○ waiting")
        page.evaluate("window.stillTheSamePage = true")

        pixel = minted["url"].removeprefix(f"https://{PUBLIC_HOST}")
        _, answer, _ = site.https("GET", pixel, {"User-Agent": GMAIL_PROXY})
        assert answer["X-Openreceipt"] == "recorded: open"
        # live.js polls every 4 s, and at once when the tab comes back into view: no waiting.
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        expect(mark).to_have_text("✓✓ opened", timeout=LIVE_MS)
        assert page.evaluate("window.stillTheSamePage") is True
        assert polls and set(polls) <= {200, 304}
        context.close()
