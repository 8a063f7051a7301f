# gunicorn settings for openreceipt; every one can be overridden on the command line.
import gc
import multiprocessing
import os

from web.config import public_binds, server_bind
from web.serverlog import ACCESS_LOG_FORMAT

bind = server_bind()
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 8)))
# Threads, so that a slow client holds one thread and not a whole worker. A client that sends its
# request a header line every few seconds (a mail client on a bad line, or an attack doing so on
# purpose) used to keep a sync worker to itself for as long as it liked: as many of them as
# workers stopped every pixel fetch. Now it takes workers x threads of them at once (README:
# "Slow clients"). Each thread has its own pooled database connection (web/storage/engine.py:
# at most 32 a worker, which leaves room for the background jobs).
worker_class = "gthread"
threads = 16
# A worker takes a connection only when it has a thread free for it: with all its threads held,
# it stops accepting and the other workers take the next fetches, instead of queueing them
# behind its slow clients. No keep-alive, then (as with sync workers: most mail clients fetch
# once), and a connection that sends nothing within 5 s is closed.
worker_connections = threads
keepalive = 0
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
# Proxy headers are believed in one place: the application's ProxyFix, for exactly
# OPENRECEIPT_TRUSTED_PROXIES hops (web/security.py). gunicorn itself believes none of them, from
# any peer: by default it takes X-Forwarded-Proto from loopback, so any local client could claim
# HTTPS even with TRUSTED_PROXIES=0.
forwarded_allow_ips = ""
secure_scheme_headers = {}
forwarder_headers = ""


def when_ready(server):
    """Before the fork: load the user-agent lists (web/judgement/useragents.py; about a second,
    which the command line never pays), then keep all that was loaded (some 80 MiB) out of the
    garbage collector's sweeps: the workers never write to those pages, so they stay shared, and
    no sweep walks them."""
    app = server.app.wsgi() if server.cfg.preload_app else None
    if app is not None and "openreceipt" in getattr(app, "extensions", {}):
        from web.judgement import useragents

        useragents.warm_up()
        warn_if_exposed(server, app)
    gc.freeze()


def warn_if_exposed(server, app):
    """Say so at start-up when other machines reach gunicorn directly: no reverse proxy reads
    their requests in full before passing them on, so enough slow clients can still hold every
    thread."""
    exposed = public_binds(server.cfg.bind)
    if exposed and not app.config["TRUSTED_PROXIES"]:
        server.log.warning(
            "Listening on %s with OPENRECEIPT_TRUSTED_PROXIES=0: no reverse proxy in front, so "
            "%s slow clients at once can hold up every pixel fetch. Put nginx, Caddy or a load "
            "balancer in front (README: Slow clients)",
            ", ".join(exposed),
            server.cfg.workers * server.cfg.threads,
        )


def post_worker_init(worker):
    """A worker that has booted starts its background jobs (web/background.py: the spool's
    replayer, the notification delivery, the day's retention purge) at once, so notices go out
    even before it serves a request."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "openreceipt.database" in getattr(app, "extensions", {}):
        from web import background

        background.start_all(app)
    worker.log.info("Worker ready (pid: %s)", worker.pid)


def worker_exit(server, worker):
    """A worker that stops ends its background jobs (web/background.py), then closes its
    pooled database connections: on SQLite the last one to close folds the write-ahead log back
    into the database file."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "openreceipt.database" in getattr(app, "extensions", {}):
        from web import background

        # A replay stops between two lines, a delivery between two notices; the rest waits.
        background.stop(app)
        # The fetches answered and queued are stored (or left in the journal for the spool).
        app.extensions["openreceipt.pixel"].writer.stop()
        app.extensions["openreceipt.database"].close_all()
