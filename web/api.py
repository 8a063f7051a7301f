"""The JSON API: Bearer-token authentication, open to any origin (no cookies involved)."""

import functools

from flask import Blueprint, abort, current_app, g, jsonify, make_response, request
from flask_cors import CORS
from peewee import JOIN, fn
from werkzeug.exceptions import BadRequest, Forbidden, NotFound, Unauthorized

from .accounts import token_for
from .bookmarklet import VERSION as BOOKMARKLET_VERSION
from .notifications import reminders
from .privacy import kept_recipients
from .receipts import ledger, links, listing, minting
from .receipts.display import (
    click_link,
    link_url,
    mail_providers,
    pixel_html,
    pixel_url,
    providers_json,
)
from .security import public_origin
from .storage.engine import MAX_ID, iso, utcnow
from .storage.models import Event, Link, Pixel
from .vocabulary import KINDS, MadeWith, Scope

bp = Blueprint("api", __name__, url_prefix="/api")
# Any origin may call the API (the bearer token is the credential, no cookie is involved). On
# this blueprint only: the pixel and the pages never pay for it.
CORS(bp, origins="*", supports_credentials=False, max_age=86400)

MAX_PER_PAGE = 100


@bp.before_request
def bookmarklet_version():
    """A bookmarklet built for another version of this API is told to be replaced."""
    sent = request.headers.get("X-Openreceipt-Bookmarklet")
    if request.method != "OPTIONS" and sent is not None and sent != str(BOOKMARKLET_VERSION):
        where = f"{public_origin()}/bookmarklet"
        answer = jsonify(
            error=f"this bookmarklet is out of date: make a new one at {where}",
            expected_version=BOOKMARKLET_VERSION,
        )
        abort(make_response(answer, 409))


def token_required(*scopes):
    """The view needs a live token of one of `scopes` (a full-scope token may do anything); the
    token's owner is g.user and its scope g.scope."""
    allowed = {Scope.FULL, *scopes}

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
            token = token_for(secret.strip())
            if token is None:
                raise Unauthorized("this API token is unknown or has been revoked")
            if token.scope not in allowed:
                raise Forbidden(
                    "a bookmarklet's key can only add receipts; "
                    "use an API token from Settings for anything else"
                )
            g.user, g.scope = token.user, token.scope
            return view(*args, **kwargs)

        return wrapper

    return decorator


def pixel_json(pixel, events=None, tracked=None):
    """A receipt as the API gives it; `tracked`: its links, when the caller read them already
    (links.links_of_each), else they are read here."""
    url = pixel_url(pixel)
    body = {
        "id": pixel.public_id,
        "url": url,
        "html": pixel_html(url),
        "label": pixel.label,
        "subject": pixel.subject,
        "recipients": pixel.recipients,
        "state": pixel.state,
        "counts": {kind: getattr(pixel, f"{kind}_count") for kind in ledger.COUNTERS},
        "created_at": iso(pixel.created_at),
        "sent_at": iso(pixel.sent_at),
        "first_open_at": iso(pixel.first_open_at),
        "last_open_at": iso(pixel.last_open_at),
        "last_event_at": iso(pixel.last_event_at),
        "delivered_at": iso(pixel.delivered_at),
        "tracking_stopped_at": iso(pixel.tracking_stopped_at),
        "mail_providers": providers_json(mail_providers(pixel)),
        "reminder": reminder_json(pixel),
        "links": [
            {"destination": link.destination, "url": link_url(link)}
            for link in (links.links_of(pixel) if tracked is None else tracked)
        ],
    }
    if events is not None:
        body["events"] = [event_json(event) for event in events]
    return body


def reminder_json(pixel):
    """The receipt's reminder: after how many days, when it is due, when it was sent."""
    if pixel.remind_after_days is None:
        return None
    return {
        "after_days": pixel.remind_after_days,
        "due_at": iso(pixel.remind_at),
        "reminded_at": iso(pixel.reminded_at),
    }


def event_json(event):
    return {
        "id": event.id,
        "at": iso(event.at),
        "kind": event.kind,
        "source": event.source,
        "reason": event.reason,
        "ip": event.ip,
        "country": event.country,
        "city": event.city,
        "client": event.client,
        "link": click_link(event),
    }


