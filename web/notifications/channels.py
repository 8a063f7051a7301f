"""The channels: what a notice says (compose) and how it is sent — by email, as a signed JSON
webhook, or as an ntfy-style push — within a deadline, failures sorted into plain categories.

A notice says which message (label or subject), when, where (city and country, as collected)
and with what (the mail client): never an address of any kind. What the user sees of a failure
is a plain category ("could not connect", "refused: HTTP 404"), never what the receiver said: a
URL of the user's choosing must not make the server read out what answers on some port. The
details go to the server's log.

A little over 300 lines, in one file on purpose: the three channels share the message and the
sorting of failures."""

import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage

from ..judgement.mailhosts import PROVIDERS
from ..vocabulary import ChannelKind, Reason
from . import outbound

log = logging.getLogger(__name__)

TIMEOUT = 10  # seconds one step of a delivery (connecting, each answer) may take
SEND_DEADLINE = 30  # seconds a whole delivery may take, however its receiver dawdles
CUT_GRACE = 2  # seconds a send that was cut off at its deadline is given to end
NAME_LENGTH = 120  # of the message's name in a notice
SIGNATURE_HEADER = "X-Openreceipt-Signature"
TIMESTAMP_HEADER = "X-Openreceipt-Timestamp"
DELIVERY_HEADER = "X-Openreceipt-Delivery"
TEST_DELIVERY = "test-"  # + random characters: a test's delivery id, never a notice's number


@dataclass(frozen=True)
class Message:
    """One notice, ready for any channel."""

    notice_id: int | None
    title: str
    text: str
    link: str | None
    data: dict  # the webhook's JSON
    delivery: str | None = None  # the webhook's delivery id; None: the notice's id

    @property
    def delivery_id(self):
        if self.delivery is not None:
            return self.delivery
        return None if self.notice_id is None else str(self.notice_id)


def receipt_link(public_url, pixel):
    return f"{public_url}/m/{pixel.public_id}" if public_url and pixel else None


# A notice's "type" in the webhook's JSON, by its reason.
TYPES = {Reason.OPEN: "opened", Reason.CLICK: "clicked", Reason.DELIVERED: "delivered"}


def receipt_json(pixel, link):
    return {"id": pixel.public_id, "label": pixel.label, "subject": pixel.subject, "url": link}


def message_name(pixel):
    """The message's name in a notice: one line, and not too long (it goes into a mail's
    Subject and a push's Title header)."""
    name = " ".join((pixel.label or pixel.subject or "Your message").split())
    if len(name) > NAME_LENGTH:
        name = name[: NAME_LENGTH - 1] + "…"
    return name


def _when(moment):
    return moment.strftime("%-d %b %Y at %H:%M UTC")


def compose(reason, pixel, event, public_url, notice_id=None):
    """The Message for a notice of `reason` ("open", "delivered", "not-opened" or "test")."""
    if reason == "test":
        return test_message(public_url)
    if reason == Reason.NOT_OPENED:
        return reminder_message(pixel, public_url, notice_id)
    name = message_name(pixel)
    when = _when(event.at)
    if reason == Reason.OPEN:
        title = f"Opened: {name}"
        text = f"“{name}” was opened on {when}"
    elif reason == Reason.CLICK:
        title = f"Clicked: {name}"
        text = f"In “{name}”, the link to {event.link.destination} was clicked on {when}"
    else:
        title = f"Delivered: {name}"
        text = (
            f"“{name}” was delivered on {when} (a mail server fetched it; nobody has read it yet)"
        )
    details = [
        f"in {event.place}" if event.place else "",
        f"with {event.client}" if event.client else "",
    ]
    text += "".join(f", {detail}" for detail in details if detail) + "."
    link = receipt_link(public_url, pixel)
    data = {
        "id": notice_id,
        "type": TYPES[reason],
        "title": title,
        "text": text,
        "receipt": receipt_json(pixel, link),
        "fetch": {
            "at": event.at.isoformat(timespec="seconds") + "Z",
            "kind": event.kind,
            "source": event.source,
            "client": event.client,
            "city": event.city,
            "country": event.country,
            "link": event.link.destination if event.link_id else None,
        },
    }
    return Message(notice_id, title, text, link, data)


