"""Re-identification at the terminal: objects built by the real writers from a pseudonymised image get
back the real patient, study and every UID the embedded mode writes, and keep no pseudonym."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
from pydicom.dataset import Dataset

from fetalnode.config import load_settings
from fetalnode.errors import PrivacyError
from fetalnode.privacy import Pseudonymiser, patient_and_study_keywords, reidentify
from fetalnode.runtime import build_runtime
from harness import phi
from harness.node import MODELS

pytestmark = pytest.mark.unit
SECRET = b"unit-test secret of the re-identification, 32+ bytes long"


@pytest.fixture(scope="module")
def runtime():
    rt = build_runtime(load_settings(None, env={}, overrides={"models.dir": str(MODELS)}), destinations=[])
    return dataclasses.replace(rt, destinations=[])


@pytest.fixture(scope="module", params=["us", "us-multiframe", "film"])
def trip(request, runtime) -> phi.RoundTrip:
    return phi.round_trip(runtime, Pseudonymiser(SECRET, masks=phi.MASKS), phi.CASES[request.param]().data)


def uids(ds: Dataset) -> dict[str, set[str]]:
    """Every UID value in ``ds`` (nested, file meta included) -> the keywords that hold it."""
    found: dict[str, set[str]] = {}

    def visit(_: Dataset, element) -> None:
        if element.VR == "UI" and element.value:
            for value in element.value if element.VM > 1 else [element.value]:
                found.setdefault(str(value), set()).add(element.keyword)

    ds.walk(visit)
    ds.file_meta.walk(visit)
    return found


def test_every_output_is_re_identified(trip: phi.RoundTrip) -> None:
    assert set(trip.reidentified) == set(trip.embedded) and trip.reidentified
    keywords = patient_and_study_keywords(str(trip.source.SOPClassUID))
    assert {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID"} <= set(keywords)
    for name, obj in trip.reidentified.items():
        for keyword in keywords:
            assert obj.get(keyword) == trip.source.get(keyword), (name, keyword)
        assert obj.SOPInstanceUID == trip.embedded[name].SOPInstanceUID
        assert obj.SeriesInstanceUID == trip.embedded[name].SeriesInstanceUID
        assert obj.file_meta.MediaStorageSOPInstanceUID == obj.SOPInstanceUID
        assert "PatientIdentityRemoved" not in obj or obj.PatientIdentityRemoved == trip.source.PatientIdentityRemoved


def test_every_reference_points_at_the_real_uids_and_none_at_a_pseudonym(trip: phi.RoundTrip) -> None:
    pseudonyms = set(trip.uid_map)
    for name, obj in trip.reidentified.items():
        got, want = uids(obj), uids(trip.embedded[name])
        assert not pseudonyms & set(got), name
        assert trip.source.SOPInstanceUID in got and trip.source.StudyInstanceUID in got, name
        missing = {u: k for u, k in want.items() if u not in got}
        extra = {u: k for u, k in got.items() if u not in want}
        assert not missing and not extra, (name, missing, extra)  # tracking and SEG organisation UIDs included
        text = str(obj)
        assert not any(p in text for p in pseudonyms), name
    # The cloud objects did reference the pseudonyms: the map is what changed them.
    assert any(pseudonyms & set(uids(obj)) for obj in trip.cloud.values())


def acquisition_equipment(ds: Dataset) -> list[Dataset]:
    """Contributing Equipment items of purpose DCM 109101 Acquisition Equipment (the source's scanner)."""
    return [
        item
        for item in ds.get("ContributingEquipmentSequence", [])
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109101"
    ]


def test_the_source_scanner_is_the_acquisition_equipment_again(trip: phi.RoundTrip) -> None:
    found = 0
    for name, obj in trip.reidentified.items():
        got, want = acquisition_equipment(obj), acquisition_equipment(trip.embedded[name])
        assert got == want, name
        found += len(got)
    assert found or trip.source.get("Manufacturer") is None  # a printed film names no scanner


def test_text_quoting_a_pseudonym_is_restored_and_a_leftover_is_refused(trip: phi.RoundTrip) -> None:
    obj = next(iter(trip.cloud.values()))
    pseudonym = str(trip.pseudonymised.SOPInstanceUID)
    quoted = copy.deepcopy(obj)
    quoted.ImageComments = f"derived from {pseudonym}"
    out = reidentify(quoted, trip.source, trip.uid_map)
    assert out.ImageComments == f"derived from {trip.source.SOPInstanceUID}"
    partial = {k: v for k, v in trip.uid_map.items() if k != pseudonym}
    quoted.ImageComments = f"derived from {pseudonym}9"  # not a UID of the map: left as it is
    assert pseudonym + "9" in reidentify(quoted, trip.source, partial).ImageComments
    broken = dict(trip.uid_map)
    broken[pseudonym] = pseudonym + ".1"  # a map whose target still holds the pseudonym
    with pytest.raises(PrivacyError, match="still hold a pseudonym"):
        reidentify(obj, trip.source, broken)


def test_reidentify_all_takes_and_gives_part10_bytes(trip: phi.RoundTrip) -> None:
    from pydicom import dcmread

    from fetalnode.privacy import reidentify_all
    from fetalnode.runner import encode_dataset

    returned = {name: encode_dataset(obj) for name, obj in trip.cloud.items()}
    out = reidentify_all(returned, trip.source, trip.uid_map)
    for name, data in out.items():
        assert dcmread(io.BytesIO(data)) == trip.reidentified[name], name