def events_of(pixel):
    """The pixel's events, oldest first, as the API lists them with a receipt (with their
    links)."""
    return (
        Event.select(Event, Link)
        .join(Link, JOIN.LEFT_OUTER)
        .where(Event.pixel == pixel)
        .order_by(Event.at, Event.id)
    )


def own_pixel(public_id):
    pixel = ledger.owned_pixel(g.user, public_id)
    if pixel is None:
        raise NotFound("no such pixel")
    return pixel


@bp.post("/pixels")
@token_required(Scope.BOOKMARKLET)
def create_pixel():
    body = json_object()
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("'force' must be true or false")
    try:
        destinations = links.clean_destinations(body["links"]) if "links" in body else []
        pixel, providers = minting.make_receipt(
            g.user,
            subject=body.get("subject"),
            label=body.get("label"),
            recipients=body.get("recipients"),
            force=force,
            made_with=MadeWith.BOOKMARKLET if g.scope == Scope.BOOKMARKLET else MadeWith.API,
            user_agent=request.headers.get("User-Agent"),
            remote_addr=request.remote_addr,
            **(
                {"remind_after_days": body["remind_after_days"]}
                if "remind_after_days" in body
                else {}
            ),
        )
    except minting.DoNotTrack as refused:
        abort(make_response(jsonify(error=str(refused), do_not_track=refused.listed), 409))
    except minting.TooManyReceipts as refused:
        answer = make_response(jsonify(error=str(refused)), refused.status)
        answer.headers["Retry-After"] = str(refused.retry_after)
        abort(answer)
    except minting.Refused as refused:
        raise BadRequest(str(refused)) from None
    url = pixel_url(pixel)
    answer = {"id": pixel.public_id, "url": url, "html": pixel_html(url)}
    answer["reminder"] = reminder_json(pixel)
    if destinations:
        answer.update(links_json(*links.add_links(pixel, destinations)))
    return jsonify({**answer, "mail_providers": providers_json(providers)}), 201


def links_json(tracked, honeypot):
    """The tracked URLs to put in the message in place of its links, and the hidden one."""
    return {
        "links": [{"destination": link.destination, "url": link_url(link)} for link in tracked],
        "honeypot": link_url(honeypot) if honeypot else None,
    }


@bp.post("/pixels/<public_id>/links")
@token_required(Scope.BOOKMARKLET)
def track_links(public_id):
    """{"links": [URL, ...]}: track these links of the receipt's message (http and https only);
    each answer URL redirects to its destination. A link tracked already keeps its URL."""
    pixel = own_pixel(public_id)
    body = json_object()
    try:
        destinations = links.clean_destinations(body.get("links"))
        tracked, honeypot = links.add_links(pixel, destinations)
    except minting.Refused as refused:
        raise BadRequest(str(refused)) from None
    return jsonify(id=pixel.public_id, **links_json(tracked, honeypot))


@bp.post("/pixels/<public_id>/sent")
@token_required(Scope.BOOKMARKLET)
def mark_sent(public_id):
    """The message was sent (the bookmarklet saw it go): record when, and its final subject and
    recipients if given."""
    pixel = own_pixel(public_id)
    body = json_object()
    changes = {Pixel.sent_at: utcnow()}
    try:
        if "subject" in body:
            changes[Pixel.subject] = minting.clean_text(
                body["subject"], "subject", minting.MAX_SUBJECT
            )
        recipients = minting.clean_recipients(body["recipients"]) if "recipients" in body else None
    except minting.Refused as refused:
        raise BadRequest(str(refused)) from None
    if recipients is not None:
        changes[Pixel.recipients] = kept_recipients(
            recipients, current_app.config["STORE_RECIPIENTS"]
        )
        # A recipient on the do-not-track list (added after the pixel was made, or since): the
        # message went out, so the receipt stops recording instead of being refused. Checked
        # on the addresses sent, whatever is stored of them; "force" as when minting.
        if minting.listed_recipients(g.user, recipients) and body.get("force") is not True:
            changes[Pixel.tracking_stopped_at] = fn.COALESCE(Pixel.tracking_stopped_at, utcnow())
    Pixel.update(changes).where(Pixel.id == pixel.id).execute()
    reminders.sent(pixel.id)
    if recipients is not None:
        minting.note_mail_hosting(pixel, recipients)
    pixel = Pixel.get_by_id(pixel.id)
    if g.scope == Scope.BOOKMARKLET:
        # A bookmarklet's key learns nothing about the receipt but that it was marked sent.
        return jsonify(id=pixel.public_id, sent_at=iso(pixel.sent_at))
    return jsonify(pixel_json(pixel))


