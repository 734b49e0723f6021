"""The ``gsps`` output: a Grayscale or Color Softcopy Presentation State over the analysed image that
dicom3tools' dciodvfy accepts, referencing the source (and frame), with the head contour, the callipers
at the ellipse axes and the result as text. Built by the job runner as ``fetalnode analyze`` builds it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.base import Analysis
from fetalnode.applications.fetal_head.presentation import CONTOUR_POINTS
from fetalnode.config import load_settings
from fetalnode.inference.analyzer import NOT_A_HEAD
from fetalnode.outcomes import Outcome, Received, Verdict
from fetalnode.outputs.registry import enabled_writers
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from harness import corpus
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile, need

pytestmark = pytest.mark.interop
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())
CALIBRATED = next(n for n, i in SAMPLE_INFO.items() if i["dataset"] == "hc18")
UNCALIBRATED = next(n for n, i in SAMPLE_INFO.items() if i["pixel_size_mm"] is None)
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
COLOR_PS = "1.2.840.10008.5.1.4.1.1.11.2"
# PS3.3 C.10.5.1.2 PIXEL units: (0.0, 0.0) is the top left corner of the top left pixel; the analysis
# puts pixel centres at integer coordinates, so a point moves by half a pixel.
PIXEL_CENTRE = 0.5
NO_HEAD = {"US1_J2KR.dcm", "examples_ybr_color.dcm"}  # the head model finds none in these colour files


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    # The head application's writer on every source (what the router gives other views: tests/unit/test_router.py).
    overrides = {"models.dir": str(MODELS), "output.enabled": ["gsps"], "worker.application": "fetal-head"}
    settings = load_settings(None, env={}, overrides=overrides)
    return build_runtime(settings, destinations=[])


def run(src: Path, runtime: Runtime) -> Outcome:
    data = src.read_bytes()
    received = Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST")
    outcome = run_job(received, runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return outcome


def rgb_head(folder: Path) -> Path:
    """The calibrated sample as RGB (pydicom's colour US files hold no head the model finds)."""
    ds = corpus.base()
    ds.PixelData = np.repeat(ds.pixel_array[..., None], 3, axis=2).tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    path = folder / "rgb_head.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


MAKERS = {"palette_16bit": corpus.palette_16bit, "cine_500_frames": corpus.cine_500_frames, "rgb_head": rgb_head}


def source_path(name: str, folder: Path) -> Path:
    if name in SAMPLE_INFO:
        return SAMPLES / name
    if name in MAKERS:
        return MAKERS[name](folder)
    return dicom_testfile(name)


@dataclasses.dataclass(frozen=True)
class Written:
    src: Path
    pr_path: Path
    outcome: Outcome
    analysis: Analysis


@pytest.fixture(
    scope="module",
    params=[
        CALIBRATED,
        UNCALIBRATED,
        "US1_J2KR.dcm",
        "examples_ybr_color.dcm",
        "palette_16bit",
        "rgb_head",
        "cine_500_frames",
    ],
)
def written(request, runtime, tmp_path_factory) -> Written:
    folder = tmp_path_factory.mktemp("gsps")
    src = source_path(request.param, folder)
    outcome = run(src, runtime)
    pr_path = folder / "gsps.dcm"
    pr_path.write_bytes(outcome.built["gsps"])
    return Written(src, pr_path, outcome, runtime.application.analyse(dcmread(src)))


def dciodvfy_errors(path: Path) -> list[str]:
    need("dciodvfy")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def text_of(pr: Dataset) -> str:
    return "\n".join(t.UnformattedTextValue for a in pr.GraphicAnnotationSequence for t in a.TextObjectSequence)


def test_dciodvfy_reports_no_errors(written: Written) -> None:
    assert dciodvfy_errors(written.pr_path) == []


def test_sop_class_follows_the_photometric_interpretation(written: Written) -> None:
    source = dcmread(written.src, stop_before_pixels=True)
    pr = dcmread(written.pr_path)
    grayscale = source.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
    assert pr.SOPClassUID == (GSPS if grayscale else COLOR_PS)
    assert pr.Modality == "PR" and pr.ContentLabel == "FETALNODE_AI"
    assert "research use only" in pr.ContentDescription.lower()
    if not grayscale:
        assert pr.ICCProfile and "PresentationLUTShape" not in pr


def test_references_the_source_instance_and_frame(written: Written) -> None:
    source = dcmread(written.src, stop_before_pixels=True)
    pr = dcmread(written.pr_path)
    assert pr.StudyInstanceUID == source.StudyInstanceUID and pr.PatientID == source.PatientID
    assert pr.SeriesInstanceUID != source.SeriesInstanceUID
    [series] = pr.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedImageSequence] == [source.SOPInstanceUID]
    [annotation] = pr.GraphicAnnotationSequence
    assert annotation.GraphicLayer == "FETALNODE"
    [image] = annotation.ReferencedImageSequence
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert image.ReferencedSOPClassUID == source.SOPClassUID
    frame = written.analysis.decoded.frame_number
    if int(getattr(source, "NumberOfFrames", 1) or 1) > 1:
        assert frame and int(image.ReferencedFrameNumber) == frame
    else:
        assert "ReferencedFrameNumber" not in image
    [layer] = pr.GraphicLayerSequence
    assert layer.GraphicLayer == "FETALNODE" and "research use only" in layer.GraphicLayerDescription.lower()


