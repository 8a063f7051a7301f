"""The spool: where a pixel fetch waits when the database cannot take it (down, locked past the
pixel's short wait, disk full), so that the mail client still gets its GIF at once and no event
is lost.

A spooled fetch is a Fetch (judgement/classify.py) as one JSON line: already masked, with the
keyed browser fingerprint instead of anything raw. It is judged when it is replayed, with the
pixel's facts as they were at the time of the fetch, exactly as it would have been judged live.

Files, in `<DATA_DIR>/spool/`:
- `active.jsonl`: appended to by every worker of this host; each append holds an flock on the
  file and checks that the file is still the active one (a replay may have just moved it);
- `batch-<ns>-<pid>.jsonl`: the active file moved aside by a replay, or the journal of a worker
  that died with fetches still to be stored (journal.py), replayed in name order;
- `journal-<pid>-<ns>.jsonl`: each worker's journal, while the worker lives;
- `rejected.jsonl`: lines the database refused for good (never expected), kept for the operator;
- `replay.lock`: held by the one replay of this host that runs at a time;
- `dropped`: how many fetches the spool had no room for, in all (see below).

Exactly once: each line carries a random key stored with its event (Event.spool_key, unique); a
replay cut short replays lines whose events already exist, and they are skipped.

Bounded: the active file and the batches together hold OPENRECEIPT_SPOOL_MAX_MB at most. A fetch
that does not fit is dropped and counted, and the oldest are kept: a message's first fetches
(its delivery, its first open) say the most, and the replay goes in order. A repeat (rule 15:
the same fetcher's fetch of the same pixel within the repeat window) of a fetch this process
spooled takes no room at all: the replay would not record it either.

A little over 300 lines, in one file on purpose: appending, counting and replaying share the
files' locking protocol, which is only safe to change with all of it in view."""

import collections
import datetime
import fcntl
import json
import os
import threading
import time
from pathlib import Path

from peewee import DataError, IntegrityError

from .. import background
from ..judgement.classify import Fetch
from . import journal
from .recording import MOST_TOGETHER, REPEAT_WINDOW

ACTIVE = "active.jsonl"
REJECTED = "rejected.jsonl"
LOCK = "replay.lock"
DROPPED = "dropped"
APPEND_TRIES = 1000  # a replay moves the active file at most once per run; this is plenty
# How often a worker looks for spooled fetches to replay (a look is one stat() of the spool):
# a fetch spooled while the write lock was busy is on the status page within a second.
CHECK_SECONDS = 0.5
# What the database says of the line itself: replaying it again would fail the same way. Any
# other failure (the database away, read-only, upgrading; the worker stopping) keeps the line.
REFUSED = (DataError, IntegrityError)


class SpoolError(OSError):
    """The spool could not be written either (e.g. the disk is full)."""


class ReplayPaused(Exception):
    """The replay stopped with fetches left in the spool: the database is still away."""


class SpoolFull(SpoolError):
    """The spool holds its limit: the fetch was dropped, and counted (`dropped`, in all)."""

    def __init__(self, dropped):
        super().__init__(28, "the spool is full")
        self.dropped = dropped


def to_json(fetch):
    """A spool line's data: the Fetch, its time as ISO text."""
    return {**vars(fetch), "at": fetch.at.isoformat()}


def from_json(data):
    return Fetch(**{**data, "at": datetime.datetime.fromisoformat(data["at"])})


def directory(data_dir):
    return Path(data_dir) / "spool"