@bp.post("/pixels/<public_id>/reminder")
@token_required(Scope.BOOKMARKLET)
def set_reminder(public_id):
    """{"after_days": N}: tell the owner if the message is not opened within N days of being
    sent; {"after_days": null}: no reminder. A reminder already sent cannot be changed (409)."""
    pixel = own_pixel(public_id)
    body = json_object()
    if "after_days" not in body:
        raise BadRequest("give 'after_days': a number of days, or null for no reminder")
    try:
        days = reminders.checked_days(body["after_days"])
    except reminders.BadDays as bad:
        raise BadRequest(f"'after_days': {bad}") from None
    if not reminders.set_days(pixel, days):
        abort(make_response(jsonify(error="the reminder was sent already"), 409))
    if g.scope == Scope.BOOKMARKLET:
        # As with marking it sent, the key learns nothing more of the receipt.
        return jsonify(id=pixel.public_id, after_days=days)
    return jsonify(id=pixel.public_id, reminder=reminder_json(pixel))


@bp.post("/pixels/<public_id>/self-view")
@token_required(Scope.BOOKMARKLET)
def self_view(public_id):
    """The sender's own Gmail tab shows the pixel: its Gmail-proxy fetches around now are theirs."""
    pixel = own_pixel(public_id)
    reclassified = ledger.self_view(pixel)
    return jsonify(id=pixel.public_id, reclassified=reclassified)


@bp.post(f"/events/<int(max={MAX_ID}):event_id>/kind")
@token_required()
def correct_event(event_id):
    """The sender corrects what an event was: {"kind": "self"} (or back to "open")."""
    event = (
        Event.select(Event, Pixel)
        .join(Pixel)
        .where(Event.id == event_id, Pixel.owner == g.user)
        .first()
    )
    if event is None:
        raise NotFound("no such event")
    kind = json_object().get("kind")
    if kind not in KINDS:
        raise BadRequest(f"'kind' must be one of {', '.join(KINDS)}")
    try:
        ledger.correct(event, kind)
    except ledger.WrongKind as wrong:
        raise BadRequest(str(wrong)) from None
    pixel = Pixel.get_by_id(event.pixel_id)
    return jsonify(pixel_json(pixel, events_of(pixel)))


@bp.get("/pixels")
@token_required()
def list_pixels():
    page = int_arg("page", 1, 1, 10**6)
    per_page = int_arg("per_page", 25, 1, MAX_PER_PAGE)
    query = Pixel.select().where(Pixel.owner == g.user)
    pixels = list(query.order_by(Pixel.created_at.desc(), Pixel.id.desc()).paginate(page, per_page))
    tracked = links.links_of_each(pixels)
    return jsonify(
        pixels=[pixel_json(pixel, tracked=tracked.get(pixel.id, [])) for pixel in pixels],
        page=page,
        per_page=per_page,
        total=listing.receipt_count(g.user),
    )


@bp.get("/pixels/<public_id>")
@token_required()
def show_pixel(public_id):
    pixel = own_pixel(public_id)
    return jsonify(pixel_json(pixel, events_of(pixel)))


@bp.delete("/pixels/<public_id>")
@token_required()
def delete_pixel(public_id):
    own_pixel(public_id).delete_instance(recursive=True)
    return "", 204


def json_object():
    """The request body as a dict; an empty body counts as {}."""
    if not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def int_arg(name, default, low, high):
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or not low <= int(raw) <= high:
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}")
    return int(raw)
