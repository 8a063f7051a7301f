"""Sets of IP networks with fast membership tests, built once at start-up."""

import bisect
import functools
import ipaddress
import socket

from ..privacy import IPV4_PREFIX, IPV6_PREFIX


class NetworkSet:
    """Membership of an address in many networks by binary search over merged intervals."""

    def __init__(self, networks=()):
        intervals = {4: [], 6: []}
        for network in networks:
            version, start, end = _span(str(network).strip())
            intervals[version].append((start, end))
        self._starts = {}
        self._ends = {}
        for version, spans in intervals.items():
            merged = []
            for start, end in sorted(spans):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            self._starts[version] = [start for start, _ in merged]
            self._ends[version] = [end for _, end in merged]

    def __len__(self):
        return len(self._starts[4]) + len(self._starts[6])

    def __contains__(self, address):
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        value = int(ip)
        index = bisect.bisect_right(self._starts[ip.version], value) - 1
        return index >= 0 and value <= self._ends[ip.version][index]

    def meets(self, masked_ip):
        """Whether any network overlaps the block a masked address stands for (its /24 or /48).
        Apple's egress list holds prefixes as small as /31, which the masked address itself
        (the block's first address) would miss."""
        block = _block(masked_ip) if masked_ip else None
        if block is None:
            return False
        version, first, last = block
        index = bisect.bisect_right(self._starts[version], last) - 1
        return index >= 0 and self._ends[version][index] >= first


# Masked addresses whose blocks are kept: a fetch's address is looked up in several sets.
BLOCKS_KEPT = 1024


@functools.lru_cache(maxsize=BLOCKS_KEPT)
def _block(masked_ip):
    """(version, first, last) address of the block a masked address stands for (its /24 or
    /48), as integers; None when it is not an address."""
    try:
        version, _, value = _span(masked_ip)
    except ValueError:
        return None
    host_bits = (32 - IPV4_PREFIX) if version == 4 else (128 - IPV6_PREFIX)
    first = value >> host_bits << host_bits
    return version, first, first | ((1 << host_bits) - 1)


def _span(prefix):
    """(version, first, last) address of a prefix as integers. inet_pton is some ten times faster
    than ipaddress for the hundreds of thousands of prefixes in Apple's egress list."""
    address, _, length = prefix.partition("/")
    family, version, bits = (socket.AF_INET6, 6, 128) if ":" in address else (socket.AF_INET, 4, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, address), "big")
        length = int(length) if length else bits
    except (OSError, ValueError):
        raise ValueError(f"{prefix!r} is not an IP network") from None
    if not 0 <= length <= bits:
        raise ValueError(f"{prefix!r} is not an IP network")
    host_bits = bits - length
    start = value >> host_bits << host_bits
    return version, start, start | ((1 << host_bits) - 1)
