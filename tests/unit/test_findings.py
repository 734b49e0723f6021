"""The Orthanc plugin's reader on reports the real writer builds: objects by Device UID, content by code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr._concepts_dict import concepts

from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.config import load_settings
from fetalnode.outcomes import Received
from fetalnode.outputs import codes as fc
from fetalnode.outputs.findings import NOTICE, is_companion_report, made_by_fetalnode, read_finding
from fetalnode.outputs.uids import DEVICE_UID
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from harness.node import MODELS
from tests.conftest import SAMPLES

pytestmark = pytest.mark.unit
# What the shipped models (hc18-headseg 0.3.0, fba-classifier 0.9.0) say about two bundled samples.
NORMAL = SAMPLES / "hc18_104_HC.dcm"  # normal, HC 85.7 mm
ABNORMAL = SAMPLES / "fba_ventriculomegaly_moderate_fba_01465.dcm"  # abnormal, no calibration, type not determined
OTHER_MANUFACTURER = "Example Hospital AI"


@pytest.fixture(scope="module")
def analyzer() -> Runtime:
    """The job runner's runtime with no destination: ``run_job`` builds and encodes the outputs."""
    return build_runtime(load_settings(None, env={}, overrides={"models.dir": str(MODELS)}), destinations=[])


def analysed(runtime: Runtime, path: Path, **env: str) -> tuple[dict, Dataset, Dataset]:
    """The finding summary of one sample, and its SR and SC as a reader gets them (encoded, then parsed)."""
    settings = load_settings(None, env=env)
    data = path.read_bytes()
    outcome = run_job(
        Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"),
        dataclasses.replace(runtime, output=settings.output),
    )
    assert outcome.built, outcome.reason
    sr, sc = (dcmread(BytesIO(outcome.built[key])) for key in ("sr", "sc"))
    return outcome.summary, sr, sc


@pytest.fixture(scope="module")
def normal(analyzer: Runtime) -> tuple[dict, Dataset, Dataset]:
    return analysed(analyzer, NORMAL)


@pytest.fixture(scope="module")
def abnormal(analyzer: Runtime) -> tuple[dict, Dataset, Dataset]:
    return analysed(analyzer, ABNORMAL)


def content_items(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(content_items(item))
    return out


def test_normal_report(normal) -> None:
    summary, sr, _ = normal
    found = read_finding(sr)
    assert found["readable"] is True, found
    assert (found["assessment"], found["abnormal"], found["malformation_type"], found["type_note"]) == (
        "Normal",
        False,
        "",
        "",
    )
    assert found["hc_mm"] == pytest.approx(85.7, abs=0.05) and found["hc_mm"] == pytest.approx(
        summary["hc_mm"], abs=0.05
    )
    assert found["bpd_mm"] == pytest.approx(summary["bpd_mm"], abs=0.05)
    assert found["ofd_mm"] == pytest.approx(summary["ofd_mm"], abs=0.05)
    assert found["confidence_pct"] == pytest.approx(100 * summary["confidence"], abs=0.01)
    assert found["ga_weeks_hadlock"] is not None and 10 < found["ga_weeks_hadlock"] < 40
    assert found["model"] == "fba-classifier 0.9.0"
    assert found["models"] == ["segmentation hc18-headseg 0.3.0", "classifier fba-classifier 0.9.0"]
    assert found["comments"][0].startswith(NOTICE) and found["notice"] == NOTICE
    assert len(found["analysed_at"]) == 19


def test_ventriculomegaly_report(abnormal) -> None:
    summary, sr, _ = abnormal
    found = read_finding(sr)
    assert found["readable"] is True, found
    assert (found["assessment"], found["abnormal"]) == ("Abnormal", True)
    # The shipped classifier's reporting rule names no type (tests/unit/test_type_rule.py: when it does).
    assert summary["malformation_type"] == found["malformation_type"] == ""
    assert summary["type_note"] == found["type_note"] == "type not determined"
    assert found["confidence_pct"] == pytest.approx(100 * summary["confidence"], abs=0.01)
    assert found["hc_mm"] is None and found["ga_weeks_hadlock"] is None  # no calibration in this sample


def test_our_sr_and_sc_are_recognised_by_device_uid(normal) -> None:
    _, sr, sc = normal
    assert made_by_fetalnode(sr) and made_by_fetalnode(sc)
    assert not made_by_fetalnode(dcmread(NORMAL))
    # Another manufacturer's object that claims fetalnode's old Manufacturer is not ours.
    impostor = dcmread(NORMAL)
    impostor.Manufacturer = "fetalnode project"
    assert not made_by_fetalnode(impostor)
    # Orthanc 1.10's simplified tags (/instances/{id}/tags?simplify) give a sequence as a list of objects.
    simplified = {
        "Manufacturer": OTHER_MANUFACTURER,
        "ContributingEquipmentSequence": [
            {"Manufacturer": "fetalnode wrap", "ContributionDescription": "Acquisition equipment"},
            {"DeviceUID": DEVICE_UID, "Manufacturer": OTHER_MANUFACTURER, "ManufacturerModelName": "fetalnode"},
        ],
    }
    assert made_by_fetalnode(simplified)
    assert not made_by_fetalnode({"Manufacturer": "fetalnode project", "ContributingEquipmentSequence": []})
    assert not made_by_fetalnode({"ContributingEquipmentSequence": [{"DeviceUID": "1.2.3"}]})


def test_the_finding_is_read_from_the_measurement_report_not_the_obgyn_report(analyzer, normal) -> None:
    data = NORMAL.read_bytes()
    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), analyzer)
    obsr = dcmread(BytesIO(outcome.built["obsr"]))
    _, sr, _ = normal
    assert made_by_fetalnode(obsr), "the OB-GYN report is ours too"
    assert is_companion_report(obsr) and not is_companion_report(sr)


