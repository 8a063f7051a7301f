"""What `openreceipt check` finds: the settings in force and where each comes from, then the
problems (the server does not work as meant) and risks (it works, but something is likely to
go wrong or to be missed) in them. Prints nothing itself, and no secret is in what it says."""

import datetime
import os
import shlex
import stat
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config import OPTION, local_url, server_bind, write_problem
from .pixel import spool
from .storage import migrate
from .storage.engine import redacted_url, sqlite_file
from .storage.models import NotifyChannel
from .vocabulary import ChannelKind

GEOIP_STALE_DAYS = 183  # GeoLite2 and DB-IP Lite come out monthly; half a year is long enough


class Findings:
    """What `check` found: problems (the server does not work as meant: exit status 1) and
    risks (it works, but something is likely to go wrong or to be missed)."""

    def __init__(self):
        self.problems = []
        self.risks = []

    def problem(self, text):
        self.problems.append(text)

    def risk(self, text):
        self.risks.append(text)


def count(found, word):
    return f"{len(found) or 'no'} {word}{'' if len(found) == 1 else 's'}"


def installed_version():

    try:
        return version("openreceipt")
    except PackageNotFoundError:
        return "(not installed)"


def _origin(app, name):
    """Where the setting NAME's value comes from: its environment variable, the code's default,
    or the settings the program that built the app gave create_app()."""
    option = OPTION[name]
    if option.variable in os.environ:
        return option.variable
    value = app.config[name]
    if name == "DATA_DIR":
        default = str(Path(option.default).expanduser().resolve())
        return "default: ./instance where it runs" if value == default else "given to create_app()"
    if name == "DATABASE_URL":
        default = f"sqlite:///{Path(app.config['DATA_DIR']) / 'openreceipt.db'}"
        return "default: in the data dir" if value == default else "given to create_app()"
    return "default" if option.read(option.default) == value else "given to create_app()"


def settings_in_force(app, findings):
    """(label, value, origin) of the settings that matter most, adding to `findings`."""
    config = app.config
    data_dir = Path(config["DATA_DIR"])
    yield "data dir", data_dir, _origin(app, "DATA_DIR")
    problem = write_problem(data_dir)
    if problem:
        findings.problem(f"the data dir {data_dir} {problem}: the spool and the key live there")
    _check_owners(data_dir, findings)

    database = app.extensions["openreceipt.database"]
    url = config["DATABASE_URL"]
    origin = _origin(app, "DATABASE_URL")
    yield (
        "database",
        redacted_url(url),
        "default: in the data dir" if origin == "default" else origin,
    )
    path = sqlite_file(database)
    if path is not None:
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            problem = name.exists() and write_problem(name)
            if problem:
                findings.problem(f"the database file {name} {problem}")
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0
        if mode & 0o077:
            findings.risk(
                f"the database {path} has mode {mode:04o}: other users of this machine can read "
                f"every receipt; chmod 600 it and its -wal and -shm files"
            )
    yield "schema", _schema_state(database), "applied at every start"

    public_url = config["PUBLIC_URL"]
    yield (
        "public URL",
        public_url or "not set: addresses follow each request's Host",
        _origin(app, "PUBLIC_URL"),
    )
    if not public_url:
        findings.problem(
            "OPENRECEIPT_PUBLIC_URL is not set: pixel URLs start with the Host each request "
            "names, and behind a proxy that does not pass Host on they become "
            f"{local_url(server_bind())}/p/…, which no recipient can fetch; set it to the "
            "address recipients reach (https://receipts.example.com)"
        )
    elif not public_url.startswith("https://"):
        findings.risk(
            f"OPENRECEIPT_PUBLIC_URL {public_url} is not https: mail programs may refuse to "
            "load the images, and the sign-in cookie travels unencrypted"
        )

    proxies = config["TRUSTED_PROXIES"]
    yield "trusted proxies", proxies, _origin(app, "TRUSTED_PROXIES")
    if not proxies:
        findings.risk(
            "OPENRECEIPT_TRUSTED_PROXIES is 0, which is right only when nothing stands in front "
            "of gunicorn. If nginx, Caddy or a load balancer does, every fetch is stored as the "
            "proxy's network and HTTPS is not seen: set it to the number of proxies (the "
            "server's log says so when X-Forwarded-For arrives untrusted)"
        )

    geolocator = app.extensions["openreceipt"].geolocator
    described = geolocator.describe()
    if geolocator.built is not None:
        age = (datetime.date.today() - geolocator.built).days
        described += f", {age} days old"
    yield "GeoIP data", described, _geoip_origin(app)
    if geolocator.built is not None:
        if age > GEOIP_STALE_DAYS:
            findings.risk(
                f"the GeoIP data was built {geolocator.built}, {age // 30} months ago: many "
                "places are out of date; point OPENRECEIPT_GEOIP_DATABASE at a fresh GeoLite2 or "
                "DB-IP Lite database"
            )

    contact = config["OPERATOR_CONTACT"]
    yield "operator contact", contact or "not set", _origin(app, "OPERATOR_CONTACT")
    if not contact:
        findings.risk(
            "OPENRECEIPT_OPERATOR_CONTACT is not set: the privacy notice at /privacy names no one "
            "to ask for erasure"
        )

    smtp = config["SMTP"]
    shown = f"{smtp.host}:{smtp.port}, {smtp.security}" if smtp else "not set: no email notices"
    yield "SMTP", shown, _origin(app, "SMTP_URL")
    if smtp is None:
        users = (
            NotifyChannel.select(NotifyChannel.user)
            .where(NotifyChannel.kind == ChannelKind.EMAIL)
            .distinct()
            .count()
        )
        if users:
            findings.problem(
                f"{users} users have an email channel but OPENRECEIPT_SMTP_URL is not set: their "
                "email notices are never sent"
            )

    days = config["RETENTION_DAYS"]
    kept = f"{days} days" if days else "0: kept until the receipt is deleted"
    yield "retention", kept, _origin(app, "RETENTION_DAYS")

    yield "secret key", _secret_key_state(app, findings), _secret_key_origin(app)


