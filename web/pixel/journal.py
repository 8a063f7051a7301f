"""A worker's journal: the fetches it has answered but its writer has not stored yet, one line
each, as in the spool (a Fetch as JSON: masked, with the keyed fingerprint; spool.to_json), so
that a worker killed before its writer stores them loses none of them.

`<DATA_DIR>/spool/journal-<pid>-<ns>.jsonl`, one a worker, appended to before the fetch is
answered and emptied whenever the writer has stored everything in it. The worker holds an flock
on it for as long as it lives; the kernel lets go of it when the process dies, however it dies.
A journal whose lock is free is an orphan: the spool's replay takes it over as one of its
batches (adopt_orphans), and each line's key (Event.spool_key) keeps the fetches its worker did
store from being stored twice.

A file is created under a hidden name, locked, then renamed into place: a journal is never seen
unlocked while its worker lives."""

import fcntl
import os
import time

PATTERN = "journal-*.jsonl"
# Past this size the journal is written anew with only the fetches still queued: under a load
# that never lets the queue run empty it is never emptied.
REWRITE_BYTES = 4 * 1024 * 1024


class Journal:
    """This process's journal, opened at the first append. Not thread-safe: the caller holds its
    own lock around every call (the writer's, web/pixel/writer.py)."""

    def __init__(self, folder):
        self.folder = folder
        self.path = None
        self.size = 0
        self._descriptor = None
        self._pid = None

    def append(self, line):
        """Add one line (bytes, ending in a newline). Raises OSError when it cannot be written
        in full; nothing of it stays then."""
        if self._pid != os.getpid():  # first use in this process (a forked worker starts anew)
            self._descriptor, self.path = _new(self.folder, [])
            self._pid, self.size = os.getpid(), 0
        try:
            if os.write(self._descriptor, line) != len(line):
                raise OSError(28, "short write to the journal")
        except OSError:
            # No half line may stay: the next one would be glued to it.
            os.ftruncate(self._descriptor, self.size)
            raise
        self.size += len(line)

    def empty(self):
        """Everything in the journal is stored: start it again from nothing."""
        if self._pid == os.getpid() and self.size:
            os.ftruncate(self._descriptor, 0)
            self.size = 0

    def rewrite(self, lines):
        """Keep only `lines` (the fetches still queued): a new journal holding them takes this
        one's place, then this one goes."""
        if self._pid != os.getpid():
            return
        descriptor, path = _new(self.folder, lines)
        old_descriptor, old_path = self._descriptor, self.path
        self._descriptor, self.path, self.size = descriptor, path, sum(map(len, lines))
        os.unlink(old_path)
        os.close(old_descriptor)  # and with it its lock

    def close(self):
        """The worker stops: an empty journal goes, one that still holds fetches is left to the
        spool's replay (its lock goes with the descriptor)."""
        if self._pid != os.getpid():
            return
        if not self.size:
            self.path.unlink(missing_ok=True)
        os.close(self._descriptor)
        self._pid = self._descriptor = None


def _new(folder, lines):
    """A new journal holding `lines`, locked, in place: (descriptor, path)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    name = f"journal-{os.getpid()}-{time.time_ns()}.jsonl"
    hidden = folder / f".{name}"
    descriptor = os.open(hidden, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        data = b"".join(lines)
        if data and os.write(descriptor, data) != len(data):
            raise OSError(28, "short write to the journal")
        os.rename(hidden, folder / name)
    except BaseException:
        hidden.unlink(missing_ok=True)
        os.close(descriptor)
        raise
    return descriptor, folder / name


def orphans(folder):
    """Whether a journal in `folder` has no living worker: one look at each (an open and a
    try at its lock)."""
    for path in folder.glob(PATTERN):
        descriptor = _orphan(path)
        if descriptor is not None:
            os.close(descriptor)
            return True
    return False


def adopt_orphans(folder, batch_name):
    """Make each journal whose worker is gone a batch of the spool (`batch_name()` names it), or
    remove it when it is empty. Run under the spool's replay lock."""
    for path in sorted(folder.glob(PATTERN)):
        descriptor = _orphan(path)
        if descriptor is None:
            continue
        try:
            if os.fstat(descriptor).st_size:
                os.rename(path, folder / batch_name())
            else:
                path.unlink()
        finally:
            os.close(descriptor)


def _orphan(path):
    """The journal at `path` opened and locked, when no worker holds it (and it is still the
    file at `path`: not just replaced by its worker's rewrite); else None."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
            return descriptor
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(descriptor)
    return None