def append(data_dir, fetched, max_bytes=None, fold_repeats=False):
    """Add one fetch to this host's spool, unless the spool would then hold more than
    `max_bytes` (SpoolFull). With `fold_repeats`, a repeat of a fetch this process spooled
    within the repeat window is not written: returns False. Raises SpoolError when the fetch
    cannot be written."""
    if fold_repeats and _twin_spooled(fetched):
        return False
    folder = directory(data_dir)
    line = (json.dumps(to_json(fetched), ensure_ascii=True) + "\n").encode()
    path = folder / ACTIVE
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        for _ in range(APPEND_TRIES):
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                try:
                    current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
                except FileNotFoundError:
                    current = False
                if current:
                    # Under the active file's lock, which every writer takes: the size checked
                    # is the size written to.
                    if max_bytes is not None and _size(folder) + len(line) > max_bytes:
                        raise SpoolFull(_count_dropped(folder))
                    size = os.fstat(descriptor).st_size
                    try:
                        if os.write(descriptor, line) != len(line):
                            raise OSError(28, "short write to the spool")
                    except OSError:
                        # No half line may stay: the next one would be glued to it.
                        os.ftruncate(descriptor, size)
                        raise
                    if fold_repeats:
                        _note_spooled(fetched)
                    return True
            finally:
                os.close(descriptor)  # also releases the flock
    except SpoolError:
        raise
    except OSError as error:
        raise SpoolError(error.errno, f"cannot spool: {error.strerror or error}") from None
    raise SpoolError(0, "cannot spool: the active file kept moving")


def _size(folder):
    """Bytes in the active file and the batches waiting for a replay."""
    total = 0
    for path in [folder / ACTIVE, *folder.glob("batch-*.jsonl")]:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass  # a replay just finished it
    return total


def _count_dropped(folder):
    """One more fetch dropped; the new count. Under the active file's lock, so counts add up."""
    count = dropped(folder.parent) + 1
    temporary = folder / f".{DROPPED}.{os.getpid()}.{threading.get_ident()}"
    temporary.write_text(f"{count}\n", encoding="ascii")
    os.replace(temporary, folder / DROPPED)  # a reader never sees half a number
    return count


def dropped(data_dir):
    """How many fetches this host's spool has had no room for, in all."""
    try:
        return int((directory(data_dir) / DROPPED).read_text(encoding="ascii"))
    except (FileNotFoundError, ValueError):
        return 0


# Who this process spooled within the repeat window: fetcher -> time of its latest spooled fetch,
# oldest first. Per process: a twin spooled by another worker is left to the replay.
_spooled_lately = collections.OrderedDict()
_spooled_lately_lock = threading.Lock()


def _fetcher(fetched):
    # The browser fingerprint is a keyed hash of user agent and masked network.
    return (fetched.public_id, fetched.browser, fetched.method, fetched.purpose)


def _twin_spooled(fetched):
    """Whether this process spooled the same fetcher's fetch of the same pixel at most the repeat
    window before this one."""
    since = fetched.at - REPEAT_WINDOW
    with _spooled_lately_lock:
        while _spooled_lately and next(iter(_spooled_lately.values())) < since:
            _spooled_lately.popitem(last=False)
        at = _spooled_lately.get(_fetcher(fetched))
        return at is not None and since <= at <= fetched.at


def _note_spooled(fetched):
    key = _fetcher(fetched)
    with _spooled_lately_lock:
        _spooled_lately[key] = fetched.at
        _spooled_lately.move_to_end(key)


def pending(data_dir):
    """How many fetches wait in this host's spool."""
    count = 0
    for path in batches(data_dir, include_active=True):
        with path.open("rb") as handle:
            count += sum(1 for line in handle if line.strip())
    return count


def batches(data_dir, include_active=False):
    folder = directory(data_dir)
    if not folder.is_dir():
        return []
    found = sorted(folder.glob("batch-*.jsonl"))
    if include_active and (folder / ACTIVE).exists():
        found.append(folder / ACTIVE)
    return found


def has_work(data_dir):
    folder = directory(data_dir)
    return (
        (folder / ACTIVE).exists() or any(folder.glob("batch-*.jsonl")) or journal.orphans(folder)
    )


def _batch_name():
    return f"batch-{time.time_ns():020d}-{os.getpid()}.jsonl"


def _rotate(folder):
    """Move the active file aside as the newest batch, so writers start a new one."""
    path = folder / ACTIVE
    try:
        descriptor = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        if os.fstat(descriptor).st_size:
            os.rename(path, folder / _batch_name())
    finally:
        os.close(descriptor)


