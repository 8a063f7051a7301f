"""The `openreceipt` command: accounts and API tokens."""

import functools
import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from .accounts import AccountError, find_user, new_token, revoke_token
from .accounts import create_user as create_account
from .bookmarklet import bookmarklet_token_name, build_bookmarklet
from .config import local_url, server_bind
from .models import ApiToken
from .ranges import APPLE_EGRESS_URL, RangesError, update_apple_egress


def _fail_on_account_error(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except AccountError as error:
            raise click.ClickException(str(error)) from None

    return wrapper


def _command_line_app():
    from . import create_app  # web/__init__.py imports this module

    # The command line needs no start-up announcements (first-run link, GeoIP data).
    return create_app({"ANNOUNCE_STARTUP": False})


@click.group(
    cls=FlaskGroup,
    create_app=_command_line_app,
    add_default_commands=False,  # no development server: it would log raw client addresses
    add_version_option=False,
    load_dotenv=False,
)
def cli():
    """openreceipt: self-hosted read receipts for email."""


@click.group()
def user():
    """Manage users."""


@user.command("add")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_fail_on_account_error
def user_add(email, password_stdin):
    """Create a user who signs in with EMAIL."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    account = create_account(email, password)
    click.echo(f"created user {account.email}", err=True)


@click.group()
def token():
    """Manage API tokens (the bookmarklet uses one)."""


@token.command("new")
@click.argument("email")
@click.option("--name", default="API token", show_default=True, help="What the token is for.")
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
            f"{row.id}\t{row.name}\tcreated {row.created_at:%Y-%m-%d}\tlast used {used}\t{status}"
        )


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id):
    """Revoke the API token with this ID (see `openreceipt token list`)."""
    if not revoke_token(token_id):
        raise click.ClickException(f"no active token with ID {token_id}")
    click.echo(f"revoked token {token_id}", err=True)


@click.command("bookmarklet")
@click.argument("email")
@_fail_on_account_error
@with_appcontext
def bookmarklet(email):
    """Create a token for a new bookmarklet for EMAIL and print only its javascript: URL."""
    origin = current_app.config["PUBLIC_URL"]
    if origin is None:
        origin = local_url(server_bind())
        click.echo(
            f"OPENRECEIPT_PUBLIC_URL is not set: this bookmarklet talks to {origin}", err=True
        )
    _, secret = new_token(find_user(email), bookmarklet_token_name())
    click.echo(build_bookmarklet(origin, secret))


@click.group()
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


def init_app(app):
    """Make the commands part of the app, so `openreceipt` and app.test_cli_runner() see them."""
    app.cli.add_command(user)
    app.cli.add_command(token)
    app.cli.add_command(ranges)
    app.cli.add_command(bookmarklet)


def main():
    cli.main(prog_name="openreceipt")
