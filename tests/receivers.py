"""Real local servers that receive notifications: an HTTP receiver (webhooks and pushes) and an
SMTP server (aiosmtpd) with STARTTLS or TLS from the start, and a login."""

import email
import email.policy
import json
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from .servers import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class Receiver:
    """An HTTP server on `host` (127.0.0.1) that records every request. `answers` are the
    statuses to give, one per request, then 200; `delay` seconds are spent before each answer;
    with `context` (an ssl.SSLContext) it speaks HTTPS. Can be stopped and started again on the
    same port (a receiver that was down)."""

    def __init__(self, port=None, answers=(), delay=0.0, host="127.0.0.1", context=None):
        self.host = host
        self.port = port or free_port(host)
        self.answers = list(answers)
        self.delay = delay
        self.context = context
        self.received = []
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self):
        return f"{'https' if self.context else 'http'}://{self.host}:{self.port}"

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.received.append(
                        Received("POST", self.path, dict(self.headers.items()), body)
                    )
                    status = receiver.answers.pop(0) if receiver.answers else 200
                time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self._server = _CountingServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        if self.context is not None:
            self._server.socket = self.context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count, timeout=20):
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def settle(self, timeout=10):
        """Everything that reached the receiver, once all of it is recorded. Call it when
        nothing sends any more (the senders have exited): a request of its own, made now, is
        accepted after every connection before it, and once it is answered and no handler is
        still at work, nothing else is on its way. Returns the requests, without its own."""
        request = urllib.request.Request(self.url + SETTLED, data=b"", method="POST")
        context = ssl._create_unverified_context() if self.context else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            response.read()
        deadline = time.monotonic() + timeout
        while self._server.handling:
            assert time.monotonic() < deadline, "the receiver's handlers did not finish"
            time.sleep(0.01)
        with self._lock:
            self.received[:] = [r for r in self.received if r.path != SETTLED]
        return self.received


# The path of the request that tells a receiver it has recorded all the others (settle).
SETTLED = "/settled"


class _CountingServer(ThreadingHTTPServer):
    """Counts its connections still being handled: from their acceptance, in the thread that
    accepts them one after another, until their handler is done."""

    handling = 0

    def process_request(self, request, client_address):
        with _counting:
            self.handling += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with _counting:
                self.handling -= 1


_counting = threading.Lock()


@dataclass
class MailServer:
    """A running aiosmtpd server; `messages` are the email.message objects it accepted."""

    controller: Controller
    port: int
    messages: list = field(default_factory=list)
    logins: list = field(default_factory=list)

    def stop(self):
        self.controller.stop()


class _Collect:
    def __init__(self, server):
        self.server = server

    async def handle_DATA(self, smtp, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.server.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, options):
        if address.endswith("@refused.example"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def start_mail_server(certificate, security="starttls", login=("notices", "s3cret")):
    """An SMTP server on 127.0.0.1 with `certificate` (a trustme LeafCert): "starttls" (offered
    and required before a login), "ssl" (TLS from the start) or "none" (no TLS offered)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    port = free_port()
    server = MailServer(controller=None, port=port)

    def authenticate(_server, _session, _envelope, mechanism, auth_data):
        server.logins.append(auth_data.login.decode())
        return AuthResult(
            success=(auth_data.login, auth_data.password) == tuple(part.encode() for part in login)
        )

    options = {"authenticator": authenticate, "auth_require_tls": security != "none"}
    if security == "starttls":
        options.update(tls_context=context, require_starttls=True)
    elif security == "ssl":
        # The whole connection is TLS; aiosmtpd only counts STARTTLS as such for AUTH.
        options.update(ssl_context=context, auth_require_tls=False)
    else:
        options.update(auth_require_tls=False)
    controller = Controller(
        _Collect(server), hostname="127.0.0.1", port=port, server_hostname="localhost", **options
    )
    controller.start()
    server.controller = controller
    return server
