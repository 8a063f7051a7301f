"""The bookmarklet's install page: make one, see and revoke the old ones, or make a pixel by
hand when the bookmarklet cannot run."""

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for

from . import receipts
from .accounts import new_token, revoke_token
from .api import pixel_html, pixel_url
from .auth import login_required
from .bookmarklet import bookmarklet_token_name, build_bookmarklet
from .models import MAX_ID, ApiToken

bp = Blueprint("install", __name__)


def origin():
    return current_app.config["PUBLIC_URL"] or request.host_url.rstrip("/")


def page(**context):
    tokens = (
        ApiToken.select()
        .where(ApiToken.user == g.user, ApiToken.name.startswith("bookmarklet"))
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return render_template("bookmarklet.html", tokens=tokens, origin=origin(), **context)


@bp.get("/bookmarklet")
@login_required
def show():
    return page()


@bp.post("/bookmarklet")
@login_required
def create():
    row, secret = new_token(g.user, bookmarklet_token_name())
    return page(bookmarklet=build_bookmarklet(origin(), secret), created=row)


@bp.post(f"/bookmarklet/tokens/<int(max={MAX_ID}):token_id>/revoke")
@login_required
def revoke(token_id):
    if revoke_token(token_id, user=g.user):
        flash("Revoked: that key can no longer add receipts.")
    else:
        flash("No such bookmarklet.")
    back = "settings.show" if request.form.get("back") == "settings" else "install.show"
    return redirect(url_for(back))


@bp.post("/bookmarklet/pixel")
@login_required
def manual_pixel():
    subject = request.form.get("subject", "").strip()[:998] or None
    recipients = [
        address.strip().lower()
        for address in request.form.get("recipients", "").replace(";", ",").split(",")
        if "@" in address
    ][:100]
    pixel = receipts.mint(g.user, subject=subject, recipients=recipients)
    url = pixel_url(pixel)
    return page(manual_url=url, manual_html=pixel_html(url))
