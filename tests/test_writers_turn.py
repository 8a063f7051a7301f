"""On SQLite, the pixel's writers of the host's processes take turns (storage/engine.py
writers_turn): a writer that finds another process's writer in its turn waits in the kernel for
it, rather than trying SQLite's lock every half millisecond until PIXEL_WAIT_MS has passed and
spooling the fetch."""

import fcntl
import os
import sqlite3
import threading

import pytest

from web.storage.engine import WRITERS_SUFFIX, sqlite_file
from web.storage.models import Event

from .helpers import mint, pixel_path, wait_for

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


def waiting_for_a_file_lock(thread):
    """Whether the thread sleeps in the kernel for a file lock (Linux: its wait channel)."""
    with open(f"/proc/self/task/{thread.native_id}/wchan") as wchan:
        return "lock" in wchan.read()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_writer_waits_for_another_process_writers_turn_then_records(app, client, auth):
    pixel = mint(client, auth)
    path = sqlite_file(app.extensions["openreceipt.database"])
    # Another process's writer, as the kernel sees it (an open file of its own), in its turn and
    # holding SQLite's write lock, for as long as it likes.
    turn = os.open(f"{path}{WRITERS_SUFFIX}", os.O_RDWR | os.O_CREAT)
    other = sqlite3.connect(path, isolation_level=None)
    fcntl.flock(turn, fcntl.LOCK_EX)
    other.execute("BEGIN IMMEDIATE")
    answers = []

    def fetch():
        answers.append(client.get(pixel_path(pixel["url"]), headers={"User-Agent": THUNDERBIRD}))

    thread = threading.Thread(target=fetch)
    thread.start()
    try:
        # Without turns it would be trying SQLite's lock (and, after PIXEL_WAIT_MS, spool).
        assert wait_for(lambda: waiting_for_a_file_lock(thread), 10)
    finally:
        other.rollback()
        other.close()
        fcntl.flock(turn, fcntl.LOCK_UN)
        os.close(turn)
        thread.join(10)
    assert not thread.is_alive()
    [answer] = answers
    assert answer.headers["X-Openreceipt"] == "recorded: open"
    with app.app_context():
        assert Event.select().count() == 1
