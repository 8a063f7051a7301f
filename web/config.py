"""Settings: code defaults, then OPENRECEIPT_* environment variables, then the mapping given to
create_app(). validate() turns them into checked values or stops start-up with one clear line."""

import datetime
import difflib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .mailhosts import parse_nameserver

PREFIX = "OPENRECEIPT"

DEFAULTS = {
    "DATA_DIR": "./instance",
    "DATABASE_URL": None,
    "SECRET_KEY": None,
    "SECRET_KEY_FALLBACKS": [],
    # How long a sign-in lasts, in days (web/auth.py).
    "SESSION_DAYS": 14,
    "PUBLIC_URL": None,
    "TRUSTED_PROXIES": 0,
    "GEOIP_DATABASE": None,
    "MX_LOOKUP": True,
    "DNS_SERVERS": None,
    # Privacy: what a fetch records, what a pixel keeps of its recipients, for how long.
    "COLLECT_LOCATION": "city",
    "COLLECT_CLIENT": True,
    "STORE_RECIPIENTS": "address",
    "RETENTION_DAYS": 90,
    "OPERATOR_CONTACT": None,
    # Limits on what unauthenticated fetches and one user can make the server keep: the spool's
    # size while the database is away (web/spool.py), receipts a user may make a minute
    # (web/minting.py; 0: no limit).
    "SPOOL_MAX_MB": 100,
    "MINTS_PER_MINUTE": 60,
    # The pixel's X-Openreceipt header, which tells any fetcher what became of its fetch.
    "DEBUG_HEADERS": False,
    # Notifications (web/notify.py): the operator's mail server for email notices, and how the
    # delivery loop runs and retries.
    "SMTP_URL": None,
    "SMTP_FROM": None,
    "NOTIFY_IN_WORKERS": True,
    "NOTIFY_RETRY_SECONDS": 30,
    "NOTIFY_GIVE_UP_HOURS": 24,
    # Networks webhook and push URLs may reach besides public addresses (web/outbound.py).
    "NOTIFY_ALLOW": None,
}

CHOICES = {
    "COLLECT_LOCATION": ("city", "country", "none"),
    "STORE_RECIPIENTS": ("address", "domain", "none"),
}

# Read by gunicorn.conf.py, not by the application; listed so they are not reported as unknown.
SERVER_SETTINGS = {"BIND"}

MAX_SESSION_DAYS = 3650

GEOIP_OFF = {"off", "none", "false", "0"}


class ConfigError(SystemExit):
    """A setting is wrong. Being a SystemExit, it ends start-up (gunicorn or the CLI) with just
    its message, one line, instead of a traceback."""

    def __init__(self, message):
        super().__init__(f"openreceipt: {message}")
        self.message = message


def load(config, overrides):
    """Fill a Flask config from defaults, the environment and overrides, then validate it."""
    config.from_mapping(DEFAULTS)
    config["MAX_CONTENT_LENGTH"] = 64 * 1024  # API bodies are small; refuse floods early
    config.from_prefixed_env(PREFIX)
    reject_unknown_environment()
    if overrides:
        config.from_mapping(overrides)
    validate(config)


