"""What `openreceipt backup` copies, while the server runs: the data dir (the secret key, the
spool up to its last whole line, the address ranges) and, for PostgreSQL, the pg_dump command
that saves the database; the SQLite database itself is copied by storage.engine.backup_sqlite.
docs/operations.md says how to restore."""

import fcntl
import os
import shlex
from urllib.parse import urlsplit, urlunsplit

from .pixel import spool
from .storage.engine import without_password

# Not copied: files SQLite or the spool keep while they work, and half-written ones.
TRANSIENT = (".lock", ".tmp")


def copy_data_dir(data_dir, target, leave_out):
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
    takes before it moves or removes a file; appends go on meanwhile. A worker's journal
    (web/pixel/journal.py) may be emptied or replaced by its worker at any moment: one gone
    by the time it is read is left out (what it held is stored, or in its new journal).
    Returns the copies."""
    copies = []
    (target / folder.name).mkdir(mode=0o700, exist_ok=True)
    lock = os.open(folder / spool.LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for source in sorted(folder.iterdir()):
            hidden = source.name.startswith(".")  # a file being made: journal.py's, say
            if hidden or source.suffix in TRANSIENT or not source.is_file():
                continue
            copy = target / folder.name / source.name
            try:
                _copy_file(source, copy, whole_lines=source.suffix == ".jsonl")
            except FileNotFoundError:
                copy.unlink(missing_ok=True)
                continue
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


def pg_dump_command(url, target):
    """The pg_dump command line that saves the PostgreSQL database of `url` into `target`,
    with the URL's password left out."""
    parts = urlsplit(url)
    login, _, host = parts.netloc.rpartition("@")
    user = login.partition(":")[0]
    parts = parts._replace(
        netloc=f"{user}@{host}" if user else host, query=without_password(parts.query)
    )
    dump = target / "openreceipt.dump"
    return shlex.join(["pg_dump", "--format=custom", f"--file={dump}", urlunsplit(parts)])
