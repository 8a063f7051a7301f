"""Masking client addresses at the edge. The raw address never leaves the request that carried it:
only what anonymize() returns is looked up, classified, stored or shown."""

import hashlib
import hmac
import ipaddress
import re

IPV4_PREFIX = 24
IPV6_PREFIX = 48
# The most of a user agent anything reads (the pixel, the mint request): longer is cut first.
MAX_USER_AGENT = 1024

# "1.2.3.4:5678" and "[2001:db8::1]:443": some proxies put the client's port in X-Forwarded-For.
_WITH_PORT = re.compile(r"^\[(?P<v6>[^\]]+)\](?::\d+)?$|^(?P<v4>\d{1,3}(?:\.\d{1,3}){3}):\d+$")


def anonymize(address):
    """Mask a client address: IPv4 to its /24, IPv6 to its /48, IPv4-mapped and 6to4 IPv6 as the
    IPv4 they carry. Returns the masked address as text, or None if it is not an address."""
    if not address:
        return None
    text = str(address).strip()
    quick = _plain_ipv4(text)
    if quick is not None:
        return quick
    match = _WITH_PORT.match(text)
    if match:
        text = match.group("v6") or match.group("v4")
    text = text.split("%", 1)[0]  # an IPv6 zone ("fe80::1%eth0") says nothing about the client
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6:
        # A /48 of a 6to4 address (2002:AABB:CCDD::/48) still holds the whole IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network((ip, prefix), strict=False).network_address)


def _plain_ipv4(text):
    """The /24 of a plain dotted IPv4 address ("81.2.69.160"), the common case, without
    ipaddress's cost; None for anything else (the full parse decides)."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        # Decimal, 0-255, no leading zero: exactly what ipaddress accepts.
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or int(part) > 255:
            return None
        if len(part) > 1 and part[0] == "0":
            return None
    return f"{parts[0]}.{parts[1]}.{parts[2]}.0"


def fingerprint(secret, user_agent, masked_ip):
    """A keyed hash of a browser (user agent) and its masked network: enough to recognise the
    sender's own browser fetching a pixel it just made, useless for finding anyone."""
    message = f"{user_agent or ''}\n{masked_ip or ''}".encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def kept_recipients(addresses, store):
    """What a pixel keeps of its recipients under STORE_RECIPIENTS `store`: the addresses, only
    their domains (each once, in order), or nothing."""
    if store == "address":
        return list(addresses)
    if store == "domain":
        return list(dict.fromkeys(address.rpartition("@")[2] for address in addresses))
    return []
