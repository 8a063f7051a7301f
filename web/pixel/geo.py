"""City and country for a masked address, from a MaxMind-format (.mmdb) database opened once."""

import datetime
import functools
from dataclasses import dataclass

import geoip2.database
import geoip2.errors
import maxminddb

from ..config import ConfigError


@dataclass(frozen=True)
class Location:
    country: str | None = None
    city: str | None = None


NOWHERE = Location()


def packaged_database():
    """Path of the GeoLite2 City snapshot shipped by maxminddb-geolite2, or None."""
    try:
        from _maxminddb_geolite2 import geolite2_database
    except ImportError:
        return None
    return geolite2_database()


class Geolocator:
    """Looks up masked addresses in one City or Country database (GeoLite2, DB-IP Lite, ...).
    With `cities=False` only the country leaves the lookup (COLLECT_LOCATION=country)."""

    def __init__(self, path, cities=True):
        self.path = path
        self.cities = cities
        self._locate_cached = functools.lru_cache(maxsize=4096)(self._locate)
        self._reader = geoip2.database.Reader(path) if path else None
        if self._reader is None:
            self.database_type = None
            self.built = None
            return
        metadata = self._reader.metadata()
        self.database_type = metadata.database_type
        if "City" not in self.database_type and "Country" not in self.database_type:
            self._reader.close()
            raise ValueError(f"a {self.database_type} database has no countries or cities")
        self.built = datetime.datetime.fromtimestamp(metadata.build_epoch, datetime.UTC).date()
        self._has_cities = "City" in self.database_type

    def describe(self):
        """One line for the start-up log and the README's promise: which data, how old."""
        if self._reader is None:
            return "no GeoIP database: locations stay empty"
        what = "" if self.cities else ", countries only"
        return f"GeoIP database {self.database_type} built {self.built} ({self.path}{what})"

    def locate(self, masked_ip):
        """The Location of a masked address; NOWHERE when unknown or without a database. Mail
        proxies fetch from few networks: the answers for the latest ones are kept."""
        return self._locate_cached(masked_ip)

    def _locate(self, masked_ip):
        if self._reader is None or not masked_ip:
            return NOWHERE
        try:
            if self._has_cities:
                found = self._reader.city(masked_ip)
                return Location(found.country.iso_code, found.city.name if self.cities else None)
            return Location(self._reader.country(masked_ip).country.iso_code, None)
        except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
            return NOWHERE

    def close(self):
        if self._reader is not None:
            self._reader.close()


def open_geolocator(setting, collect="city"):
    """The Geolocator for the GEOIP_DATABASE setting: a path, "off", or None for the packaged
    snapshot when it is installed; COLLECT_LOCATION `collect` "none" opens no database at all."""
    if setting == "off" or collect == "none":
        return Geolocator(None)
    path = setting or packaged_database()
    try:
        return Geolocator(path, cities=collect == "city")
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as error:
        raise ConfigError(f"OPENRECEIPT_GEOIP_DATABASE {path} cannot be read: {error}") from None
