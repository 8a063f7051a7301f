"""openreceipt: self-hosted, privacy-first read receipts for 1-to-1 email."""

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from flask import Flask, Response, current_app, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from itsdangerous import URLSafeTimedSerializer
from peewee import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from . import api, clicks, config, security, storage
from .judgement.clients import user_agent_parser
from .judgement.judge import Judge
from .judgement.mailhosts import MailHosts
from .judgement.ranges import Networks
from .notifications import delivery
from .pixel import endpoint, spool
from .pixel.geo import Geolocator, open_geolocator
from .pixel.recording import Recorder
from .receipts import retention
from .signing import LINK_SALT, PixelSigner
from .storage.engine import close_pool
from .ui import account_settings, bookmarklet_page, privacy_notice, signin, status

# The stylesheet and script of the pages: static/ in the checkout, package data when installed.
STATIC = Path(str(files("web.static")))
csrf = CSRFProtect()


class PageSessions(SecureCookieSessionInterface):
    """The login cookie, read by the pages only: the pixel, tracked links and the API never open
    a session, so a fetch costs no cookie parsing or signing, and can never set a cookie."""

    def open_session(self, app, request):
        if request.path.startswith(("/api/", "/l/")):
            return self.make_null_session(app)
        return super().open_session(app, request)

    def get_cookie_secure(self, app):
        # Per request, not one setting: HTTPS through a trusted proxy marks it Secure too.
        return security.cookie_secure(app)

    def get_signing_serializer(self, app):
        # The current key only. Retired keys (SECRET_KEY_FALLBACKS) stay valid for pixels
        # already sent, but a key is retired because it may have leaked, and whoever has it
        # could sign any cookie; Flask's own serializer would accept every fallback.
        if not app.secret_key:
            return None
        return URLSafeTimedSerializer(
            app.secret_key,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={
                "key_derivation": self.key_derivation,
                "digest_method": self.digest_method,
            },
        )


@dataclass(frozen=True)
class Services:
    """What the requests need, built once at start-up and kept on the app: the pixel path's
    signer (and the tracked links'), geolocator, judge and recorder; the minting path's
    mail-hosting look-up."""

    signer: PixelSigner
    link_signer: PixelSigner
    geolocator: Geolocator
    judge: Judge
    recorder: Recorder
    mail_hosts: MailHosts


def create_app(config_overrides=None):
    """Build the application: defaults, then OPENRECEIPT_* environment, then the mapping given."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.session_interface = PageSessions()
    config.load(app.config, config_overrides)
    app.logger.setLevel(logging.INFO)

    storage.init_app(app)
    geolocator = open_geolocator(app.config["GEOIP_DATABASE"], app.config["COLLECT_LOCATION"])
    judge = Judge(
        Networks.load(app.config["DATA_DIR"]),
        user_agent_parser(),
        use_mail_hosting=app.config["MX_LOOKUP"],
        name_clients=app.config["COLLECT_CLIENT"],
    )
    app.extensions["openreceipt"] = Services(
        signer=PixelSigner(app.config["SECRET_KEY"], app.config["SECRET_KEY_FALLBACKS"]),
        link_signer=PixelSigner(
            app.config["SECRET_KEY"], app.config["SECRET_KEY_FALLBACKS"], salt=LINK_SALT
        ),
        geolocator=geolocator,
        judge=judge,
        recorder=Recorder(judge),
        mail_hosts=MailHosts(app.config["DNS_SERVERS"]),
    )

    # "/p//x" is no reason to redirect a mail client, nor "/api//pixels" a script.
    app.url_map.merge_slashes = False
    app.register_blueprint(api.bp)
    app.register_blueprint(clicks.bp)
    app.register_blueprint(signin.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(bookmarklet_page.bp)
    app.register_blueprint(account_settings.bp)
    app.register_blueprint(privacy_notice.bp)
    endpoint.serve_pixels_first(app)
    security.init_app(app)  # its ProxyFix goes in front of everything, the pixel too
    retention.init_app(app)
    spool.init_app(app)
    delivery.init_app(app)
    csrf.init_app(app)
    csrf.exempt(api.bp)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(InterfaceError, database_unavailable)

    if app.config["ANNOUNCE_STARTUP"]:
        announce(app, geolocator)
    # gunicorn forks its workers from this process: no connection of ours may be shared.
    close_pool(app)
    return app


def announce(app, geolocator):
    """Start-up lines for the operator: which GeoIP data is in use, and the first-run link."""
    app.logger.info(geolocator.describe())
    if not app.config["OPERATOR_CONTACT"]:
        app.logger.warning(
            "OPENRECEIPT_OPERATOR_CONTACT is not set: the privacy notice at /privacy names no one "
            "to ask for erasure"
        )
    base = app.config["PUBLIC_URL"] or config.local_url(config.server_bind())
    link = signin.setup_link(app, base)
    if link:
        app.logger.warning(
            "No user yet. Create the first account at %s (the link works once), "
            "or run: openreceipt user add EMAIL",
            link,
        )


def database_unavailable(error):
    """The database is down, locked past the timeout, or full: say so, with 503, and log the
    driver's first line (it names the database server, never a client)."""
    app = current_app
    app.logger.error(
        "database unavailable: %s", str(error).splitlines()[0][:200] if str(error) else ""
    )
    message = "the database is unavailable; try again shortly"
    if request.path.startswith("/api/"):
        return jsonify(error=message), 503
    return Response(f"openreceipt: {message}.\n", 503, mimetype="text/plain")


# What an error page says, by status: (heading, explanation). Others say the error's own words.
ERROR_PAGES = {
    404: (
        "Not found",
        "There is nothing here: the address may be mistyped, or the receipt was deleted, or it "
        "is not yours.",
    ),
    500: (
        "Something went wrong",
        "The server could not answer this time; the server's log says why. Try again shortly.",
    ),
}


def http_error(error):
    """JSON errors for the API, the app's own page elsewhere
    (its headers kept: a 405 still says which methods are allowed)."""
    if request.path.startswith("/api/"):
        return jsonify(error=error.description), error.code
    heading, explanation = ERROR_PAGES.get(error.code, (error.name, error.description))
    try:
        page = render_template("error.html", heading=heading, explanation=explanation)
    except Exception:  # noqa: BLE001 - the page of an error must not fail: Werkzeug's own, then
        current_app.logger.exception("the error page could not be drawn")
        return error
    response = error.get_response()
    response.set_data(page)
    response.mimetype = "text/html"
    return response
