"""Address ranges the classifier knows: the built-in lists shipped in data/ranges/ (each file
names its public source and date), Apple's published egress ranges (iCloud Private Relay, through
which Mail Privacy Protection fetches images) downloaded by `openreceipt ranges update` into the
data dir, and the operator's own list of scanners."""

import csv
import io
import ipaddress
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from .networks import NetworkSet

APPLE_EGRESS_URL = "https://mask-api.icloud.com/egress-ip-ranges.csv"
APPLE_EGRESS_FILE = "apple-egress-ranges.txt"
# The operator's own list: one prefix a line, "#" starts a comment.
SCANNER_FILE = "scanner-ranges.txt"
BUILTIN = Path(__file__).parent / "data" / "ranges"
DOWNLOAD_TIMEOUT_SECONDS = 60
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024


class RangesError(RuntimeError):
    """The download failed or held no ranges; the message says which."""


def parse_egress_csv(text):
    """The prefixes in Apple's CSV (prefix,country,region,city,...), normalised, invalid rows
    skipped."""
    prefixes = []
    for row in csv.reader(io.StringIO(text)):
        if not row or row[0].lstrip().startswith("#"):
            continue
        try:
            prefixes.append(str(ipaddress.ip_network(row[0].strip(), strict=False)))
        except ValueError:
            continue
    return prefixes


def update_apple_egress(data_dir, url=APPLE_EGRESS_URL):
    """Download Apple's egress list and store its prefixes in the data dir; returns their count.
    The stored list is replaced only by a download that holds at least one prefix."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            body = response.read(MAX_DOWNLOAD_BYTES + 1)
    except OSError as error:
        raise RangesError(f"cannot download {url}: {error}") from None
    if len(body) > MAX_DOWNLOAD_BYTES:
        raise RangesError(f"{url} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB")
    prefixes = parse_egress_csv(body.decode("utf-8", errors="replace"))
    if not prefixes:
        raise RangesError(f"{url} holds no IP prefixes; the stored list was kept")
    target = Path(data_dir) / APPLE_EGRESS_FILE
    temporary = target.with_name(f".{APPLE_EGRESS_FILE}.{os.getpid()}")
    temporary.write_text("\n".join(prefixes) + "\n")
    os.replace(temporary, target)
    return len(prefixes)


def listed_prefixes(path):
    """(line number, prefix) of each prefix in a list file: one a line, "#" starts a comment."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        prefix = line.split("#", 1)[0].strip()
        if prefix:
            yield number, prefix


def builtin_networks(name):
    """The prefixes of one built-in list (web/judgement/data/ranges/<name>.txt)."""
    return [prefix for _, prefix in listed_prefixes(BUILTIN / f"{name}.txt")]


def apple_networks(data_dir=None):
    """Apple's own blocks and the shipped summary of its relay egress ranges, plus the full list
    downloaded by `openreceipt ranges update`, when there is one."""
    prefixes = builtin_networks("apple") + builtin_networks("apple-relay")
    path = Path(data_dir) / APPLE_EGRESS_FILE if data_dir else None
    if path and path.exists():
        prefixes += [line for line in path.read_text().splitlines() if line.strip()]
    return NetworkSet(prefixes)


def scanner_networks(data_dir=None):
    """The mail security scanners the operator listed in scanner-ranges.txt, if any. A line
    that is not a prefix stops start-up with its line number."""
    path = Path(data_dir) / SCANNER_FILE if data_dir else None
    if not path or not path.exists():
        return NetworkSet()
    prefixes = []
    for number, prefix in listed_prefixes(path):
        try:
            ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise ConfigError(f"{path} line {number}: {prefix!r} is not an IP prefix") from None
        prefixes.append(prefix)
    return NetworkSet(prefixes)


# Mail security gateways that publish the ranges they fetch from (files in data/ranges/, each
# with its source and date): a fetch from them is a scan on delivery.
GATEWAYS = {
    "scanner-proofpoint": "proofpoint",
    "scanner-mimecast": "mimecast",
    "scanner-barracuda": "barracuda",
    "scanner-cisco": "cisco",
}


@dataclass(frozen=True)
class Networks:
    """The address ranges the classifier needs, parsed once at start-up."""

    apple: NetworkSet
    microsoft_protection: NetworkSet
    azure: NetworkSet = NetworkSet()
    gateways: dict = field(default_factory=dict)  # source -> NetworkSet
    scanners: NetworkSet = NetworkSet()

    @classmethod
    def default(cls):
        """The built-in ranges only (a fresh install)."""
        return cls.load(None)

    @classmethod
    def load(cls, data_dir):
        """The built-in ranges, Apple's egress list from `openreceipt ranges update`, and the
        operator's own list of scanners (scanner-ranges.txt in the data dir)."""
        return cls(
            apple=apple_networks(data_dir),
            microsoft_protection=NetworkSet(builtin_networks("microsoft-protection")),
            azure=NetworkSet(builtin_networks("azure")),
            gateways={
                source: NetworkSet(builtin_networks(name)) for source, name in GATEWAYS.items()
            },
            scanners=scanner_networks(data_dir),
        )

    def gateway(self, ip):
        """The source of the mail security gateway whose published ranges hold `ip`, if any."""
        for source, networks in self.gateways.items():
            if networks.meets(ip):
                return source
        return None
