"""How a receipt is shown to its owner, the same on the pages and in the API: its pixel's
public URL and HTML, and the recipients' mail providers with what a receipt can tell of each."""

from flask import current_app, url_for
from markupsafe import escape

from ..judgement.mailhosts import PROVIDERS
from ..security import public_origin


def pixel_url(pixel):
    """The public URL of a pixel's image: PUBLIC_URL when set, else this server's own address."""
    token = current_app.extensions["openreceipt"].signer.sign(pixel.public_id)
    return f"{public_origin()}{url_for('pixel.pixel', token=token + '.gif')}"


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
