"""gunicorn's logger, made private: it logs "Invalid request from ip=<client>" and, in the default
access-log format, the client's address. Ours masks every address in every line it writes, and
keeps the access log's lines short whatever a client sends."""

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


def redact(text, keep=frozenset()):
    """Replace every IP address in a line by its masked form, except the addresses in `keep`
    (the server's own listening addresses, which are no one's personal data)."""
    return _CANDIDATE.sub(lambda match: _mask(match.group(0), keep), text)


def _mask(text, keep):
    core, suffix = text, ""
    port = _PORT.match(core)
    if port:
        core, suffix = port.group(1), port.group(2)
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
        record.msg = redact(record.getMessage(), self.keep)
        record.args = ()
        if record.exc_info and not record.exc_text:
            trace = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(trace, self.keep)
        return True


def shorten(text, limit):
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PrivateLogger(Logger):
    """gunicorn's Logger with every error and access line passed through redact(), and the user
    agent and request line of access lines cut to ACCESS_LOG_LIMITS."""

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
