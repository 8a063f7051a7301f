"""Security headers on the server's own pages. The pixel and the API are left alone: the pixel
answers mail clients with a bare GIF, the API is read by scripts on other origins."""

# No inline script or style anywhere: the pages use static/live.js and static/style.css only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def init_app(app):
    @app.after_request
    def page_headers(response):
        if response.mimetype != "text/html":
            return response
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response
