"""Small helpers shared by the HTTP tests."""

import re
import sqlite3
import threading
import time
from contextlib import contextmanager

import psycopg


def csrf_token(response):
    match = re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True))
    assert match, "the page has no CSRF token"
    return match.group(1)


def mint(client, auth, **body):
    response = client.post("/api/pixels", json=body, headers=auth)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def pixel_path(url):
    """The path part of a pixel URL, for the test client."""
    return "/p/" + url.split("/p/", 1)[1]


def sign_in(client, email="ada@example.com", password="correct horse battery", next_path=None):
    page = client.get("/login")
    url = "/login" + (f"?next={next_path}" if next_path else "")
    return client.post(
        url, data={"email": email, "password": password, "csrf_token": csrf_token(page)}
    )


def wait_for(condition, seconds=10):
    """Whether `condition()` holds within `seconds` (asked every 50 ms): for what another
    process or thread does in its own time. Callers assert it."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextmanager
def held(app, public_id):
    """Another writer holds the receipt far longer than the pixel waits: on SQLite, another
    process's write lock; on PostgreSQL, another transaction's lock on the receipt's row. Yields
    a function that lets go before the end (from any thread); the end lets go otherwise."""
    with held_in(app.config["DATABASE_URL"], [public_id]) as release:
        yield release


@contextmanager
def held_in(database_url, public_ids):
    """held() for the receipts `public_ids` of the database at `database_url` (a server's)."""
    if database_url.startswith("sqlite:///"):
        other = sqlite3.connect(
            database_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
    else:
        other = psycopg.connect(database_url)
        locked = other.execute(
            "SELECT public_id FROM pixel WHERE public_id = ANY(%s) FOR UPDATE", (public_ids,)
        ).fetchall()
        assert len(locked) == len(public_ids)
    released = threading.Lock()

    def release():
        if released.acquire(blocking=False):
            other.rollback() if isinstance(other, psycopg.Connection) else other.execute("ROLLBACK")
            other.close()

    try:
        yield release
    finally:
        release()
