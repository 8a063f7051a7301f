"""Security headers on the server's own pages, and what the server believes of the proxies in
front of it. The pixel and the API are left alone by the page headers: the pixel answers mail
clients with a bare GIF, the API is read by scripts on other origins. Over HTTPS every answer
carries HSTS.

Proxy trust lives here and nowhere else: OPENRECEIPT_TRUSTED_PROXIES hops of X-Forwarded-For and
X-Forwarded-Proto are believed, for the client's address and the scheme; X-Forwarded-Host never
is (OPENRECEIPT_PUBLIC_URL names the public address); gunicorn believes none of them itself
(gunicorn.conf.py). When the requests show that the proxy in front and these settings disagree,
each worker says so in the log, once."""

import ipaddress
import re
import threading
from urllib.parse import urlsplit

from flask import current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .privacy import anonymize

# No inline script or style anywhere: the pages use static/live.js and static/style.css only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

HSTS = "max-age=31536000"
# Nothing of this server's addresses goes to another site; its own forms do carry a Referer, which
# CSRF protection insists on over HTTPS (Flask-WTF refuses a form posted over HTTPS without one:
# with no-referrer, no sign-in behind an HTTPS proxy ever got through).
REFERRER_POLICY = "same-origin"


def init_app(app):
    trust_proxies(app)
    warn_of_proxy_mismatches(app)

    @app.after_request
    def page_headers(response):
        if request.is_secure:
            # is_secure believes X-Forwarded-Proto only from the trusted proxies (ProxyFix).
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        # JSON and exports too: a browser never takes a user's text for a page or a script.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.mimetype != "text/html":
            return response
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Referrer-Policy", REFERRER_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        if g.get("user") is not None:
            # A signed-in page may show a secret once (a bookmarklet's key, a webhook's whsec_):
            # neither the browser's cache nor its back button may keep a copy.
            response.headers["Cache-Control"] = "no-store"
        return response


def trust_proxies(app):
    """Believe the last OPENRECEIPT_TRUSTED_PROXIES entries of X-Forwarded-For and
    X-Forwarded-Proto: those were written by proxies we run. Anything before them, and every
    other forwarded header, came from the client."""
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0)


def warn_of_proxy_mismatches(app):
    """Log, once per worker, the two signs that the proxy in front and the settings disagree:
    forwarded headers while OPENRECEIPT_TRUSTED_PROXIES is 0 (every fetch is then stored as the
    proxy's network), and a request for another host than OPENRECEIPT_PUBLIC_URL's (a proxy
    that does not pass Host on; forms over HTTPS then fail their referrer check). A request
    costs a few dictionary look-ups until both have been said, then one; the log line holds no
    client's address, and no header's value but the Host's name."""
    public = urlsplit(app.config["PUBLIC_URL"]) if app.config["PUBLIC_URL"] else None
    # Host headers that need no second look: the public URL's, as proxies pass it on.
    public_hosts = {public.hostname, public.netloc} if public else set()
    # What is still to be said in this process; emptied as each is logged.
    pending = {"forwarded"} if not app.config["TRUSTED_PROXIES"] else set()
    if public:
        pending.add("host")
    lock = threading.Lock()

    def first_time(what):
        with lock:
            if what not in pending:
                return False
            pending.discard(what)
            return True

    def notice(environ):
        if not pending:
            return
        if "forwarded" in pending and (
            "HTTP_X_FORWARDED_FOR" in environ or "HTTP_X_FORWARDED_PROTO" in environ
        ):
            if first_time("forwarded"):
                app.logger.warning(
                    "X-Forwarded-For or X-Forwarded-Proto arrives but is not trusted: every fetch "
                    "is stored as the proxy's network, and HTTPS is not seen; set "
                    "OPENRECEIPT_TRUSTED_PROXIES=1 (the number of proxies in front). With no "
                    "proxy in front, a client sent them: nothing to do"
                )
        if "host" in pending and environ.get("HTTP_HOST") not in public_hosts:
            host = host_name(environ.get("HTTP_HOST", ""))
            if host is not None and host != public.hostname and first_time("host"):
                app.logger.warning(
                    "A request arrived for host %s, but OPENRECEIPT_PUBLIC_URL is %s: if it came "
                    "through your reverse proxy, the proxy does not pass the Host header on "
                    "(nginx: proxy_set_header Host $host), and forms sent over HTTPS are refused",
                    shown_host(host),
                    app.config["PUBLIC_URL"],
                )

    # The pixel, answered before Flask's machinery (pixel/endpoint.py), calls it itself.
    app.extensions["openreceipt.proxy_notice"] = notice
    app.before_request(lambda: notice(request.environ))


def host_name(header):
    """The host name of a Host header, in lower case and without its port; None when there is
    none or it cannot be read."""
    try:
        return urlsplit(f"//{header}").hostname or None
    except ValueError:
        return None


_HOST_NAME = re.compile(r"[a-z0-9_.-]{1,253}")


def shown_host(host):
    """A Host header's name as the log may show it: a loopback address (this machine, as a proxy
    on it names it) as it is, any other address masked like a client's, a name only when it is
    made of the characters host names have."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host if _HOST_NAME.fullmatch(host) else "(a name that is no host name)"
    return host if address.is_loopback else anonymize(host)


def public_origin():
    """What every URL this server hands out starts with (pixel images, the bookmarklet's server,
    the privacy notice's host): OPENRECEIPT_PUBLIC_URL when set, else the address this request
    was sent to."""
    return current_app.config["PUBLIC_URL"] or request.host_url.rstrip("/")


def cookie_secure(app):
    """Whether the login cookie is marked Secure: always with an https:// PUBLIC_URL, and on any
    request that came over HTTPS (as far as the trusted proxies tell)."""
    return app.config["SESSION_COOKIE_SECURE"] or request.is_secure