def reminder_message(pixel, public_url, notice_id):
    """A reminder: the message was not opened within the days its sender chose. It says what
    the receipt did see (a delivery), and what the recipients' mail providers let it see."""
    name = message_name(pixel)
    title = f"Not opened yet: {name}"
    days = pixel.remind_after_days
    since = f"sent on {_when(pixel.sent_at)}" if pixel.sent_at else "sent"
    text = f"“{name}” has not been opened in {days} day{'s' if days != 1 else ''} ({since})."
    if pixel.delivered_at:
        text += f" It was delivered on {_when(pixel.delivered_at)} (a mail server fetched it)."
    for key in (pixel.mail_providers or "").split(","):
        provider = PROVIDERS.get(key)
        if provider is not None and provider.caveat:
            text += f" Delivered to {provider.name}: {provider.caveat}"
    link = receipt_link(public_url, pixel)
    data = {
        "id": notice_id,
        "type": "not-opened",
        "title": title,
        "text": text,
        "receipt": receipt_json(pixel, link),
        "fetch": None,
    }
    return Message(notice_id, title, text, link, data)


def test_message(public_url):
    """A test notice: the shape of a real one, so that a receiver can be written against it —
    its title and text, a receipt whose fields are all null (there is none), no fetch — and a
    delivery id of its own ("test-…"), new at every test. Its link (push, email) is the
    server's status page."""
    title = "openreceipt: test notification"
    text = "This is a test. When one of your messages is opened, the notice comes here."
    data = {
        "id": None,
        "type": "test",
        "title": title,
        "text": text,
        "receipt": {"id": None, "label": None, "subject": None, "url": None},
        "fetch": None,
    }
    delivery = TEST_DELIVERY + secrets.token_hex(8)
    return Message(None, title, text, public_url, data, delivery)


class DeliveryError(Exception):
    """A notice could not be delivered: the message is a plain category for the user, `final`
    when trying again cannot help, `detail` what went wrong, for the server's log only."""

    def __init__(self, message, final=False, detail=None):
        super().__init__(message)
        self.final = final
        self.detail = detail or message


def _detail(error):
    return f"{type(error).__name__}: {_reason(error)}"


def send(channel, message, config, timeout=TIMEOUT, deadline=SEND_DEADLINE):
    """Deliver `message` on `channel` within `deadline` seconds, or raise DeliveryError.

    The sending runs in a thread of its own that is waited for `deadline` seconds at most:
    socket timeouts bound each step, not a receiver that answers one byte at a time. At the
    deadline, the connections the send made are shut down (outbound.Deadline): whatever it
    was waiting for fails at once, its thread closes its socket and ends, and the try counts
    as failed. Nothing of a send outlives its deadline by more than a moment."""
    senders = {
        ChannelKind.EMAIL: send_email,
        ChannelKind.WEBHOOK: send_webhook,
        ChannelKind.PUSH: send_push,
    }
    if channel.kind not in senders:
        raise DeliveryError(f"unknown channel kind {channel.kind!r}", final=True)
    outcome = {}
    exchange = outbound.Deadline(deadline)

    def attempt():
        try:
            senders[channel.kind](channel, message, config, timeout, exchange)
        except DeliveryError as error:
            outcome["error"] = error
        except Exception as error:  # noqa: BLE001 - whatever it was, it is a failed try, counted
            log.exception("notify: unexpected error sending on a %s channel", channel.kind)
            outcome["error"] = DeliveryError(
                "failed: an unexpected error (the server's log has it)", detail=_detail(error)
            )

    sender = threading.Thread(target=attempt, name="openreceipt-send", daemon=True)
    sender.start()
    sender.join(deadline)
    late = sender.is_alive()
    exchange.cut()  # over, one way or the other: no connection of it stays open
    if late:
        sender.join(CUT_GRACE)
        if sender.is_alive():
            log.warning("notify: a send on a %s channel still runs after its cut", channel.kind)
        raise DeliveryError("timed out", detail=f"the receiver took more than {deadline} s")
    if "error" in outcome:
        raise outcome["error"]


class _SMTP(smtplib.SMTP):
    """smtplib's SMTP, its connection made within and watched by `deadline` (a Deadline), in
    TLS from the start with a `context` (smtps://: what smtplib.SMTP_SSL does)."""

    def __init__(self, host, port, timeout, deadline, context=None):
        self.deadline, self.tls_context = deadline, context
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        infos = outbound.resolve(host, port, self.deadline.left(timeout))
        return outbound.secured(
            outbound.connect(infos, timeout, self.deadline), self.tls_context, host
        )


