"""Settings: API tokens and the password."""

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from .accounts import AccountError, authenticate, new_token, set_password
from .auth import login_required
from .models import ApiToken

bp = Blueprint("settings", __name__)


def page(**context):
    tokens = ApiToken.select().where(ApiToken.user == g.user).order_by(ApiToken.id.desc())
    return render_template("settings.html", tokens=tokens, **context)


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
