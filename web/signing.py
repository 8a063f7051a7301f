"""Signed pixel tokens: a pixel's public id plus an HMAC, so garbage is refused without a
database read, and old keys keep verifying after the secret key is rotated."""

import hashlib

from itsdangerous import BadSignature, Signer

SALT = "openreceipt.pixel"
MAX_TOKEN_LENGTH = 128


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
        try:
            return self._signer.unsign(token.encode("ascii")).decode("ascii")
        except (BadSignature, UnicodeError):
            return None
