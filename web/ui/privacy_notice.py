"""The public privacy notice: what anyone who looks up a pixel's address finds at `/privacy`
(and at `/` when not signed in). It is written from the settings in force, so it never promises
more or less than the server does."""

from urllib.parse import urlsplit

from flask import Blueprint, current_app, render_template

from ..security import public_origin

bp = Blueprint("notice", __name__)

LOCATION = {
    "city": "the city and country the network is registered in",
    "country": "the country the network is registered in",
    "none": None,
}
RECIPIENTS = {
    "address": "the recipients' addresses",
    "domain": "only the domains of the recipients' addresses (example.com), never the addresses",
    "none": None,
}


def contact_link():
    """The operator contact as (text, href or None): an address becomes a mailto: link, a web
    address a link, anything else plain text."""
    contact = current_app.config["OPERATOR_CONTACT"]
    if not contact:
        return None
    if urlsplit(contact).scheme in ("http", "https"):
        return contact, contact
    if "@" in contact and " " not in contact:
        return contact, f"mailto:{contact}"
    return contact, None


@bp.app_context_processor
def retention_in_force():
    return {"retention_days": current_app.config["RETENTION_DAYS"]}


def render_notice():
    config = current_app.config
    return render_template(
        "privacy.html",
        host=urlsplit(public_origin()).netloc,
        location=LOCATION[config["COLLECT_LOCATION"]],
        client=config["COLLECT_CLIENT"],
        recipients=RECIPIENTS[config["STORE_RECIPIENTS"]],
        contact=contact_link(),
    )


@bp.get("/privacy")
def privacy():
    return render_notice()
