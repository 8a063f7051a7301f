"""Users and their API tokens."""

import functools
import hashlib
import secrets

from werkzeug.security import check_password_hash, generate_password_hash

from .storage.engine import utcnow
from .storage.models import ApiToken, User
from .vocabulary import Scope

TOKEN_PREFIX = "or_"
# What a token may do. A bookmarklet runs inside someone else's page (Gmail), so its key can
# only add receipts: mint, mark sent, report the sender's own views (api.token_required).
SCOPES = {
    Scope.FULL: "everything (scripts)",
    Scope.BOOKMARKLET: "only add receipts (bookmarklet)",
}
MAX_TOKEN_NAME = 100
MIN_PASSWORD_LENGTH = 10
# last_used_at is a hint for the token list, not an audit log: one write a minute is plenty.
LAST_USED_RESOLUTION_SECONDS = 60


class AccountError(ValueError):
    """A user-facing refusal: the message says what to change."""


def normalise_email(email):
    email = (email or "").strip().lower()
    local, at, domain = email.partition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(email) > 320
        or any(c.isspace() for c in email)
        or not email.isprintable()  # control characters; PostgreSQL refuses NUL outright
    ):
        raise AccountError(f"{email!r} is not an email address")
    return email


def create_user(email, password):
    email = normalise_email(email)
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if User.select().where(User.email == email).exists():
        raise AccountError(f"a user {email} already exists")
    return User.create(email=email, password_hash=generate_password_hash(password))


def set_password(user, password):
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    User.update(password_hash=generate_password_hash(password)).where(User.id == user.id).execute()


def authenticate(email, password):
    """The user with this email and password, or None.

    A password is checked even when there is no such account (against a hash of nothing
    anyone knows), so that how long the answer takes does not tell which accounts exist."""
    try:
        user = User.get_or_none(User.email == normalise_email(email))
    except AccountError:
        user = None
    password_hash = user.password_hash if user is not None else dummy_password_hash()
    matches = check_password_hash(password_hash, password or "")
    return user if matches and user is not None else None


def dummy_password_hash():
    """A hash of a random password, made the way new passwords are hashed now, so checking a
    password against it costs what checking a real one costs."""
    # Looked up at each call: the tests make hashing cheaper, and the cost must follow.
    return _hash_of_a_random_password(generate_password_hash)


@functools.cache
def _hash_of_a_random_password(generate):
    return generate(secrets.token_urlsafe(24))


def find_user(email):
    user = User.get_or_none(User.email == normalise_email(email))
    if user is None:
        raise AccountError(f"no user {email}")
    return user


def hash_token(token):
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_name(name):
    """A token's name on one line, without control characters (PostgreSQL refuses NUL)."""
    name = "".join(c for c in name or "" if c.isprintable() or c.isspace())
    return " ".join(name.split())[:MAX_TOKEN_NAME]


def new_token(user, name="API token", scope=Scope.FULL):
    """Create a token for the user; returns (row, the token itself, shown this once only)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown token scope {scope!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.create(
        user=user,
        name=token_name(name) or "API token",
        token_hash=hash_token(token),
        scope=scope,
    )
    return row, token


def rename_token(token_id, user, name):
    """Rename one of the user's tokens; False if none matched."""
    name = token_name(name)
    if not name:
        raise AccountError("a name cannot be empty")
    query = ApiToken.update(name=name).where(ApiToken.id == token_id, ApiToken.user == user)
    return query.execute() > 0


def token_for(token):
    """The live (not revoked) token row, with its user, or None; notes when it was last used."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    row = (
        ApiToken.select(ApiToken, User)
        .join(User)
        .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_null())
        .first()
    )
    if row is None:
        return None
    now = utcnow()
    if (
        row.last_used_at is None
        or (now - row.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS
    ):
        ApiToken.update(last_used_at=now).where(ApiToken.id == row.id).execute()
    return row


def revoke_token(token_id, user=None):
    """Revoke a token by id (only the user's own when a user is given); False if none matched."""
    query = ApiToken.update(revoked_at=utcnow()).where(
        ApiToken.id == token_id, ApiToken.revoked_at.is_null()
    )
    if user is not None:
        query = query.where(ApiToken.user == user)
    return query.execute() > 0