def test_a_changed_manufacturer_is_still_recognised_and_read(analyzer, normal) -> None:
    _, sr, sc = analysed(analyzer, NORMAL, FETALNODE__OUTPUT__MANUFACTURER=OTHER_MANUFACTURER)
    assert sr.Manufacturer == sc.Manufacturer == OTHER_MANUFACTURER
    assert made_by_fetalnode(sr) and made_by_fetalnode(sc)
    found, expected = read_finding(sr), read_finding(normal[1])
    assert found["readable"] is True, found
    assert {k: v for k, v in found.items() if k != "analysed_at"} == {
        k: v for k, v in expected.items() if k != "analysed_at"
    }


@pytest.mark.parametrize("which", ["normal", "abnormal"])
def test_meaning_texts_decide_nothing(which, request) -> None:
    _, sr, _ = request.getfixturevalue(which)
    expected = read_finding(sr)
    altered = dcmread(BytesIO(_encoded(sr)))
    for item in content_items(altered):
        for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in item.get(seq, []):
                code.CodeMeaning = f"renamed {code.CodeValue}"
    found = read_finding(altered)
    assert found["readable"] is True, found
    if expected["malformation_type"]:  # the malformation type is displayed by its meaning text
        assert found["malformation_type"].startswith("renamed FNM")
        found["malformation_type"] = expected["malformation_type"]
    assert found == expected


@pytest.mark.parametrize("which", ["normal", "abnormal"])
def test_changed_codes_are_not_read(which, request) -> None:
    # Every concept name code changed, every meaning kept: nothing of ours is found.
    sr = dcmread(BytesIO(_encoded(request.getfixturevalue(which)[1])))
    for item in content_items(sr):
        for code in item.get("ConceptNameCodeSequence", []):
            code.CodeValue = f"X{code.CodeValue}"[:16]
    assert read_finding(sr)["readable"] is False


