"""The status pages: every receipt at a glance, one receipt's story, and their live updates.

A little over 300 lines, in one file on purpose: the list, the detail page and their live JSON
show the same rows in the same words, and are read and changed together."""

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for
from peewee import JOIN, SqliteDatabase
from werkzeug.exceptions import BadRequest

from ..notifications import reminders
from ..receipts import ledger, links, listing, minting
from ..receipts.display import (
    HIDDEN_LINK,
    SENT,
    STATUSES,
    click_link,
    link_url,
    mail_providers,
    network,
    pixel_html,
    pixel_url,
    providers_json,
    source_name,
    status_of,
)
from ..storage.engine import MAX_ID, db, utcnow
from ..storage.models import Event, Link, Pixel
from ..vocabulary import KIND_LABELS, KINDS, Kind, MadeWith, State
from .privacy_notice import render_notice
from .signin import login_required
from .timeline_chart import BUCKET, draw, scale_of

bp = Blueprint("pages", __name__)

DETAIL_EVENTS = 50  # fetches a page of the detail table; older ones are a link away
TIMELINE_EVENTS = 5000  # the picture shows a busy receipt's latest 5000 fetches

# Each status (display.STATUSES) as (its mark, its word, a sentence). The list's filter, the
# marks and the live pages all say it in these words.
MARKS = {
    State.WAITING: ("○", "waiting", "No mail server or reader has fetched the receipt yet."),
    State.INSERTED: (
        "◔",
        "in the message",
        "Only you have seen it so far, in your draft or your own mail: the receipt is in the "
        "message.",
    ),
    SENT: (
        "◑",
        "sent",
        "Sent, not yet delivered: no recipient's mail server or mail program has fetched the "
        "receipt yet.",
    ),
    State.DELIVERED: (
        "✓",
        "delivered",
        "A mail server fetched it on delivery; nobody has opened it yet.",
    ),
    State.OPENED: ("✓✓", "opened", "Someone opened the message."),
}
KIND_EXPLANATIONS = {
    Kind.OPEN: "A person most likely opened the message.",
    Kind.CLICK: "A person followed one of the message's tracked links.",
    Kind.PREFETCH: "A machine fetched it on delivery: proof of delivery, not of reading.",
    Kind.PREVIEW: "Your own browser showed it while you were writing.",
    Kind.SELF: "You, looking at your own sent message.",
    Kind.BOT: "Automated and meaningless: a crawler, a link checker, a script.",
    Kind.UNKNOWN: "An unrecognised program fetched it: nobody can vouch it was a person, so it is "
    "not counted as an open.",
}

# What the sender can say of an event of each kind, as (the kind it becomes, the button).
CORRECTIONS = {
    Kind.OPEN: ((Kind.SELF, "That was me"), (Kind.BOT, "A machine")),
    Kind.CLICK: ((Kind.SELF, "That was me"), (Kind.BOT, "A machine")),
    Kind.SELF: ((Kind.OPEN, "Not me"),),
    Kind.UNKNOWN: ((Kind.OPEN, "A reader"), (Kind.SELF, "That was me"), (Kind.BOT, "A machine")),
    Kind.BOT: ((Kind.OPEN, "Not a machine"),),
}
CORRECTED = {
    Kind.SELF: "Marked as you.",
    Kind.BOT: "Marked as a machine.",
    Kind.OPEN: "Counted as open.",
    Kind.CLICK: "Counted as a click.",
}


def corrections(event):
    """What the sender can say of this event: for a tracked link's request, a person's is a
    click, never an open."""
    offered = CORRECTIONS.get(event.kind, ())
    if event.link_id is None:
        return offered
    return tuple((Kind.CLICK if kind == Kind.OPEN else kind, label) for kind, label in offered)


def ago(moment, now=None):
    """ "3 min ago", for a UTC moment."""
    if moment is None:
        return ""
    seconds = max(((now or utcnow()) - moment).total_seconds(), 0)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''} ago"
    return "just now"


@bp.app_template_filter("ago")
def ago_filter(moment):
    return ago(moment)


@bp.app_template_filter("utc")
def utc_filter(moment):
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else ""


@bp.app_context_processor
def vocabulary():
    return {
        "marks": MARKS,
        "explanations": KIND_EXPLANATIONS,
        "statuses": STATUSES,
        "kinds": KINDS,
        "kind_labels": KIND_LABELS,
        "corrections": corrections,
        "link_shown": link_shown,
        "source_name": source_name,
        "network": network,
    }


def titles(pixel):
    """The receipt's title and the line beneath it: its label and its subject, when it has
    both; else whichever it has, and nothing beneath."""
    subject = pixel.subject or ""
    if pixel.label:
        return pixel.label, subject if subject.strip() != pixel.label.strip() else ""
    return subject or "(no subject)", ""


