"""Security headers on the server's own pages. The pixel and the API are left alone: the pixel
answers mail clients with a bare GIF, the API is read by scripts on other origins. Over HTTPS
every answer carries HSTS."""

from flask import request

# No inline script or style anywhere: the pages use static/live.js and static/style.css only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

HSTS = "max-age=31536000"


def init_app(app):
    @app.after_request
    def page_headers(response):
        if request.is_secure:
            # is_secure believes X-Forwarded-Proto only from the trusted proxies (ProxyFix).
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if response.mimetype != "text/html":
            return response
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response
