"""The bookmarklet's page: make one, name, rename and revoke them, or make a receipt by hand when
the bookmarklet cannot run."""

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for

from ..accounts import AccountError, new_token, rename_token, revoke_token, token_name
from ..bookmarklet import bookmarklet_token_name, build_bookmarklet
from ..judgement.clients import printable
from ..receipts import minting
from ..receipts.display import pixel_html, pixel_url, providers_json
from ..security import public_origin
from ..storage.engine import MAX_ID
from ..storage.models import ApiToken
from ..vocabulary import MadeWith, Scope
from .signin import login_required

bp = Blueprint("install", __name__)


def default_name():
    """A new bookmarklet's name, after the browser and system this request comes from and the
    minute: "Firefox on Linux, 30 Nov 14:05 UTC"."""
    parser = current_app.extensions["openreceipt"].judge.parser
    found = parser.parse(request.headers.get("User-Agent", "")[:512])

    def named(part):
        family = part.family if part else None
        return printable(family)[:40] if family and family != "Other" else None

    return bookmarklet_token_name(named(found.user_agent), named(found.os))


def page(status=200, **context):
    tokens = (
        ApiToken.select()
        .where(ApiToken.user == g.user, ApiToken.scope == Scope.BOOKMARKLET)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    context.setdefault("default_name", default_name())
    return render_template(
        "bookmarklet.html", tokens=tokens, origin=public_origin(), **context
    ), status


@bp.get("/bookmarklet")
@login_required
def show():
    return page()


@bp.post("/bookmarklet")
@login_required
def create():
    name = token_name(request.form.get("name", "")) or default_name()
    row, secret = new_token(g.user, name, Scope.BOOKMARKLET)
    return page(bookmarklet=build_bookmarklet(public_origin(), secret), created=row)


@bp.post(f"/bookmarklet/tokens/<int(max={MAX_ID}):token_id>/rename")
@login_required
def rename(token_id):
    try:
        renamed = rename_token(token_id, g.user, request.form.get("name", ""))
    except AccountError as error:
        flash(f"Not renamed: {error}.")
    else:
        flash("Renamed." if renamed else "No such bookmarklet.")
    return redirect(url_for("install.show") + "#yours")


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
    """A receipt made by hand, through the same checks as the API's."""
    form = request.form
    try:
        pixel, providers = minting.make_receipt(
            g.user,
            subject=form.get("subject"),
            label=None,
            recipients=minting.split_addresses(form.get("recipients", "")),
            made_with=MadeWith.FORM,
            user_agent=request.headers.get("User-Agent"),
            remote_addr=request.remote_addr,
        )
    except minting.Refused as refused:
        status = refused.status if isinstance(refused, minting.TooManyReceipts) else 422
        return page(status, manual_error=str(refused), manual_form=form)
    url = pixel_url(pixel)
    return page(
        manual=pixel,
        manual_url=url,
        manual_html=pixel_html(url),
        providers=providers_json(providers),
    )
