"""Our SR and SC pass third-party validators (DCMTK dsrdump, dicom3tools dciodvfy) and round-trip."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from fetalnode.config import load_settings
from fetalnode.destinations.folder import folder_destination
from fetalnode.runner import Outcome, Received, Runtime, Verdict, run_job
from fetalnode.runtime import build_runtime
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile, need

pytestmark = pytest.mark.interop
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())
HC18 = next(n for n, i in SAMPLE_INFO.items() if i["dataset"] == "hc18")


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return build_runtime(load_settings(None, env={}, overrides={"models.dir": str(MODELS)}), destinations=[])


def run(src: Path, runtime: Runtime, folder: Path) -> Outcome:
    """The job runner with a folder as destination, as ``fetalnode analyze`` runs it."""
    data = src.read_bytes()
    received = Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST")
    outcome = run_job(received, dataclasses.replace(runtime, destinations=[folder_destination(folder, ["sr", "sc"])]))
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return outcome


@pytest.fixture(scope="module", params=[HC18, "US1_J2KR.dcm", "examples_ybr_color.dcm"])
def written(request, runtime, tmp_path_factory) -> tuple[Path, Path, tuple[Path, Outcome]]:
    name = request.param
    src = SAMPLES / name if name in SAMPLE_INFO else dicom_testfile(name)
    folder = tmp_path_factory.mktemp("out")
    outcome = run(src, runtime, folder)
    return folder / "sr.dcm", folder / "sc.dcm", (src, outcome)


def errors_of(tool: list[str]) -> list[str]:
    result = subprocess.run(tool, capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_dciodvfy_reports_no_errors(written) -> None:
    need("dciodvfy")
    sr_path, sc_path, _ = written
    assert errors_of(["dciodvfy", str(sr_path)]) == []
    assert errors_of(["dciodvfy", str(sc_path)]) == []


def test_dsrdump_reads_the_tree_without_warnings(written) -> None:
    need("dsrdump")
    sr_path, _, (_, outputs) = written
    result = subprocess.run(["dsrdump", "-Ee", str(sr_path)], capture_output=True, text=True)
    assert result.returncode == 0
    assert "W:" not in result.stderr and "E:" not in result.stderr, result.stderr
    assert "Imaging Measurement Report" in result.stdout
    if outputs.summary["hc_mm"] is not None:
        assert '"Head Circumference"' in result.stdout and "(mm,UCUM" in result.stdout


def test_round_trip_and_deterministic_uids(written, runtime, tmp_path) -> None:
    sr_path, sc_path, (src, outputs) = written
    source = dcmread(src, stop_before_pixels=True)
    classifier = runtime.application.describe()["classifier"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(sr_path))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    [ours] = [e for e in sr.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "fetalnode"]
    assert ours.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Equipment"
    assert ours.DeviceUID and classifier in ours.SoftwareVersions
    [group] = sr.content.get_planar_roi_measurement_groups() or sr.content.get_image_measurement_groups()
    versions = [
        i.TextValue
        for i in group[0].ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"
    ]
    assert versions == [classifier.split()[1]]
    sc = dcmread(sc_path)
    assert sc.BurnedInAnnotation == "YES" and "RESEARCH USE ONLY" in sc.ImageComments
    again = run(src, runtime, tmp_path)
    assert again.summary["outputs"] == outputs.summary["outputs"]
    assert dcmread(tmp_path / "sr.dcm").SeriesInstanceUID == sr.SeriesInstanceUID
