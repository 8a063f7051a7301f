"""gunicorn's logger, made private: it logs "Invalid request from ip=<client>" and, in the default
access-log format, the client's address. Ours masks every address in every line it writes."""

import logging
import re

from gunicorn.glogging import Logger

from .privacy import anonymize

# Runs of hex digits, dots and colons long enough to be an address; anonymize() decides which
# really are. A run may end in punctuation that belongs to the sentence ("ip=81.2.69.160: ...").
_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]{7,}(?!\w)")

# Without %(h)s (remote address) and %(l)s/%(u)s: time, request line, status, size, duration, UA.
ACCESS_LOG_FORMAT = '%(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'


def redact(text):
    """Replace every IP address in a line by its masked form."""
    return _CANDIDATE.sub(_mask, text)


def _mask(match):
    core, suffix = match.group(0), ""
    while core:
        masked = anonymize(core)
        if masked is not None:
            return masked + suffix
        if core[-1] not in ":.":
            break
        core, suffix = core[:-1], core[-1] + suffix
    return match.group(0)


class _Redactor(logging.Filter):
    def filter(self, record):
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class PrivateLogger(Logger):
    """gunicorn's Logger with every error and access line passed through redact()."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, _Redactor) for f in log.filters):
                log.addFilter(_Redactor())
