"""Settings: API tokens, the password, notifications, the do-not-track list, and downloading
one's data.

A little over 300 lines, in one file on purpose: one page, whose forms all answer with it."""

import datetime
import json
import secrets

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)

from ..accounts import SCOPES, AccountError, authenticate, new_token, normalise_email, set_password
from ..notifications import delivery, outbound, outbox, reminders
from ..receipts import donottrack, export
from ..storage.engine import MAX_ID, locked, utcnow, write_transaction
from ..storage.models import ApiToken, DoNotTrack, NotifyChannel, Setting, User
from ..vocabulary import ChannelKind, Opens
from .signin import end_sessions, login_required, start_session

MAX_CHANNELS = 10
MAX_QUIET_MINUTES = 24 * 60
FAILURES_SHOWN = 10
# The messages of these sections are shown in their section, where the page jumps to, rather
# than at the top of a long page (flash categories).
NOTIFICATIONS, DO_NOT_TRACK = "notifications", "do-not-track"
# + a channel's id: the name of the Setting row that keeps when its last test went, and how.
TESTED = "channel-test:"

bp = Blueprint("settings", __name__)


def page(**context):
    """The settings page. A form sent back with a mistake comes with `<form>_error` (what is
    wrong, shown in that form) and `<form>_form` (what was typed, kept in its fields): the
    page itself, not a redirect that would lose them."""
    tokens = ApiToken.select().where(ApiToken.user == g.user).order_by(ApiToken.id.desc())
    channels = outbox.channel_tallies(g.user)
    return render_template(
        "settings.html",
        tokens=tokens,
        scopes=SCOPES,
        own_entries=donottrack.listed(g.user),
        server_entries=donottrack.listed(None),
        channels=channels,
        tested=last_tests(channel for channel, _ in channels),
        failures=outbox.given_up(g.user, FAILURES_SHOWN),
        email_ready=current_app.config["SMTP"] is not None,
        inline_flashes=(NOTIFICATIONS, DO_NOT_TRACK),
        **context,
    )


@bp.get("/settings")
@login_required
def show():
    return page()


@bp.post("/settings/tokens")
@login_required
def create_token():
    row, secret = new_token(g.user, request.form.get("name", ""))
    return page(new_token=secret, new_token_name=row.name)


@bp.post("/settings/password")
@login_required
def change_password():
    current = request.form.get("current", "")
    password = request.form.get("password", "")
    if authenticate(g.user.email, current) is None:
        flash("The current password is wrong; nothing was changed.")
    elif password != request.form.get("confirm", ""):
        flash("The two new passwords differ; nothing was changed.")
    else:
        try:
            set_password(g.user, password)
        except AccountError as error:
            flash(f"The new password: {error}; nothing was changed.")
        else:
            # Whoever knew the old password may be signed in somewhere: end every session, then
            # sign this browser in again in a new one.
            end_sessions(g.user)
            start_session(g.user)
            flash(
                "Password changed. Every other browser signed in to your account is signed out; "
                "this one stays signed in."
            )
    return redirect(url_for("settings.show"))


def to_notifications(message):
    flash(message, NOTIFICATIONS)
    return redirect(url_for("settings.show") + "#notifications")


def typed(*names):
    """What was typed into a form's fields (to show it again with what is wrong with it)."""
    return {name: request.form.get(name, "")[:4000] for name in names}


@bp.post("/settings/notify")
@login_required
def notify_choices():
    opens = request.form.get("opens", "")
    quiet = request.form.get("quiet", "").strip()
    delivered = request.form.get("delivered") == "on"
    problem = remind = None
    if opens not in tuple(Opens):
        problem = "Choose when to be told of opens: the first one, every one, or never."
    elif not quiet.isdigit() or int(quiet) > MAX_QUIET_MINUTES:
        problem = f"The quiet period is a number of minutes from 0 to {MAX_QUIET_MINUTES}."
    else:
        try:
            remind = reminders.days_from_form(request.form.get("remind", ""))
        except reminders.BadDays:
            problem = (
                f"The reminder is a number of days from 1 to {reminders.MAX_DAYS}, or empty "
                "for none."
            )
    if problem:
        form = {**typed("opens", "quiet", "remind"), "delivered": delivered}
        return page(notify_error=problem, notify_form=form)
    User.update(
        notify_opens=opens,
        notify_delivered=delivered,
        notify_quiet_minutes=int(quiet),
        remind_after_days=remind,
    ).where(User.id == g.user.id).execute()
    return to_notifications("Notification choices saved.")


