"""Running a server: the command in a fresh shell (which data it finds), start-up on a database
it cannot write, backups and their restore, the warnings the workers log when the proxy in
front and the settings disagree, and the version. The commands' own tests are in
tests/test_cli.py; docs/operations.md is what these hold the server to."""

import logging
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import click
import pytest

from web import backup, create_app
from web.backup import pg_dump_command
from web.cli import cli
from web.config import ConfigError
from web.storage.engine import close_pool
from web.storage.models import Pixel, User

from .conftest import CommandLine
from .helpers import mint, pixel_path
from .servers import BIN, ROOT

OPENRECEIPT = str(BIN / "openreceipt")
NO_DATA = (
    "openreceipt: no data here (./instance does not exist): run commands where the server runs, "
    "or set OPENRECEIPT_DATA_DIR\n"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


def shell(cwd, *args, input=None, **settings):
    """`openreceipt ARGS` as an operator runs it: in `cwd`, with no setting but `settings`
    (OPENRECEIPT_<name>=value) and no other variable of this test run."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    environment.update({f"OPENRECEIPT_{key}": str(value) for key, value in settings.items()})
    return subprocess.run(
        [OPENRECEIPT, *args],
        cwd=cwd,
        env=environment,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


# Which data a command finds.


@pytest.mark.parametrize(
    "args",
    [
        ["db", "status"],
        ["user", "add", "ada@example.com", "--password-stdin"],
        ["token", "list", "ada@example.com"],
        ["check"],
        ["backup", "saved"],
        ["spool", "status"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_command_where_there_is_no_data_stops_with_one_line(tmp_path, args):
    result = shell(tmp_path, *args, input="a long enough password\n")
    assert result.returncode == 1
    assert result.stderr == NO_DATA
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no ./instance, nothing at all


def test_help_and_version_need_no_data(tmp_path):
    helped = shell(tmp_path, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Commands:" in helped.stdout and "--app" not in helped.stdout
    assert "check" in helped.stdout.split("Commands:")[1]
    versioned = shell(tmp_path, "--version")
    assert versioned.returncode == 0
    assert versioned.stdout == f"openreceipt {project_version()}\n"
    assert list(tmp_path.iterdir()) == []


def test_commands_use_the_instance_where_they_run(tmp_path):
    (tmp_path / "instance").mkdir()
    added = shell(
        tmp_path,
        "user",
        "add",
        "ada@example.com",
        "--password-stdin",
        input="a long enough password\n",
        GEOIP_DATABASE="off",
    )
    assert added.returncode == 0, added.stderr
    database = tmp_path / "instance" / "openreceipt.db"
    assert added.stderr == f"database: sqlite:///{database}\ncreated user ada@example.com\n"
    # From anywhere else, OPENRECEIPT_DATA_DIR finds the same data.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = shell(elsewhere, "db", "status", DATA_DIR=tmp_path / "instance", GEOIP_DATABASE="off")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"database: sqlite:///{database}"
    listed = shell(elsewhere, "token", "list", "ada@example.com", DATA_DIR=tmp_path / "instance")
    assert listed.returncode == 0, listed.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_data_dir_a_setting_names_is_made_and_said(tmp_path):
    named = tmp_path / "srv" / "data"
    result = shell(tmp_path, "db", "status", DATA_DIR=named, GEOIP_DATABASE="off")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"openreceipt: made the data dir {named}\n"
    assert (named / "openreceipt.db").exists()
    again = shell(tmp_path, "db", "status", DATA_DIR=named, GEOIP_DATABASE="off")
    assert again.stderr == ""


def test_an_explicit_database_needs_no_instance_here(tmp_path, database_url):
    if database_url.startswith("sqlite"):
        Path(database_url[len("sqlite:///") :]).parent.mkdir()
    result = shell(tmp_path, "db", "status", DATABASE_URL=database_url, GEOIP_DATABASE="off")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database: ")
    # The key and the spool still need a data dir: made, and said so.
    assert result.stderr == f"openreceipt: made the data dir {tmp_path / 'instance'}\n"


def test_check_in_a_fresh_shell(tmp_path):
    (tmp_path / "instance").mkdir()
    problems = shell(tmp_path, "check", GEOIP_DATABASE="off")
    assert problems.returncode == 1, problems.stdout + problems.stderr
    assert "problem: OPENRECEIPT_PUBLIC_URL is not set" in problems.stdout
    assert (
        "GeoIP data        no GeoIP database: locations stay empty  [OPENRECEIPT_GEOIP_DATABASE]"
        in (problems.stdout)
    )
    assert "data dir          " + str(tmp_path / "instance") + "  [default: ./instance" in (
        problems.stdout
    )
    fine = shell(
        tmp_path,
        "check",
        GEOIP_DATABASE="off",
        PUBLIC_URL="https://receipts.example.com",
        TRUSTED_PROXIES=1,
        OPERATOR_CONTACT="privacy@example.com",
        SMTP_URL="smtp://mailer:pa55-w0rd-of-smtp@mail.example.com",
        SMTP_FROM="receipts@example.com",
    )
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert fine.stdout.splitlines()[-1] == "no problems, no risks"
    assert "pa55-w0rd-of-smtp" not in fine.stdout + fine.stderr
    key = (tmp_path / "instance" / "secret_key").read_text().strip()
    assert key not in fine.stdout + fine.stderr


def test_check_reports_a_setting_the_server_would_refuse(tmp_path):
    (tmp_path / "instance").mkdir()
    result = shell(tmp_path, "check", TRUSTED_PROXIES="many")
    assert result.returncode == 1
    assert result.stdout == (
        "problem: OPENRECEIPT_TRUSTED_PROXIES must be a whole number >= 0, got 'many'\n"
    )
    assert result.stderr == ""


# Start-up on a database that cannot be written: one line, no traceback.


def test_a_directory_where_the_database_should_be_stops_start_up(tmp_path):
    (tmp_path / "instance" / "openreceipt.db").mkdir(parents=True)
    result = shell(tmp_path, "db", "status", GEOIP_DATABASE="off")
    assert result.returncode == 1
    database = tmp_path / "instance" / "openreceipt.db"
    assert result.stderr == (
        f"openreceipt: the database {database} is a directory, not a database file: move it "
        "away, or point OPENRECEIPT_DATABASE_URL at the database\n"
    )
    with pytest.raises(ConfigError, match="is a directory, not a database file"):
        create_app({"DATA_DIR": str(tmp_path / "instance"), "GEOIP_DATABASE": "off"})


def test_a_secret_key_that_cannot_be_read_stops_start_up(tmp_path):
    # As root, no permission stops a read: a directory in the key's place does.
    (tmp_path / "instance" / "secret_key").mkdir(parents=True)
    result = shell(tmp_path, "db", "status", GEOIP_DATABASE="off")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"openreceipt: {tmp_path / 'instance' / 'secret_key'} cannot be read (Is a directory): "
        "let the user openreceipt runs as ("
    )
    assert result.stderr.count("\n") == 1


def test_a_database_in_a_missing_directory_stops_start_up(tmp_path):
    database = tmp_path / "nowhere" / "receipts.db"
    result = shell(
        tmp_path, "db", "status", DATABASE_URL=f"sqlite:///{database}", GEOIP_DATABASE="off"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"openreceipt: cannot make the database {database}: {database.parent} does not exist; "
        "make it, or correct OPENRECEIPT_DATABASE_URL"
    )
    assert "Traceback" not in result.stderr


def read_only(*paths):
    """A shell command that runs the rest of its line with each of `paths` bind-mounted
    read-only onto itself, in a mount namespace of its own (nothing outside it sees the mounts,
    which end with it). Permission bits would not do: the tests may run as root, whom they do
    not stop; a read-only mount stops root too."""
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(path))} && "
        f"mount -o remount,bind,ro {shlex.quote(str(path))}"
        for path in paths
    )
    return ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "read-only"]


@pytest.fixture
def mounts_allowed(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        result = subprocess.run(
            [*read_only(probe), "sh", "-c", f"touch {probe}/x"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if "Read-only file system" not in result.stderr:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
    probe.rmdir()


def start_in(tmp_path, *args, wrap=()):
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "OPENRECEIPT_DATA_DIR": str(tmp_path / "data"),
        "OPENRECEIPT_GEOIP_DATABASE": "off",
    }
    return subprocess.run(
        [*wrap, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )


SERVER_START = [str(BIN / "python"), "-c", "from web import create_app; create_app()"]


@pytest.mark.parametrize("start", [[OPENRECEIPT, "db", "status"], SERVER_START], ids=["cli", "app"])
def test_a_read_only_database_file_stops_start_up_with_one_line(tmp_path, mounts_allowed, start):
    assert start_in(tmp_path, OPENRECEIPT, "db", "status").returncode == 0  # made, migrated
    database = tmp_path / "data" / "openreceipt.db"
    # Before the fix, this started, and the first fetch or sign-in failed with a traceback.
    result = start_in(tmp_path, *start, wrap=read_only(database))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"openreceipt: cannot write the database {database}: {database} is on a read-only "
        "file system; let the user openreceipt runs as"
    )
    assert "write the file, its -wal and -shm files and their directory" in result.stderr


@pytest.mark.parametrize("start", [[OPENRECEIPT, "db", "status"], SERVER_START], ids=["cli", "app"])
def test_a_read_only_data_dir_stops_start_up_with_one_line(tmp_path, mounts_allowed, start):
    assert start_in(tmp_path, OPENRECEIPT, "db", "status").returncode == 0
    data_dir = tmp_path / "data"
    result = start_in(tmp_path, *start, wrap=read_only(data_dir))
    assert result.returncode == 1
    assert result.stderr == (
        f"openreceipt: OPENRECEIPT_DATA_DIR {data_dir} is on a read-only file system: let the "
        "user openreceipt runs as write to it, or set OPENRECEIPT_DATA_DIR to a directory it may "
        "write\n"
    )


# Backups.


# The `database_url` fixture (tests/conftest.py) for one database only.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
POSTGRESQL_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)


@SQLITE_ONLY
def test_backup_of_a_live_sqlite_database_restores_with_a_working_key(
    app, settings, client, auth, tmp_path
):
    pixel = mint(client, auth, subject="Notice to quit")
    before = client.get(pixel_path(pixel["url"]), headers={"User-Agent": THUNDERBIRD})
    assert before.headers["X-Openreceipt"].startswith("recorded")
    data_dir = Path(app.config["DATA_DIR"])
    (data_dir / "scanner-ranges.txt").write_text("192.0.2.0/24  # a scanner\n")

    # Another connection writes all the while, one committed row at a time.
    database = data_dir / "openreceipt.db"
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("CREATE TABLE written (n INTEGER PRIMARY KEY)")
    stop, counted = threading.Event(), []

    def write():
        with sqlite3.connect(database, isolation_level=None, timeout=5) as connection:
            n = 0
            while not stop.is_set():
                n += 1
                connection.execute("INSERT INTO written VALUES (?)", (n,))
            counted.append(n)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while writer.execute("SELECT count(*) FROM written").fetchone()[0] < 100:
            assert time.monotonic() < deadline, "the writer did not get going"
            time.sleep(0.01)
        result = CommandLine(app).invoke(args=["backup", str(tmp_path / "saved")])
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert result.exit_code == 0, result.output
    saved = tmp_path / "saved"
    assert result.stderr == f"database: sqlite:///{database}\n"
    assert "copied secret_key" in result.stdout and "copied scanner-ranges.txt" in result.stdout
    assert result.stdout.splitlines()[-1] == f"backup in {saved}"
    assert app.config["SECRET_KEY"] not in result.output
    assert sorted(path.name for path in saved.iterdir()) == [
        "openreceipt.db",
        "scanner-ranges.txt",
        "secret_key",
    ]
    assert all(path.stat().st_mode & 0o077 == 0 for path in saved.iterdir())

    # One consistent moment: every row up to some n, none after it, while more kept coming.
    with sqlite3.connect(saved / "openreceipt.db") as copy:
        rows = [n for (n,) in copy.execute("SELECT n FROM written ORDER BY n")]
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert rows == list(range(1, len(rows) + 1)) and 100 <= len(rows) <= counted[0]

    # Restore: the files into a new data dir; the pixel sent before the backup still counts.
    restored = tmp_path / "restored"
    shutil.copytree(saved, restored)
    again = create_app({**settings, "DATA_DIR": str(restored), "DATABASE_URL": None})
    try:
        with again.app_context():
            assert [user.email for user in User.select()] == ["ada@example.com"]
            receipt = Pixel.get(Pixel.public_id == pixel["id"])
            assert receipt.subject == "Notice to quit" and receipt.open_count == 1
        fetched = again.test_client().get(
            pixel_path(pixel["url"]),
            headers={"User-Agent": THUNDERBIRD},
            environ_base={"REMOTE_ADDR": "81.2.69.160"},
        )
        assert fetched.headers["X-Openreceipt"].startswith("recorded"), fetched.headers
    finally:
        close_pool(again)

    # Without the key, every pixel already sent is worth nothing: the key is the backup too.
    (restored / "secret_key").unlink()
    keyless = create_app({**settings, "DATA_DIR": str(restored), "DATABASE_URL": None})
    try:
        lost = keyless.test_client().get(pixel_path(pixel["url"]))
        assert lost.headers["X-Openreceipt"] == "not recorded: invalid signature"
    finally:
        close_pool(keyless)


@SQLITE_ONLY
def test_backup_copies_the_spool_in_whole_lines_and_leaves_out_what_is_transient(app, tmp_path):
    data_dir = Path(app.config["DATA_DIR"])
    spool_dir = data_dir / "spool"
    spool_dir.mkdir()
    (spool_dir / "active.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "half')
    (spool_dir / "batch-00000000000000000001-1.jsonl").write_text('{"b": 1}\n')
    (spool_dir / "dropped").write_text("7\n")
    (spool_dir / "replay.lock").touch()
    (spool_dir / "journal-77-1.jsonl").write_text('{"j": 1}\n')
    (spool_dir / ".journal-78-1.jsonl").write_text('{"j": 2}\n')  # a journal being made
    (data_dir / ".secret_key.123.abcd").write_text("half made")
    result = CommandLine(app).invoke(args=["backup", str(tmp_path / "saved")])
    assert result.exit_code == 0, result.output
    saved = tmp_path / "saved"
    assert sorted(str(path.relative_to(saved)) for path in saved.rglob("*")) == [
        "openreceipt.db",
        "secret_key",
        "spool",
        "spool/active.jsonl",
        "spool/batch-00000000000000000001-1.jsonl",
        "spool/dropped",
        "spool/journal-77-1.jsonl",
    ]
    assert (saved / "spool" / "active.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
    assert (saved / "spool" / "dropped").read_text() == "7\n"


def test_backup_leaves_out_a_journal_its_worker_removed_meanwhile(app, tmp_path, monkeypatch):
    """A worker removes its emptied journal between the backup's listing and its copy: the
    backup goes on without it."""
    spool_dir = Path(app.config["DATA_DIR"]) / "spool"
    spool_dir.mkdir()
    (spool_dir / "active.jsonl").write_text('{"a": 1}\n')
    (spool_dir / "journal-77-1.jsonl").write_text("")
    copy_file = backup._copy_file

    def removed_first(source, copy, whole_lines=False):
        if source.name.startswith("journal-"):
            source.unlink()
        return copy_file(source, copy, whole_lines)

    monkeypatch.setattr(backup, "_copy_file", removed_first)
    result = CommandLine(app).invoke(args=["backup", str(tmp_path / "saved")])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "saved" / "spool").iterdir()) == [
        "active.jsonl"
    ]


def test_backup_refuses_a_place_that_is_not_empty(app, runner, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.db").write_text("keep me")
    result = runner.invoke(args=["backup", str(taken)])
    assert result.exit_code == 1
    assert f"{taken} is not empty: back up into a new or empty directory" in result.output
    assert (taken / "old.db").read_text() == "keep me"
    a_file = runner.invoke(args=["backup", str(taken / "old.db")])
    assert a_file.exit_code == 1 and "is not empty" in a_file.output
    inside = runner.invoke(args=["backup", str(Path(app.config["DATA_DIR"]) / "backup")])
    assert inside.exit_code == 1 and "is inside the data dir" in inside.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(args=["backup", str(empty)]).exit_code == 0


@POSTGRESQL_ONLY
def test_backup_with_postgresql_copies_the_keys_and_says_how_to_dump(
    app, settings, runner, tmp_path, database
):
    saved = tmp_path / "saved"
    result = runner.invoke(args=["backup", str(saved)])
    assert result.exit_code == 0, result.output
    assert "copied secret_key" in result.stdout
    assert (saved / "secret_key").read_text() == (
        Path(app.config["DATA_DIR"]) / "secret_key"
    ).read_text()
    [command] = [
        line.strip() for line in result.stdout.splitlines() if line.strip().startswith("pg_dump ")
    ]
    assert command == pg_dump_command(settings["DATABASE_URL"], saved)
    assert command.startswith(f"pg_dump --format=custom --file={saved}/openreceipt.dump ")
    if shutil.which("pg_dump") is None:
        pytest.skip("no pg_dump here")
    # The command works as printed. (Only this test's schema: other runs share the database.)
    schema = re.search(r"search_path%3D(\w+)", command).group(1)
    dumped = subprocess.run(
        [*shlex.split(command), f"--schema={schema}"], capture_output=True, text=True, timeout=120
    )
    assert dumped.returncode == 0, dumped.stderr
    listing = subprocess.run(
        ["pg_restore", "--list", str(saved / "openreceipt.dump")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"TABLE DATA \w+ pixel ", listing)


def test_the_pg_dump_command_names_the_database_but_no_password(tmp_path):
    url = "postgresql://receipts:s3cr%40t@db.internal:5432/openreceipt?password=x&sslmode=require"
    assert pg_dump_command(url, tmp_path) == (
        f"pg_dump --format=custom --file={tmp_path}/openreceipt.dump "
        "'postgresql://receipts@db.internal:5432/openreceipt?sslmode=require'"
    )


# What the workers say when the proxy in front and the settings disagree.


def warnings_logged(caplog):
    """The warnings logged since the test's app started (its start-up lines left out)."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_untrusted_forwarded_headers_are_warned_of_once(app_with, caplog, user, token):
    app = app_with(PUBLIC_URL=None)
    client = app.test_client()
    pixel = mint(client, {"Authorization": f"Bearer {token}"})
    forwarded = {"X-Forwarded-For": "81.2.69.160", "X-Forwarded-Proto": "https"}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            client.get(pixel_path(pixel["url"]), headers=forwarded)
            client.get("/login", headers={"X-Forwarded-Proto": "https"})
    [warning] = warnings_logged(caplog)
    assert warning.startswith(
        "X-Forwarded-For or X-Forwarded-Proto arrives but is not trusted: every fetch is stored "
        "as the proxy's network"
    )
    assert "set OPENRECEIPT_TRUSTED_PROXIES=1" in warning
    assert "81.2.69" not in caplog.text


def test_trusted_forwarded_headers_are_not_warned_of(app_with, caplog):
    app = app_with(TRUSTED_PROXIES=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        app.test_client().get(
            "/login",
            headers={"X-Forwarded-For": "81.2.69.160"},
            base_url="https://receipts.example.com",
        )
    assert warnings_logged(caplog) == []


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("81.2.69.160:8000", "81.2.69.0"),
        ("[2001:db8:1234:5678::1]:8000", "2001:db8:1234::"),
        ("Other.Example.org", "other.example.org"),
    ],
    ids=["loopback", "ipv4", "ipv6", "name"],
)
def test_a_host_other_than_the_public_urls_is_warned_of_once(app_with, caplog, host, shown):
    app = app_with(PUBLIC_URL="https://receipts.example.com", TRUSTED_PROXIES=1)
    client = app.test_client()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        client.get("/login", base_url="https://receipts.example.com")
        assert warnings_logged(caplog) == []  # the public host itself
        for _ in range(3):
            client.get("/login", headers={"Host": host})
            client.get("/p/x.gif", headers={"Host": host})
    [warning] = warnings_logged(caplog)
    assert warning == (
        f"A request arrived for host {shown}, but OPENRECEIPT_PUBLIC_URL is "
        "https://receipts.example.com: if it came through your reverse proxy, the proxy does not "
        "pass the Host header on (nginx: proxy_set_header Host $host), and forms sent over HTTPS "
        "are refused"
    )
    assert "81.2.69.160" not in caplog.text and "5678" not in caplog.text


