"""The pixel endpoint, the hot path: always a 200 GIF at once, an event only for a genuine
pixel, stored now or by the worker's writer, or spooled when the database cannot take it
(writer.py).

Fetches of /p/ are answered here, in front of Flask's request machinery (url matching, request
and app contexts, the pages' hooks, the session), which they need none of: a mail client's
request costs what the pixel does and little more. The proxy-trust rule still applies first:
ProxyFix (security.trust_proxies) wraps this, so REMOTE_ADDR is already the client's."""

import base64

from ..judgement.classify import Fetch
from ..privacy import MAX_USER_AGENT, anonymize, fingerprint
from ..security import HSTS
from ..storage.engine import utcnow
from .writer import Writer

PREFIX = "/p/"
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# Gmail's proxy honours no-cache since 2014; "private" keeps shared caches from answering for us.
CACHE_CONTROL = "no-cache, no-store, must-revalidate, private"
GIF_HEADERS = (
    ("Content-Type", "image/gif"),
    ("Content-Length", str(len(GIF))),
    ("Cache-Control", CACHE_CONTROL),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
    ("X-Content-Type-Options", "nosniff"),
)
PREFETCH_HEADERS = ("HTTP_PURPOSE", "HTTP_SEC_PURPOSE", "HTTP_X_PURPOSE", "HTTP_X_MOZ")


def gif_headers(outcome, debug, secure=False):
    """The headers of the one answer a mail client ever gets. With debug
    (OPENRECEIPT_DEBUG_HEADERS=on), X-Openreceipt says what happened; off, as by default, every
    fetcher gets the same answer, whether its signature was valid, the receipt deleted or a
    recipient on the do-not-track list. Over HTTPS, HSTS as on every answer of the server."""
    headers = list(GIF_HEADERS)
    if secure:
        headers.append(("Strict-Transport-Security", HSTS))
    if debug:
        headers.append(("X-Openreceipt", outcome))
    return headers


def serve_pixels_first(app):
    """Answer /p/ in front of the app's Flask machinery; everything else goes on to Flask."""
    app.wsgi_app = app.extensions["openreceipt.pixel"] = PixelFirst(app, app.wsgi_app)


class PixelFirst:
    """The WSGI application that answers the pixel's fetches and passes every other request on."""

    def __init__(self, app, then):
        self.app = app
        self.then = then
        self.services = app.extensions["openreceipt"]
        self.config = app.config
        self.logger = app.logger
        self.database = app.extensions["openreceipt.database"]
        self.writer = Writer(self.services.recorder, app.config, app.logger)

    def __call__(self, environ, start_response):
        if not environ.get("PATH_INFO", "").startswith(PREFIX):
            return self.then(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            start_response(
                "405 METHOD NOT ALLOWED",
                [
                    ("Allow", "GET, HEAD"),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            )
            return [b"openreceipt: a pixel answers GET and HEAD only.\n"]
        try:
            self.app.extensions["openreceipt.proxy_notice"](environ)
            outcome = self.record_fetch(environ)
        except Exception as error:  # noqa: BLE001 - a mail client must never see an error
            # The class and message only: neither the request nor its address is in them.
            self.logger.error("pixel fetch not recorded: %s: %s", type(error).__name__, error)
            outcome = "not recorded: server error"
        finally:
            # Back to the pool, as Flask's teardown does for every other request.
            if not self.database.is_closed():
                self.database.close()
        secure = environ.get("wsgi.url_scheme") == "https"
        start_response("200 OK", gif_headers(outcome, self.config["DEBUG_HEADERS"], secure))
        return [] if method == "HEAD" else [GIF]

    def record_fetch(self, environ):
        """Record the fetch now, or spool it when the database cannot take it at once."""
        services = self.services
        token = environ["PATH_INFO"][len(PREFIX) :]
        public_id = services.signer.unsign(token.removesuffix(".gif"))
        if public_id is None:
            return "not recorded: invalid signature"
        return self.record(observe(environ, public_id, services, self.config["SECRET_KEY"]))

    def record(self, fetch, wait=False):
        """Store the fetch (of the pixel, or a click: web/clicks.py, which `wait`s for it), queue
        it, or spool it (writer.py); the outcome."""
        return self.writer.record(fetch, wait)


def observe(environ, public_id, services, secret):
    """What this request tells about the fetch, masked at once: the raw address is read here
    and nowhere else."""
    ip = anonymize(environ.get("REMOTE_ADDR"))
    user_agent = environ.get("HTTP_USER_AGENT", "")[:MAX_USER_AGENT]
    location = services.geolocator.locate(ip)
    return Fetch(
        public_id=public_id,
        at=utcnow(),
        user_agent=user_agent,
        ip=ip,
        method=environ["REQUEST_METHOD"],
        purpose=" ".join(environ.get(name, "") for name in PREFETCH_HEADERS),
        browser=fingerprint(secret, user_agent, ip),
        country=location.country,
        city=location.city,
    )
