"""How a receipt is shown to its owner, the same on the pages and in the API: its pixel's
public URL and HTML, the recipients' mail providers with what a receipt can tell of each, how
far it got in the pages' words (status_of), and who fetched it from where in plain names
(source_name, network)."""

from flask import current_app, request
from markupsafe import escape

from ..judgement.clients import CLIENT_NAMES
from ..judgement.mailhosts import PROVIDERS
from ..pixel.endpoint import PREFIX as PIXEL_PREFIX
from ..privacy import IPV4_PREFIX, IPV6_PREFIX
from ..security import public_origin
from ..storage.models import Pixel
from ..vocabulary import Kind, State

# Where tracked links live: /l/<signed link id> (web/clicks.py answers it).
LINK_PREFIX = "/l/"

# How far a receipt got, as its owner sees it: its State, except that a message marked sent
# that no recipient's mail server or program has fetched yet is "sent" (not yet delivered),
# whether or not the sender's own draft or sent mail showed it.
SENT = "sent"
STATUSES = (State.WAITING, State.INSERTED, SENT, State.DELIVERED, State.OPENED)
NOT_YET_DELIVERED = (State.WAITING, State.INSERTED)


def status_of(pixel):
    """The receipt's status (one of STATUSES): what the pages show and filter by."""
    if pixel.sent_at is not None and pixel.state in NOT_YET_DELIVERED:
        return SENT
    return pixel.state


def with_status(query, status):
    """`query` of receipts narrowed to those of that status."""
    if status == SENT:
        return query.where(Pixel.sent_at.is_null(False), Pixel.state.in_(NOT_YET_DELIVERED))
    if status in NOT_YET_DELIVERED:
        return query.where(Pixel.state == status, Pixel.sent_at.is_null())
    return query.where(Pixel.state == status)


# Who fetched a pixel, by its event's source, in plain names: the mail services by the names
# the client column uses (judgement/clients.py), the scanners as scanners.
SOURCE_NAMES = {
    **CLIENT_NAMES,
    **{
        source: f"{name} scanner"
        for source, name in CLIENT_NAMES.items()
        if source.startswith("scanner-")
    },
    "apple-mpp": "Apple Mail Privacy Protection",
    "scanner": "a mail security scanner",
    "outlook": "Outlook",
    "machine": "a machine",
    "automated": "an automated program",
    "no-user-agent": "a script",
    "unrecognised": "an unrecognised program",
}


def source_name(source, kind=None, reason=None):
    """Who fetched it, for people: "Gmail", "Apple Mail Privacy Protection", "a browser"…
    A direct fetch is the reader's own program; its reason says which sort, when it knows."""
    if source == "direct":
        reason = reason or ""
        if kind == Kind.PREVIEW:
            return "your browser"
        for sort in ("a mail program", "a browser"):
            if sort in reason:
                return sort
        return "a mail program or browser"
    return SOURCE_NAMES.get(source, source)


def network(ip):
    """A masked address as the network it stands for: "81.2.69.0/24", "2001:db8:1::/48"."""
    if not ip:
        return ""
    return f"{ip}/{IPV6_PREFIX if ':' in ip else IPV4_PREFIX}"


def pixel_url(pixel):
    """The public URL of a pixel's image: PUBLIC_URL when set, else this server's own address."""
    token = current_app.extensions["openreceipt"].signer.sign(pixel.public_id)
    return f"{public_origin()}{request.script_root}{PIXEL_PREFIX}{token}.gif"


def link_url(link):
    """The public URL of a tracked link: it redirects to the link's destination."""
    token = current_app.extensions["openreceipt"].link_signer.sign(link.public_id)
    return f"{public_origin()}{request.script_root}{LINK_PREFIX}{token}"


HIDDEN_LINK = "hidden"  # a click's link when it was the honeypot


def click_link(event):
    """A click's link as the API, exports and pages give it: its destination, or "hidden" for
    the honeypot; None for a fetch of the pixel."""
    if event.link_id is None:
        return None
    return HIDDEN_LINK if event.link.honeypot else event.link.destination


def pixel_html(url):
    # A real 1x1 image: Gmail never loads an image hidden with display:none.
    return f'<img src="{escape(url)}" width="1" height="1" alt="">'


def mail_providers(pixel):
    return tuple(pixel.mail_providers.split(",")) if pixel.mail_providers else ()


def providers_json(providers):
    """The recipients' mail providers, each with what a receipt can show for it."""
    return [
        {
            "provider": key,
            "name": PROVIDERS[key].name,
            "caveat": PROVIDERS[key].caveat,
            "source": PROVIDERS[key].source,
        }
        for key in providers
        if key in PROVIDERS
    ]