def test_without_a_public_url_no_host_is_warned_of(app_with, caplog):
    app = app_with(PUBLIC_URL=None, TRUSTED_PROXIES=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        app.test_client().get("/login", headers={"Host": "127.0.0.1:8000"})
    assert warnings_logged(caplog) == []


@pytest.mark.slow
def test_a_worker_warns_once_of_untrusted_forwarded_headers_without_an_address(gunicorn):
    from .test_security_server import send

    server = gunicorn(workers=1, PUBLIC_URL="https://receipts.example.com")
    for _ in range(5):
        status, _, _ = send(server, "GET", "/p/x.gif", {"X-Forwarded-For": "81.2.69.160, 10.0.0.1"})
        assert status == 200
    deadline = time.monotonic() + 10
    while b"is not trusted" not in server.log_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log_bytes()
    assert log.count(b"X-Forwarded-For or X-Forwarded-Proto arrives but is not trusted") == 1
    assert b"81.2.69.160" not in log and b"Traceback" not in log


# The version.


def project_version():
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["version"]


def test_the_changelog_starts_with_the_projects_version():
    first = re.search(r"^## (\S+) ", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert first and first.group(1) == project_version()


def test_the_operations_guide_names_only_commands_that_exist():
    guide = (ROOT / "docs" / "operations.md").read_text()
    # In backquotes, or at the start of a line of a shell example.
    named = set(
        re.findall(r"(?:`|^[ \t]*(?:[\w./-]*/)?)openreceipt ([a-z]+)(?: ([a-z]+))?", guide, re.M)
    )
    assert {("check", ""), ("backup", ""), ("db", "status")} <= named
    for group, sub in sorted(named):
        command = cli.commands.get(group)
        assert command is not None, group
        if isinstance(command, click.Group) and sub:
            assert sub in command.commands, (group, sub)
