"""Destination kind ``dicom`` from its ``[[destinations]]`` table (no sockets: see tests/network for the peers)."""

from __future__ import annotations

import pytest

from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import build_destinations
from fetalnode.destinations.dicom import DicomDestination
from fetalnode.errors import ConfigError

pytestmark = pytest.mark.unit


def table(**keys: object) -> DestinationSettings:
    fields = {"name": "pacs", "kind": "dicom", "send": ["sr"], "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    return DestinationSettings(**{**fields, **keys})  # type: ignore[arg-type]


def test_built_from_its_table_with_the_node_ae_title_as_calling_ae() -> None:
    settings = Settings()
    settings.node.ae_title = "MYNODE"
    settings.destinations = [table(), table(name="other", calling_ae_title="ME")]
    pacs, other = build_destinations(settings)
    assert isinstance(pacs, DicomDestination) and pacs.calling_ae_title == "MYNODE"
    assert isinstance(other, DicomDestination) and other.calling_ae_title == "ME"
    assert pacs.address == "PACS@127.0.0.1:104" and not pacs.tls


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"host": ""}, "needs ae_title, host and port"),
        ({"port": 0}, "needs ae_title, host and port"),
        ({"tls_certificate": "/x.crt"}, "tls_certificate and tls_private_key go together"),
        ({"tls_ca_certificates": "/nonexistent/ca.crt"}, "cannot load the TLS certificate, key or CA"),
        ({"calling_ae_title": "A" * 17}, "calling AE title"),
    ],
)
def test_a_wrong_table_stops_start_up_with_the_reason(keys: dict[str, object], words: str) -> None:
    settings = Settings()
    settings.destinations = [table(**keys)]
    with pytest.raises(ConfigError, match=words):
        build_destinations(settings)
