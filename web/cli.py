"""The `openreceipt` command: accounts, API tokens, bookmarklets, address ranges, and the
privacy tools (purge, do-not-track, export, forget), the spool, notification delivery, the
background jobs, the database, and the operator's own: `check` and `backup`.

Every command works on the server's data: OPENRECEIPT_DATA_DIR (default ./instance, where the
command runs) or OPENRECEIPT_DATABASE_URL. A command never makes a ./instance of its own: where
there is none and neither is set, it stops with one line (require_data). Commands that write
say on standard error which database they wrote to.

Long, and kept in one file on purpose: every command is a few lines that call into the wings,
and one file reads as the list of everything an operator can do from the shell."""

import functools
import os
import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, ScriptInfo, with_appcontext

from . import background, backup, checkup, create_app
from .accounts import SCOPES, AccountError, find_user, new_token, revoke_token, set_password
from .accounts import create_user as create_account
from .bookmarklet import bookmarklet_token_name, build_bookmarklet
from .config import OPTION, ConfigError, local_url, server_bind
from .judgement.ranges import APPLE_EGRESS_URL, RangesError, update_apple_egress
from .notifications import delivery, reminders
from .pixel import spool
from .receipts import donottrack, export, retention
from .storage import migrate
from .storage.engine import WRITERS_SUFFIX, backup_sqlite, db, redacted_url, sqlite_file
from .storage.models import ApiToken, LoginSession
from .ui.signin import account_key, clear_attempts, end_sessions
from .vocabulary import Scope

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
            reminded = reminders.queue_due()
            counts = delivery.deliver_due(app)
        except Exception as error:  # noqa: BLE001 - the database away, say: one clear line
            raise click.ClickException(f"{type(error).__name__}: {error}") from None
        finally:
            db.close()
        for name, count in counts.items():
            total[name] += count
        if sum(counts.values()) < delivery.BATCH and reminded < reminders.BATCH:
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


@cli.command(
    "check", with_appcontext=False, short_help="The settings in force; problems and risks."
)
@click.pass_context
def check(context):
    """Show the settings in force and where each comes from, then every problem and risk
    found. Exit status 1 when there is a problem. Prints no secret."""
    findings = checkup.Findings()
    try:
        app = context.ensure_object(ScriptInfo).load_app()
    except NoData:
        raise
    except ConfigError as error:
        # The server would not start either: that is the one thing to fix first.
        click.echo(f"problem: {error.message}")
        context.exit(1)
    with app.app_context():
        version = checkup.installed_version()
        click.echo(f"openreceipt {version}: the settings in force [and where they come from]")
        for label, value, origin in checkup.settings_in_force(app, findings):
            click.echo(f"{label:<18}{value}  [{origin}]")
    click.echo()
    for text in findings.problems:
        click.echo(f"problem: {text}")
    for text in findings.risks:
        click.echo(f"risk: {text}")
    click.echo(
        f"{checkup.count(findings.problems, 'problem')}, {checkup.count(findings.risks, 'risk')}"
    )
    if findings.problems:
        context.exit(1)


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
        suffixes = ("", "-wal", "-shm", "-journal", WRITERS_SUFFIX)
        leave_out = {f"{sqlite.name}{suffix}" for suffix in suffixes}
    for name in backup.copy_data_dir(data_dir, target, leave_out):
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
        click.echo(f"  {backup.pg_dump_command(app.config['DATABASE_URL'], target)}")
    if OPTION["SECRET_KEY"].variable in os.environ:
        click.echo(
            "the secret key comes from OPENRECEIPT_SECRET_KEY (and its fallbacks), not from a "
            "file: keep it with this backup, or pixels already sent stop working after a restore"
        )
    click.echo(f"backup in {target}")


def main():
    cli.main(prog_name="openreceipt")