def channel_target(kind, target):
    """The channel's target checked and tidied; raises ValueError saying what is wrong."""
    target = target.strip()
    if any(not c.isprintable() for c in target):
        # NUL above all: PostgreSQL refuses to store it, and the page would fail.
        raise ValueError("the address may not contain control characters")
    if kind == ChannelKind.EMAIL:
        # Only to the account's own address: the operator's mail server must not become a way
        # to send mail (with a subject of one's choosing) to anybody.
        try:
            address = normalise_email(target or g.user.email)
        except AccountError as error:
            raise ValueError(str(error)) from None
        if address != g.user.email:
            raise ValueError(f"email notices go to your own address, {g.user.email}")
        return address
    example = "https://ntfy.sh/a-long-secret-topic" if kind == ChannelKind.PUSH else "https://..."
    problem = outbound.url_problem(target, example)
    if problem:
        raise ValueError(problem)
    why_not = outbound.refusal_of(target, current_app.config["NOTIFY_ALLOW"])
    if why_not:
        raise ValueError(f"not allowed: {why_not} (notices go to public addresses only)")
    return outbound.tidy_url(target)


def push_token(text):
    """The push server's access token, or None; raises ValueError. It goes into a header."""
    token = text.strip()
    if len(token) > 200 or any(not "!" <= c <= "~" for c in token):
        raise ValueError("the access token is up to 200 letters, digits and signs, no spaces")
    return token or None


def same_receiver(kind, saved):
    """A saved channel's target in the form a new one is compared in: a URL in its one
    spelling (outbound.tidy_url), which channels saved before it was tidied that far may lack."""
    if kind == ChannelKind.EMAIL:
        return saved
    try:
        return outbound.tidy_url(saved)
    except ValueError:
        return saved


def create_channel(user, kind, target, secret):
    """Add the channel (its target checked and tidied), unless the user has one to the same
    receiver already or has MAX_CHANNELS; returns None, or why not. Two forms sent at the same
    moment must not both pass the checks: the user's row is locked first, which holds the
    second one's transaction until the first is done."""
    with write_transaction():
        locked(User.select(User.id).where(User.id == user.id)).first()
        theirs = NotifyChannel.select().where(NotifyChannel.user == user)
        for channel in theirs.where(NotifyChannel.kind == kind):
            if same_receiver(kind, channel.target) == target:
                return f"you have {kind} notices to {channel.target} already"
        if theirs.count() >= MAX_CHANNELS:
            return f"you have {MAX_CHANNELS} channels already; remove one first"
        NotifyChannel.create(user=user, kind=kind, target=target, secret=secret)
    return None


@bp.post("/settings/channels")
@login_required
def add_channel():
    kind = request.form.get("kind", "")
    if kind not in tuple(ChannelKind):
        abort(400)
    problem = None
    if kind == ChannelKind.EMAIL and current_app.config["SMTP"] is None:
        problem = "Email notices need the operator to set OPENRECEIPT_SMTP_URL; nothing was added."
    else:
        try:
            target = channel_target(kind, request.form.get("target", ""))
            token = request.form.get("token", "")
            secret = push_token(token) if kind == ChannelKind.PUSH else None
        except ValueError as error:
            problem = f"Nothing was added: {error}."
        else:
            if kind == ChannelKind.WEBHOOK:
                secret = "whsec_" + secrets.token_urlsafe(24)
            refused = create_channel(g.user, kind, target, secret)
            problem = f"Nothing was added: {refused}." if refused else None
    if problem:
        # The kind and the address come back in the form; an access token is typed again.
        return page(channel_error=problem, channel_form=typed("kind", "target"))
    return to_notifications(
        f"Added: {kind} notices to {target}. Send a test notification to check it."
    )