def replay(app, wait=False):
    """Write this host's spooled fetches to the database, oldest first. Returns a dict of counts
    (recorded, not_recorded, rejected, left), or None when another replay of this host is running
    (and `wait` is false). Stops at the first sign that the database is still away."""
    folder = directory(app.config["DATA_DIR"])
    if not folder.is_dir():
        return {"recorded": 0, "not_recorded": 0, "rejected": 0, "left": 0}
    lock = os.open(folder / LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        journal.adopt_orphans(folder, _batch_name)
        _rotate(folder)
        counts = {"recorded": 0, "not_recorded": 0, "rejected": 0, "left": 0}
        with app.app_context():
            for batch in batches(app.config["DATA_DIR"]):
                if not _replay_batch(app, batch, counts):
                    break
        counts["left"] = pending(app.config["DATA_DIR"])
        return counts
    finally:
        os.close(lock)


def _replay_batch(app, batch, counts):
    """Replay one batch file, its lines MOST_TOGETHER to a transaction (as the pixel writes
    them: a replay that competes with the pixel for the write lock takes few turns at it); True
    when it is done (and removed)."""
    lines = []  # (line, Fetch), the unreadable ones set aside at once
    # Line by line from the bytes: a line damaged on disk (a byte that is no ASCII, which the
    # spool never writes) is one unreadable line, not a batch that can never be read.
    for raw in batch.read_bytes().splitlines():
        if not raw.strip():
            continue
        line = raw.decode("ascii", "backslashreplace")
        try:
            lines.append((line, from_json(json.loads(raw.decode("ascii")))))
        except (ValueError, TypeError, KeyError):  # UnicodeDecodeError is a ValueError
            _reject(batch.parent, line, "unreadable line")
            counts["rejected"] += 1
    recorder = app.extensions["openreceipt"].recorder
    done = 0
    while done < len(lines) and not stopping(app):
        group = lines[done : done + MOST_TOGETHER]
        try:
            outcomes = recorder.record_replayed([fetched for _, fetched in group])
        except REFUSED:
            # One line is at fault: each alone, so that only it is set aside.
            outcomes = []
            for line, fetched in group:
                try:
                    outcomes += recorder.record_replayed([fetched])
                except REFUSED as error:
                    _reject(batch.parent, line, f"{type(error).__name__}: {error}")
                    counts["rejected"] += 1
        except Exception as error:  # noqa: BLE001 - anything else may pass: keep the lines
            app.logger.warning("spool: replay paused: %s: %s", type(error).__name__, error)
            break
        for outcome in outcomes:
            counts["recorded" if outcome.startswith("recorded") else "not_recorded"] += 1
        done += len(group)
    if done == len(lines):
        batch.unlink()
        return True
    rest = batch.with_suffix(".tmp")
    rest.write_text("".join(line + "\n" for line, _ in lines[done:]), encoding="ascii")
    os.replace(rest, batch)
    return False


def _reject(folder, line, why):
    record = {"line": line, "why": why[:300], "at": datetime.datetime.now(datetime.UTC).isoformat()}
    with (folder / REJECTED).open("a", encoding="ascii") as handle:
        handle.write(json.dumps(record, ensure_ascii=True) + "\n")


def init_app(app):
    """The job that replays the spool twice a second while it holds fetches: in each worker,
    unless SPOOL_AUTO is off."""
    data_dir = app.config["DATA_DIR"]

    def step():
        if has_work(data_dir):
            counts = replay(app)
            if counts and (counts["recorded"] or counts["not_recorded"]):
                app.logger.info("spool: replayed %s", counts)
            if counts and counts["left"] and not (counts["recorded"] or counts["not_recorded"]):
                # Nothing went in: the database is away, a failed step, tried again ever less
                # often. (A replay that paused after some fetches, as under a busy write lock,
                # goes on at the job's own pace.)
                raise ReplayPaused(f"{counts['left']} fetches left")

    in_workers = app.config["SPOOL_AUTO"]
    background.register(app, background.Job("spool", step, CHECK_SECONDS, in_workers))


def stopping(app):
    return background.stopping(app, "spool")


def stop(app, timeout=10):
    """Stop this process's replayer between two lines (a worker that exits), and wait for it."""
    background.stop(app, "spool", timeout)
