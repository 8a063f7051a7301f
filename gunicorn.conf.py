# gunicorn settings for openreceipt; every one can be overridden on the command line.
import gc
import multiprocessing
import os

from web.config import server_bind
from web.serverlog import ACCESS_LOG_FORMAT

bind = server_bind()
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 8)))
# Start-up (migrations, the first-run link, the GeoIP reader) happens once, before the fork.
preload_app = True
timeout = 30
logger_class = "web.serverlog.PrivateLogger"
accesslog = "-"
access_log_format = ACCESS_LOG_FORMAT
# Pixel fetches can carry very long headers (cookies of a tracking domain, proxy chains):
# accept them rather than answer a mail client with a 400.
limit_request_line = 8190
limit_request_field_size = 65536
limit_request_fields = 200
# No runtime control socket: several instances on one host would fight over its default path.
control_socket_disable = True


def when_ready(server):
    """Before the fork: load the user-agent lists (web/useragents.py; about a second, which the
    command line never pays), then keep all that was loaded (some 80 MiB) out of the garbage
    collector's sweeps: the workers never write to those pages, so they stay shared, and no
    sweep walks them."""
    app = server.app.wsgi() if server.cfg.preload_app else None
    if app is not None and "openreceipt" in getattr(app, "extensions", {}):
        from web import useragents

        useragents.warm_up()
    gc.freeze()


def post_worker_init(worker):
    """A worker that has booted starts its background loops (the spool's replayer, the
    notification delivery) at once, so notices go out even before it serves a request."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "openreceipt.database" in getattr(app, "extensions", {}):
        from web import background

        background.start_all(app)
    worker.log.info("Worker ready (pid: %s)", worker.pid)


def worker_exit(server, worker):
    """A worker that stops ends its background loops (the spool's replayer, the notification
    delivery), then closes its pooled database connections: on SQLite the last one to close
    folds the write-ahead log back into the database file."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "openreceipt.database" in getattr(app, "extensions", {}):
        from web import background

        # A replay stops between two lines, a delivery between two notices; the rest waits.
        background.stop(app)
        app.extensions["openreceipt.database"].close_all()
