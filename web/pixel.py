"""The pixel endpoint, the hot path: always a 200 GIF, an event only for a genuine pixel."""

import base64

from flask import Blueprint, Response, current_app, request
from peewee import DatabaseError

from . import receipts
from .classify import Fetch, client_name, judge
from .privacy import anonymize, fingerprint

bp = Blueprint("pixel", __name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# Gmail's proxy honours no-cache since 2014; "private" keeps shared caches from answering for us.
CACHE_CONTROL = "no-cache, no-store, must-revalidate, private"
MAX_USER_AGENT = 1024
PREFETCH_HEADERS = ("Purpose", "Sec-Purpose", "X-Purpose", "X-Moz")


def gif(outcome):
    """The one answer a mail client ever gets; X-Openreceipt says what happened, for debugging."""
    return Response(
        GIF,
        200,
        {
            "Content-Type": "image/gif",
            "Cache-Control": CACHE_CONTROL,
            "Pragma": "no-cache",
            "Expires": "0",
            "X-Openreceipt": outcome,
        },
    )


@bp.route("/p/<path:token>", methods=["GET"])
def pixel(token):
    try:
        outcome = record_fetch(token)
    except DatabaseError as error:
        current_app.logger.error("pixel fetch not recorded: database: %s", error)
        outcome = "not recorded: database unavailable"
    except Exception as error:  # noqa: BLE001 - a mail client must never see an error
        # The class and message only: neither the request nor its address is in them.
        current_app.logger.error("pixel fetch not recorded: %s: %s", type(error).__name__, error)
        outcome = "not recorded: server error"
    return gif(outcome)


def record_fetch(token):
    services = current_app.extensions["openreceipt"]
    public_id = services.signer.unsign(token.removesuffix(".gif"))
    if public_id is None:
        return "not recorded: invalid signature"

    ip = anonymize(request.remote_addr)
    user_agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT]
    purpose = " ".join(request.headers.get(name, "") for name in PREFETCH_HEADERS)
    fetch = Fetch(user_agent=user_agent, ip=ip, method=request.method, purpose=purpose)
    browser = fingerprint(current_app.config["SECRET_KEY"], user_agent, ip)
    use_mail_hosting = current_app.config["MX_LOOKUP"]
    collect_client = current_app.config["COLLECT_CLIENT"]

    def decide(facts, now):
        return judge(fetch, facts, services.networks, now, browser, use_mail_hosting)

    def name_client(source):
        return client_name(user_agent, source, services.ua_parser) if collect_client else None

    location = services.geolocator.locate(ip)
    return receipts.record_fetch(public_id, decide, ip, location, name_client)
