"""The openreceipt command: users and API tokens, jobs, the database, and the operator's own
commands (check, --version, --help). Backups and the command in a fresh shell are in
tests/test_operations.py."""

import os
import re
import stat
from importlib.metadata import version
from pathlib import Path

import pytest

from web import create_app
from web.accounts import authenticate, token_for
from web.storage.engine import close_pool, redacted_url
from web.storage.migrate import MIGRATIONS
from web.storage.models import ApiToken, LoginSession, LoginThrottle, NotifyChannel
from web.ui.signin import THROTTLE_LIMIT, account_key, count_attempt

from .conftest import CommandLine
from .helpers import sign_in

MIGRATIONS_DIR = Path(MIGRATIONS)


def test_user_add_with_password_from_stdin(app, runner):
    result = runner.invoke(
        args=["user", "add", "Ada@Example.com", "--password-stdin"], input="correct horse battery\n"
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert authenticate("ada@example.com", "correct horse battery") is not None


def test_user_add_with_prompted_password(app, runner):
    result = runner.invoke(
        args=["user", "add", "ada@example.com"],
        input="correct horse battery\ncorrect horse battery\n",
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert authenticate("ada@example.com", "correct horse battery") is not None


def test_user_add_explains_refusals(app, runner, user):
    duplicate = runner.invoke(
        args=["user", "add", "ada@example.com", "--password-stdin"], input="another long one\n"
    )
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    short = runner.invoke(
        args=["user", "add", "bob@example.com", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    bad = runner.invoke(
        args=["user", "add", "nobody", "--password-stdin"], input="long enough pw\n"
    )
    assert bad.exit_code == 1 and "not an email address" in bad.output


def test_token_new_prints_only_the_token(app, runner, user):
    result = runner.invoke(args=["token", "new", "ada@example.com", "--name", "bookmarklet"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("or_") and "\n" not in token
    with app.app_context():
        assert token_for(token).user.email == "ada@example.com"
        row = ApiToken.get()
        assert row.name == "bookmarklet" and token not in row.token_hash


def test_token_list_and_revoke(app, runner, user, client):
    token = runner.invoke(
        args=["token", "new", "ada@example.com", "--name", "laptop"]
    ).stdout.strip()
    listing = runner.invoke(args=["token", "list", "ada@example.com"])
    assert listing.exit_code == 0
    assert (
        "laptop" in listing.output
        and "active" in listing.output
        and "last used never" in listing.output
    )
    assert token not in listing.output
    token_id = listing.output.split("\t", 1)[0]

    assert (
        client.get("/api/pixels", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    revoked = runner.invoke(args=["token", "revoke", token_id])
    assert revoked.exit_code == 0, revoked.output
    assert (
        client.get("/api/pixels", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )
    assert "revoked" in runner.invoke(args=["token", "list", "ada@example.com"]).output
    again = runner.invoke(args=["token", "revoke", token_id])
    assert again.exit_code == 1 and "no active token" in again.output


def test_bookmarklet_takes_a_name_and_its_key_only_adds_receipts(app, runner, user, client):
    result = runner.invoke(args=["bookmarklet", "ada@example.com", "--name", "Work laptop"])
    assert result.exit_code == 0, result.output
    token = re.search(r"var%20TOKEN=%22(or_[A-Za-z0-9_-]+)%22", result.stdout).group(1)
    with app.app_context():
        row = ApiToken.get()
        assert (row.name, row.scope) == ("Work laptop", "bookmarklet")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/pixels", json={}, headers=headers).status_code == 201
    assert client.get("/api/pixels", headers=headers).status_code == 403


def test_token_list_shows_what_each_token_can_do(app, runner, user):
    assert (
        runner.invoke(args=["token", "new", "ada@example.com", "--name", "laptop"]).exit_code == 0
    )
    assert runner.invoke(args=["bookmarklet", "ada@example.com", "--name", "phone"]).exit_code == 0
    listing = runner.invoke(args=["token", "list", "ada@example.com"])
    assert listing.exit_code == 0, listing.output
    scopes = {line.split("\t")[1]: line.split("\t")[2] for line in listing.output.splitlines()}
    assert scopes == {
        "laptop": "can do everything (scripts)",
        "phone": "can do only add receipts (bookmarklet)",
    }


def test_token_for_unknown_user(app, runner):
    result = runner.invoke(args=["token", "new", "nobody@example.com"])
    assert result.exit_code == 1 and "no user nobody@example.com" in result.output


def test_jobs_lists_the_background_work_and_where_it_runs(runner):
    result = runner.invoke(args=["jobs"])
    assert result.exit_code == 0, result.output
    # The test settings switch every job off in the workers: `jobs run` would run them.
    lines = result.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["retention", "spool", "notify"]
    assert all(line.endswith("off in the workers: `jobs run`") for line in lines)
    unknown = runner.invoke(args=["jobs", "run", "cron"])
    assert unknown.exit_code != 0
    assert "no job cron; the jobs: retention, spool, notify" in unknown.output


def test_db_status_names_the_database_and_every_schema_change(app, runner, settings, database):
    result = runner.invoke(args=["db", "status"])
    assert result.exit_code == 0, result.output
    first, *rows = result.output.splitlines()
    url = app.config["DATABASE_URL"]
    assert first == f"database: {url}"  # the test databases have no password
    names = sorted(path.stem for path in MIGRATIONS_DIR.glob("0*.py"))
    assert [row.split("\t")[0] for row in rows] == names
    assert all(row.split("\t")[1] != "pending" for row in rows)  # start-up applied them all
    # An app brings the schema up to date as it starts: the next one finds nothing to do.
    later = create_app(settings)
    try:
        with later.app_context():  # the `database` fixture holds the first app's context
            again = CommandLine(later).invoke(args=["db", "migrate"])
    finally:
        close_pool(later)
    assert again.exit_code == 0 and "the schema is up to date" in again.output
    assert again.stderr == f"database: {url}\n"


def test_database_urls_are_shown_without_their_password():
    assert (
        redacted_url("postgresql://receipts:s3cr%40t@db.internal:5432/openreceipt")
        == "postgresql://receipts:***@db.internal:5432/openreceipt"
    )
    assert (
        redacted_url(
            "postgresql://receipts@db.internal/openreceipt?password=s3cret&sslmode=require"
        )
        == "postgresql://receipts@db.internal/openreceipt?password=***&sslmode=require"
    )
    assert redacted_url("sqlite:////srv/openreceipt/openreceipt.db") == (
        "sqlite:////srv/openreceipt/openreceipt.db"
    )


def test_a_relative_sqlite_path_is_shown_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert redacted_url("sqlite:///data/x.db") == f"sqlite:///{tmp_path / 'data' / 'x.db'}"


# Which database a command wrote to.

WRITING_COMMANDS = [
    (["user", "add", "bob@example.com", "--password-stdin"], "a long enough password\n"),
    (["user", "password", "ada@example.com", "--password-stdin"], "a brand new password\n"),
    (["user", "unlock", "ada@example.com"], None),
    (["token", "new", "ada@example.com"], None),
    (["token", "revoke", "1"], None),
    (["bookmarklet", "ada@example.com"], None),
    (["dnt", "add", "example.de"], None),
    (["dnt", "remove", "example.de"], None),
    (["purge"], None),
    (["forget", "bob@example.de"], None),
    (["spool", "replay"], None),
    (["db", "migrate"], None),
    (["user", "delete", "ada@example.com", "--yes"], None),
]


def test_commands_that_write_name_their_database_on_stderr(app, runner, user):
    url = app.config["DATABASE_URL"]
    for args, given in WRITING_COMMANDS:
        result = runner.invoke(args=args, input=given)
        assert result.exit_code == 0, (args, result.output)
        assert result.stderr.splitlines()[0] == f"database: {url}", args
        assert "database:" not in result.stdout, args
    for args in (["token", "list", "bob@example.com"], ["dnt", "list"], ["jobs"]):
        assert "database:" not in runner.invoke(args=args).output, args


# user password


def test_user_password_ends_every_sign_in_and_every_lockout(app, runner, user, client):
    assert sign_in(client).status_code == 302
    assert client.get("/settings").status_code == 200
    with app.test_request_context():
        for _ in range(THROTTLE_LIMIT):
            count_attempt(account_key("ada@example.com"), "a network's key")
    result = runner.invoke(
        args=["user", "password", "Ada@Example.com", "--password-stdin"],
        input="a brand new password\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[1] == (
        "new password for ada@example.com: 1 sign-ins ended, 1 networks may try again"
    )
    assert result.stdout == ""
    with app.app_context():
        assert authenticate("ada@example.com", "correct horse battery") is None
        assert authenticate("ada@example.com", "a brand new password") is not None
        assert LoginSession.select().count() == 0
        assert LoginThrottle.select().count() == 0
    # The browser that was signed in is signed out.
    assert client.get("/settings").status_code == 302


def test_user_password_asks_twice_and_explains_refusals(app, runner, user):
    prompted = runner.invoke(
        args=["user", "password", "ada@example.com"],
        input="a brand new password\na brand new password\n",
    )
    assert prompted.exit_code == 0, prompted.output
    with app.app_context():
        assert authenticate("ada@example.com", "a brand new password") is not None
    short = runner.invoke(
        args=["user", "password", "ada@example.com", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    unknown = runner.invoke(
        args=["user", "password", "bob@example.com", "--password-stdin"], input="long enough pw\n"
    )
    assert unknown.exit_code == 1 and "no user bob@example.com" in unknown.output


# --version and --help


def test_version_is_the_installed_distributions(runner):
    result = runner.invoke(args=["--version"])
    assert result.exit_code == 0
    assert result.output == f"openreceipt {version('openreceipt')}\n"


def test_help_shows_only_openreceipts_commands(runner):
    result = runner.invoke(args=["--help"])
    assert result.exit_code == 0, result.output
    for flask_option in ("--app", "--debug", "--env-file", "-A,", "-e,"):
        assert flask_option not in result.output
    commands = result.output.split("Commands:", 1)[1].split()
    for command in ("backup", "check", "db", "user", "token", "purge", "spool", "jobs"):
        assert command in commands
    for flask_command in ("run", "shell", "routes"):
        assert flask_command not in commands
    assert "--version" in result.output
    user_help = runner.invoke(args=["user", "--help"])
    assert {"add", "delete", "password", "unlock"} <= set(user_help.output.split())


def test_options_are_not_read_from_flask_variables(runner, user, monkeypatch):
    monkeypatch.setenv("FLASK_USER_DELETE_YES", "1")
    result = runner.invoke(args=["user", "delete", "ada@example.com"], input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output


# check


def check_lines(result):
    return result.stdout.splitlines()


def test_check_shows_the_settings_in_force_and_where_they_come_from(app, runner):
    result = runner.invoke(args=["check"])
    lines = check_lines(result)
    assert result.exit_code == 0, result.output
    assert (
        lines[0]
        == f"openreceipt {version('openreceipt')}: the settings in force [and where they come from]"
    )
    shown = {line[:18].strip(): line[18:] for line in lines[1:] if line and line[:18].strip()}
    data_dir = app.config["DATA_DIR"]
    assert shown["data dir"] == f"{data_dir}  [given to create_app()]"
    sqlite = app.config["DATABASE_URL"].startswith("sqlite")
    # The test's SQLite URL is the one the data dir gives; PostgreSQL's was given.
    origin = "default: in the data dir" if sqlite else "given to create_app()"
    assert shown["database"] == f"{app.config['DATABASE_URL']}  [{origin}]"
    assert shown["schema"].startswith(f"all {len(list(MIGRATIONS_DIR.glob('0*.py')))} changes")
    assert shown["public URL"] == "https://receipts.example.com  [given to create_app()]"
    assert shown["trusted proxies"] == "0  [default]"
    assert re.search(
        r"test-city\.mmdb\), [01] days old  \[given to create_app\(\)\]$", shown["GeoIP data"]
    )
    assert shown["operator contact"] == "not set  [default]"
    assert shown["SMTP"] == "not set: no email notices  [default]"
    assert shown["retention"] == "90 days  [default]"
    assert shown["secret key"] == (
        f"{data_dir}/secret_key: present, readable, mode 0600  [generated into the data dir]"
    )
    assert app.config["SECRET_KEY"] not in result.output
    # A fresh test GeoIP database, no email channel: risks, but no problem.
    assert not any(line.startswith("problem:") for line in lines)
    risks = [line for line in lines if line.startswith("risk: ")]
    assert [risk.split()[1] for risk in risks] == [
        "OPENRECEIPT_TRUSTED_PROXIES",
        "OPENRECEIPT_OPERATOR_CONTACT",
    ]
    assert lines[-1] == "no problems, 2 risks"


def test_check_names_the_environment_as_the_source(settings, monkeypatch):
    monkeypatch.setenv("OPENRECEIPT_TRUSTED_PROXIES", "1")
    monkeypatch.setenv("OPENRECEIPT_OPERATOR_CONTACT", "privacy@example.com")
    overrides = {k: v for k, v in settings.items() if k not in ("TRUSTED_PROXIES",)}
    app = create_app(overrides)
    try:
        result = CommandLine(app).invoke(args=["check"])
    finally:
        close_pool(app)
    assert result.exit_code == 0, result.output
    assert "trusted proxies   1  [OPENRECEIPT_TRUSTED_PROXIES]" in result.stdout
    assert "privacy@example.com  [OPENRECEIPT_OPERATOR_CONTACT]" in result.stdout
    assert check_lines(result)[-1] == "no problems, no risks"


def test_check_problems_make_its_exit_status_1(app_with, user):
    app = app_with(PUBLIC_URL=None)
    with app.app_context():
        NotifyChannel.create(user=user, kind="email", target="ada@example.com")
    result = CommandLine(app).invoke(args=["check"])
    assert result.exit_code == 1
    problems = [line for line in check_lines(result) if line.startswith("problem: ")]
    assert len(problems) == 2
    assert problems[0].startswith("problem: OPENRECEIPT_PUBLIC_URL is not set")
    assert "http://127.0.0.1:8000/p/…" in problems[0]
    assert problems[1] == (
        "problem: 1 users have an email channel but OPENRECEIPT_SMTP_URL is not set: their email "
        "notices are never sent"
    )
    assert "public URL        not set: addresses follow each request's Host" in result.stdout
    assert check_lines(result)[-1] == "2 problems, 2 risks"


def test_check_shows_no_password_and_no_secret(app_with):
    app = app_with(
        PUBLIC_URL="http://receipts.example.com",
        SMTP_URL="smtps://mailer:sm7p-pa55word@mail.example.com",
        SECRET_KEY="a-secret-key-nobody-may-see",
        SECRET_KEY_FALLBACKS="a-retired-key-nobody-may-see",
        RETENTION_DAYS=0,
    )
    result = CommandLine(app).invoke(args=["check"])
    assert result.exit_code == 0, result.output
    for secret in ("sm7p-pa55word", "nobody-may-see", "mailer"):
        assert secret not in result.output
    assert "SMTP              mail.example.com:465, ssl  [given to create_app()]" in result.stdout
    assert "retention         0: kept until the receipt is deleted" in result.stdout
    assert "secret key        set, not from a file" in result.stdout
    assert "1 retired keys still accepted for pixels" in result.stdout
    assert "risk: OPENRECEIPT_PUBLIC_URL http://receipts.example.com is not https" in result.stdout


def test_check_warns_of_a_secret_key_and_a_database_others_can_read(app, runner):
    key = Path(app.config["DATA_DIR"]) / "secret_key"
    key.chmod(0o644)
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    assert f"risk: {key} has mode 0644: other users of this machine can read the key" in (
        result.stdout
    )
    assert "secret_key: present, readable, mode 0644" in result.stdout
    if app.config["DATABASE_URL"].startswith("sqlite"):
        # A database the server makes is its owner's only.
        database = Path(app.config["DATA_DIR"]) / "openreceipt.db"
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        database.chmod(0o644)
        again = runner.invoke(args=["check"])
        assert f"risk: the database {database} has mode 0644" in again.stdout


def test_check_says_when_the_geoip_data_is_old(app_with):
    app = app_with(GEOIP_DATABASE=None)  # the bundled 2018 snapshot
    result = CommandLine(app).invoke(args=["check"])
    assert "[default: the bundled snapshot]" in result.stdout
    assert "risk: the GeoIP data was built 2018-" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_check_warns_of_files_another_user_owns(app, runner):
    spool_dir = Path(app.config["DATA_DIR"]) / "spool"
    spool_dir.mkdir(exist_ok=True)
    os.chown(Path(app.config["DATA_DIR"]), 65534, 65534)
    try:
        result = runner.invoke(args=["check"])
    finally:
        os.chown(Path(app.config["DATA_DIR"]), 0, 0)
    [risk] = [line for line in result.stdout.splitlines() if "another user" in line]
    assert risk.startswith("risk: ") and "secret_key" in risk or "more in the data dir" in risk
