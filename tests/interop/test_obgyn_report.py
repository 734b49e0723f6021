"""The OB-GYN Ultrasound Procedure Report (output ``obsr``, TID 5000 in a Comprehensive SR): DCMTK and
dicom3tools accept it, highdicom reads it back, and its biometry and gestational age are read by code."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.applications.fetal_head.gestation import hadlock_ga_weeks
from fetalnode.config import load_settings
from fetalnode.outcomes import Outcome, Received, Verdict
from fetalnode.outputs import codes as fc
from fetalnode.outputs.uids import DEVICE_UID
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from harness import corpus
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile, need

pytestmark = pytest.mark.interop
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())
CALIBRATED = sorted(n for n, i in SAMPLE_INFO.items() if i["dataset"] == "hc18")
UNCALIBRATED = sorted(n for n, i in SAMPLE_INFO.items() if i["dataset"] != "hc18")
INPUTS = [*CALIBRATED, UNCALIBRATED[0], "US1_J2KR.dcm", "examples_ybr_color.dcm", "palette_16bit"]


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    # The head application's writer on every source (what the router gives other views: tests/unit/test_router.py).
    overrides = {"models.dir": str(MODELS), "output.enabled": ["obsr"], "worker.application": "fetal-head"}
    settings = load_settings(None, env={}, overrides=overrides)
    return build_runtime(settings, destinations=[])


def source_path(name: str, folder: Path) -> Path:
    if name in SAMPLE_INFO:
        return SAMPLES / name
    if name.endswith(".dcm"):
        return dicom_testfile(name)
    return getattr(corpus, name)(folder)


def run(src: Path, runtime: Runtime) -> Outcome:
    data = src.read_bytes()
    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return outcome


@pytest.fixture(scope="module", params=INPUTS)
def written(request, runtime, tmp_path_factory) -> tuple[str, Path, Path, Outcome]:
    folder = tmp_path_factory.mktemp("obsr")
    src = source_path(request.param, folder)
    outcome = run(src, runtime)
    path = folder / "obsr.dcm"
    path.write_bytes(outcome.built["obsr"])
    return request.param, src, path, outcome


def is_code(item: Dataset, code: Code) -> bool:
    return (item.CodeValue, item.CodingSchemeDesignator) == (code.value, code.scheme_designator)


def children(item: Dataset, name: Code, value_type: str | None = None) -> list[Dataset]:
    return [
        i
        for i in item.get("ContentSequence", [])
        if is_code(i.ConceptNameCodeSequence[0], name) and (value_type is None or i.ValueType == value_type)
    ]


def walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from walk(child)


def number(item: Dataset) -> tuple[float, Code]:
    value = item.MeasuredValueSequence[0]
    unit = value.MeasurementUnitsCodeSequence[0]
    return float(value.NumericValue), Code(unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning)


def test_dsrdump_reads_the_tree_without_warnings(written) -> None:
    need("dsrdump")
    _, _, path, outcome = written
    result = subprocess.run(["dsrdump", "-Ee", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "W:" not in result.stderr and "E:" not in result.stderr, result.stderr
    assert "Comprehensive SR Document" in result.stdout
    assert '"OB-GYN Ultrasound Procedure Report"' in result.stdout and '"Fetal Biometry"' in result.stdout
    if outcome.summary["hc_mm"] is not None:
        assert '"Gestational Age"' in result.stdout and '(11932-1,LN,"HC, Hadlock 1984")' in result.stdout


def test_dciodvfy_reports_no_errors(written) -> None:
    need("dciodvfy")
    _, _, path, _ = written
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert "ComprehensiveSR" in output
    assert [line for line in output.splitlines() if line.startswith("Error")] == []


def test_round_trip_tid_5000_in_the_source_study(written) -> None:
    _, src, path, _ = written
    source = dcmread(src, stop_before_pixels=True)
    sr = hd.sr.ComprehensiveSR.from_dataset(dcmread(path))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.get("PatientID", ""))
    assert sr.SeriesNumber == 9105 and "research use only" in sr.SeriesDescription
    assert is_code(sr.ConceptNameCodeSequence[0], fhc.OBGYN_REPORT)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "5000"
    assert sr.ContentTemplateSequence[0].MappingResource == "DCMR"
    [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
    assert (
        evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    )
    [observer] = children(sr, fc.DEVICE_OBSERVER_UID)
    assert observer.RelationshipType == "HAS OBS CONTEXT" and observer.UID == DEVICE_UID
    assert any(e.get("DeviceUID") == DEVICE_UID for e in sr.ContributingEquipmentSequence)
    [summary] = children(sr, fhc.SUMMARY, "CONTAINER")
    notes = [i.TextValue for i in children(summary, fc.COMMENT, "TEXT")]
    assert notes and notes[0].startswith(RESEARCH_NOTICE)
    [section] = children(sr, fhc.FETAL_BIOMETRY, "CONTAINER")
    [fetus] = children(section, fhc.SUBJECT_ID, "TEXT")
    assert fetus.RelationshipType == "HAS OBS CONTEXT" and fetus.TextValue == "1"
    [version] = children(section, fc.ALGORITHM_VERSION, "TEXT")
    assert version.TextValue and children(section, fc.ALGORITHM_NAME, "TEXT")


def test_biometry_and_gestational_age_by_code(written) -> None:
    name, _, path, outcome = written
    sr = dcmread(path)
    [section] = children(sr, fhc.FETAL_BIOMETRY, "CONTAINER")
    groups = children(section, fhc.BIOMETRY_GROUP, "CONTAINER")
    if name not in CALIBRATED:
        return
    assert outcome.summary["hc_mm"] is not None, "a calibrated sample must be measured"
    measured = {}
    for group in groups:
        num = group.ContentSequence[0]  # TID 5008 row 2: the measurement comes first
        measured[num.ConceptNameCodeSequence[0].CodeValue] = (group, *number(num))
    assert set(measured) == {"11984-2", "11820-8", "11851-3"}
    group, hc, unit = measured["11984-2"]
    assert unit.value == "mm" and unit.scheme_designator == "UCUM"
    assert hc == pytest.approx(outcome.summary["hc_mm"], abs=0.051)  # the summary has 0.1 mm
    assert hc == pytest.approx(SAMPLE_INFO[name]["hc_mm"], rel=0.15)  # the HC18 reference, loosely
    [age] = children(group, fhc.GESTATIONAL_AGE, "NUM")
    weeks, unit = number(age)
    assert (unit.value, unit.scheme_designator) == ("wk", "UCUM")
    assert weeks == pytest.approx(hadlock_ga_weeks(hc), abs=0.005)  # written to 0.01 week
    [equation] = children(age, fhc.EQUATION, "CODE")
    assert equation.RelationshipType == "INFERRED FROM" and is_code(equation.ConceptCodeSequence[0], fhc.HC_HADLOCK_1984)
    for group in groups:
        if group is not measured["11984-2"][0]:
            assert children(group, fhc.GESTATIONAL_AGE) == []


def test_no_calibration_no_biometry_and_the_reason(written) -> None:
    name, _, path, outcome = written
    if outcome.summary["hc_mm"] is not None:
        return
    assert name not in CALIBRATED
    sr = dcmread(path)
    assert [i for i in walk(sr) if i.ValueType == "NUM"] == []
    [section] = children(sr, fhc.FETAL_BIOMETRY, "CONTAINER")
    assert children(section, fhc.BIOMETRY_GROUP) == []
    [why] = children(section, fc.COMMENT, "TEXT")
    assert why.TextValue.startswith("No fetal biometry")
    if outcome.summary.get("analysed", True):
        assert "in mm" in why.TextValue


def test_uncalibrated_samples_are_covered() -> None:
    assert any(name not in CALIBRATED for name in INPUTS) and CALIBRATED


def test_deterministic_uids(written, runtime) -> None:
    _, src, path, outcome = written
    again = run(src, runtime)
    first, second = dcmread(path), dcmread(BytesIO(again.built["obsr"]))
    assert (second.SOPInstanceUID, second.SeriesInstanceUID) == (first.SOPInstanceUID, first.SeriesInstanceUID)
    assert again.summary["outputs"] == outcome.summary["outputs"] == {"obsr": first.SOPInstanceUID}
