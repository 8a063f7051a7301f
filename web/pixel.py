"""The pixel endpoint, the hot path: always a 200 GIF at once, an event only for a genuine
pixel; when the database cannot take the event, it waits in the spool (web/spool.py)."""

import base64
import uuid
from dataclasses import replace

from flask import Blueprint, Response, current_app, request
from peewee import DatabaseError, DataError, IntegrityError

from . import receipts, spool
from .models import PIXEL_WAIT_MS, utcnow
from .privacy import anonymize, fingerprint

bp = Blueprint("pixel", __name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# Gmail's proxy honours no-cache since 2014; "private" keeps shared caches from answering for us.
CACHE_CONTROL = "no-cache, no-store, must-revalidate, private"
MAX_USER_AGENT = 1024
PREFETCH_HEADERS = ("HTTP_PURPOSE", "HTTP_SEC_PURPOSE", "HTTP_X_PURPOSE", "HTTP_X_MOZ")


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
    except Exception as error:  # noqa: BLE001 - a mail client must never see an error
        # The class and message only: neither the request nor its address is in them.
        current_app.logger.error("pixel fetch not recorded: %s: %s", type(error).__name__, error)
        outcome = "not recorded: server error"
    return gif(outcome)


def record_fetch(token):
    """Record the fetch now, or spool it when the database cannot take it at once."""
    services = current_app.extensions["openreceipt"]
    public_id = services.signer.unsign(token.removesuffix(".gif"))
    if public_id is None:
        return "not recorded: invalid signature"
    fetched = observe(public_id, services)
    app = current_app._get_current_object()
    try:
        return receipts.record(fetched, app, short_waits=True)
    except (DataError, IntegrityError):
        raise  # the fetch itself is at fault: replaying it later would fail the same way
    except DatabaseError as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        if "locked" in reason or "busy" in reason:
            reason = f"busy for {PIXEL_WAIT_MS} ms"
        try:
            spool.append(current_app.config["DATA_DIR"], replace(fetched, key=uuid.uuid4().hex))
        except spool.SpoolError as spool_error:
            current_app.logger.error(
                "pixel fetch lost: database: %s; spool: %s", reason, spool_error.strerror
            )
            return "not recorded: database and spool unavailable"
        current_app.logger.warning("pixel fetch spooled: database: %s", reason)
        return "spooled: database unavailable"


def observe(public_id, services):
    """What this request tells about the fetch, masked at once: the raw address is read here
    and nowhere else."""
    ip = anonymize(request.remote_addr)
    user_agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT]
    location = services.geolocator.locate(ip)
    return receipts.Fetched(
        public_id=public_id,
        at=utcnow(),
        user_agent=user_agent,
        ip=ip,
        method=request.method,
        purpose=" ".join(request.environ.get(name, "") for name in PREFETCH_HEADERS),
        browser=fingerprint(current_app.config["SECRET_KEY"], user_agent, ip),
        country=location.country,
        city=location.city,
    )
