"""Settings: API tokens, the password, the do-not-track list, and downloading one's data."""

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for

from . import donottrack, export
from .accounts import AccountError, authenticate, new_token, set_password
from .auth import login_required
from .models import MAX_ID, ApiToken, DoNotTrack

bp = Blueprint("settings", __name__)


def page(**context):
    tokens = ApiToken.select().where(ApiToken.user == g.user).order_by(ApiToken.id.desc())
    return render_template(
        "settings.html",
        tokens=tokens,
        own_entries=donottrack.listed(g.user),
        server_entries=donottrack.listed(None),
        **context,
    )


@bp.get("/settings")
@login_required
def show():
    return page()


@bp.post("/settings/tokens")
@login_required
def create_token():
    name = request.form.get("name", "").strip()[:100] or "API token"
    _, secret = new_token(g.user, name)
    return page(new_token=secret, new_token_name=name)


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
            flash("Password changed.")
    return redirect(url_for("settings.show"))


@bp.post("/settings/dnt")
@login_required
def add_do_not_track():
    """Add entries (one per line, or separated by commas or spaces)."""
    texts = request.form.get("entries", "").replace(",", " ").split()
    if not texts:
        flash("Write an address, a domain or a top-level domain to add.")
        return redirect(url_for("settings.show") + "#do-not-track")
    try:
        added, stopped = donottrack.add(g.user, texts)
    except donottrack.EntryError as error:
        flash(f"Nothing was added: {error}.")
    else:
        stopped_note = f" {stopped} receipts stopped recording." if stopped else ""
        flash(f"Added {', '.join(added) or 'nothing new'}.{stopped_note}")
    return redirect(url_for("settings.show") + "#do-not-track")


@bp.post(f"/settings/dnt/<int(max={MAX_ID}):entry_id>/delete")
@login_required
def remove_do_not_track(entry_id):
    deleted = (
        DoNotTrack.delete().where(DoNotTrack.id == entry_id, DoNotTrack.user == g.user).execute()
    )
    flash("Removed from the do-not-track list." if deleted else "That entry was not on your list.")
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
