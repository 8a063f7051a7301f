"""Background jobs: the one list of work done beside the requests — replaying the spool,
delivering notices, the day's retention purge — each a step run every so many seconds in a
thread of its own.

Where they run: in every gunicorn worker, started by gunicorn.conf.py's post_worker_init once
the worker has booted (threads do not survive the fork) and stopped by its worker_exit before
the connections close; or, for a job switched off in the workers, in a process of its own:
`openreceipt jobs run`. Never from a request hook: a pixel fetch does its own work and no more.
"""

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

KEY = "openreceipt.jobs"
REPEAT_LOG_SECONDS = 60  # the same failure again within this time is not logged again
BACKOFF_SECONDS = 10  # the longest wait between two tries of a failing step


@dataclass(frozen=True)
class Job:
    """`step()` every `every` seconds (at once again while it returns True: there is more to
    do), the first time `first_after` seconds after the start; `in_workers` says whether the
    server's workers run it (else `openreceipt jobs run` does)."""

    name: str
    step: Callable[[], bool]
    every: float
    in_workers: bool
    first_after: float | None = None


class Loop:
    """One job in a thread of this process. A failing step is logged and tried again at the
    next round."""

    def __init__(self, app, job):
        self.app, self.job = app, job
        self.stop_event = threading.Event()
        self.thread = None
        self._pid = None
        self._guard = threading.Lock()
        self._last_failure = (None, 0.0)  # (message, when logged)

    def start_in_this_process(self):
        if self._pid == os.getpid() or not self._guard.acquire(blocking=False):
            return
        try:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self.thread = threading.Thread(
                    target=self._run, name=f"openreceipt-{self.job.name}", daemon=True
                )
                self.thread.start()
        except RuntimeError as error:  # no thread to be had: say so, the server goes on
            self._pid = None
            self.app.logger.error("%s: not started: %s", self.job.name, error)
        finally:
            self._guard.release()

    def _run(self):
        wait = self.job.every if self.job.first_after is None else self.job.first_after
        failures = 0
        while not self.stop_event.wait(wait):
            more = self._step()
            while more and not self.stop_event.is_set():
                more = self._step()
            failures = failures + 1 if more is None else 0
            wait = next_wait(self.job.every, failures)

    def _step(self):
        """True when there is more to do at once, False when not, None when the step failed."""
        try:
            return bool(self.job.step())
        except Exception as error:  # noqa: BLE001 - tried again at the next round
            # A database that is away fails every round: say so once a minute, not every time.
            message = f"{type(error).__name__}: {str(error)[:300]}"
            logged, when = self._last_failure
            if message != logged or time.monotonic() - when > REPEAT_LOG_SECONDS:
                self._last_failure = (message, time.monotonic())
                self.app.logger.error("%s: %s", self.job.name, message)
            return None

    def stop(self, timeout):
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)


def next_wait(every, failures):
    """Seconds until a job's next round after `failures` failed rounds in a row: a failing step
    (the database away) is tried again ever less often, up to BACKOFF_SECONDS apart (or `every`,
    when that is longer), and at the job's own pace again once it succeeds."""
    if not failures:
        return every
    return min(every * 2**failures, max(every, BACKOFF_SECONDS))


def register(app, job):
    """Add a job to the app's list (web/__init__.py's create_app registers them all)."""
    app.extensions.setdefault(KEY, {})[job.name] = Loop(app, job)


def jobs(app):
    """The app's jobs, in the order they were registered."""
    return [loop.job for loop in app.extensions.get(KEY, {}).values()]


def start_all(app, names=None):
    """Start this process's jobs now: those the workers run (gunicorn's post_worker_init), or
    the ones named (`openreceipt jobs run`)."""
    for name, loop in app.extensions.get(KEY, {}).items():
        if (name in names) if names is not None else loop.job.in_workers:
            loop.start_in_this_process()


def stopping(app, name):
    loop = app.extensions.get(KEY, {}).get(name)
    return loop is not None and loop.stop_event.is_set()


def stop(app, name=None, timeout=10):
    """Stop this process's job `name` (or all of them) between two steps, and wait for it."""
    loops = app.extensions.get(KEY, {})
    for loop in [loops[name]] if name in loops else [] if name else list(loops.values()):
        loop.stop(timeout)
