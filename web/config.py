"""Settings: code defaults, then OPENRECEIPT_* environment variables, then the mapping given to
create_app(). OPTIONS lists every setting once: its default, how its value is read, and the line
the README's settings table gives operators. validate() turns them into checked values or stops
start-up with one clear line.

Long, and kept in one file on purpose: it is the table itself (a row and a description for each
of some thirty settings) with the parsers those rows name, so a setting and the check of its
value are read together. It imports nothing of the application: every wing may read it."""

import datetime
import difflib
import ipaddress
import os
import pwd
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

PREFIX = "OPENRECEIPT"

MAX_SESSION_DAYS = 3650

GEOIP_OFF = {"off", "none", "false", "0"}


class ConfigError(SystemExit):
    """A setting is wrong. Being a SystemExit, it ends start-up (gunicorn or the CLI) with just
    its message, one line, instead of a traceback."""

    def __init__(self, message):
        super().__init__(f"openreceipt: {message}")
        self.message = message


class InvalidValue(Exception):
    """A parser's complaint about a value, without the setting's name: Option.read puts the
    variable's name in front, so that every message names it the same way."""


@dataclass(frozen=True)
class Option:
    """One setting, OPENRECEIPT_<name>."""

    name: str
    default: object
    # The raw value (text from the environment, or any Python value given to create_app())
    # to the typed one; raises InvalidValue.
    parse: Callable[[object], object]
    # One line for operators: the "meaning" column of the README's table.
    description: str
    # The README's "default" column, where the default value alone would say too little.
    default_text: str = ""
    # Internal switches (tests, the command line) are left out of the README.
    documented: bool = True
    # Read by gunicorn.conf.py (server_bind()) rather than put into the application's config.
    for_gunicorn: bool = False

    @property
    def variable(self):
        return f"{PREFIX}_{self.name}"

    def read(self, value):
        """The typed value, or a ConfigError naming the variable."""
        try:
            return self.parse(value)
        except InvalidValue as error:
            raise ConfigError(f"{self.variable} {error}") from None

    def readme_default(self):
        """The README's "default" column."""
        if self.default_text:
            return self.default_text
        if self.default is None or self.default == []:
            return "none"
        if isinstance(self.default, bool):
            return "`on`" if self.default else "`off`"
        return f"`{self.default}`"


# Parsers: each takes a setting's raw value and returns its typed value, or raises InvalidValue
# with what is wrong (Option.read names the setting).


def _whole_number(value):
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise InvalidValue(f"must be a whole number >= 0, got {value!r}")
    return int(str(value).strip())


def _at_least_one(value):
    number = _whole_number(value)
    if not number:
        raise InvalidValue("must be at least 1")
    return number


def _switch(value):
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise InvalidValue(f"must be on or off, got {value!r}")