def list_arguments():
    q = request.args.get("q", "").strip()[:200]
    if "\x00" in q:
        # Nothing stored holds one: PostgreSQL text cannot, and it refuses to search for one.
        raise BadRequest("A search cannot contain a NUL character.")
    state = request.args.get("state", "")
    state = state if state in STATUSES else ""
    page = request.args.get("page", "1")
    page = int(page) if page.isascii() and page.isdigit() and 0 < int(page) < 10**6 else 1
    return q, state, page


def row_json(pixel, last_open):
    status = status_of(pixel)
    symbol, word, _ = MARKS[status]
    title, subtitle = titles(pixel)
    return {
        "id": pixel.public_id,
        "href": url_for("pages.detail", public_id=pixel.public_id),
        "title": title,
        "subtitle": subtitle,
        "recipients": ", ".join(pixel.recipients),
        "created": f"{pixel.created_at:%Y-%m-%d %H:%M}",
        "sent": f"{pixel.sent_at:%Y-%m-%d %H:%M}" if pixel.sent_at else "",
        "state": pixel.state,
        "status": status,
        "mark": f"{symbol} {word}",
        "opens": pixel.open_count,
        "last_open": ago(pixel.last_open_at),
        "last_open_exact": utc_filter(pixel.last_open_at),
        "place": place(last_open),
        "client": last_open.client if last_open and last_open.client else "",
    }


def place(event):
    return event.place if event is not None else ""


