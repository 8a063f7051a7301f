"""Requests to the URLs users name (webhook and push channels): only to public addresses, unless
the operator allows some networks (OPENRECEIPT_NOTIFY_ALLOW).

Without this, a user who may name any URL makes the server reach what only it can reach: its
own loopback services, the private network, a cloud's metadata address, and "Send a test
notification" tells them what answered. A send resolves the host name once, checks every
address it gets, and connects to those very addresses, with the URL's name in the Host header
and as the TLS server name: a name that answers a public address to the check and a private
one to the connection (DNS rebinding) gets nowhere. The same check runs when a channel is saved,
so that most mistakes are told at once.

The standard library is enough: ipaddress knows the special networks, getaddrinfo resolves as
everything else on the machine does (/etc/hosts included, and the spellings 127.1, 2130706433
and 0x7f.0.0.1 of 127.0.0.1), and http.client connects to a socket given to it. SSRF-guarding
packages wrap requests or httpx, neither of which openreceipt otherwise needs.

A little over 300 lines, in one file on purpose: the check of an address, the connection to the
very address checked and the deadline that ends it are one guarantee, safe to change only with
all of it in view."""

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit, urlunsplit

URL_LENGTH = 2000
RESOLVE_SECONDS = 3  # for the look-up when a channel is saved; a send has its own deadline

