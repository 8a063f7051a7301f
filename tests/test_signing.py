"""PixelSigner: genuine tokens give back their public id, everything else gives None."""

import hashlib

import pytest
from itsdangerous import Signer

from web.signing import MAX_TOKEN_LENGTH, SALT, PixelSigner

KEY = "current-secret-key"
OLD_KEY = "old-secret-key"
OLDER_KEY = "older-secret-key"
PUBLIC_ID = "Xq3vN8_k2Lm-P0aZ"  # what receipts.new_public_id() makes: token_urlsafe(12)


@pytest.fixture(scope="module")
def signer():
    return PixelSigner(KEY)


@pytest.fixture(scope="module")
def token(signer):
    return signer.sign(PUBLIC_ID)


@pytest.mark.parametrize(
    "public_id",
    [
        pytest.param(PUBLIC_ID, id="token-urlsafe"),
        pytest.param("a", id="one-char"),
        pytest.param("A" * 32, id="longest-public-id"),
        pytest.param("with.dots.inside", id="dots"),
        pytest.param("-_-", id="url-safe-punctuation"),
    ],
)
def test_round_trip(signer, public_id):
    token = signer.sign(public_id)
    assert isinstance(token, str)
    assert token.isascii()
    assert token.startswith(public_id + ".")
    assert len(token) <= MAX_TOKEN_LENGTH
    assert signer.unsign(token) == public_id


def test_tokens_differ_per_id_and_are_stable(signer):
    assert signer.sign("one") != signer.sign("two")
    assert signer.sign("one") == PixelSigner(KEY).sign("one")


@pytest.mark.parametrize(
    ("signed_with", "verified_by", "public_id"),
    [
        pytest.param(
            PixelSigner(OLD_KEY), PixelSigner(KEY, fallbacks=[OLD_KEY]), PUBLIC_ID, id="old-key"
        ),
        pytest.param(
            PixelSigner(OLDER_KEY),
            PixelSigner(KEY, fallbacks=[OLD_KEY, OLDER_KEY]),
            PUBLIC_ID,
            id="older-of-two-fallbacks",
        ),
        pytest.param(
            PixelSigner(OLD_KEY, fallbacks=[OLDER_KEY]),
            PixelSigner(KEY, fallbacks=(OLD_KEY,)),
            PUBLIC_ID,
            id="old-app-with-its-own-fallbacks",
        ),
        pytest.param(
            PixelSigner(KEY, fallbacks=[OLD_KEY]), PixelSigner(KEY), PUBLIC_ID, id="new-key-alone"
        ),
        pytest.param(
            PixelSigner(KEY, fallbacks=[OLD_KEY, OLDER_KEY]),
            PixelSigner(KEY),
            PUBLIC_ID,
            id="new-key-alone-after-two-rotations",
        ),
    ],
)
def test_key_rotation_verifies(signed_with, verified_by, public_id):
    assert verified_by.unsign(signed_with.sign(public_id)) == public_id


# A pixel URL's token as this server has always made it (itsdangerous, SALT, SHA-256) with
# OLD_KEY, written out: mail sent before a change of key, or of the code, still carries it.
SENT_WITH_OLD_KEY = "Xq3vN8_k2Lm-P0aZ.QphdV4MclFIoY2G-zdoCZ22LFMenlXKm_IJRrUe165I"


def test_a_token_in_mail_already_sent_verifies_after_the_key_is_rotated():
    # The signers are made here, not at collection, so their keys are derived by this run.
    assert PixelSigner(OLD_KEY).unsign(SENT_WITH_OLD_KEY) == PUBLIC_ID
    assert PixelSigner(KEY, fallbacks=[OLD_KEY]).unsign(SENT_WITH_OLD_KEY) == PUBLIC_ID
    assert PixelSigner(KEY, fallbacks=[OLD_KEY, OLDER_KEY]).unsign(SENT_WITH_OLD_KEY) == PUBLIC_ID
    assert PixelSigner(KEY).unsign(SENT_WITH_OLD_KEY) is None
    assert PixelSigner(OLD_KEY).sign(PUBLIC_ID) == SENT_WITH_OLD_KEY


@pytest.mark.parametrize(
    ("signed_with", "verified_by"),
    [
        pytest.param(PixelSigner(OLD_KEY), PixelSigner(KEY), id="old-key-dropped"),
        pytest.param(
            PixelSigner(OLDER_KEY),
            PixelSigner(KEY, fallbacks=[OLD_KEY]),
            id="older-key-not-in-fallbacks",
        ),
        pytest.param(
            PixelSigner(KEY, fallbacks=[OLD_KEY]),
            PixelSigner(OLD_KEY),
            id="new-tokens-not-signed-with-fallback",
        ),
        pytest.param(
            PixelSigner(KEY, fallbacks=[OLD_KEY, OLDER_KEY]),
            PixelSigner(OLDER_KEY, fallbacks=[OLD_KEY]),
            id="new-tokens-not-signed-with-any-fallback",
        ),
        pytest.param(PixelSigner("another-app"), PixelSigner(KEY), id="another-app"),
    ],
)
def test_key_rotation_refuses(signed_with, verified_by):
    assert verified_by.unsign(signed_with.sign(PUBLIC_ID)) is None


def _flip(char):
    return "B" if char == "A" else "A"


def _change_at(token, index):
    return token[:index] + _flip(token[index]) + token[index + 1 :]


def _signature(token):
    return token.rsplit(".", 1)[1]


