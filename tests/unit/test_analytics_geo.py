"""Region and city from a MaxMind-format city database (one made here with mmdb-writer)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from qrmesh.analytics.enrich import CityDatabase, Enricher
from qrmesh.scans.v1 import scan_event_pb2

Event = scan_event_pb2.ScanEvent


@pytest.fixture(scope="module")
def cities(tmp_path_factory: pytest.TempPathFactory) -> CityDatabase:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(
        IPSet(["81.224.0.0/16"]),
        {
            "country": {"iso_code": "SE"},
            "subdivisions": [{"iso_code": "AB", "names": {"en": "Stockholm County"}}],
            "city": {"names": {"en": "Stockholm", "sv": "Stockholm"}},
        },
    )
    writer.insert_network(
        IPSet(["2001:db8::/32"]), {"country": {"iso_code": "DE"}, "city": {"names": {"en": "Berlin"}}}
    )
    path: Path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    writer.to_db_file(str(path))
    return CityDatabase(path)


def scan(address: str, country: str = "") -> Event:
    event = Event(
        event_id="0192f0c8-7b6e-7cc1-9a4e-2f6d5c1e8a01",
        qr_code="organizations/o/qrCodes/c",
        organization="organizations/o",
        outcome=Event.REDIRECTED,
        ip_address=address,
        country=country,
    )
    event.time.FromDatetime(datetime(2026, 11, 24, tzinfo=UTC))
    return event


def place(enricher: Enricher, event: Event) -> tuple[str, str, str]:
    prepared = enricher.prepare("1-0", event)
    assert prepared is not None
    return prepared.row[8], prepared.row[9], prepared.row[10]


def test_region_and_city_come_from_the_database(cities: CityDatabase) -> None:
    enricher = Enricher(cities)
    assert place(enricher, scan("81.224.0.0", "SE")) == ("SE", "SE-AB", "Stockholm")
    assert place(enricher, scan("2001:db8:1::")) == ("DE", "", "Berlin")  # the country too when the redirect had none
    assert place(enricher, scan("192.0.2.0", "US")) == ("US", "", "")  # not in the database
    assert place(enricher, scan("not an address", "US")) == ("US", "", "")


def test_a_database_that_disagrees_with_the_redirect_names_no_place(cities: CityDatabase) -> None:
    assert place(Enricher(cities), scan("81.224.0.0", "NO")) == ("NO", "", "")


def test_without_a_database_region_and_city_stay_empty() -> None:
    assert place(Enricher(), scan("81.224.0.0", "se")) == ("SE", "", "")