@bp.get("/")
def index():
    if g.user is None:
        return render_notice()  # the page a recipient finds on the pixel's domain
    q, state, page = list_arguments()
    pixels, opens, total = listing.receipts_page(g.user, q, state, page)
    rows = [row_json(pixel, opens.get(pixel.id)) for pixel in pixels]
    pages = max((total + listing.PER_PAGE - 1) // listing.PER_PAGE, 1)
    return render_template(
        "index.html", rows=rows, q=q, state=state, page=page, pages=pages, total=total
    )


@bp.get("/live/receipts")
@login_required
def live_receipts():
    """The list page's rows as JSON, for its polling script; 304 when nothing changed."""
    q, state, page = list_arguments()
    pixels, opens, total = listing.receipts_page(g.user, q, state, page)
    rows = [row_json(pixel, opens.get(pixel.id)) for pixel in pixels]
    response = jsonify(rows=rows, total=total)
    response.add_etag()
    return response.make_conditional(request)


def own_pixel_or_404(public_id):
    pixel = ledger.owned_pixel(g.user, public_id)
    if pixel is None:
        abort(404)
    return pixel


def events_page(pixel, before=None):
    """Up to DETAIL_EVENTS of the pixel's events, oldest first, that come before the event
    `before` (an event id; None: the latest), and the id to ask for the page before them."""
    query = Event.select(Event, Link).join(Link, JOIN.LEFT_OUTER).where(Event.pixel == pixel)
    if before is not None:
        if not 0 < before <= MAX_ID:
            abort(404)
        cursor = Event.get_or_none(Event.id == before, Event.pixel == pixel)
        if cursor is None:
            abort(404)
        query = query.where(
            (Event.at < cursor.at) | ((Event.at == cursor.at) & (Event.id < cursor.id))
        )
    events = list(query.order_by(Event.at.desc(), Event.id.desc()).limit(DETAIL_EVENTS + 1))
    older = events[DETAIL_EVENTS - 1].id if len(events) > DETAIL_EVENTS else None
    return events[:DETAIL_EVENTS][::-1], older


def timeline(pixel):
    """The picture of the pixel's latest TIMELINE_EVENTS events. The database groups them into
    the picture's marks (timeline_chart.py's buckets), so a busy receipt sends a few hundred rows to
    Python rather than thousands."""
    start, now = pixel.created_at, utcnow()
    end = max(now, pixel.last_event_at or now)
    scale = scale_of(start, end)
    database = db.obj
    p = database.param
    if isinstance(database, SqliteDatabase):
        bucket = f"CAST((julianday(at) - julianday({p})) * 86400.0 * {p} / {BUCKET} AS INTEGER)"
        since = start.isoformat(" ")
    else:
        bucket = f"FLOOR(EXTRACT(EPOCH FROM (at - {p})) * {p} / {BUCKET})"
        since = start
    rows = database.execute_sql(
        f"SELECT kind, {bucket} AS mark, MIN(at), MAX(at), COUNT(*) FROM "
        f"(SELECT at, kind FROM event WHERE pixel_id = {p} ORDER BY at DESC LIMIT {p}) latest "
        "GROUP BY kind, mark ORDER BY MIN(at)",
        (since, scale, pixel.id, TIMELINE_EVENTS),
    ).fetchall()
    parse = Event.at.python_value
    marks = [(kind, parse(first), parse(last), count) for kind, _, first, last, count in rows]
    return draw(start, end, marks, sum(mark[3] for mark in marks))


@bp.get("/m/<public_id>")
@login_required
def detail(public_id):
    pixel = own_pixel_or_404(public_id)
    before = request.args.get("before", type=int)
    events, older = events_page(pixel, before)
    url = pixel_url(pixel)
    status = status_of(pixel)
    return render_template(
        "detail.html",
        pixel=pixel,
        titles=titles(pixel),
        events=events,
        status=status,
        mark=MARKS[status],
        timeline=timeline(pixel),
        url=url,
        html=pixel_html(url),
        older=older,
        latest=before is None,
        providers=providers_json(mail_providers(pixel)),
        by_hand=pixel.made_with == MadeWith.FORM,
        links=[(link.destination, link_url(link)) for link in links.links_of(pixel)],
    )


@bp.post("/m/<public_id>/links")
@login_required
def track_link(public_id):
    """Turn an address into a tracked one to paste into the message (a receipt made by hand
    has no bookmarklet to do it)."""
    pixel = own_pixel_or_404(public_id)
    try:
        destinations = links.clean_destinations([request.form.get("link", "")[:4000]])
        [link], _ = links.add_links(pixel, destinations)
    except minting.Refused as refused:
        flash(f"Not tracked: {refused}.")
    else:
        flash(f"Tracked: paste {link_url(link)} into your message instead of the link.")
    return redirect(url_for("pages.detail", public_id=public_id) + "#links")


@bp.get("/live/m/<public_id>")
@login_required
def live_detail(public_id):
    """The detail page's changing parts as JSON (counts, state, latest events, the SVG)."""
    pixel = own_pixel_or_404(public_id)
    events, older = events_page(pixel)
    status = status_of(pixel)
    symbol, word, sentence = MARKS[status]
    response = jsonify(
        state=pixel.state,
        status=status,
        mark=f"{symbol} {word}",
        explanation=sentence,
        counts={kind: getattr(pixel, f"{kind}_count") for kind in KINDS},
        events=[event_row(event) for event in events],
        older=older,
        timeline=str(timeline(pixel)),
        title=titles(pixel)[0],
    )
    response.add_etag()
    return response.make_conditional(request)


def link_shown(event):
    """A click's link as the page shows it ("" for a fetch of the pixel)."""
    link = click_link(event)
    return "the hidden link" if link == HIDDEN_LINK else link or ""


def event_row(event):
    return {
        "id": event.id,
        "at": utc_filter(event.at),
        "kind": event.kind,
        "label": KIND_LABELS[event.kind],
        "explanation": KIND_EXPLANATIONS[event.kind],
        "corrections": corrections(event),
        "link": link_shown(event),
        "source": event.source,
        "source_name": source_name(event.source, event.kind, event.reason),
        "reason": event.reason,
        "ip": event.ip or "",
        "network": network(event.ip),
        "place": place(event),
        "client": event.client or "",
    }


@bp.post(f"/m/<public_id>/events/<int(max={MAX_ID}):event_id>/kind")
@login_required
def correct(public_id, event_id):
    pixel = own_pixel_or_404(public_id)
    event = Event.get_or_none(Event.id == event_id, Event.pixel == pixel)
    kind = request.form.get("kind")
    if event is None or kind not in KINDS:
        abort(404 if event is None else 400)
    try:
        ledger.correct(event, kind)
    except ledger.WrongKind:
        abort(400)
    flash(CORRECTED.get(kind, f"Counted as {kind}."))
    return redirect(url_for("pages.detail", public_id=public_id) + f"#event-{event_id}")


@bp.post("/m/<public_id>/sent")
@login_required
def mark_sent(public_id):
    """The sender says the message went out now (a receipt made by hand cannot see it go)."""
    pixel = own_pixel_or_404(public_id)
    marked = (
        Pixel.update(sent_at=utcnow())
        .where(Pixel.id == pixel.id, Pixel.sent_at.is_null())
        .execute()
    )
    if marked:
        reminders.sent(pixel.id)
    flash("Marked as sent now." if marked else "It was marked as sent already.")
    return redirect(url_for("pages.detail", public_id=public_id))


@bp.post("/m/<public_id>/reminder")
@login_required
def set_reminder(public_id):
    """Remind me if it is not opened within N days (an empty field: no reminder)."""
    pixel = own_pixel_or_404(public_id)
    try:
        days = reminders.days_from_form(request.form.get("days", ""))
    except reminders.BadDays as bad:
        flash(f"Not changed: {bad}.")
        return redirect(url_for("pages.detail", public_id=public_id) + "#reminder")
    if not reminders.set_days(pixel, days):
        flash("The reminder was sent already.")
    elif days:
        flash(f"You will be told if it is not opened within {days} day{'s' if days != 1 else ''}.")
    else:
        flash("No reminder for this message.")
    return redirect(url_for("pages.detail", public_id=public_id) + "#reminder")


@bp.post("/m/<public_id>/delete")
@login_required
def delete(public_id):
    pixel = own_pixel_or_404(public_id)
    title = pixel.label or pixel.subject or "the receipt"
    pixel.delete_instance(recursive=True)
    flash(f"Deleted {title}.")
    return redirect(url_for("pages.index"))