def test_each_code_is_what_is_read(normal) -> None:
    def with_code(name: str, scheme: str, new_value: str, where: str = "ConceptNameCodeSequence") -> dict:
        sr = dcmread(BytesIO(_encoded(normal[1])))
        hits = [
            code
            for item in content_items(sr)
            for code in item.get(where, [])
            if (code.CodeValue, code.CodingSchemeDesignator) == (name, scheme)
        ]
        assert hits, (name, scheme)
        for code in hits:
            code.CodeValue = new_value
        return read_finding(sr)

    assessment = fhc.AI_ASSESSMENT
    missing = with_code(assessment.value, assessment.scheme_designator, "FN9999")
    assert missing["readable"] is False and "no finding that any application reads" in missing["error"]
    hc = fhc.HEAD_CIRCUMFERENCE
    assert (hc.value, hc.scheme_designator) == ("11984-2", "LN")
    # 11779-6 is "EDD from LMP" (CID 12003), once written as HC: not read as HC, meaning still "Head Circumference".
    assert with_code(hc.value, hc.scheme_designator, "11779-6")["hc_mm"] is None
    assert with_code(hc.value, hc.scheme_designator, "99999-9")["hc_mm"] is None
    normal_value = fhc.NORMAL
    unknown = with_code(normal_value.value, normal_value.scheme_designator, "12345", where="ConceptCodeSequence")
    assert unknown["readable"] is False and "unknown AI assessment" in unknown["error"]
    # The confidence, by the concept that names the finding; a report of revision 1 (stored before) by FN0003.
    confidence = fhc.NORMAL_CONFIDENCE
    assert normal[0]["confidence"] is not None
    assert with_code(confidence.value, fc.SCHEME, "FN9999")["confidence_pct"] is None
    earlier = with_code(confidence.value, fc.SCHEME, fhc.FINDING_CONFIDENCE.value)["confidence_pct"]
    assert earlier == pytest.approx(100 * normal[0]["confidence"], abs=0.01)
    observer = fc.DEVICE_OBSERVER_UID
    assert with_code(observer.value, observer.scheme_designator, "121013")["readable"] is False
    comment = fc.COMMENT
    assert "notice" in with_code(comment.value, comment.scheme_designator, "121107")["error"]


def _standard(code) -> tuple[str, list[int]]:
    """PS3.16 meaning and context groups of a standard code, from pydicom's tables (KeyError if unknown)."""
    for entry in concepts[str(code.scheme_designator)].values():
        if str(code.value) in entry:
            meaning, cids = entry[str(code.value)]
            return meaning, cids
    raise KeyError(code)


@pytest.mark.parametrize(
    "code, cid",
    [
        (fhc.HEAD_CIRCUMFERENCE, 12005),  # Fetal Biometry Measurements
        (fhc.BIPARIETAL_DIAMETER, 12005),
        (fhc.OCCIPITAL_FRONTAL_DIAMETER, 12005),
        (fhc.NORMAL, 222),  # Normality
        (fhc.ABNORMAL, 222),
        (fhc.HEAD_STRUCTURE, 7151),  # Segmentation Property Type
        (fc.COMMENT, 12101),
        (fc.FETUS, 271),  # Subject Class
        (fc.OB_ULTRASOUND, 7000),
    ],
)
def test_standard_codes_are_those_of_their_context_group(code, cid) -> None:
    meaning, cids = _standard(code)
    assert cid in cids and str(code.meaning) == meaning


def test_malformation_codes_standard_only_where_pydicom_knows_the_concept() -> None:
    labels = json.loads((MODELS / "fba-classifier" / "configs" / "metadata.json").read_text())["labels"]
    written = {label: fhc.malformation_code(label) for label in labels if label != "normal"}
    standard = {label: code for label, code in written.items() if code.scheme_designator != fc.SCHEME}
    assert standard == fhc.STANDARD_MALFORMATIONS and set(standard) <= set(labels)
    assert {str(c.value) for c in standard.values()} == {"1386000"}  # SCT Intracranial hemorrhage
    for code in standard.values():
        assert code.scheme_designator == "SCT" and _standard(code)[0] == code.meaning
    private = [code for code in written.values() if code.scheme_designator == fc.SCHEME]
    assert all(str(c.value).startswith("FNM") and len(str(c.value)) <= 16 for c in private)
    assert len({c.value for c in written.values()}) == len(written)


def test_a_standard_malformation_code_is_read(abnormal) -> None:
    sr = dcmread(BytesIO(_encoded(abnormal[1])))
    [item] = [
        i
        for i in content_items(sr)
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == fhc.MALFORMATION_TYPE.value
    ]
    value = item.ConceptCodeSequence[0]
    hemorrhage = fhc.malformation_code("intracranial_hemorrhage")
    value.CodeValue, value.CodingSchemeDesignator, value.CodeMeaning = hemorrhage.value, "SCT", hemorrhage.meaning
    found = read_finding(sr)
    assert found["readable"] is True and found["malformation_type"] == "Intracranial hemorrhage (disorder)"


def test_another_device_observer_is_not_read(normal) -> None:
    sr = dcmread(BytesIO(_encoded(normal[1])))
    [observer] = [
        item
        for item in content_items(sr)
        if item.ValueType == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == fc.DEVICE_OBSERVER_UID.value
    ]
    observer.UID = "1.2.3.4"
    found = read_finding(sr)
    assert found["readable"] is False and "Device Observer UID" in found["error"]


def _encoded(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
