"""Security headers on the server's own pages, and what the server believes of the proxies in
front of it. The pixel and the API are left alone by the page headers: the pixel answers mail
clients with a bare GIF, the API is read by scripts on other origins. Over HTTPS every answer
carries HSTS.

Proxy trust lives here and nowhere else: OPENRECEIPT_TRUSTED_PROXIES hops of X-Forwarded-For and
X-Forwarded-Proto are believed, for the client's address and the scheme; X-Forwarded-Host never
is (OPENRECEIPT_PUBLIC_URL names the public address); gunicorn believes none of them itself
(gunicorn.conf.py)."""

from flask import current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

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

    @app.after_request
    def page_headers(response):
        if request.is_secure:
            # is_secure believes X-Forwarded-Proto only from the trusted proxies (ProxyFix).
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if response.mimetype != "text/html":
            return response
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
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


def public_origin():
    """What every URL this server hands out starts with (pixel images, the bookmarklet's server,
    the privacy notice's host): OPENRECEIPT_PUBLIC_URL when set, else the address this request
    was sent to."""
    return current_app.config["PUBLIC_URL"] or request.host_url.rstrip("/")


def cookie_secure(app):
    """Whether the login cookie is marked Secure: always with an https:// PUBLIC_URL, and on any
    request that came over HTTPS (as far as the trusted proxies tell)."""
    return app.config["SESSION_COOKIE_SECURE"] or request.is_secure
