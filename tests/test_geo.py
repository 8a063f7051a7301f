"""GeoIP: masked addresses to country and city, from real .mmdb files built for the tests."""

import datetime

import maxminddb
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from web.config import ConfigError
from web.pixel.geo import NOWHERE, Location, open_geolocator, packaged_database

from .conftest import build_city_database
from .helpers import mint, pixel_path

THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"

# Masked addresses (what anonymize() hands over) inside the networks of conftest.GEO_NETWORKS.
LONDON = "81.2.69.0"
BERLIN = "2001:db8:1234::"
CUPERTINO = "17.58.0.0"

# Masked addresses outside every network of the test databases.
UNKNOWN = ["192.0.2.0", "10.0.0.0", "0.0.0.0", "2001:db8:4321::", "::"]

# None of these is an address; locate() gets one only through a bug upstream, and must not raise.
INVALID = [
    None,
    "",
    "not an address",
    "999.1.1.1",
    "81.2.69.0/24",
    "2001:db8:1234::/48",
    "81.2.69.160:443",
    "[2001:db8:1234::]",
    "81.2.69",
    "81.2.69.0\x00",  # maxminddb raises TypeError for this one, not ValueError
]

DATABASE_TYPES = ["GeoLite2-City", "DBIP-City-Lite", "GeoLite2-Country"]


@pytest.fixture(scope="session")
def geoip_paths(tmp_path_factory, geoip_path):
    """A test database of each type, by type name; the City one is conftest's own."""
    directory = tmp_path_factory.mktemp("geoip-types")
    paths = {"GeoLite2-City": geoip_path}
    for database_type in DATABASE_TYPES[1:]:
        paths[database_type] = build_city_database(
            directory / f"{database_type}.mmdb", database_type=database_type
        )
    return paths


@pytest.fixture
def geolocator():
    """open_geolocator(), with every reader it opened closed at the end of the test."""
    opened = []

    def open_(setting):
        located = open_geolocator(setting)
        opened.append(located)
        return located

    yield open_
    for located in opened:
        located.close()


def build_date(path):
    """The build date written in a database's metadata, read without web.geo."""
    with maxminddb.open_database(str(path)) as reader:
        return datetime.datetime.fromtimestamp(reader.metadata().build_epoch, datetime.UTC).date()


@pytest.mark.parametrize("database_type", DATABASE_TYPES)
@pytest.mark.parametrize(
    "masked_ip, country, city",
    [
        (LONDON, "GB", "London"),
        (BERLIN, "DE", "Berlin"),
        (CUPERTINO, "US", "Cupertino"),
    ],
)
def test_masked_ipv4_and_ipv6_addresses_are_located(
    geolocator, geoip_paths, database_type, masked_ip, country, city
):
    located = geolocator(str(geoip_paths[database_type]))
    # A Country database knows no cities: the country alone, never a guess.
    expected_city = city if "City" in database_type else None
    assert located.locate(masked_ip) == Location(country, expected_city)


@pytest.mark.parametrize("database_type", DATABASE_TYPES)
@pytest.mark.parametrize("masked_ip", UNKNOWN)
def test_address_not_in_the_database_is_nowhere(geolocator, geoip_paths, database_type, masked_ip):
    located = geolocator(str(geoip_paths[database_type]))
    assert located.locate(masked_ip) == Location(None, None) == NOWHERE


@pytest.mark.parametrize("database_type", DATABASE_TYPES)
@pytest.mark.parametrize("value", INVALID)
def test_invalid_input_is_nowhere_without_an_exception(
    geolocator, geoip_paths, database_type, value
):
    located = geolocator(str(geoip_paths[database_type]))
    assert located.locate(value) == NOWHERE


def test_country_database_gives_the_country_and_no_city(geolocator, geoip_paths):
    located = geolocator(str(geoip_paths["GeoLite2-Country"]))
    assert located.database_type == "GeoLite2-Country"
    assert located.locate(LONDON) == Location("GB", None)
    assert located.locate(BERLIN) == Location("DE", None)


def test_off_opens_no_database_and_says_locations_stay_empty(geolocator):
    located = geolocator("off")
    assert (located.path, located.database_type, located.built) == (None, None, None)
    assert located.describe() == "no GeoIP database: locations stay empty"
    assert located.locate(LONDON) == NOWHERE
    assert located.locate(BERLIN) == NOWHERE


def test_no_setting_uses_the_packaged_geolite2_snapshot(geolocator):
    snapshot = packaged_database()
    assert snapshot is not None, "maxminddb-geolite2 is a dependency and should be installed"
    located = geolocator(None)
    assert located.path == snapshot
    assert located.database_type == "GeoLite2-City"
    assert located.built == datetime.date(2018, 7, 3)
    description = located.describe()
    assert "GeoLite2-City" in description
    assert "2018-07-03" in description
    assert snapshot in description
    # Real data: the 2018 build places MaxMind's test network 81.2.69.0/24 in Great Britain.
    assert located.locate(LONDON).country == "GB"


@pytest.mark.parametrize("database_type", DATABASE_TYPES)
def test_describe_names_the_database_type_build_date_and_path(
    geolocator, geoip_paths, database_type
):
    path = geoip_paths[database_type]
    located = geolocator(str(path))
    built = build_date(path)
    assert located.built == built
    assert located.describe() == f"GeoIP database {database_type} built {built} ({path})"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"hello, this is not a MaxMind database\n", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, id="binary"),
    ],
)
def test_a_file_that_is_not_an_mmdb_database_is_a_config_error(tmp_path, content):
    path = tmp_path / "GeoLite2-City.mmdb"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        open_geolocator(str(path))
    message = raised.value.message
    assert message.startswith(f"OPENRECEIPT_GEOIP_DATABASE {path} cannot be read: ")
    assert "\n" not in message
    assert raised.value.code == f"openreceipt: {message}"


def test_a_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere.mmdb"
    with pytest.raises(ConfigError, match="OPENRECEIPT_GEOIP_DATABASE .* cannot be read"):
        open_geolocator(str(path))


def test_a_database_without_countries_is_refused_at_start_up(tmp_path):
    """A valid .mmdb of the wrong kind fails start-up: accepted, every lookup would raise and
    every pixel fetch would go unrecorded."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {"autonomous_system_number": 20712, "autonomous_system_organization": "Andrews & Arnold"},
    )
    path = tmp_path / "asn.mmdb"  # so that the type named in the error comes from the file
    writer.to_db_file(str(path))
    with pytest.raises(ConfigError, match="GeoLite2-ASN"):
        open_geolocator(str(path)).close()


def test_pixel_fetches_store_the_place_of_the_masked_address(client, auth):
    pixel = mint(client, auth, subject="Quarterly report", recipients=["bob@example.com"])
    for remote_addr in ("2001:db8:1234:5678:9abc::1", "192.0.2.44"):
        response = client.get(
            pixel_path(pixel["url"]),
            headers={"User-Agent": THUNDERBIRD},
            environ_base={"REMOTE_ADDR": remote_addr},
        )
        assert response.headers["X-Openreceipt"].startswith("recorded: ")

    response = client.get(f"/api/pixels/{pixel['id']}", headers=auth)
    assert response.status_code == 200
    events = response.get_json()["events"]
    assert [(event["ip"], event["country"], event["city"]) for event in events] == [
        ("2001:db8:1234::", "DE", "Berlin"),
        ("192.0.2.0", None, None),
    ]
