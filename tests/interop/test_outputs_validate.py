"""Our SR and SC pass third-party validators (DCMTK dsrdump, dicom3tools dciodvfy) and round-trip."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from fetalnode.config import load_settings
from fetalnode.inference import Analyzer
from fetalnode.pipeline import analyse_dataset
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile, need

pytestmark = pytest.mark.interop
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())
HC18 = next(n for n, i in SAMPLE_INFO.items() if i["dataset"] == "hc18")


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.from_dir(MODELS, "hc18-headseg", "fba-classifier")


@pytest.fixture(scope="module", params=[HC18, "US1_J2KR.dcm", "examples_ybr_color.dcm"])
def written(request, analyzer, tmp_path_factory) -> tuple[Path, Path, object]:
    name = request.param
    src = SAMPLES / name if name in SAMPLE_INFO else dicom_testfile(name)
    ds = dcmread(src)
    outputs = analyse_dataset(ds, analyzer, load_settings(None, env={}), "TEST")
    folder = tmp_path_factory.mktemp("out")
    paths = []
    for key, obj in outputs.datasets.items():
        path = folder / f"{key}.dcm"
        obj.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[0], paths[1], (ds, outputs)


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
    if outputs.result.biometry is not None:
        assert '"Head Circumference"' in result.stdout and "(mm,UCUM" in result.stdout


def test_round_trip_and_deterministic_uids(written, analyzer) -> None:
    sr_path, sc_path, (source, outputs) = written
    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(sr_path))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    [ours] = [e for e in sr.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "fetalnode"]
    assert ours.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Equipment"
    assert ours.DeviceUID and f"{analyzer.cls.name} {analyzer.cls.version}" in ours.SoftwareVersions
    [group] = sr.content.get_planar_roi_measurement_groups() or sr.content.get_image_measurement_groups()
    versions = [
        i.TextValue
        for i in group[0].ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"
    ]
    assert versions == [analyzer.cls.version]
    sc = dcmread(sc_path)
    assert sc.BurnedInAnnotation == "YES" and "RESEARCH USE ONLY" in sc.ImageComments
    again = analyse_dataset(source, analyzer, load_settings(None, env={}), "TEST")
    assert again.datasets["sr"].SOPInstanceUID == outputs.datasets["sr"].SOPInstanceUID
    assert again.datasets["sc"].SOPInstanceUID == outputs.datasets["sc"].SOPInstanceUID
    assert again.datasets["sr"].SeriesInstanceUID == outputs.datasets["sr"].SeriesInstanceUID
