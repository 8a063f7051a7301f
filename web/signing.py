"""Signed pixel tokens: a pixel's public id plus an HMAC, so garbage is refused without a
database read, and old keys keep verifying after the secret key is rotated."""

import base64
import hashlib
import re

from itsdangerous import BadSignature, Signer

SALT = "openreceipt.pixel"
MAX_TOKEN_LENGTH = 128
# A public id, a dot, and an unpadded URL-safe base64 SHA-256 signature: nothing else.
TOKEN = re.compile(r"(?P<value>[A-Za-z0-9_.-]{1,64})\.(?P<signature>[A-Za-z0-9_-]{43})")


class PixelSigner:
    """Built once per application from the secret key and its fallbacks."""

    def __init__(self, secret_key, fallbacks=()):
        # itsdangerous verifies with every key and signs with the last one (the newest).
        keys = [*reversed(list(fallbacks)), secret_key]
        self._signer = Signer(keys, salt=SALT, digest_method=hashlib.sha256)

    def sign(self, public_id):
        """The token that goes into a pixel URL for this public id."""
        return self._signer.sign(public_id).decode("ascii")

    def unsign(self, token):
        """The public id inside a genuine token, or None for anything forged, cut or foreign."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        match = TOKEN.fullmatch(token)
        # itsdangerous decodes base64 leniently (padding, '+' for '-', spare low bits): only the
        # one canonical spelling of a signature is a pixel's URL.
        if match is None or not _canonical(match["signature"]):
            return None
        try:
            return self._signer.unsign(token.encode("ascii")).decode("ascii")
        except (BadSignature, UnicodeError):
            return None


def _canonical(signature):
    raw = base64.urlsafe_b64decode(signature + "=")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == signature
