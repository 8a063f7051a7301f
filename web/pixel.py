"""The pixel endpoint, the hot path: always a 200 GIF, an event only for a genuine pixel."""

import base64

from flask import Blueprint, Response, current_app, request
from peewee import DatabaseError

from . import receipts
from .classify import Fetch, classify, client_name
from .models import Pixel
from .privacy import anonymize

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

    pixel_id = Pixel.select(Pixel.id).where(Pixel.public_id == public_id).scalar()
    if pixel_id is None:
        return "not recorded: no such pixel"

    verdict = classify(fetch, services.networks)
    location = services.geolocator.locate(ip)
    client = client_name(user_agent, verdict.source, services.ua_parser)
    receipts.record(pixel_id, verdict, ip, location, client)
    return f"recorded: {verdict.kind}"
