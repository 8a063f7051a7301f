"""The pixel endpoint, the hot path: always a 200 GIF at once, an event only for a genuine
pixel; when the database cannot take the event, it waits in the spool (spool.py)."""

import base64
import time
import uuid
from dataclasses import replace

from flask import Blueprint, Response, current_app, request
from peewee import DatabaseError, DataError, IntegrityError

from ..judgement.classify import Fetch
from ..privacy import MAX_USER_AGENT, anonymize, fingerprint
from ..storage.engine import PIXEL_WAIT_MS, utcnow
from . import spool

bp = Blueprint("pixel", __name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# Gmail's proxy honours no-cache since 2014; "private" keeps shared caches from answering for us.
CACHE_CONTROL = "no-cache, no-store, must-revalidate, private"
PREFETCH_HEADERS = ("HTTP_PURPOSE", "HTTP_SEC_PURPOSE", "HTTP_X_PURPOSE", "HTTP_X_MOZ")
MB = 1024 * 1024
# While the full spool turns fetches away, the host's first drop is logged, then one line a
# minute per worker at most: a line a fetch would make the log grow as fast as the spool would.
SPOOL_FULL_LOG_SECONDS = 60
_spool_full_logged_at = None


def gif(outcome):
    """The one answer a mail client ever gets. With OPENRECEIPT_DEBUG_HEADERS=on, X-Openreceipt
    says what happened; off, as by default, every fetcher gets the same answer, whether its
    signature was valid, the receipt deleted or a recipient on the do-not-track list."""
    headers = {
        "Content-Type": "image/gif",
        "Cache-Control": CACHE_CONTROL,
        "Pragma": "no-cache",
        "Expires": "0",
    }
    if current_app.config["DEBUG_HEADERS"]:
        headers["X-Openreceipt"] = outcome
    return Response(GIF, 200, headers)


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
    fetch = observe(public_id, services)
    try:
        return services.recorder.record_together(fetch)
    except (DataError, IntegrityError):
        raise  # the fetch itself is at fault: replaying it later would fail the same way
    except DatabaseError as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        if "locked" in reason or "busy" in reason:
            reason = f"busy for {PIXEL_WAIT_MS} ms"
        config = current_app.config
        try:
            written = spool.append(
                config["DATA_DIR"],
                replace(fetch, key=uuid.uuid4().hex),
                max_bytes=config["SPOOL_MAX_MB"] * MB,
                fold_repeats=True,
            )
        except spool.SpoolFull as full:
            log_spool_full(reason, full.dropped)
            return "not recorded: database unavailable and spool full"
        except spool.SpoolError as spool_error:
            current_app.logger.error(
                "pixel fetch lost: database: %s; spool: %s", reason, spool_error.strerror
            )
            return "not recorded: database and spool unavailable"
        if not written:
            return "not recorded: repeat of a fetch seconds ago"
        current_app.logger.warning("pixel fetch spooled: database: %s", reason)
        return "spooled: database unavailable"


def log_spool_full(reason, dropped):
    """Say that the full spool dropped a fetch: the host's first drop, then once a minute."""
    global _spool_full_logged_at
    now = time.monotonic()
    recently = _spool_full_logged_at is not None and (
        now - _spool_full_logged_at < SPOOL_FULL_LOG_SECONDS
    )
    if recently and dropped > 1:
        return
    _spool_full_logged_at = now
    current_app.logger.error(
        "pixel fetch dropped: database: %s; the spool is full (OPENRECEIPT_SPOOL_MAX_MB=%s): "
        "it keeps the oldest fetches, %s dropped so far on this host",
        reason,
        current_app.config["SPOOL_MAX_MB"],
        dropped,
    )


def observe(public_id, services):
    """What this request tells about the fetch, masked at once: the raw address is read here
    and nowhere else."""
    ip = anonymize(request.remote_addr)
    user_agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT]
    location = services.geolocator.locate(ip)
    return Fetch(
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
