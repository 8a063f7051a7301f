"""Signing in and out, and the first-run setup link."""

import datetime
import functools
import hashlib
import secrets

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadSignature, Signer

from .accounts import AccountError, authenticate, create_user
from .models import LoginFailure, Setting, User, db, utcnow
from .privacy import anonymize

bp = Blueprint("auth", __name__)

SETUP_SETTING = "setup_nonce"
SETUP_SALT = "openreceipt.setup"


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if g.user is None:
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)

    return wrapper


@bp.before_app_request
def load_user():
    # Only pages read the login cookie; the pixel and the API never touch the session.
    g.user = None
    if request.blueprint in ("pixel", "api") or request.endpoint == "static":
        return
    user_id = session.get("user_id")
    if user_id is not None:
        g.user = User.get_or_none(User.id == user_id)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        email = request.form.get("email", "")
        keys = failure_keys(email)
        if too_many_failures(keys):
            flash("Too many failed sign-ins. Wait a quarter of an hour, then try again.")
            return render_template("login.html"), 429
        user = authenticate(email, request.form.get("password"))
        if user is not None:
            LoginFailure.delete().where(LoginFailure.key == keys[0]).execute()
            session.clear()
            session["user_id"] = user.id
            return redirect(safe_next(request.args.get("next")))
        note_failure(keys)
        flash("Wrong email or password.")
    return render_template("login.html")


# Ten wrong passwords in a quarter of an hour, for one account or from one network, and
# sign-ins wait. Counted in the database, so every worker and host sees the same numbers.
FAILURE_LIMIT = 10
FAILURE_WINDOW = datetime.timedelta(minutes=15)


def failure_keys(email):
    """Hashed keys for the account and the (masked) network a sign-in comes from."""
    network = anonymize(request.remote_addr) or "unknown"
    return [
        hashlib.sha256(f"email:{email.strip().lower()}".encode()).hexdigest(),
        hashlib.sha256(f"network:{network}".encode()).hexdigest(),
    ]


def too_many_failures(keys):
    since = utcnow() - FAILURE_WINDOW
    return any(
        LoginFailure.select().where(LoginFailure.key == key, LoginFailure.at >= since).count()
        >= FAILURE_LIMIT
        for key in keys
    )


def note_failure(keys):
    now = utcnow()
    with db.atomic():
        LoginFailure.delete().where(LoginFailure.at < now - FAILURE_WINDOW).execute()
        LoginFailure.insert_many([{"key": key, "at": now} for key in keys]).execute()


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    if request.method == "POST":
        session.clear()
        return redirect(url_for("auth.login"))
    return render_template("logout.html")


def safe_next(target):
    # Only paths on this server: never send a user on to another site after signing in.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("pages.index")


def setup_signer():
    return Signer(current_app.config["SECRET_KEY"], salt=SETUP_SALT)


def setup_link(app, base_url):
    """The one-time first-run link while no user exists, else None.

    The nonce lives in the database so every worker and host prints the same link, and deleting
    it when the first account is made kills the link."""
    with app.app_context(), db.connection_context():
        if User.select().exists():
            Setting.delete().where(Setting.name == SETUP_SETTING).execute()
            return None
        Setting.insert(
            name=SETUP_SETTING, value=secrets.token_urlsafe(24)
        ).on_conflict_ignore().execute()
        nonce = Setting.get(Setting.name == SETUP_SETTING).value
        token = Signer(app.config["SECRET_KEY"], salt=SETUP_SALT).sign(nonce).decode()
        return f"{base_url}/setup/{token}"


def setup_nonce_valid(token):
    try:
        nonce = setup_signer().unsign(token).decode()
    except (BadSignature, UnicodeError):
        return False
    return Setting.select().where(Setting.name == SETUP_SETTING, Setting.value == nonce).exists()


@bp.route("/setup/<token>", methods=["GET", "POST"])
def setup(token):
    if User.select().exists() or not setup_nonce_valid(token):
        return render_template("setup_used.html"), 404
    if request.method == "POST":
        password = request.form.get("password", "")
        if password != request.form.get("confirm", ""):
            flash("The two passwords differ.")
        else:
            try:
                with db.atomic():
                    # Deleting the nonce first means two racing submissions make one account.
                    if Setting.delete().where(Setting.name == SETUP_SETTING).execute() == 0:
                        return render_template("setup_used.html"), 404
                    user = create_user(request.form.get("email"), password)
            except AccountError as error:
                flash(f"{str(error)[0].upper()}{str(error)[1:]}.")
            else:
                session.clear()
                session["user_id"] = user.id
                return redirect(url_for("pages.index"))
    return render_template("setup.html")
