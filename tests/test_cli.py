"""The openreceipt command: users and API tokens, jobs, the database."""

import re
from pathlib import Path

from web import create_app
from web.accounts import authenticate, token_for
from web.cli import redacted_url
from web.storage.engine import close_pool
from web.storage.migrate import MIGRATIONS
from web.storage.models import ApiToken

from .conftest import CommandLine

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


def test_database_urls_are_shown_without_their_password():
    assert (
        redacted_url("postgresql://receipts:s3cr%40t@db.internal:5432/openreceipt")
        == "postgresql://receipts:***@db.internal:5432/openreceipt"
    )
    assert redacted_url("sqlite:////srv/openreceipt/openreceipt.db").endswith("openreceipt.db")
