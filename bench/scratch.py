"""What the benchmarks share: a database of their own, made for the run and removed after it."""

import secrets
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg


@contextmanager
def scratch_database(url):
    """The database a benchmark fills, from its --database-url: None when none is given (the
    caller's default), a new SQLite file (an existing one is refused, so a real database cannot be
    filled by mistake), or a new schema in a PostgreSQL database; removed at the end with
    everything in it, and nothing else."""
    if not url:
        yield None
        return
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = Path(url[len("sqlite:///") :])
        if not path.name or path.exists():
            raise SystemExit(f"bench: give the path of a new SQLite file, not {url!r}")
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return
    if scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"bench: --database-url must be sqlite:/// or postgresql://, not {url!r}")
    schema = f"openreceipt_bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        checkpoint(connection)
        try:
            separator = "&" if "?" in url else "?"
            yield f"{url}{separator}options={quote(f'-csearch_path={schema}')}"
        finally:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def add_database_url_argument(parser):
    """The benchmarks' --database-url option, for scratch_database()."""
    parser.add_argument(
        "--database-url",
        help="sqlite:///NEW-FILE or postgresql://... (a schema of its own is made and dropped); "
        "default: a SQLite file in a fresh temporary directory",
    )


def checkpoint(connection):
    """Write out what the server still holds in memory now, before the timing starts: a timed
    checkpoint during a round (after a test suite's thousands of dropped schemas, one took 25 s
    to write and sync) slows the database's side only, a load the floor never carries. Left out
    when the user may not (CHECKPOINT needs a superuser or pg_checkpoint)."""
    try:
        connection.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass
