"""Signing in and out, sessions that can be ended, sign-in throttling, and the first-run setup
link."""

import datetime
import functools
import hashlib
import secrets
from urllib.parse import urlsplit

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
from peewee import Case

from ..accounts import AccountError, authenticate, create_user, hash_token, normalise_email
from ..privacy import anonymize
from ..storage.engine import db, utcnow
from ..storage.models import LoginSession, LoginThrottle, Setting, User

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


# Sessions. The login cookie holds a random session id; the server keeps its hash, its user and
# when it ends (models.LoginSession). Deleting the row ends the session, so signing out, a new
# password and "Sign out everywhere" leave a copied cookie worth nothing.


@bp.before_app_request
def load_user():
    # Only pages read the login cookie; the API and tracked links never touch the session (nor
    # the pixel, answered before Flask: pixel/endpoint.py).
    g.user = None
    if request.blueprint in ("api", "clicks") or request.endpoint == "static":
        return
    session_id = session.get("session_id")
    if session_id is not None:
        g.user = session_user(session_id)
        if g.user is None:
            del session["session_id"]  # ended or run out: the browser may forget it too


def session_user(session_id):
    """The user of a live session, or None."""
    if not isinstance(session_id, str) or len(session_id) > 100:
        return None
    return (
        User.select()
        .join(LoginSession)
        .where(LoginSession.key_hash == hash_token(session_id), LoginSession.expires_at > utcnow())
        .first()
    )


def start_session(user):
    """Sign this browser in as `user`, in a new session (never one the browser brought along;
    a session it had ends)."""
    end_session()
    now = utcnow()
    session_id = secrets.token_urlsafe(32)
    LoginSession.delete().where(LoginSession.expires_at <= now).execute()  # tidy up
    LoginSession.create(
        user=user,
        key_hash=hash_token(session_id),
        created_at=now,
        expires_at=now + current_app.permanent_session_lifetime,
    )
    session["session_id"] = session_id
    # The browser keeps the cookie for the session's lifetime (config.py), not until it closes.
    session.permanent = True


def end_session():
    """End this browser's session, if it has one."""
    session_id = session.pop("session_id", None)
    if isinstance(session_id, str):
        LoginSession.delete().where(LoginSession.key_hash == hash_token(session_id)).execute()
    session.clear()


def end_sessions(user):
    """End every session of the user, in every browser."""
    LoginSession.delete().where(LoginSession.user == user).execute()


def typed_email():
    """The email address as typed into a form, to show it again after a mistake."""
    return request.form.get("email", "")[:320]


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        email = request.form.get("email", "")
        pair = throttle_pair(email)
        # Counted before the password is checked: parallel attempts get no more checks.
        if count_attempt(*pair) > THROTTLE_LIMIT:
            flash(
                "Too many failed sign-ins to this account from your network. "
                "Wait a quarter of an hour, then try again."
            )
            return render_template("login.html", email=typed_email()), 429
        user = authenticate(email, request.form.get("password"))
        if user is not None:
            clear_attempts(*pair)
            start_session(user)
            return redirect(safe_next(request.args.get("next")))
        forget_old_attempts()
        flash("Wrong email or password.")
        return render_template("login.html", email=typed_email())
    return render_template("login.html")


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    if request.method == "POST":
        end_session()
        return redirect(url_for("auth.login"))
    return render_template("logout.html")


@bp.post("/logout/everywhere")
@login_required
def logout_everywhere():
    end_sessions(g.user)
    end_session()
    flash("You are signed out everywhere, in this browser too.")
    return redirect(url_for("auth.login"))


def safe_next(target):
    """Where to go after signing in: a path on this server, else the status page. Never another
    site: not //host, not /\\host (browsers read a backslash as a slash), not a scheme, and no
    control characters (browsers drop tabs and newlines, so /<tab>/host is //host; a newline
    cannot even go into the header)."""
    home = url_for("pages.index")
    if not target or not target.startswith("/") or target.startswith("//"):
        return home
    if "\\" in target or not target.isprintable():
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home
    return target


# Throttling. Ten failed sign-ins to one account from one (masked) network within a quarter of an
# hour, and that network waits for that account until the quarter is over. Per account *and*
# network: an attacker elsewhere throttles only themselves, never the owner. Counted in the
# database in one statement, so every worker and host sees the same numbers and no two attempts
# share a count.
THROTTLE_LIMIT = 10
THROTTLE_WINDOW = datetime.timedelta(minutes=15)


def throttle_pair(email):
    """(account, network) keys of a sign-in: hashes of the address it names (as written, when it
    is not an address) and of the masked network it comes from. The raw address is never kept."""
    network = anonymize(request.remote_addr) or "unknown"
    return account_key(email), _digest(f"network:{network}")


def account_key(email):
    try:
        email = normalise_email(email)
    except AccountError:
        email = (email or "").strip().lower()
    return _digest(f"email:{email}")


def _digest(text):
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def count_attempt(account, network):
    """Count one attempt for the pair and return how many its window holds, this one included.
    A window older than THROTTLE_WINDOW starts again at this attempt."""
    now = utcnow()
    expired = LoginThrottle.window_start <= now - THROTTLE_WINDOW
    query = (
        LoginThrottle.insert(account=account, network=network, attempts=1, window_start=now)
        .on_conflict(
            conflict_target=[LoginThrottle.account, LoginThrottle.network],
            update={
                LoginThrottle.attempts: Case(None, [(expired, 1)], LoginThrottle.attempts + 1),
                LoginThrottle.window_start: Case(
                    None, [(expired, now)], LoginThrottle.window_start
                ),
            },
        )
        .returning(LoginThrottle.attempts)
    )
    [(attempts,)] = query.tuples().execute()
    return attempts


def clear_attempts(account, network=None):
    """Forget the attempts to the account, from one network or from every one. Returns how many
    of those networks had to wait."""
    pairs = [LoginThrottle.account == account]
    if network is not None:
        pairs.append(LoginThrottle.network == network)
    with db.atomic():
        waiting = (
            LoginThrottle.select()
            .where(
                *pairs,
                LoginThrottle.attempts >= THROTTLE_LIMIT,
                LoginThrottle.window_start > utcnow() - THROTTLE_WINDOW,
            )
            .count()
        )
        LoginThrottle.delete().where(*pairs).execute()
    return waiting


def forget_old_attempts():
    """Delete the counts whose window is over (they would start again at 1 anyway)."""
    LoginThrottle.delete().where(LoginThrottle.window_start <= utcnow() - THROTTLE_WINDOW).execute()


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
                start_session(user)
                return redirect(url_for("pages.index"))
        return render_template("setup.html", email=typed_email())
    return render_template("setup.html")
