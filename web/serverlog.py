"""gunicorn's logger, made private and bounded: it logs "Invalid request from ip=<client>: <what
was wrong>", quoting what the client sent (a header name of 60 KB, say), and, in the default
access-log format, the client's address. Ours masks every address in every line it writes (the
client's in "Invalid request" lines always, even when it is the server's own), and keeps every
line short whatever a client sends."""

import logging
import re

from gunicorn.glogging import Logger

from .privacy import anonymize

# Runs of hex digits, dots and colons long enough to be an address; anonymize() decides which
# really are. A run may end in punctuation that belongs to the sentence ("ip=81.2.69.160: ...").
_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]{7,}(?!\w)")
_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})(:\d{1,5})$")

# Without %(h)s (remote address) and %(l)s/%(u)s: time, request line, status, size, duration, UA.
ACCESS_LOG_FORMAT = '%(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
# The most an access-log line keeps of the user agent and of the request line: any client chooses
# both, up to gunicorn's limits (8 KB and 64 KB), and the log must not grow by that much a request.
ACCESS_LOG_LIMITS = {"a": 256, "r": 1024}
# The most an error-log message keeps, and each line of a traceback: gunicorn quotes a bad
# request's header or request line into its "Invalid request" warning, up to 64 KB of it.
ERROR_LOG_LIMIT = 1024
# The longest an IP address is written: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255.
LONGEST_ADDRESS = 45
# gunicorn's "Invalid request from ip={ip}: {error}": the client's address, whatever `keep` says.
_INVALID_REQUEST = re.compile(r"^(Invalid request from ip=)(\S*?)(: )")


def redact(text, keep=frozenset()):
    """Replace every IP address in a line by its masked form, except the addresses in `keep`
    (the server's own listening addresses, which are no one's personal data)."""
    return _CANDIDATE.sub(lambda match: _mask(match.group(0), keep), text)


def _mask(text, keep):
    core, suffix = text, ""
    port = _PORT.match(core)
    if port:
        core, suffix = port.group(1), port.group(2)
    # An address ends in a hex digit, or in "::": more dots and colons after it belong to the
    # sentence. Set aside at once, not one at a time below: a client's run of 60,000 colons
    # would otherwise cost 60,000 tries of 60,000 characters each (minutes of a worker's CPU).
    bare = core.rstrip(":.")
    if len(core) - len(bare) > 2:
        core, suffix = core[: len(bare) + 2], core[len(bare) + 2 :] + suffix
    if len(bare) > LONGEST_ADDRESS:
        return text
    while core:
        if core in keep:
            return text
        masked = anonymize(core)
        if masked is not None:
            return masked + suffix
        if core[-1] not in ":.":
            break
        core, suffix = core[:-1], core[-1] + suffix
    return text


class _Redactor(logging.Filter):
    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def filter(self, record):
        message = _INVALID_REQUEST.sub(_mask_client, record.getMessage(), count=1)
        record.msg = shorten(redact(message, self.keep), ERROR_LOG_LIMIT)
        record.args = ()
        if record.exc_info and not record.exc_text:
            trace = redact(logging.Formatter().formatException(record.exc_info), self.keep)
            record.exc_text = "\n".join(
                shorten(line, ERROR_LOG_LIMIT) for line in trace.splitlines()
            )
        return True


def _mask_client(match):
    """The client's address of an "Invalid request" line, masked: a client on the server's own
    address (on loopback, say) is a client too."""
    return match.group(1) + (anonymize(match.group(2)) or match.group(2)) + match.group(3)


def shorten(text, limit):
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PrivateLogger(Logger):
    """gunicorn's Logger with every error and access line passed through redact() and cut to
    ERROR_LOG_LIMIT, and the user agent and request line of access lines cut to
    ACCESS_LOG_LIMITS."""

    keep = frozenset()

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for name, limit in ACCESS_LOG_LIMITS.items():
            # Masked before cut: a cut through an address would leave a part that no longer
            # reads as one, and passes the line's redaction unmasked.
            atoms[name] = shorten(redact(str(atoms[name]), self.keep), limit)
        return atoms

    def setup(self, cfg):
        super().setup(cfg)
        keep = self.keep = frozenset(bind.rpartition(":")[0].strip("[]") for bind in cfg.bind)
        for log in (self.error_log, self.access_log):
            for old in [f for f in log.filters if isinstance(f, _Redactor)]:
                log.removeFilter(old)
            log.addFilter(_Redactor(keep))
