"""The `openreceipt` command: accounts, API tokens, bookmarklets, address ranges, and the
privacy tools (purge, do-not-track, export, forget), the spool, notification delivery, the
background jobs, the database, and the operator's own: `check` and `backup`.

Every command works on the server's data: OPENRECEIPT_DATA_DIR (default ./instance, where the
command runs) or OPENRECEIPT_DATABASE_URL. A command never makes a ./instance of its own: where
there is none and neither is set, it stops with one line (require_data). Commands that write
say on standard error which database they wrote to.

Long, and kept in one file on purpose: every command is a few lines that call into the wings,
and one file reads as the list of everything an operator can do from the shell."""

import datetime
import fcntl
import functools
import os
import shlex
import stat
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
from flask import current_app
from flask.cli import FlaskGroup, ScriptInfo, with_appcontext

from . import background, create_app
from .accounts import SCOPES, AccountError, find_user, new_token, revoke_token, set_password
from .accounts import create_user as create_account
from .bookmarklet import bookmarklet_token_name, build_bookmarklet
from .config import OPTION, ConfigError, local_url, server_bind, write_problem
from .judgement.ranges import APPLE_EGRESS_URL, RangesError, update_apple_egress
from .notifications import delivery
from .pixel import spool
from .receipts import donottrack, export, retention
from .storage import migrate
from .storage.engine import backup_sqlite, db, sqlite_file
from .storage.models import ApiToken, LoginSession, NotifyChannel
from .ui.signin import account_key, clear_attempts, end_sessions
from .vocabulary import ChannelKind, Scope

NO_DATA_HINT = "run commands where the server runs, or set OPENRECEIPT_DATA_DIR"


class NoData(ConfigError):
    """Neither a data dir here nor a setting that names one (require_data)."""


def require_data(environ=os.environ):
    """Stop, with one line, a command that would find no data: OPENRECEIPT_DATA_DIR and
    OPENRECEIPT_DATABASE_URL unset, and no ./instance where it runs. The server makes its data
    dir on first start; a command run in the wrong directory must not make an empty one there
    (with a database and a secret key of its own) and report on that."""
    if environ.get(OPTION["DATA_DIR"].variable) or environ.get(OPTION["DATABASE_URL"].variable):
        return
    default = OPTION["DATA_DIR"].default
    if not os.path.lexists(default):
        raise NoData(f"no data here ({default} does not exist): {NO_DATA_HINT}")


