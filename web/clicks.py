"""Tracked links: GET /l/<signed link id> records the click and redirects to the destination
stored for that link, and to nothing else: never to anything the request says. A forged,
altered or deleted link gets a plain page, not a redirect. The click is judged like a fetch of
the pixel (judgement/clicks.py: scanners first), through the pixel's own masking and
recording, then against the clicks around it (receipts/ledger.settle_clicks). Unlike the
pixel, a click needs the database to be answered at all (the destination is there): when it is
away, the person gets a page asking them to try again shortly (503); when it is only busy, the
click waits in the spool as a fetch does (and its sweep is not looked at)."""

from dataclasses import replace

from flask import Blueprint, Response, current_app, redirect, request

from .pixel.endpoint import observe
from .receipts import ledger
from .storage.models import Link, Pixel

bp = Blueprint("clicks", __name__)

NOT_A_LINK = (
    "openreceipt: this link is not valid. It may have been cut or altered on its way, or the "
    "message's sender deleted its receipt; ask them for the link.\n"
)
# The honeypot's answer: there is nothing behind it, and no person ever asks for it.
NOTHING = "openreceipt: nothing here.\n"


def plain(status, text):
    response = Response(text, status, mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/l/", defaults={"token": ""}, methods=["GET"])
@bp.route("/l/<path:token>", methods=["GET"])
def follow(token):
    services = current_app.extensions["openreceipt"]
    public_id = services.link_signer.unsign(token)
    link = None
    if public_id is not None:
        link = (
            Link.select(Link, Pixel.id, Pixel.public_id)
            .join(Pixel)
            .where(Link.public_id == public_id)
            .first()
        )
    if link is None:
        return plain(404, NOT_A_LINK)
    outcome = record_click(link, services)
    response = plain(200, NOTHING) if link.honeypot else redirect(link.destination, 302)
    response.headers["Cache-Control"] = "no-store"
    # The destination learns nothing of this server's link (the token) from the Referer.
    response.headers["Referrer-Policy"] = "no-referrer"
    if current_app.config["DEBUG_HEADERS"]:
        response.headers["X-Openreceipt"] = outcome
    return response


def record_click(link, services):
    """Record the click as the pixel records a fetch; then look at the clicks around it. What
    came of it (the pixel's outcome words)."""
    try:
        fetch = observe(
            request.environ, link.pixel.public_id, services, current_app.config["SECRET_KEY"]
        )
        fetch = replace(fetch, link_id=link.id, honeypot=link.honeypot)
        # Stored, or spooled as the pixel's fetches are when the database is busy.
        outcome = current_app.extensions["openreceipt.pixel"].record(fetch, wait=True)
        if outcome.startswith("recorded"):
            ledger.settle_clicks(link.pixel.id, fetch.ip, fetch.at)
    except Exception as error:  # noqa: BLE001 - the person still gets where they were going
        # The class and message only: neither the request nor its address is in them.
        current_app.logger.error("click not recorded: %s: %s", type(error).__name__, error)
        return "not recorded: server error"
    return outcome