def reject_unknown_environment():
    known = set(DEFAULTS) | SERVER_SETTINGS
    for name in sorted(os.environ):
        if not name.startswith(PREFIX + "_"):
            continue
        key = name[len(PREFIX) + 1 :]
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {PREFIX}_{close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")


def validate(config):
    """Check and normalise every openreceipt setting in place."""
    data_dir = Path(str(config["DATA_DIR"])).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"OPENRECEIPT_DATA_DIR {data_dir} cannot be created: {error.strerror}"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"OPENRECEIPT_DATA_DIR {data_dir} is not writable")
    config["DATA_DIR"] = str(data_dir)

    url = config["DATABASE_URL"] or f"sqlite:///{data_dir / 'openreceipt.db'}"
    scheme = urlsplit(str(url)).scheme
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(
            f"OPENRECEIPT_DATABASE_URL must start with sqlite:/// or postgresql://, got {scheme!r}"
        )
    config["DATABASE_URL"] = str(url)

    config["TRUSTED_PROXIES"] = _whole_number("TRUSTED_PROXIES", config["TRUSTED_PROXIES"])
    config["PUBLIC_URL"] = _public_url(config["PUBLIC_URL"])

    if not config["SECRET_KEY"]:
        config["SECRET_KEY"] = stored_secret_key(data_dir)
    config["SECRET_KEY"] = str(config["SECRET_KEY"])
    fallbacks = config["SECRET_KEY_FALLBACKS"] or []
    if isinstance(fallbacks, str):
        fallbacks = fallbacks.split(",")
    if not isinstance(fallbacks, list):
        raise ConfigError("OPENRECEIPT_SECRET_KEY_FALLBACKS must be a comma-separated list")
    config["SECRET_KEY_FALLBACKS"] = [str(key).strip() for key in fallbacks if str(key).strip()]

    geoip = config["GEOIP_DATABASE"]
    if geoip is not None and str(geoip).strip().lower() in GEOIP_OFF | {""}:
        geoip = "off"
    elif geoip is not None:
        path = Path(str(geoip)).expanduser()
        if not path.is_file():
            raise ConfigError(f"OPENRECEIPT_GEOIP_DATABASE {path} does not exist")
        geoip = str(path.resolve())
    config["GEOIP_DATABASE"] = geoip

    config["MX_LOOKUP"] = _switch("MX_LOOKUP", config["MX_LOOKUP"])
    servers = config["DNS_SERVERS"]
    if isinstance(servers, str):
        servers = [part.strip() for part in servers.split(",") if part.strip()]
    for server in servers or ():
        try:
            parse_nameserver(server)
        except ValueError:
            raise ConfigError(
                f"OPENRECEIPT_DNS_SERVERS must list addresses like 127.0.0.1:53, got {server!r}"
            ) from None
    config["DNS_SERVERS"] = servers or None

    for name, choices in CHOICES.items():
        value = str(config[name]).strip().lower()
        if value not in choices:
            raise ConfigError(
                f"OPENRECEIPT_{name} must be one of {', '.join(choices)}, got {config[name]!r}"
            )
        config[name] = value
    config["COLLECT_CLIENT"] = _switch("COLLECT_CLIENT", config["COLLECT_CLIENT"])
    config["RETENTION_DAYS"] = _whole_number("RETENTION_DAYS", config["RETENTION_DAYS"])
    contact = str(config["OPERATOR_CONTACT"] or "").strip()
    if "\n" in contact or len(contact) > 500:
        raise ConfigError("OPENRECEIPT_OPERATOR_CONTACT must be one line (an address or a URL)")
    config["OPERATOR_CONTACT"] = contact or None

    config["SMTP"] = smtp_server(config["SMTP_URL"])
    config["SMTP_FROM"] = _smtp_from(config["SMTP_FROM"], config["SMTP"], config["PUBLIC_URL"])
    config["NOTIFY_IN_WORKERS"] = _switch("NOTIFY_IN_WORKERS", config["NOTIFY_IN_WORKERS"])
    for name in ("NOTIFY_RETRY_SECONDS", "NOTIFY_GIVE_UP_HOURS"):
        config[name] = _whole_number(name, config[name])
        if not config[name]:
            raise ConfigError(f"OPENRECEIPT_{name} must be at least 1")
    config["NOTIFY_ALLOW"] = _networks("NOTIFY_ALLOW", config["NOTIFY_ALLOW"])

    config["SPOOL_MAX_MB"] = _whole_number("SPOOL_MAX_MB", config["SPOOL_MAX_MB"])
    if not config["SPOOL_MAX_MB"]:
        raise ConfigError("OPENRECEIPT_SPOOL_MAX_MB must be at least 1")
    config["MINTS_PER_MINUTE"] = _whole_number("MINTS_PER_MINUTE", config["MINTS_PER_MINUTE"])
    config["DEBUG_HEADERS"] = _switch("DEBUG_HEADERS", config["DEBUG_HEADERS"])

    # The login cookie is marked Secure whenever the public address is HTTPS, and on any request
    # that came over HTTPS as far as the trusted proxies tell (web/security.py).
    config["SESSION_COOKIE_SECURE"] = bool(config["PUBLIC_URL"]) and config[
        "PUBLIC_URL"
    ].startswith("https://")
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_NAME"] = "openreceipt_session"
    # A sign-in ends SESSION_DAYS after it was made (the server keeps the end; web/auth.py), and
    # the browser keeps its cookie as long, not Flask's default 31 days.
    config["SESSION_DAYS"] = _whole_number("SESSION_DAYS", config["SESSION_DAYS"])
    if not 1 <= config["SESSION_DAYS"] <= MAX_SESSION_DAYS:
        raise ConfigError(
            f"OPENRECEIPT_SESSION_DAYS must be from 1 to {MAX_SESSION_DAYS}, "
            f"got {config['SESSION_DAYS']}"
        )
    config["PERMANENT_SESSION_LIFETIME"] = datetime.timedelta(days=config["SESSION_DAYS"])
    config["SESSION_REFRESH_EACH_REQUEST"] = False