# What a refused address is, in the order asked: the first that fits names it.
REFUSED_KINDS = (
    ("is_unspecified", "an unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class NotAllowed(Exception):
    """The server may not connect there; the message says why in a few words ("a loopback
    address")."""


class BadURL(ValueError):
    """The URL is not one to send to; the message says what is wrong."""


def url_problem(url, example="https://example.com/hook"):
    """What is wrong with a receiver's URL, in a few plain words, or None when it is fine."""
    if len(url) > URL_LENGTH:
        return f"the address is longer than {URL_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "the address may not contain spaces or control characters"
    if not url.isascii():
        return "write the address in ASCII (percent-encode the rest, a domain in its xn-- form)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no port
    except ValueError:
        return f"the address is not a valid URL; write it like {example}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the address must be an http(s) URL like {example}"
    if "@" in parts.netloc:
        return "put no password in the URL; a push server's token has its own field"
    return None


def tidy_url(url):
    """The URL in one spelling of the many that reach the same receiver (RFC 3986, section 6),
    so that one receiver is one channel however it was typed: the scheme and host in lower
    case, the host without the trailing dot DNS allows and an IP address in its usual form
    (127.1 is 127.0.0.1), no default port, no fragment (never sent: it is the browser's), the
    path without dot-segments and "/" when empty, percent-escapes in upper case and unreserved
    characters unescaped. Everything else of the path and query is the receiver's to interpret
    and is kept as typed: `/IN` and `//in` are other paths than `/in` (many servers merge
    slashes, some do not), and a URL is sent exactly as it is saved."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = _host_form(parts.hostname or "")
    port = parts.port
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        netloc += f":{port}"
    path = _without_dot_segments(_escapes(parts.path)) or "/"
    return urlunsplit((scheme, netloc, path, _escapes(parts.query), ""))


def _host_form(host):
    host = host.lower().rstrip(".")
    if "%" in host:  # an IPv6 zone (fe80::1%eth0): kept as written
        return host
    try:
        return str(ipaddress.ip_address(host))  # [0:0::1] is [::1]
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:  # what getaddrinfo reads as IPv4 too: 127.1, 2130706433, 0x7f.0.0.1
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass
    return host


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _escapes(text):
    """%7e is ~ and %2f is %2F; %2F stays escaped (a slash in a segment is not a separator)."""

    def one(match):
        character = chr(int(match.group(1), 16))
        return character if character in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, text)


def _without_dot_segments(path):
    """RFC 3986's remove_dot_segments (5.2.4), step by step: /a/./b/../c is /a/c. Empty
    segments (//) are segments like any other, and stay."""
    output = ""
    while path:
        if path.startswith(("../", "./")):
            path = path[path.index("/") + 1 :]
        elif path.startswith("/./") or path == "/.":
            path = "/" + path[3:]
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:]
            output = output[: max(output.rfind("/"), 0)]
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1)
            end = len(path) if end < 0 else end
            output, path = output + path[:end], path[end:]
    return output


def embedded_ipv4(address):
    """The IPv4 addresses an IPv6 address carries to (6to4, Teredo, NAT64, IPv4-compatible),
    which a relay or the kernel may well connect to."""
    if address.version != 6:
        return []
    found = [address.sixtofour, *(address.teredo or ())]
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [each for each in found if each is not None]


def refusal(address, allowed=()):
    """Why the server may not connect to `address` (an ipaddress address), e.g. "a private
    address"; None when it may: a public address, or one in the operator's `allowed`
    networks."""
    address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:a.b.c.d is a.b.c.d
    if any(address in network for network in allowed):
        return None
    for each in (address, *embedded_ipv4(address)):
        for flag, kind in REFUSED_KINDS:
            if getattr(each, flag):
                return kind
        if not each.is_global:  # e.g. 100.64.0.0/10, shared by carriers
            return "a non-public address"
    return None


class Deadline:
    """The hard end of one exchange with a receiver, however it dawdles.

    Socket timeouts bound each step (connecting, each read), and a receiver that answers one
    byte every few seconds starts each step afresh: it could keep the sending thread, and its
    socket, for ever. So every connection of the exchange is registered here, as a duplicate
    of its socket, and cut() shuts them all down from the outside: a read blocked on one
    returns at once (TLS and SMTP included: shutting a duplicate down shuts the connection
    itself down), the sending thread fails, closes its socket and ends. Steps begun after
    the deadline, or after a cut, fail at once with TimeoutError."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds
        self.cut_off = False
        self._lock = threading.Lock()
        self._sockets = []

    def left(self, step):
        """How long the next step may take: `step` seconds, or less when less is left."""
        left = self.end - time.monotonic()
        if self.cut_off or left <= 0:
            raise TimeoutError("the exchange's deadline has passed")
        return min(step, left)

    def watch(self, sock):
        """Register a socket of the exchange (before it connects), to be shut down by cut()."""
        with self._lock:
            if self.cut_off:
                raise TimeoutError("the exchange's deadline has passed")
            self._sockets.append(sock.dup())

    def cut(self):
        """End the exchange: shut down every connection it made, and let it make no more.
        Called when the exchange is over, whichever way: its duplicates are closed then."""
        with self._lock:
            self.cut_off = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # not connected (any more)
                pass
            sock.close()


def resolve(host, port, timeout):
    """getaddrinfo() for TCP within `timeout` seconds (it has no timeout of its own). Raises
    socket.gaierror, or TimeoutError."""
    found = {}

    def look_up():
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            found["error"] = error

    thread = threading.Thread(target=look_up, name="openreceipt-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in found:
        raise found["error"]
    if "infos" not in found:
        raise TimeoutError(f"no address for {host} within {timeout} s")
    return found["infos"]


def checked_addresses(host, port, allowed, timeout):
    """The addresses to connect to for `host`, each one checked: raises NotAllowed when any is
    refused (a name that also points inside is not a public receiver)."""
    infos = resolve(host, port, timeout)
    for *_, sockaddr in infos:
        why = refusal(ipaddress.ip_address(sockaddr[0]), allowed)
        if why:
            raise NotAllowed(why)
    return infos


def refusal_of(url, allowed, timeout=RESOLVE_SECONDS):
    """Why notices may not go to `url` (a valid one), as far as its host name resolves now; a
    name that does not resolve yet is checked again at each send."""
    parts = urlsplit(url)
    try:
        checked_addresses(parts.hostname, default_port(parts), allowed, timeout)
    except NotAllowed as error:
        return str(error)
    except OSError:  # no answer now (a typo, or DNS away): the test notification will tell
        pass
    return None


def default_port(parts):
    return parts.port or (443 if parts.scheme == "https" else 80)


def connect(infos, timeout, deadline):
    """A TCP connection to the first of `infos` (getaddrinfo's tuples) that answers, each try
    within `timeout` seconds and within what is left of `deadline` (a Deadline), which watches
    it."""
    error = None
    for family, kind, protocol, _, sockaddr in infos:
        step = deadline.left(timeout)
        sock = socket.socket(family, kind, protocol)
        try:
            deadline.watch(sock)
            sock.settimeout(step)
            sock.connect(sockaddr)
            deadline.left(timeout)  # cut while it connected, before the cut could reach it
            return sock
        except OSError as failure:
            sock.close()
            error = failure
    raise error or OSError("no address to connect to")


class PinnedConnection(http.client.HTTPConnection):
    """HTTP, or HTTPS with `context`, to addresses resolved and checked beforehand, under the
    URL's host name: in the Host header, as the TLS server name, and in the certificate."""

    def __init__(self, host, port, infos, timeout, deadline, context=None):
        super().__init__(host, port, timeout=timeout)
        self.infos, self.deadline, self.context = infos, deadline, context
        if context is not None:
            self.default_port = 443  # the Host header leaves a default port out

    def connect(self):
        self.sock = secured(
            connect(self.infos, self.timeout, self.deadline), self.context, self.host
        )


def secured(sock, context, host):
    """`sock` in TLS with `context` (the certificate checked for `host`), or as it is without a
    context; closed when the handshake fails."""
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def post(url, body, headers, timeout, allowed, deadline):
    """POST `body` to `url`, at an address checked as above; returns the answer's status.
    `timeout` bounds each step; `deadline` (a Deadline), the whole exchange. Raises BadURL,
    NotAllowed, OSError (socket.gaierror, TimeoutError, ssl.SSLError, ...) or
    http.client.HTTPException (not an HTTP answer)."""
    problem = url_problem(url)
    if problem:
        raise BadURL(problem)
    parts = urlsplit(url)
    port = default_port(parts)
    infos = checked_addresses(parts.hostname, port, allowed, deadline.left(timeout))
    context = ssl.create_default_context() if parts.scheme == "https" else None
    connection = PinnedConnection(parts.hostname, port, infos, timeout, deadline, context)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(1024)
        return response.status
    finally:
        connection.close()