def _one_of(*choices):
    """A parser for a setting that takes one of a few words, in any case."""

    def parse(value):
        text = str(value).strip().lower()
        if text not in choices:
            raise InvalidValue(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _text(value):
    """Taken as written (OPENRECEIPT_BIND: gunicorn checks it)."""
    return str(value)


def _data_dir(value):
    data_dir = Path(str(value)).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidValue(f"{data_dir} cannot be created: {error.strerror}") from None
    problem = write_problem(data_dir)
    if problem:
        raise InvalidValue(
            f"{data_dir} {problem}: let the user openreceipt runs as write to it, or set "
            "OPENRECEIPT_DATA_DIR to a directory it may write"
        )
    return str(data_dir)


def write_problem(path):
    """None when this process may write `path` (an existing file or directory); else what
    stands in the way, to follow the path in a one-line message. A read-only file system is told
    apart from permissions: it stops root too, and no chmod or chown helps."""
    path = Path(path)
    if os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        pass
    return f"is not writable by the user {user_name()}"


def user_name():
    """The name of the user this process runs as (its number when it has no name)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"number {os.geteuid()}"


def _database_url(value):
    """The URL as given; None (unset) becomes the SQLite file in DATA_DIR in _combine()."""
    if not value:
        return None
    scheme = urlsplit(str(value)).scheme
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise InvalidValue(f"must start with sqlite:/// or postgresql://, got {scheme!r}")
    return str(value)


def _secret_key(value):
    """The key as given; None (unset) becomes the one kept in DATA_DIR in _combine()."""
    return str(value) if value else None


def _key_list(value):
    keys = value or []
    if isinstance(keys, str):
        keys = keys.split(",")
    if not isinstance(keys, list):
        raise InvalidValue("must be a comma-separated list")
    return [str(key).strip() for key in keys if str(key).strip()]


def _session_days(value):
    days = _whole_number(value)
    if not 1 <= days <= MAX_SESSION_DAYS:
        raise InvalidValue(f"must be from 1 to {MAX_SESSION_DAYS}, got {days}")
    return days


def _public_url(value):
    if value is None or str(value).strip() == "":
        return None
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidValue(f"must look like https://receipts.example.com, got {value!r}")
    return url


def _geoip_database(value):
    """A resolved path, "off", or None for the bundled snapshot (web/pixel/geo.py)."""
    if value is None:
        return None
    if str(value).strip().lower() in GEOIP_OFF | {""}:
        return "off"
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise InvalidValue(f"{path} does not exist")
    return str(path.resolve())


def _dns_servers(value):
    """Resolvers as (address, port) pairs, or None for the system's own."""
    servers = value
    if isinstance(servers, str):
        servers = [part.strip() for part in servers.split(",") if part.strip()]
    parsed = []
    for server in servers or ():
        try:
            parsed.append(parse_nameserver(server))
        except ValueError:
            raise InvalidValue(f"must list addresses like 127.0.0.1:53, got {server!r}") from None
    return parsed or None


def parse_nameserver(text):
    """(address, port) of "127.0.0.1", "127.0.0.1:5353", "2001:db8::53" or "[2001:db8::53]:53"."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif host.count(":") == 1:
        host, port = host.split(":")
    ipaddress.ip_address(host)  # a resolver is named by its address; raises ValueError
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return host, int(port)


def _networks(value):
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
            raise InvalidValue(
                f"must list networks like 10.0.0.0/8 or fd00::/8, separated by commas, got {text!r}"
            ) from None
    return tuple(networks)


def _one_line(value):
    text = str(value or "").strip()
    if "\n" in text or len(text) > 500:
        raise InvalidValue("must be one line (an address or a URL)")
    return text or None


def _smtp_url(value):
    """Checked here, kept as given: _combine() puts it, taken apart, into config["SMTP"]."""
    _smtp_server(value)
    return value


def _email_address(value):
    """The address as given; None (unset) is worked out in _combine()."""
    text = str(value or "").strip()
    if not text:
        return None
    if "@" not in text or any(c in text for c in "\r\n"):
        raise InvalidValue(f"must be an email address, got {value!r}")
    return text


# Every setting, in the order of the README's table (and of the checks at start-up).
OPTIONS = (
    Option(
        "DATA_DIR",
        "./instance",
        _data_dir,
        "the SQLite database, the generated secret key, spool files",
    ),
    Option(
        "DATABASE_URL",
        None,
        _database_url,
        "or `postgresql://user:password@host:5432/dbname`",
        default_text="`sqlite:///<DATA_DIR>/openreceipt.db`",
    ),
    Option(
        "SECRET_KEY",
        None,
        _secret_key,
        "signs pixel URLs and login cookies",
        default_text="generated once into `<DATA_DIR>/secret_key` (mode 0600)",
    ),
    Option(
        "SECRET_KEY_FALLBACKS",
        [],
        _key_list,
        "comma-separated old keys still accepted, so pixels already sent keep working after a "
        "key change (never for login cookies)",
    ),
    Option(
        "SESSION_DAYS",
        14,
        _session_days,
        f"how many days a sign-in lasts (1 to {MAX_SESSION_DAYS})",
    ),
    Option(
        "PUBLIC_URL",
        None,
        _public_url,
        "base of every address the server hands out (pixel URLs, the bookmarklet's server, the "
        "privacy notice), e.g. `https://receipts.example.com` (a custom tracking domain)",
        default_text="the address the request was sent to",
    ),
    Option(
        "TRUSTED_PROXIES",
        0,
        _whole_number,
        "how many reverse proxies in front of openreceipt append to `X-Forwarded-For` and set "
        "`X-Forwarded-Proto`; `0` ignores both (see "
        "[Behind a reverse proxy](#behind-a-reverse-proxy-with-https))",
    ),
    Option(
        "GEOIP_DATABASE",
        None,
        _geoip_database,
        "path to a City or Country `.mmdb`; `off` for no location at all",
        default_text="the bundled GeoLite2 City snapshot",
    ),
    Option(
        "MX_LOOKUP",
        True,
        _switch,
        "look up where recipients' mail is hosted (rule 14, and the providers named on a "
        "receipt); `off` never asks DNS",
    ),
    Option(
        "DNS_SERVERS",
        None,
        _dns_servers,
        "comma-separated `address[:port]` of resolvers for those look-ups",
        default_text="the system's resolver",
    ),
    Option(
        "COLLECT_LOCATION",
        "city",
        _one_of("city", "country", "none"),
        "`city`, `country` or `none`: how much of a fetch's place is stored "
        "(see [Privacy](#privacy))",
    ),
    Option(
        "COLLECT_CLIENT",
        True,
        _switch,
        'store the fetching client\'s name ("Gmail", "Apple Mail"); `off` stores none',
    ),
    Option(
        "STORE_RECIPIENTS",
        "address",
        _one_of("address", "domain", "none"),
        "`address`, `domain` or `none`: what a receipt keeps of its recipients",
    ),
    Option(
        "RETENTION_DAYS",
        90,
        _whole_number,
        "fetch details older than this are deleted (receipts keep their counts); `0` keeps them "
        "until the receipt is deleted",
    ),
    Option(
        "OPERATOR_CONTACT",
        None,
        _one_line,
        "an address or URL for privacy requests, shown on the public notice at `/privacy`",
    ),
    Option(
        "SPOOL_MAX_MB",
        100,
        _at_least_one,
        "the most the spool holds while the database is away (some 200,000 fetches); beyond it, "
        "new fetches are dropped and counted "
        "(see [When the database is away](#when-the-database-is-away))",
    ),
    Option(
        "MINTS_PER_MINUTE",
        60,
        _whole_number,
        "receipts one user may make a minute (API, bookmarklet and by hand together); more "
        "answer `429`; `0` for no limit",
    ),
    Option(
        "DEBUG_HEADERS",
        False,
        _switch,
        "`on` adds `X-Openreceipt` to every pixel answer, saying what became of the fetch: for "
        "debugging only, as it tells any fetcher",
    ),
    Option(
        "SMTP_URL",
        None,
        _smtp_url,
        "the mail server for email notices: `smtp://user:password@host:587` (STARTTLS, "
        "required), `smtps://…:465` (TLS from the start) or `smtp+plain://host:25` (no "
        "encryption: a relay on the same machine)",
    ),
    Option(
        "SMTP_FROM",
        None,
        _email_address,
        "the From of email notices",
        default_text="the SMTP user name if it is an address, else "
        "`openreceipt@<PUBLIC_URL's host>`",
    ),
    Option(
        "NOTIFY_IN_WORKERS",
        True,
        _switch,
        "each gunicorn worker sends due notices from a thread; `off` leaves it to "
        "`openreceipt notify`",
    ),
    Option(
        "NOTIFY_RETRY_SECONDS",
        30,
        _at_least_one,
        "the pause after a notice's first failed try; it doubles with each try, up to an hour",
    ),
    Option(
        "NOTIFY_GIVE_UP_HOURS",
        24,
        _at_least_one,
        "a notice still failing this long after its open is given up (and listed in the user's "
        "settings)",
    ),
    Option(
        "NOTIFY_ALLOW",
        None,
        _networks,
        "comma-separated networks (`10.1.2.0/24,fd00:1::/64`) that webhook and push URLs may "
        "reach besides public addresses; see [Notifications](#notifications)",
    ),
    Option(
        "BIND",
        "127.0.0.1:8000",
        _text,
        "where gunicorn listens",
        default_text="`127.0.0.1:8000` (`0.0.0.0:$PORT` when `PORT` is set)",
        for_gunicorn=True,
    ),
    # Internal: the tests and the command line turn these off through create_app()'s mapping.
    Option(
        "ANNOUNCE_STARTUP",
        True,
        _switch,
        "log the start-up lines (GeoIP data in use, a missing operator contact, the first-run "
        "link)",
        documented=False,
    ),
    Option(
        "SPOOL_AUTO",
        True,
        _switch,
        "each worker replays the spool in a thread while it holds fetches (web/pixel/spool.py)",
        documented=False,
    ),
    Option(
        "RETENTION_AUTO",
        True,
        _switch,
        "the workers run the day's retention purge (web/receipts/retention.py)",
        documented=False,
    ),
)

OPTION = {option.name: option for option in OPTIONS}

# Variables of gunicorn or the platform, not of openreceipt, that the README's table lists too:
# (variable, default, meaning).
OTHER_VARIABLES = (("WEB_CONCURRENCY", "2 × cores + 1, at most 8", "gunicorn workers"),)

DEFAULTS = {option.name: option.default for option in OPTIONS if not option.for_gunicorn}

# Read by gunicorn.conf.py, not by the application; known, so they are not reported as unknown.
SERVER_SETTINGS = {option.name for option in OPTIONS if option.for_gunicorn}


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
    """Stop at an OPENRECEIPT_* variable that is no setting, naming the nearest one."""
    for name in sorted(os.environ):
        if not name.startswith(PREFIX + "_"):
            continue
        key = name[len(PREFIX) + 1 :]
        if key not in OPTION:
            close = difflib.get_close_matches(key, list(OPTION), n=1)
            hint = f" (did you mean {PREFIX}_{close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")


def validate(config):
    """Check and normalise every openreceipt setting in place."""
    for option in OPTIONS:
        if not option.for_gunicorn:
            config[option.name] = option.read(config[option.name])
    _combine(config)


def _combine(config):
    """What depends on more than one setting, once each has been read."""
    data_dir = Path(config["DATA_DIR"])
    config["DATABASE_URL"] = config["DATABASE_URL"] or f"sqlite:///{data_dir / 'openreceipt.db'}"
    config["SECRET_KEY"] = config["SECRET_KEY"] or stored_secret_key(data_dir)

    config["SMTP"] = smtp_server(config["SMTP_URL"])
    if config["SMTP_FROM"] is None:
        config["SMTP_FROM"] = _default_sender(config["SMTP"], config["PUBLIC_URL"])

    # The login cookie is marked Secure whenever the public address is HTTPS, and on any request
    # that came over HTTPS as far as the trusted proxies tell (web/security.py).
    config["SESSION_COOKIE_SECURE"] = bool(config["PUBLIC_URL"]) and config[
        "PUBLIC_URL"
    ].startswith("https://")
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_NAME"] = "openreceipt_session"
    # A sign-in ends SESSION_DAYS after it was made (the server keeps the end; web/ui/signin.py),
    # and the browser keeps its cookie as long, not Flask's default 31 days.
    config["PERMANENT_SESSION_LIFETIME"] = datetime.timedelta(days=config["SESSION_DAYS"])
    config["SESSION_REFRESH_EACH_REQUEST"] = False


def markdown_table():
    """The README's table of settings (tests/test_settings_table.py holds the README to it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for option in OPTIONS:
        if option.documented:
            default = option.readme_default()
            lines.append(f"| `{option.variable}` | {default} | {option.description} |")
    for variable, default, description in OTHER_VARIABLES:
        lines.append(f"| `{variable}` | {default} | {description} |")
    return "\n".join(lines) + "\n"


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
    try:
        return _smtp_server(url)
    except InvalidValue as error:
        raise ConfigError(f"{OPTION['SMTP_URL'].variable} {error}") from None


def _smtp_server(url):
    if url is None or not str(url).strip():
        return None
    text = str(url).strip()
    example = "smtp://user:password@mail.example.com:587 (STARTTLS), smtps://... or smtp+plain://"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InvalidValue(f"is not a URL; write it like {example}") from None
    if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
        raise InvalidValue(f"must look like {example}, got scheme {parts.scheme!r}")
    security, default_port = SMTP_SCHEMES[parts.scheme]
    return SmtpServer(
        security=security,
        host=parts.hostname,
        port=port or default_port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _default_sender(server, public_url):
    """The From address of email notices when SMTP_FROM is unset: the SMTP user name when it is
    an address, else openreceipt@ the public host name."""
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
    try:
        key = path.read_text().strip()
    except OSError as error:
        raise ConfigError(
            f"{path} cannot be read ({error.strerror}): let the user openreceipt runs as "
            f"({user_name()}) read it"
        ) from None
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
    return OPTION["BIND"].default


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
