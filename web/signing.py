"""Signed tokens of pixels and of tracked links: a public id plus an HMAC, so garbage is refused
without a database read, and old keys keep verifying after the secret key is rotated."""

import base64
import hashlib
import hmac
import re

from itsdangerous import Signer

SALT = "openreceipt.pixel"
# A tracked link's token: another salt, so that no pixel token is a link token, nor the reverse.
LINK_SALT = "openreceipt.link"
MAX_TOKEN_LENGTH = 128
# A public id, a dot, and an unpadded URL-safe base64 SHA-256 signature: nothing else.
TOKEN = re.compile(r"(?P<value>[A-Za-z0-9_.-]{1,64})\.(?P<signature>[A-Za-z0-9_-]{43})")


class PixelSigner:
    """Built once per application from the secret key and its fallbacks; `salt` LINK_SALT for
    the tokens of tracked links."""

    def __init__(self, secret_key, fallbacks=(), salt=SALT):
        # itsdangerous verifies with every key and signs with the last one (the newest).
        keys = [*reversed(list(fallbacks)), secret_key]
        self._signer = Signer(keys, salt=salt, digest_method=hashlib.sha256)
        # The HMAC keys itsdangerous derives from each secret, newest first, derived once: the
        # pixel checks a signature on every fetch.
        self._keys = [self._signer.derive_key(key) for key in reversed(self._signer.secret_keys)]

    def sign(self, public_id):
        """The token that goes into a pixel URL for this public id."""
        return self._signer.sign(public_id).decode("ascii")

    def unsign(self, token):
        """The public id inside a genuine token, or None for anything forged, cut or foreign.
        Verifies as itsdangerous's Signer does (tests/test_signing.py holds it to that), with
        two differences: the keys are derived once, and only the one canonical spelling of a
        signature counts (itsdangerous also takes padding, '+' for '-', and spare low bits)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        match = TOKEN.fullmatch(token)
        if match is None:
            return None
        signature = match["signature"]
        raw = base64.urlsafe_b64decode(signature + "=")
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != signature:
            return None
        value = match["value"].encode("ascii")
        for key in self._keys:
            if hmac.compare_digest(hmac.new(key, value, hashlib.sha256).digest(), raw):
                return match["value"]
        return None