def test_contour_and_callipers_at_the_ellipse(written: Written) -> None:
    pr = dcmread(written.pr_path)
    [annotation] = pr.GraphicAnnotationSequence
    ellipse = written.analysis.result.ellipse
    if not written.outcome.summary["analysed"]:
        assert written.src.name in NO_HEAD and "GraphicObjectSequence" not in annotation
        return
    assert written.analysis.result.analysed and ellipse is not None
    contour, ofd, bpd = annotation.GraphicObjectSequence
    assert {g.GraphicType for g in annotation.GraphicObjectSequence} == {"POLYLINE"}
    assert {g.GraphicAnnotationUnits for g in annotation.GraphicObjectSequence} == {"PIXEL"}
    points = np.array(contour.GraphicData).reshape(-1, 2)
    assert len(points) == CONTOUR_POINTS + 1 and np.array_equal(points[0], points[-1])
    # Graphic Data is FL (float32); the analysis rerun here may differ from the runner's in the 5th decimal.
    ends = ellipse.axis_endpoints() + PIXEL_CENTRE
    np.testing.assert_allclose(np.array(ofd.GraphicData).reshape(-1, 2), ends[0:2], rtol=0, atol=1e-3)
    np.testing.assert_allclose(np.array(bpd.GraphicData).reshape(-1, 2), ends[2:4], rtol=0, atol=1e-3)
    centre = np.array([ellipse.cx, ellipse.cy]) + PIXEL_CENTRE
    radii = np.linalg.norm(points - centre, axis=1)
    assert radii.min() >= ellipse.b - 1e-3 and radii.max() <= ellipse.a + 1e-3
    np.testing.assert_allclose(radii[[0, CONTOUR_POINTS // 4]], [ellipse.a, ellipse.b], rtol=0, atol=1e-3)


def test_text_carries_biometry_finding_and_notice(written: Written) -> None:
    pr = dcmread(written.pr_path)
    text = text_of(pr)
    summary = written.outcome.summary
    assert RESEARCH_NOTICE in text
    if not summary["analysed"]:
        assert "Not analysed: no fetal head found" in text and "HC " not in text and "AI finding" not in text
        return
    assert f"AI finding: {summary['finding']}" in text and "confidence" in text
    if summary["hc_mm"] is None:
        assert "HC " not in text and "No measurement in mm" in text
    else:
        assert f"HC {summary['hc_mm']:.1f} mm" in text
        assert f"BPD {summary['bpd_mm']:.1f} mm" in text and f"OFD {summary['ofd_mm']:.1f} mm" in text


def test_uids_are_deterministic(written: Written, runtime: Runtime) -> None:
    first = dcmread(written.pr_path)
    again = dcmread(BytesIO(run(written.src, runtime).built["gsps"]))
    assert again.SOPInstanceUID == first.SOPInstanceUID == written.outcome.summary["outputs"]["gsps"]
    assert again.SeriesInstanceUID == first.SeriesInstanceUID and first.SeriesNumber == 9103


def test_calibrated_sample_has_hc_uncalibrated_has_none(runtime: Runtime) -> None:
    assert "HC " in text_of(dcmread(BytesIO(run(SAMPLES / CALIBRATED, runtime).built["gsps"])))
    assert "HC " not in text_of(dcmread(BytesIO(run(SAMPLES / UNCALIBRATED, runtime).built["gsps"])))


@pytest.mark.parametrize("name", [CALIBRATED, "US1_J2KR.dcm"])
def test_no_head_gives_only_the_text(name: str, runtime: Runtime, tmp_path: Path) -> None:
    src = source_path(name, tmp_path)
    source = dcmread(src)
    analysis = runtime.application.analyse(source)
    nothing = dataclasses.replace(analysis.result, analysed=False, ellipse=None, biometry=None, reason=NOT_A_HEAD)
    [writer] = enabled_writers(["gsps"], ["fetal-head"])
    pr = writer.write(source, dataclasses.replace(analysis, result=nothing), runtime.output, "TEST")
    path = tmp_path / "pr.dcm"
    pr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    [annotation] = dcmread(path).GraphicAnnotationSequence
    assert "GraphicObjectSequence" not in annotation
    text = text_of(pr)
    assert "no fetal head found" in text and RESEARCH_NOTICE in text and "HC " not in text


@pytest.mark.parametrize("name", [CALIBRATED, UNCALIBRATED])
def test_dcmtk_applies_the_gsps(name: str, runtime: Runtime, tmp_path: Path) -> None:
    """DCMTK's presentation state renderer (grayscale only) reads the graphic layer and its objects."""
    need("dcmp2pgm")
    pr_path = tmp_path / "pr.dcm"
    pr_path.write_bytes(run(SAMPLES / name, runtime).built["gsps"])
    result = subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(pr_path), str(SAMPLES / name), str(tmp_path / "out.pgm")],
        capture_output=True,
        text=True,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "E:" not in log and "W:" not in log, log
    assert f"points={CONTOUR_POINTS + 1} type=polyline" in log and log.count("points=2 type=polyline") == 2
    assert (tmp_path / "out.pgm").stat().st_size > 0