def _schema_state(database):
    changes = migrate.status(database)
    pending = [name for name, applied in changes if applied is None]
    if pending:
        return f"{len(pending)} of {len(changes)} changes pending: {', '.join(pending)}"
    return f"all {len(changes)} changes applied, the last {changes[-1][0]}"


def _geoip_origin(app):
    origin = _origin(app, "GEOIP_DATABASE")
    if app.config["COLLECT_LOCATION"] == "none":
        return f"OPENRECEIPT_COLLECT_LOCATION is none ({origin})"
    return "default: the bundled snapshot" if origin == "default" else origin


def _secret_key_origin(app):
    if OPTION["SECRET_KEY"].variable in os.environ:
        return OPTION["SECRET_KEY"].variable
    path = Path(app.config["DATA_DIR"]) / "secret_key"
    if path.is_file() and os.access(path, os.R_OK) and path.read_text().strip() == app.secret_key:
        return "generated into the data dir"
    return "given to create_app()"


def _secret_key_state(app, findings):
    """How the secret key is kept: the file's presence and mode, never the key."""
    fallbacks = len(app.config["SECRET_KEY_FALLBACKS"])
    retired = f"; {fallbacks} retired keys still accepted for pixels" if fallbacks else ""
    path = Path(app.config["DATA_DIR"]) / "secret_key"
    if _secret_key_origin(app) != "generated into the data dir":
        unused = f" ({path} is not used)" if path.exists() else ""
        return f"set, not from a file{unused}{retired}"
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        findings.risk(
            f"{path} has mode {mode:04o}: other users of this machine can read the key that "
            f"signs every pixel and sign-in; chmod 600 {shlex.quote(str(path))}"
        )
    return f"{path}: present, readable, mode {mode:04o}{retired}"


def _check_owners(data_dir, findings):
    """A risk when files in the data dir belong to another user than the data dir itself: a
    command run as root makes root's files, which a server run as its own user cannot write."""
    owner = data_dir.stat().st_uid
    strangers = [
        path
        for path in sorted([*data_dir.iterdir(), *spool.directory(data_dir).glob("*")])
        if path.stat(follow_symlinks=False).st_uid != owner
    ]
    if strangers:
        names = ", ".join(str(path.relative_to(data_dir)) for path in strangers[:3])
        more = f" and {len(strangers) - 3} more" if len(strangers) > 3 else ""
        findings.risk(
            f"{names}{more} in the data dir belong to another user than the data dir itself: a "
            "server running as the data dir's owner may not write them; run commands as the "
            "server's user"
        )
