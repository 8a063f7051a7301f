"""The bookmarklet, built for one user: the readable source in bookmarklet/openreceipt.js,
minified, with the server's address, the user's API token and the version filled in, as a
`javascript:` URL."""

import datetime
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

import rjsmin

# bookmarklet/openreceipt.js in the checkout; package data (web.bookmarklet_source) when installed.
SOURCE = Path(str(files("web.bookmarklet_source") / "openreceipt.js"))
# Raise when the API and an already installed bookmarklet would no longer understand each other.
VERSION = 1
# Firefox refuses longer bookmark URLs (65,536), so stay well under.
MAX_LENGTH = 60_000


def bookmarklet_code(origin, token, version=VERSION):
    """The minified JavaScript with the placeholders filled in."""
    code = rjsmin.jsmin(SOURCE.read_text(encoding="utf-8"))
    for placeholder, value in (
        ("__OPENRECEIPT_ORIGIN__", origin.rstrip("/")),
        ("__OPENRECEIPT_TOKEN__", token),
        ("__OPENRECEIPT_VERSION__", str(version)),
    ):
        if placeholder not in code:
            raise RuntimeError(f"{SOURCE} lost its placeholder {placeholder}")
        code = code.replace(placeholder, _js_string_content(value))
    return code


def build_bookmarklet(origin, token, version=None):
    """The `javascript:` URL to drag to the bookmarks bar."""
    code = bookmarklet_code(origin, token, VERSION if version is None else version)
    url = "javascript:" + quote(code, safe="!#$&'()*+,/:;=?@[]~{}|^`<>.-_ ")
    url = url.replace(" ", "%20")
    if len(url) > MAX_LENGTH:
        raise RuntimeError(f"the bookmarklet is {len(url)} characters, over {MAX_LENGTH}")
    return url


def _js_string_content(value):
    # Origins and tokens are URL-safe already; refuse anything that could end the string.
    if any(character in value for character in "\"'\\\n\r<>"):
        raise ValueError(f"{value!r} cannot go into the bookmarklet")
    return value


def bookmarklet_token_name(browser=None, system=None, now=None):
    """A bookmarklet's default name, different for each one made: the browser and system it
    was made in, as far as known, and the minute (UTC): "Firefox on Linux, 30 Nov 14:05 UTC"."""
    now = now or datetime.datetime.now(datetime.UTC)
    when = f"{now.day} {now:%b %H:%M} UTC"
    if not (browser or system):
        return f"bookmarklet of {when}"  # made on the command line, say
    made_in = " on ".join(part for part in (browser or "bookmarklet", system) if part)
    return f"{made_in}, {when}"