def _fail_on_account_error(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except AccountError as error:
            raise click.ClickException(str(error)) from None

    return wrapper


def _says_database(function):
    """For the commands that write: say first, on standard error, which database they use."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        click.echo(f"database: {redacted_url(current_app.config['DATABASE_URL'])}", err=True)
        return function(*args, **kwargs)

    return wrapper


def _command_line_app():
    require_data()
    named = os.environ.get(OPTION["DATA_DIR"].variable) or OPTION["DATA_DIR"].default
    new = not os.path.lexists(Path(named).expanduser())
    # The command line needs no start-up announcements (first-run link, GeoIP data).
    app = create_app({"ANNOUNCE_STARTUP": False})
    if new:
        # Only where a setting named the data (require_data): said, never done silently.
        click.echo(f"openreceipt: made the data dir {app.config['DATA_DIR']}", err=True)
    return app


class CommandGroup(FlaskGroup):
    """Flask's command group for its app factory and the app context every command runs in
    (commands are registered with @cli.command and @cli.group), without what it adds for
    Flask's own `flask` command: the --app, --debug and --env-file options, plugin commands,
    and the app's own commands (listing those would start the app just to show --help)."""

    FLASK_OPTIONS = ("env_file", "app", "debug")

    def __init__(self, **kwargs):
        super().__init__(
            add_default_commands=False,  # no development server: it would log raw addresses
            add_version_option=False,  # ours names openreceipt's version, not Flask's
            load_dotenv=False,
            set_debug_flag=False,
            **kwargs,
        )
        self.params = [param for param in self.params if param.name not in self.FLASK_OPTIONS]

    def get_command(self, ctx, name):
        return super(FlaskGroup, self).get_command(ctx, name)

    def list_commands(self, ctx):
        return super(FlaskGroup, self).list_commands(ctx)

    def parse_args(self, ctx, args):
        return super(FlaskGroup, self).parse_args(ctx, args)


@click.group(
    cls=CommandGroup,
    create_app=_command_line_app,
    # Options come from the command line only, not from FLASK_* variables.
    context_settings={"auto_envvar_prefix": None, "help_option_names": ["-h", "--help"]},
)
@click.version_option(
    package_name="openreceipt", prog_name="openreceipt", message="%(prog)s %(version)s"
)
def cli():
    """openreceipt: self-hosted read receipts for email.

    Run commands where the server runs: they use its data dir (OPENRECEIPT_DATA_DIR, default
    ./instance there) or OPENRECEIPT_DATABASE_URL, with its settings. `openreceipt check` shows
    the settings in force and what to fix."""


@cli.group()
def user():
    """Manage users."""


def _read_password(from_stdin):
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@user.command("add")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_says_database
@_fail_on_account_error
def user_add(email, password_stdin):
    """Create a user who signs in with EMAIL."""
    account = create_account(email, _read_password(password_stdin))
    click.echo(f"created user {account.email}", err=True)


@user.command("password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_says_database
@_fail_on_account_error
def user_password(email, password_stdin):
    """Give EMAIL a new password: it ends all their sign-ins, in every browser, and lets every
    network that was told to wait after failed sign-ins try again."""
    account = find_user(email)
    password = _read_password(password_stdin)
    with db.atomic():
        set_password(account, password)
        sessions = LoginSession.select().where(LoginSession.user == account).count()
        end_sessions(account)
        waiting = clear_attempts(account_key(account.email))
    click.echo(
        f"new password for {account.email}: {sessions} sign-ins ended, "
        f"{waiting} networks may try again",
        err=True,
    )


@user.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_says_database
@_fail_on_account_error
def user_delete(email, yes):
    """Delete the user EMAIL with all their receipts, events, tokens and do-not-track entries."""
    account = find_user(email)
    if not yes:
        click.confirm(f"Delete {account.email} and all their data?", abort=True)
    with db.atomic():
        pixels = account.pixels.count()
        # delete_nullable: their do-not-track entries go too, instead of becoming the server's.
        account.delete_instance(recursive=True, delete_nullable=True)
    click.echo(f"deleted user {account.email} and {pixels} receipts", err=True)


@user.command("unlock")
@click.argument("email")
@_says_database
@_fail_on_account_error
def user_unlock(email):
    """Let EMAIL sign in again from every network that was told to wait after failed sign-ins."""
    account = find_user(email)
    waiting = clear_attempts(account_key(account.email))
    if waiting:
        click.echo(f"unlocked {account.email}: {waiting} networks may try again")
    else:
        click.echo(f"{account.email} was not locked from any network; failed sign-ins forgotten")


@cli.group()
def token():
    """Manage API tokens (the bookmarklet uses one)."""


@token.command("new")
@click.argument("email")
@click.option("--name", default="API token", show_default=True, help="What the token is for.")
@_says_database
@_fail_on_account_error
def token_new(email, name):
    """Create an API token for EMAIL and print it (only the token, once)."""
    _, secret = new_token(find_user(email), name)
    click.echo(secret)


@token.command("list")
@click.argument("email")
@_fail_on_account_error
def token_list(email):
    """List EMAIL's API tokens (never the tokens themselves)."""
    rows = ApiToken.select().where(ApiToken.user == find_user(email)).order_by(ApiToken.id)
    for row in rows:
        status = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
        click.echo(
            f"{row.id}\t{row.name}\tcan do {SCOPES[row.scope]}\tcreated {row.created_at:%Y-%m-%d}"
            f"\tlast used {used}\t{status}"
        )


@token.command("revoke")
@click.argument("token_id", type=int)
@_says_database
def token_revoke(token_id):
    """Revoke the API token with this ID (see `openreceipt token list`)."""
    if not revoke_token(token_id):
        raise click.ClickException(f"no active token with ID {token_id}")
    click.echo(f"revoked token {token_id}", err=True)


@cli.command("bookmarklet")
@click.argument("email")
@click.option("--name", help="What to call it (default: 'bookmarklet' and the day).")
@with_appcontext
@_says_database
@_fail_on_account_error
def bookmarklet(email, name):
    """Create a new bookmarklet for EMAIL and print only its javascript: URL. Its key can only
    add receipts."""
    origin = current_app.config["PUBLIC_URL"]
    if origin is None:
        origin = local_url(server_bind())
        click.echo(
            f"OPENRECEIPT_PUBLIC_URL is not set: this bookmarklet talks to {origin}", err=True
        )
    _, secret = new_token(find_user(email), name or bookmarklet_token_name(), Scope.BOOKMARKLET)
    click.echo(build_bookmarklet(origin, secret))


@cli.group()
def ranges():
    """Manage the address ranges of machines that fetch images on delivery."""


@ranges.command("update")
@click.option(
    "--url", default=APPLE_EGRESS_URL, show_default=True, help="Where Apple publishes them."
)
@with_appcontext
def ranges_update(url):
    """Download Apple's iCloud Private Relay egress ranges into the data dir."""
    try:
        count = update_apple_egress(current_app.config["DATA_DIR"], url)
    except RangesError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"stored {count} Apple egress prefixes; restart the server to use them")


@cli.command("purge")
@with_appcontext
@_says_database
def purge():
    """Delete events older than OPENRECEIPT_RETENTION_DAYS now (receipts keep their counts)."""
    days = current_app.config["RETENTION_DAYS"]
    if not days:
        click.echo("OPENRECEIPT_RETENTION_DAYS is 0: events are kept for ever; nothing deleted")
        return
    deleted, touched = retention.purge(days)
    retention.claim_run(force=True)
    click.echo(f"deleted {deleted} events older than {days} days from {touched} receipts")


@cli.group("dnt")
def dnt():
    """Manage do-not-track lists: addresses, domains and top-level domains that get no
    receipts. Without --user, an entry holds for every user of this server."""


def _dnt_owner(email):
    return find_user(email) if email else None


@dnt.command("add")
@click.argument("entries", nargs=-1, required=True)
@click.option("--user", "email", help="The user whose list it is (default: every user's).")
@_says_database
@_fail_on_account_error
def dnt_add(entries, email):
    """Add ENTRIES (bob@example.de, example.de, .de); receipts they cover stop recording."""
    try:
        added, stopped = donottrack.add(_dnt_owner(email), entries)
    except donottrack.EntryError as error:
        raise click.ClickException(str(error)) from None
    whose = email or "every user"
    for entry in added:
        click.echo(f"added {entry} (for {whose})")
    click.echo(f"{stopped} receipts stopped recording", err=True)


@dnt.command("remove")
@click.argument("entry")
@click.option("--user", "email", help="The user whose list it is (default: every user's).")
@_says_database
@_fail_on_account_error
def dnt_remove(entry, email):
    """Remove ENTRY from a do-not-track list."""
    try:
        removed = donottrack.remove(_dnt_owner(email), entry)
    except donottrack.EntryError as error:
        raise click.ClickException(str(error)) from None
    if not removed:
        raise click.ClickException(f"{entry} is not on {email or 'the server'}'s list")
    click.echo(f"removed {donottrack.normalize(entry)}")


@dnt.command("list")
@click.option("--user", "email", help="The user whose list it is (default: every user's).")
@_fail_on_account_error
def dnt_list(email):
    """List the entries of one do-not-track list."""
    for row in donottrack.listed(_dnt_owner(email)):
        click.echo(f"{row.entry}\tadded {row.created_at:%Y-%m-%d}")


@cli.command("export")
@click.argument("email")
@click.option(
    "--format", "form", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@_fail_on_account_error
@with_appcontext
def export_command(email, form):
    """Print all of EMAIL's data (receipts, events, tokens, do-not-track list) as JSON, or their
    receipts and events as CSV."""
    account = find_user(email)
    click.echo(export.as_json(account) if form == "json" else export.as_csv(account), nl=False)


@cli.command("forget")
@click.argument("address")
@click.option(
    "--do-not-track",
    "block",
    is_flag=True,
    help="Also add ADDRESS to the server's do-not-track list, for every user.",
)
@with_appcontext
@_says_database
def forget(address, block):
    """Delete every receipt, of every user, sent to ADDRESS, with its events."""
    if "@" not in address:
        raise click.ClickException(f"{address!r} is not an email address")
    removed = export.forget(address)
    for email, public_id, subject, events in removed:
        click.echo(
            f"deleted receipt {public_id} of {email}: {subject or '(no subject)'!s}"
            f" ({events} events)"
        )
    click.echo(f"deleted {len(removed)} receipts sent to {address.strip().lower()}")
    if current_app.config["STORE_RECIPIENTS"] != "address":
        click.echo(
            "note: OPENRECEIPT_STORE_RECIPIENTS is "
            f"{current_app.config['STORE_RECIPIENTS']}: receipts keep no addresses to match",
            err=True,
        )
    if block:
        added, stopped = donottrack.add(None, [address])
        state = "added to" if added else "already on"
        click.echo(f"{address.strip().lower()} {state} the server's do-not-track list")


@cli.group("spool")
def spool_group():
    """Fetches that waited in this host's spool while the database was away."""


@spool_group.command("replay")
@with_appcontext
@_says_database
def spool_replay():
    """Write the spooled fetches to the database now (the server also does it by itself)."""
    counts = spool.replay(current_app._get_current_object(), wait=True)
    click.echo(
        f"replayed {counts['recorded'] + counts['not_recorded']} fetches: "
        f"{counts['recorded']} recorded, {counts['not_recorded']} not recorded "
        f"(repeats, deleted receipts, already replayed); {counts['rejected']} rejected; "
        f"{counts['left']} left"
    )
    if counts["left"]:
        raise click.ClickException("the database is still unavailable; the rest stays spooled")


@spool_group.command("status")
@with_appcontext
def spool_status():
    """How many fetches wait in this host's spool."""
    click.echo(f"{spool.pending(current_app.config['DATA_DIR'])} fetches spooled")


@cli.group("jobs", invoke_without_command=True)
@click.pass_context
@with_appcontext
def jobs_group(context):
    """The work done beside the requests: list the jobs, or run them in a process of their own."""
    if context.invoked_subcommand is None:
        for job in background.jobs(current_app):
            where = "in the workers" if job.in_workers else "off in the workers: `jobs run`"
            click.echo(f"{job.name}\tevery {job.every:g} s\t{where}")


@jobs_group.command("run")
@click.argument("names", nargs=-1)
@with_appcontext
def jobs_run(names):
    """Run the jobs NAMES (default: those switched off in the workers) until interrupted."""
    app = current_app._get_current_object()
    known = {job.name: job for job in background.jobs(app)}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise click.ClickException(f"no job {', '.join(unknown)}; the jobs: {', '.join(known)}")
    chosen = list(names) or [name for name, job in known.items() if not job.in_workers]
    if not chosen:
        raise click.ClickException("every job runs in the server's workers already")
    _run_jobs(app, chosen)


def _run_jobs(app, names):
    background.start_all(app, names)
    click.echo(f"running {', '.join(names)}; Ctrl+C stops", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        background.stop(app)


@cli.command("notify")
@click.option("--once", is_flag=True, help="Send what is due now, then stop.")
@with_appcontext
def notify_command(once):
    """Send the notices that are due: with --once, what is due now; else the `notify` job until
    interrupted, as `openreceipt jobs run notify` does (for OPENRECEIPT_NOTIFY_IN_WORKERS=off)."""
    app = current_app._get_current_object()
    if not once:
        _run_jobs(app, ["notify"])
        return
    total = dict.fromkeys(("sent", "retry", "failed", "skipped"), 0)
    while True:
        try:
            counts = delivery.deliver_due(app)
        except Exception as error:  # noqa: BLE001 - the database away, say: one clear line
            raise click.ClickException(f"{type(error).__name__}: {error}") from None
        finally:
            db.close()
        for name, count in counts.items():
            total[name] += count
        if sum(counts.values()) < delivery.BATCH:
            break
    click.echo(delivery.summary(total))


@cli.group("db")
def db_group():
    """The database: which one this command uses, and its schema."""


@db_group.command("status")
@with_appcontext
def db_status():
    """Which database, and which schema changes it has (every command applies pending ones)."""
    click.echo(f"database: {redacted_url(current_app.config['DATABASE_URL'])}")
    for name, applied in migrate.status(current_app.extensions["openreceipt.database"]):
        click.echo(f"{name}\t{applied:%Y-%m-%d %H:%M}" if applied else f"{name}\tpending")


@db_group.command("migrate")
@with_appcontext
@_says_database
def db_migrate():
    """Bring the schema up to date now (the server does so on start as well)."""
    applied = current_app.extensions["openreceipt.migrated"]
    click.echo(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")


def redacted_url(url):
    """A database URL without its password (in the address or as a parameter), a SQLite
    file's path made absolute."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///") :]
        return f"sqlite:///{Path(path).resolve()}" if path and path != ":memory:" else url
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    return urlunsplit(parts._replace(query=_without_password(parts.query, "***")))


def _without_password(query, mark=None):
    """A URL's query with its password parameter shown as `mark`, or left out; as it was when
    it has none."""
    if "password" not in dict(parse_qsl(query, keep_blank_values=True)):
        return query
    pairs = [
        (key, mark if key == "password" else value)
        for key, value in parse_qsl(query, keep_blank_values=True)
        if key != "password" or mark is not None
    ]
    return urlencode(pairs, safe="/:=,*") if pairs else ""


# `openreceipt check`: the settings in force, where each comes from, and what to fix.

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


@cli.command(
    "check", with_appcontext=False, short_help="The settings in force; problems and risks."
)
@click.pass_context
def check(context):
    """Show the settings in force and where each comes from, then every problem and risk
    found. Exit status 1 when there is a problem. Prints no secret."""
    findings = Findings()
    try:
        app = context.ensure_object(ScriptInfo).load_app()
    except NoData:
        raise
    except ConfigError as error:
        # The server would not start either: that is the one thing to fix first.
        click.echo(f"problem: {error.message}")
        context.exit(1)
    with app.app_context():
        version = _installed_version()
        click.echo(f"openreceipt {version}: the settings in force [and where they come from]")
        for label, value, origin in _settings_in_force(app, findings):
            click.echo(f"{label:<18}{value}  [{origin}]")
    click.echo()
    for text in findings.problems:
        click.echo(f"problem: {text}")
    for text in findings.risks:
        click.echo(f"risk: {text}")
    click.echo(f"{_count(findings.problems, 'problem')}, {_count(findings.risks, 'risk')}")
    if findings.problems:
        context.exit(1)


def _count(found, word):
    return f"{len(found) or 'no'} {word}{'' if len(found) == 1 else 's'}"


def _installed_version():
    from importlib.metadata import PackageNotFoundError, version

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


def _settings_in_force(app, findings):
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


# `openreceipt backup`: the database and what a restore needs besides it.


@cli.command("backup", short_help="Copy the database and the keys, while the server runs.")
@click.argument("path", type=click.Path(path_type=Path))
def backup_command(path):
    """Copy everything a restore needs into PATH, a new or empty directory, while the server
    runs: the secret key and the rest of the data dir (spool, address ranges), then the
    SQLite database, consistently (PATH/openreceipt.db). With PostgreSQL, it prints the pg_dump
    command that saves the database. docs/operations.md says how to restore."""
    app = current_app._get_current_object()
    target = path.expanduser().resolve()
    data_dir = Path(app.config["DATA_DIR"])
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise click.ClickException(f"{target} is not empty: back up into a new or empty directory")
    if target.is_relative_to(data_dir):
        raise click.ClickException(f"{target} is inside the data dir {data_dir}: choose another")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = app.extensions["openreceipt.database"]
    sqlite = sqlite_file(database)
    click.echo(f"database: {redacted_url(app.config['DATABASE_URL'])}", err=True)

    # The data dir first, the database second: a spooled fetch replayed in between is then in
    # both copies (a restore replays it once more, and finds it recorded), never in neither.
    leave_out = set()
    if sqlite is not None and sqlite.parent == data_dir:
        leave_out = {f"{sqlite.name}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")}
    for name in _copy_data_dir(data_dir, target, leave_out):
        click.echo(f"copied {name}")
    if sqlite is not None:
        size = backup_sqlite(database, target / "openreceipt.db")
        os.chmod(target / "openreceipt.db", 0o600)
        click.echo(f"copied the database ({size:,} bytes) into openreceipt.db")
    else:
        click.echo(
            "the database is PostgreSQL: save it with pg_dump (the password from ~/.pgpass or "
            "PGPASSWORD):"
        )
        click.echo(f"  {_pg_dump_command(app.config['DATABASE_URL'], target)}")
    if OPTION["SECRET_KEY"].variable in os.environ:
        click.echo(
            "the secret key comes from OPENRECEIPT_SECRET_KEY (and its fallbacks), not from a "
            "file: keep it with this backup, or pixels already sent stop working after a restore"
        )
    click.echo(f"backup in {target}")


# Not copied: files SQLite or the spool keep while they work, and half-written ones.
TRANSIENT = (".lock", ".tmp")


def _copy_data_dir(data_dir, target, leave_out):
    """Copy the data dir into `target`, files readable by their owner only, but for the names
    in `leave_out` and TRANSIENT files. The spool is copied while no replay moves its files,
    each of them up to its last whole line. Returns the names copied, relative to the data
    dir."""
    copied = []
    spool_dir = spool.directory(data_dir)
    for source in sorted(data_dir.rglob("*")):
        name = source.relative_to(data_dir)
        if str(name) in leave_out or source.name.startswith(".") or source.suffix in TRANSIENT:
            continue
        if source.is_dir():
            (target / name).mkdir(mode=0o700, exist_ok=True)
        elif source.is_file() and source.parent != spool_dir:
            _copy_file(source, target / name)
            copied.append(str(name))
    if spool_dir.is_dir():
        copied.extend(str(path.relative_to(target)) for path in _copy_spool(spool_dir, target))
    return copied


def _copy_spool(folder, target):
    """Copy the spool's files under the replay lock (web/pixel/spool.py), which every replay
    takes before it moves or removes a file; appends go on meanwhile. Returns the copies."""
    copies = []
    (target / folder.name).mkdir(mode=0o700, exist_ok=True)
    lock = os.open(folder / spool.LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for source in sorted(folder.iterdir()):
            if source.is_file() and source.suffix not in TRANSIENT:
                copy = target / folder.name / source.name
                _copy_file(source, copy, whole_lines=source.suffix == ".jsonl")
                copies.append(copy)
    finally:
        os.close(lock)
    return copies


def _copy_file(source, copy, whole_lines=False):
    """Copy a file, readable by its owner only; with `whole_lines`, up to its last newline (a
    line still being appended is left for the next backup)."""
    descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with source.open("rb") as reading, os.fdopen(descriptor, "wb") as writing:
        while chunk := reading.read(1 << 20):
            writing.write(chunk)
        if whole_lines:
            size = writing.tell()
            writing.flush()
            writing.truncate(_end_of_last_line(copy, size))


def _end_of_last_line(path, size):
    with path.open("rb") as handle:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            end = start
    return 0


def _pg_dump_command(url, target):
    """The pg_dump command line that saves the PostgreSQL database of `url` into `target`,
    with the URL's password left out."""
    parts = urlsplit(url)
    login, _, host = parts.netloc.rpartition("@")
    user = login.partition(":")[0]
    parts = parts._replace(
        netloc=f"{user}@{host}" if user else host, query=_without_password(parts.query)
    )
    dump = target / "openreceipt.dump"
    return shlex.join(["pg_dump", "--format=custom", f"--file={dump}", urlunsplit(parts)])


def main():
    cli.main(prog_name="openreceipt")
