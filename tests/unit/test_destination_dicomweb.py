"""Destination kind ``dicomweb`` without a server: its STOW-RS Failure Reason table, settings and harness option."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

import harness.orthanc
from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import DESTINATION_KINDS, build_destinations
from fetalnode.destinations.dicomweb import DicomWebDestination, failure_of, transient_failure_reason
from fetalnode.dicom_status import stow_failure_meaning
from fetalnode.errors import ConfigError
from harness.orthanc import OrthancProcess
from harness.processes import HarnessError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("code", "meaning", "transient"),
    [
        (0xA700, "Refused out of Resources", True),
        (0xA7FF, "Refused out of Resources", True),
        (0x0110, "Processing failure", True),
        (0xA900, "Error: Data Set does not match SOP Class", False),
        (0xC000, "Error: Cannot understand", False),
        (0xC122, "Referenced Transfer Syntax not supported", False),
        (0x0122, "Referenced SOP Class not supported", False),
        (0xFEED, "not in PS3.18 Table I.2-2 (the server's own code)", False),
    ],
)
def test_failure_reasons_of_ps3_18_table_i_2_2(code: int, meaning: str, transient: bool) -> None:
    assert stow_failure_meaning(code) == meaning
    assert transient_failure_reason(code) is transient


def store_response(failed: dict[str, int], stored: tuple[str, ...] = ()) -> Dataset:
    answer = Dataset()
    answer.FailedSOPSequence = []
    for uid, reason in failed.items():
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = reason
        answer.FailedSOPSequence.append(item)
    answer.ReferencedSOPSequence = []
    for uid in stored:
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        answer.ReferencedSOPSequence.append(item)
    return answer


def test_only_our_instance_s_failure_counts() -> None:
    answer = store_response({"1.2.3": 0xA700, "1.2.4": 0xC000}, stored=("1.2.5",))
    assert failure_of(answer, "1.2.4") == 0xC000
    assert failure_of(answer, "1.2.3") == 0xA700
    assert failure_of(answer, "1.2.5") is None
    assert failure_of(Dataset(), "1.2.5") is None


def test_the_kind_is_registered_and_needs_an_http_url() -> None:
    assert "fetalnode.destinations.dicomweb" in DESTINATION_KINDS.builtins  # imported on the first lookup
    settings = Settings()
    settings.destinations = [DestinationSettings(name="pacs", kind="dicomweb", url="http://127.0.0.1:1/dicom-web")]
    [destination] = build_destinations(settings)
    assert isinstance(destination, DicomWebDestination) and destination.url == "http://127.0.0.1:1/dicom-web"
    with pytest.raises(ConfigError, match="kind dicomweb needs url"):
        DESTINATION_KINDS.get("dicomweb", "kind")(DestinationSettings(name="pacs", kind="dicomweb"), settings)


def test_harness_loads_the_dicomweb_plugin_or_says_it_is_missing(tmp_path: Path, monkeypatch) -> None:
    config = OrthancProcess(tmp_path, dicomweb=True, webviewer=False).config()
    assert config["DicomWeb"] == {"Enable": True, "Root": "/dicom-web/"}
    assert str(harness.orthanc.PLUGIN_DIR / "libOrthancDicomWeb.so") in config["Plugins"]  # type: ignore[operator]
    monkeypatch.setattr(harness.orthanc, "PLUGIN_DIR", tmp_path)
    with pytest.raises(HarnessError, match="orthanc-dicomweb"):
        OrthancProcess(tmp_path, dicomweb=True, webviewer=False).config()
