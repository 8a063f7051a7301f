"""openreceipt: self-hosted, privacy-first read receipts for 1-to-1 email."""

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from flask import Flask, Response, current_app, jsonify, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from itsdangerous import URLSafeTimedSerializer
from peewee import InterfaceError, OperationalError
from ua_parser import Parser
from werkzeug.exceptions import HTTPException

from . import (
    api,
    auth,
    cli,
    config,
    install,
    models,
    notice,
    notify,
    pages,
    pixel,
    retention,
    security,
    settings,
    spool,
)
from .classify import Networks, user_agent_parser
from .geo import Geolocator, open_geolocator
from .mailhosts import MailHosts
from .signing import PixelSigner

# The stylesheet and script of the pages: static/ in the checkout, package data when installed.
STATIC = Path(str(files("web.static")))
csrf = CSRFProtect()


class PageSessions(SecureCookieSessionInterface):
    """The login cookie, read by the pages only: the pixel and the API never open a session, so
    a fetch costs no cookie parsing or signing, and can never set a cookie."""

    def open_session(self, app, request):
        if request.path.startswith(("/p/", "/api/")):
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
    """What the pixel path needs, built once at start-up and kept on the app."""

    signer: PixelSigner
    geolocator: Geolocator
    networks: Networks
    ua_parser: Parser
    mail_hosts: MailHosts


def create_app(config_overrides=None):
    """Build the application: defaults, then OPENRECEIPT_* environment, then the mapping given."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.session_interface = PageSessions()
    config.load(app.config, config_overrides)
    app.logger.setLevel(logging.INFO)

    models.init_app(app)
    geolocator = open_geolocator(app.config["GEOIP_DATABASE"], app.config["COLLECT_LOCATION"])
    app.extensions["openreceipt"] = Services(
        signer=PixelSigner(app.config["SECRET_KEY"], app.config["SECRET_KEY_FALLBACKS"]),
        geolocator=geolocator,
        networks=Networks.load(app.config["DATA_DIR"]),
        ua_parser=user_agent_parser(),
        mail_hosts=MailHosts(app.config["DNS_SERVERS"]),
    )

    # "/p//x" is no reason to redirect a mail client, nor "/api//pixels" a script.
    app.url_map.merge_slashes = False
    app.register_blueprint(pixel.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(install.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(notice.bp)
    cli.init_app(app)
    security.init_app(app)
    retention.init_app(app)
    spool.init_app(app)
    notify.init_app(app)
    csrf.init_app(app)
    csrf.exempt(api.bp)
    csrf.exempt(pixel.bp)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(InterfaceError, database_unavailable)

    if app.config.get("ANNOUNCE_STARTUP", True):
        announce(app, geolocator)
    # gunicorn forks its workers from this process: no connection of ours may be shared.
    models.close_pool(app)
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
    link = auth.setup_link(app, base)
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


def http_error(error):
    """JSON errors for the API, the one GIF for the pixel path, plain pages elsewhere."""
    if request.path.startswith("/p/") and request.method in ("GET", "HEAD"):
        return pixel.gif(f"not recorded: {error.code}")
    if request.path.startswith("/api/"):
        return jsonify(error=error.description), error.code
    return error
