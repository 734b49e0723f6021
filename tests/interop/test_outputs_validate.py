"""Our SR and SC pass third-party validators (DCMTK dsrdump, dicom3tools dciodvfy) and round-trip."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.config import load_settings
from fetalnode.destinations.folder import folder_destination
from fetalnode.intake import physical_spacing
from fetalnode.outcomes import Outcome, Received, Verdict
from fetalnode.outputs import codes as fc
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from harness import corpus
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile, need

pytestmark = pytest.mark.interop
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())
HC18 = next(n for n, i in SAMPLE_INFO.items() if i["dataset"] == "hc18")
FBA_ABNORMAL = "fba_ventriculomegaly_moderate_fba_01465.dcm"  # analysed, abnormal, no calibration


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


@pytest.fixture(
    scope="module", params=[HC18, FBA_ABNORMAL, "US1_J2KR.dcm", "examples_ybr_color.dcm", "cine_500_frames"]
)
def written(request, runtime, tmp_path_factory) -> tuple[Path, Path, tuple[Path, Outcome]]:
    name = request.param
    folder = tmp_path_factory.mktemp("out")
    if name == "cine_500_frames":  # calibrated US Multi-frame: the report names the analysed frame
        src = corpus.cine_500_frames(tmp_path_factory.mktemp("src"))
    else:
        src = SAMPLES / name if name in SAMPLE_INFO else dicom_testfile(name)
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
    result = subprocess.run(["dsrdump", "-Ee", "+Pc", str(sr_path)], capture_output=True, text=True)
    assert result.returncode == 0
    assert "W:" not in result.stderr and "E:" not in result.stderr, result.stderr
    assert "Imaging Measurement Report" in result.stdout
    if outputs.summary.get("hc_mm") is not None:
        assert '(11984-2,LN,"Head Circumference")' in result.stdout and "(mm,UCUM" in result.stdout
    if outputs.summary["analysed"]:
        assert result.stdout.count('"Image Region")=(POLYLINE,') == 3
        assert result.stdout.count('"Image Region")=(ELLIPSE,') == 1


def test_round_trip_and_deterministic_uids(written, runtime, tmp_path) -> None:
    sr_path, sc_path, (src, outputs) = written
    source = dcmread(src, stop_before_pixels=True)
    # The model that answered: the head classifier, the labour segmentation, or the view model for an image the
    # router gave no application.
    answered = {"fetal-head": "classifier", "labour-progress": "segmentation", "view-router": "view"}
    classifier = outputs.summary["models"][answered[outputs.summary["application"]]].replace("/", " ")
    sr = hd.sr.Comprehensive3DSR.from_dataset(dcmread(sr_path))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    [ours] = [e for e in sr.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "fetalnode"]
    assert ours.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Equipment"
    assert ours.DeviceUID and classifier in ours.SoftwareVersions
    group = (sr.content.get_planar_roi_measurement_groups() or sr.content.get_image_measurement_groups())[0]
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


def test_head_codes_and_drawable_geometry(written) -> None:
    """TID 1410 groups: the closed 64-point head POLYLINE with every number (HC: LOINC 11984-2, CID 12005;
    BPD, OFD; the confidence under the concept that names the finding) and the assessment, the exact
    ELLIPSE, and BPD / OFD callipers as open 2-point POLYLINEs on the ellipse's minor / major axis."""
    sr_path, _, (src, outputs) = written
    source = dcmread(src, stop_before_pixels=True)
    ds = dcmread(sr_path)
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    summary = outputs.summary
    assert "11779-6" not in str(ds.ContentSequence)  # "EDD from LMP" (CID 12003), once written as HC
    if not summary["analysed"]:
        assert sr.content.get_planar_roi_measurement_groups() == []
        return
    groups = {str(g.tracking_identifier): g for g in sr.content.get_planar_roi_measurement_groups()}
    assert list(groups) == ["fetal head", "fetal head ellipse", "biparietal diameter", "occipital-frontal diameter"]
    assert len({g.tracking_uid for g in groups.values()}) == 4
    frames = [int(source.NumberOfFrames) // 2 + 1] if int(source.get("NumberOfFrames", 1) or 1) > 1 else None
    points = {}
    for name, group in groups.items():
        roi = group.roi
        [image] = roi.ContentSequence  # SELECTED FROM the source IMAGE (PS3.3 C.18.6.1)
        [ref] = image.ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ([int(ref.ReferencedFrameNumber)] if "ReferencedFrameNumber" in ref else None) == frames
        assert group.finding_type == fhc.HEAD_STRUCTURE
        points[name] = (roi.GraphicType, np.array(roi.GraphicData, dtype=np.float64).reshape(-1, 2))
    kind, ellipse = points["fetal head ellipse"]
    assert kind == "ELLIPSE" and ellipse.shape == (4, 2)
    kind, contour = points["fetal head"]
    assert kind == "POLYLINE" and contour.shape == (65, 2) and np.array_equal(contour[0], contour[-1])
    for name, axis in (("biparietal diameter", ellipse[2:]), ("occipital-frontal diameter", ellipse[:2])):
        kind, line = points[name]
        assert kind == "POLYLINE" and np.allclose(line, axis, atol=1e-3), name  # the ellipse's axis end points
    # Every contour point lies on the ellipse the ELLIPSE region describes.
    centre = ellipse.mean(axis=0)
    major, minor = ellipse[1] - ellipse[0], ellipse[3] - ellipse[2]
    a, b = np.linalg.norm(major) / 2, np.linalg.norm(minor) / 2
    rel = contour - centre
    u, v = rel @ (major / (2 * a)) / a, rel @ (minor / (2 * b)) / b
    assert np.allclose(u * u + v * v, 1.0, atol=1e-3)
    measured = {
        name: {(str(m.name.value), str(m.name.scheme_designator)): m.value for m in g.get_measurements()}
        for name, g in groups.items()
    }
    # One group holds every number: a viewer labelling each drawn region with its group's numbers
    # (OHIF) writes them in one label box instead of boxes stacked on the head's centre line.
    assert (
        measured["fetal head ellipse"]
        == measured["biparietal diameter"]
        == measured["occipital-frontal diameter"]
        == {}
    )
    hc, bpd, ofd = (
        (c.value, c.scheme_designator)
        for c in (fhc.HEAD_CIRCUMFERENCE, fhc.BIPARIETAL_DIAMETER, fhc.OCCIPITAL_FRONTAL_DIAMETER)
    )
    assert hc == ("11984-2", "LN")
    finding = fhc.finding_confidence_code(summary["finding"], bool(summary["malformation_type"]))
    assert float(measured["fetal head"].pop((finding.value, fc.SCHEME))) == pytest.approx(
        summary["confidence"] * 100, abs=0.01
    )
    assert finding.meaning.lower().startswith(summary["finding"])  # the concept names the finding
    if summary["hc_mm"] is None:
        assert measured["fetal head"] == {}
        return
    assert measured["fetal head"] == {
        hc: pytest.approx(summary["hc_mm"], abs=0.05),
        bpd: pytest.approx(summary["bpd_mm"], abs=0.05),
        ofd: pytest.approx(summary["ofd_mm"], abs=0.05),
    }
    spacing, _, _ = physical_spacing(source)  # the calibration the node used: (row, column) mm
    assert spacing is not None
    dy, dx = spacing
    for name, key in (("biparietal diameter", bpd), ("occipital-frontal diameter", ofd)):
        line = points[name][1]
        assert np.linalg.norm((line[1] - line[0]) * [dx, dy]) == pytest.approx(
            float(measured["fetal head"][key]), abs=0.01
        )
