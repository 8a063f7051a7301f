"""Background jobs: a failing step is tried again ever less often, never given up."""

import threading
import time

from flask import Flask

from web.background import BACKOFF_SECONDS, Job, Loop, next_wait


def test_a_failing_job_waits_ever_longer_up_to_the_backoff_then_its_own_pace_again():
    assert [next_wait(0.5, failures) for failures in range(6)] == [0.5, 1, 2, 4, 8, 10]
    assert next_wait(0.5, 40) == BACKOFF_SECONDS == 10
    # A job slower than the backoff keeps its own pace.
    assert next_wait(3600, 0) == next_wait(3600, 3) == 3600


def test_a_loop_tries_a_failing_step_again_and_logs_the_failure_once():
    calls, logged, done = [], [], threading.Event()

    def step():
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise ConnectionError("the database is away")
        done.set()
        return False

    app = Flask(__name__)
    app.logger.error = lambda *args: logged.append(args[0] % args[1:])
    loop = Loop(app, Job("test", step, every=0.01, in_workers=True))
    loop.start_in_this_process()
    try:
        assert done.wait(10), "the step was not tried again after it failed"
    finally:
        loop.stop(5)
    assert not loop.thread.is_alive()
    # Each wait after a failure is at least twice the one before (Event.wait never returns early).
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert [gap >= 0.01 * 2**n for n, gap in enumerate(gaps, start=1)] == [True] * 3
    assert logged == ["test: ConnectionError: the database is away"]