def send_email(channel, message, config, timeout, deadline):
    server = config["SMTP"]
    if server is None:
        raise DeliveryError("the server has no mail server (OPENRECEIPT_SMTP_URL) set up")
    mail = EmailMessage()
    mail["From"] = config["SMTP_FROM"]
    mail["To"] = channel.target
    mail["Subject"] = message.title
    mail["Date"] = email.utils.formatdate(usegmt=True)
    sender_domain = email.utils.parseaddr(config["SMTP_FROM"])[1].rpartition("@")[2]
    mail["Message-ID"] = email.utils.make_msgid(domain=sender_domain or None)
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
    mail.set_content(message.text + (f"\n\n{message.link}\n" if message.link else "\n"))
    context = ssl.create_default_context()
    try:
        tls = context if server.security == "ssl" else None
        smtp = _SMTP(server.host, server.port, timeout, deadline, tls)
        with smtp:
            if server.security == "starttls":
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    # Never on unencrypted: the password and the notice would go in the clear.
                    raise DeliveryError(
                        "the mail server does not offer STARTTLS (use smtps:// or, for a relay "
                        "on the same machine, smtp+plain:// in OPENRECEIPT_SMTP_URL)"
                    )
                smtp.starttls(context=context)
            if server.username:
                smtp.ehlo_or_helo_if_needed()
                if not smtp.has_extn("auth"):
                    raise DeliveryError(
                        "the mail server offers no login (AUTH): leave the user name and "
                        "password out of OPENRECEIPT_SMTP_URL"
                    )
                smtp.login(server.username, server.password or "")
            smtp.send_message(mail)
    except smtplib.SMTPRecipientsRefused as error:
        code, reply = next(iter(error.recipients.values()))
        raise DeliveryError(
            f"refused: the mail server refused the address (SMTP {code})",
            final=500 <= code < 600,
            detail=_smtp_reply(code, reply),
        ) from None
    except smtplib.SMTPResponseException as error:
        raise DeliveryError(
            f"failed: the mail server answered SMTP {error.smtp_code}",
            detail=_smtp_reply(error.smtp_code, error.smtp_error),
        ) from None
    except (OSError, smtplib.SMTPException) as error:
        what = _connection_failure(error)
        raise DeliveryError(f"{what} (the mail server)", detail=_detail(error)) from None


def _smtp_reply(code, reply):
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}"


def signature(secret, timestamp, body):
    """The webhook signature: HMAC-SHA256 of "<timestamp>.<body>" with the channel's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def send_webhook(channel, message, config, timeout, deadline):
    body = json.dumps(message.data, ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(channel.secret or "", timestamp, body),
    }
    if message.delivery_id is not None:
        headers[DELIVERY_HEADER] = message.delivery_id
    _post(channel.target, body, headers, config, timeout, deadline)


def send_push(channel, message, config, timeout, deadline):
    """An ntfy-style push: the text as the body, the title and a link in headers."""
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": _header_text(message.title),
        "Tags": "envelope_with_arrow",
    }
    if message.link:
        headers["Click"] = message.link
    if channel.secret:
        headers["Authorization"] = f"Bearer {channel.secret}"
    _post(channel.target, message.text.encode(), headers, config, timeout, deadline)


def _header_text(text):
    """A header value: as is when ASCII, else RFC 2047 encoded words (ntfy decodes them)."""
    text = " ".join(text.split())
    # A long title is several encoded words, joined by a space: never folded over lines.
    return text if text.isascii() else Header(text, "utf-8").encode(linesep=" ")


RETRY_STATUSES = {408, 425, 429}


def _post(url, body, headers, config, timeout, deadline):
    """POST to a webhook or push URL (outbound.py: only where allowed). A redirect is an
    answer like any other: not a delivery, and not followed."""
    headers = {**headers, "User-Agent": "openreceipt-notify"}
    allowed = config.get("NOTIFY_ALLOW") or ()
    try:
        status = outbound.post(url, body, headers, timeout, allowed, deadline)
    except outbound.NotAllowed as error:
        raise DeliveryError(f"not allowed: {error}", final=True) from None
    except outbound.BadURL as error:  # saved before URLs were checked as they are now
        raise DeliveryError(f"not a valid address: {error}", final=True) from None
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryError(_connection_failure(error), detail=_detail(error)) from None
    if not 200 <= status < 300:
        final = 300 <= status < 500 and status not in RETRY_STATUSES
        raise DeliveryError(f"{'refused' if final else 'failed'}: HTTP {status}", final=final)


def _connection_failure(error):
    """The category of a failure to reach a receiver: nothing of what it said."""
    if isinstance(error, socket.gaierror):
        return "could not connect: the host name was not found"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return "could not connect securely (TLS)"
    if isinstance(error, OSError):
        return "could not connect"
    return "no valid HTTP answer"


def _reason(error):
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
    return " ".join(str(reason).split())[:200] or type(error).__name__