FORGERIES = [
    # The last base64 character of a SHA-256 signature carries 2 spare bits: every one of its
    # 63 alterations has a test of its own (test_every_other_last_character_...).
    pytest.param(lambda t: _change_at(t, len(PUBLIC_ID) + 1), id="signature-first-char-changed"),
    pytest.param(lambda t: _change_at(t, len(PUBLIC_ID) + 20), id="signature-middle-char-changed"),
    pytest.param(lambda t: t[: len(PUBLIC_ID) + 1] + "A" * 43, id="signature-replaced"),
    pytest.param(lambda t: "Xq3vN8_k2Lm-P0aY." + _signature(t), id="id-changed-old-signature"),
    pytest.param(lambda t: "evil" + t, id="id-prefixed"),
    pytest.param(lambda t: t[1:], id="id-first-char-cut"),
    pytest.param(lambda t: "." + _signature(t), id="id-empty"),
    pytest.param(
        lambda t: PUBLIC_ID + "." + _signature(PixelSigner("another-key").sign(PUBLIC_ID)),
        id="signature-from-another-key",
    ),
    pytest.param(lambda t: t[:-2], id="truncated-by-2"),
    pytest.param(lambda t: t[:-8], id="truncated-by-8"),
    pytest.param(lambda t: t[:-30], id="truncated-by-30"),
    pytest.param(lambda t: t[: len(PUBLIC_ID) + 1], id="truncated-to-id-and-dot"),
    pytest.param(lambda t: t[: len(PUBLIC_ID)], id="truncated-to-id"),
    pytest.param(lambda t: t[:5], id="truncated-to-5"),
    pytest.param(lambda t: t[:1], id="truncated-to-1"),
    pytest.param(lambda t: "", id="empty"),
    pytest.param(lambda t: None, id="none"),
    pytest.param(lambda t: t.replace("X", "Ẍ", 1), id="non-ascii-id"),
    pytest.param(lambda t: t + "é", id="non-ascii-suffix"),
    pytest.param(lambda t: "☃." + _signature(t), id="snowman"),
    pytest.param(lambda t: t + "\x00", id="nul-suffix"),
    pytest.param(lambda t: t + " ", id="space-suffix"),
    pytest.param(lambda t: " " + t, id="space-prefix"),
    pytest.param(lambda t: t + "\n", id="newline-suffix"),
    pytest.param(lambda t: t + ".", id="extra-dot-at-end"),
    pytest.param(lambda t: t + "." + _signature(t), id="signature-twice"),
    pytest.param(lambda t: t.replace(".", ".."), id="double-dot"),
    pytest.param(lambda t: "." + t, id="leading-dot"),
    pytest.param(lambda t: t.replace(".", ""), id="no-dot"),
    pytest.param(lambda t: "...", id="only-dots"),
    pytest.param(lambda t: t + ".gif", id="gif-suffix-not-removed"),
    pytest.param(lambda t: t * 3, id="repeated"),
    pytest.param(lambda t: "A" * 10_000 + "." + _signature(t), id="very-long-id"),
    pytest.param(lambda t: t + "A" * (MAX_TOKEN_LENGTH - len(t) + 1), id="one-over-max-length"),
    pytest.param(lambda t: "x" * 1_000_000, id="megabyte"),
    pytest.param(
        lambda t: (
            Signer(KEY, salt="other.salt", digest_method=hashlib.sha256).sign(PUBLIC_ID).decode()
        ),
        id="other-salt",
    ),
    pytest.param(
        lambda t: Signer(KEY, digest_method=hashlib.sha256).sign(PUBLIC_ID).decode(),
        id="default-salt",
    ),
    pytest.param(
        lambda t: Signer(KEY, salt=SALT).sign(PUBLIC_ID).decode(), id="same-salt-sha1-digest"
    ),
    pytest.param(
        lambda t: (
            Signer(KEY, salt=SALT, digest_method=hashlib.sha256, sep="~").sign(PUBLIC_ID).decode()
        ),
        id="other-separator",
    ),
]


@pytest.mark.parametrize("forge", FORGERIES)
def test_forged_tokens_are_refused(signer, token, forge):
    forged = forge(token)
    assert forged != token
    assert signer.unsign(forged) is None


def test_itsdangerous_signer_with_the_same_settings_agrees(signer, token):
    """Control for the foreign-token cases: the same key, salt and digest do verify."""
    same = Signer(KEY, salt=SALT, digest_method=hashlib.sha256).sign(PUBLIC_ID).decode()
    assert same == token
    assert signer.unsign(same) == PUBLIC_ID


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_every_other_last_character_of_the_signature_is_refused(signer, token):
    """The last of the 43 characters carries 4 bits of the digest and 2 spare bits that decode
    to nothing: four spellings decode to the same bytes. Only the canonical one (spare bits zero,
    as the signer writes it) is a token; each of the 63 others is refused, whether it changes
    the digest or only the spare bits."""
    assert len(BASE64URL) == len(set(BASE64URL)) == 64
    head, last = token[:-1], token[-1]
    assert BASE64URL.index(last) % 4 == 0  # the signer leaves the spare bits zero
    accepted = [char for char in BASE64URL if signer.unsign(head + char) is not None]
    assert accepted == [last]
    # Of the refused ones, three decode to the very digest of the token: only the canonical
    # check refuses them.
    same_digest = [
        c for c in BASE64URL if c != last and BASE64URL.index(c) // 4 == BASE64URL.index(last) // 4
    ]
    assert len(same_digest) == 3
    assert all(signer.unsign(head + char) is None for char in same_digest)
    # itsdangerous itself takes them: they are the forgeries only that check stops.
    library = Signer(KEY, salt=SALT, digest_method=hashlib.sha256)
    assert all(library.validate(head + char) for char in same_digest)