def own_channel_or_404(channel_id):
    channel = NotifyChannel.get_or_none(
        NotifyChannel.id == channel_id, NotifyChannel.user == g.user
    )
    if channel is None:
        abort(404)
    return channel


@bp.post(f"/settings/channels/<int(max={MAX_ID}):channel_id>/test")
@login_required
def test_channel(channel_id):
    """Send a test notice at once and say how it went: in the notifications section, and on
    the channel's row from then on."""
    channel = own_channel_or_404(channel_id)
    if not delivery.take_test_turn(g.user):
        seconds = int(delivery.TEST_EVERY.total_seconds())
        return to_notifications(
            f"One test notification every {seconds} seconds: wait a moment, then try again."
        )
    problem = delivery.send_test(channel, current_app.config)
    remember_test(channel, problem)
    if problem:
        return to_notifications(f"The test notification to {channel.target} failed: {problem}")
    return to_notifications(f"A test notification went to {channel.target}.")


def remember_test(channel, problem):
    """Keep when the channel's last test went, and what went wrong (None: nothing)."""
    value = json.dumps({"at": utcnow().isoformat(timespec="seconds"), "problem": problem})
    Setting.insert(name=f"{TESTED}{channel.id}", value=value).on_conflict(
        conflict_target=[Setting.name], update={Setting.value: value}
    ).execute()


def last_tests(channels):
    """{channel id: {"at": when, "problem": None or what went wrong}} of the channels' last
    tests, in one query."""
    names = [f"{TESTED}{channel.id}" for channel in channels]
    if not names:
        return {}
    tests = {}
    for row in Setting.select().where(Setting.name.in_(names)):
        try:
            test = json.loads(row.value)
            at = datetime.datetime.fromisoformat(test["at"])
        except (ValueError, KeyError, TypeError):
            continue
        tests[int(row.name.removeprefix(TESTED))] = {"at": at, "problem": test.get("problem")}
    return tests


@bp.post(f"/settings/channels/<int(max={MAX_ID}):channel_id>/delete")
@login_required
def remove_channel(channel_id):
    channel = own_channel_or_404(channel_id)
    with write_transaction():
        channel.delete_instance(recursive=True)
        Setting.delete().where(Setting.name == f"{TESTED}{channel.id}").execute()
    return to_notifications(f"Removed: {channel.kind} notices to {channel.target}.")


@bp.post("/settings/dnt")
@login_required
def add_do_not_track():
    """Add entries (one per line, or separated by commas or spaces)."""
    texts = request.form.get("entries", "").replace(",", " ").split()
    if not texts:
        return page(dnt_error="Write an address, a domain or a top-level domain to add.")
    try:
        added, stopped = donottrack.add(g.user, texts)
    except donottrack.EntryError as error:
        return page(dnt_error=f"Nothing was added: {error}.", dnt_form=typed("entries"))
    stopped_note = f" {stopped} receipts stopped recording." if stopped else ""
    flash(f"Added {', '.join(added) or 'nothing new'}.{stopped_note}", DO_NOT_TRACK)
    return redirect(url_for("settings.show") + "#do-not-track")


@bp.post(f"/settings/dnt/<int(max={MAX_ID}):entry_id>/delete")
@login_required
def remove_do_not_track(entry_id):
    deleted = (
        DoNotTrack.delete().where(DoNotTrack.id == entry_id, DoNotTrack.user == g.user).execute()
    )
    flash(
        "Removed from the do-not-track list." if deleted else "That entry was not on your list.",
        DO_NOT_TRACK,
    )
    return redirect(url_for("settings.show") + "#do-not-track")


@bp.get("/settings/export.<any(json, csv):form>")
@login_required
def download(form):
    """All of the user's data as a file to keep."""
    body = export.as_json(g.user) if form == "json" else export.as_csv(g.user)
    mimetype = "application/json" if form == "json" else "text/csv"
    return Response(
        body,
        mimetype=mimetype,
        headers={
            "Content-Disposition": f'attachment; filename="openreceipt-export.{form}"',
            "Cache-Control": "no-store",
        },
    )