@dataclass(frozen=True)
class SmtpServer:
    """Where email notices go out: OPENRECEIPT_SMTP_URL taken apart."""

    security: str  # "starttls", "ssl" or "none"
    host: str
    port: int
    username: str | None
    password: str | None


# scheme -> (security, default port)
SMTP_SCHEMES = {"smtp": ("starttls", 587), "smtps": ("ssl", 465), "smtp+plain": ("none", 25)}


def smtp_server(url):
    """The SmtpServer of an OPENRECEIPT_SMTP_URL, or None when it is not set."""
    if url is None or not str(url).strip():
        return None
    text = str(url).strip()
    example = "smtp://user:password@mail.example.com:587 (STARTTLS), smtps://... or smtp+plain://"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"OPENRECEIPT_SMTP_URL is not a URL; write it like {example}") from None
    if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
        raise ConfigError(
            f"OPENRECEIPT_SMTP_URL must look like {example}, got scheme {parts.scheme!r}"
        )
    security, default_port = SMTP_SCHEMES[parts.scheme]
    return SmtpServer(
        security=security,
        host=parts.hostname,
        port=port or default_port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _smtp_from(value, server, public_url):
    """The From address of email notices: as set, else the SMTP user name when it is an
    address, else openreceipt@ the public host name."""
    text = str(value or "").strip()
    if text:
        if "@" not in text or any(c in text for c in "\r\n"):
            raise ConfigError(f"OPENRECEIPT_SMTP_FROM must be an email address, got {value!r}")
        return text
    if server is None:
        return None
    if server.username and "@" in server.username:
        return server.username
    if public_url:
        return f"openreceipt@{urlsplit(public_url).hostname}"
    raise ConfigError(
        "OPENRECEIPT_SMTP_URL is set but no sender: set OPENRECEIPT_SMTP_FROM "
        "(e.g. receipts@example.com)"
    )


def _networks(name, value):
    """Comma-separated networks (10.0.0.0/8, fd00::/8, or one address) as a tuple of
    ipaddress networks."""
    parts = value.split(",") if isinstance(value, str) else list(value or ())
    networks = []
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError:
            raise ConfigError(
                f"OPENRECEIPT_{name} must list networks like 10.0.0.0/8 or fd00::/8, separated "
                f"by commas, got {text!r}"
            ) from None
    return tuple(networks)


def _whole_number(name, value):
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise ConfigError(f"OPENRECEIPT_{name} must be a whole number >= 0, got {value!r}")
    return int(str(value).strip())


def _switch(name, value):
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"OPENRECEIPT_{name} must be on or off, got {value!r}")


def _public_url(value):
    if value is None or str(value).strip() == "":
        return None
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"OPENRECEIPT_PUBLIC_URL must look like https://receipts.example.com, got {value!r}"
        )
    return url


def stored_secret_key(data_dir):
    """The secret key kept in the data dir, created (mode 0600) on first use.

    Written to a private temporary file and linked into place, so workers that start at the
    same moment all end up with the one key that won."""
    path = Path(data_dir) / "secret_key"
    if not path.exists():
        temporary = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"{path} is empty: delete it to generate a new secret key")
    return key


def server_bind(environ=os.environ):
    """Where gunicorn listens: OPENRECEIPT_BIND, else 0.0.0.0:$PORT (platforms that set PORT),
    else loopback port 8000, ready for a reverse proxy in front."""
    if environ.get(f"{PREFIX}_BIND"):
        return environ[f"{PREFIX}_BIND"]
    if environ.get("PORT"):
        return f"0.0.0.0:{environ['PORT']}"
    return "127.0.0.1:8000"


def public_binds(binds):
    """The gunicorn bind addresses that other machines can reach: all but loopback addresses
    and Unix sockets (a host name counts as reachable)."""
    exposed = []
    for bind in binds:
        if bind.startswith(("unix:", "fd://")):
            continue
        host = bind.rpartition(":")[0].strip("[]") if ":" in bind else bind
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        exposed.append(bind)
    return exposed


def local_url(bind):
    """A browsable URL for a gunicorn bind address, for the first-run link."""
    host, _, port = bind.rpartition(":")
    if bind.startswith("unix:") or not port.isdigit():
        return "http://localhost"
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "localhost"
    return f"http://{host}:{port}"
