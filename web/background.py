"""Work beside the requests, one thread per process: the spool's replayer and the notification
delivery loop. Threads do not survive gunicorn's fork, so each worker starts its own when it has
booted (gunicorn.conf.py's post_worker_init; under another server, at the first request it
serves), and gunicorn.conf.py's worker_exit stops them before the connections close."""

import os
import threading
import time

KEY = "openreceipt.loops"
REPEAT_LOG_SECONDS = 60  # the same failure again within this time is not logged again


class Loop:
    """`step()` run every `every` seconds in a thread of its own (at once again while it returns
    True: there is more to do). A failing step is logged and tried again at the next round."""

    def __init__(self, app, name, step, every):
        self.app, self.name, self.step, self.every = app, name, step, every
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
                    target=self._run, name=f"openreceipt-{self.name}", daemon=True
                )
                self.thread.start()
        except RuntimeError as error:  # no thread to be had: the request (a pixel!) goes on
            self._pid = None
            self.app.logger.error("%s: not started: %s", self.name, error)
        finally:
            self._guard.release()

    def _run(self):
        while not self.stop_event.wait(self.every):
            while self._step() and not self.stop_event.is_set():
                pass

    def _step(self):
        try:
            return self.step()
        except Exception as error:  # noqa: BLE001 - tried again at the next round
            # A database that is away fails every round: say so once a minute, not every time.
            message = f"{type(error).__name__}: {str(error)[:300]}"
            logged, when = self._last_failure
            if message != logged or time.monotonic() - when > REPEAT_LOG_SECONDS:
                self._last_failure = (message, time.monotonic())
                self.app.logger.error("%s: %s", self.name, message)
            return False

    def stop(self, timeout):
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)


def start_per_process(app, name, step, every):
    """Run `step` in a thread of each process that serves requests; returns the Loop."""
    loop = Loop(app, name, step, every)
    app.extensions.setdefault(KEY, {})[name] = loop
    app.before_request(loop.start_in_this_process)
    return loop


def start_all(app):
    """Start this process's loops now (gunicorn's post_worker_init), not at its first request."""
    for loop in app.extensions.get(KEY, {}).values():
        loop.start_in_this_process()


def stopping(app, name):
    loop = app.extensions.get(KEY, {}).get(name)
    return loop is not None and loop.stop_event.is_set()


def stop(app, name=None, timeout=10):
    """Stop this process's loop `name` (or all of them) between two steps, and wait for it."""
    loops = app.extensions.get(KEY, {})
    for loop in [loops[name]] if name in loops else [] if name else list(loops.values()):
        loop.stop(timeout)
