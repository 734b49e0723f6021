"""The DICOM SEG of the fetal head: its mask is the model's head mask, it round-trips with highdicom's
reader and dciodvfy finds no error, on grayscale, colour, palette, multi-frame and uncalibrated sources."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.outcomes import Outcome, Received, Verdict
from fetalnode.outputs import codes
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from harness import corpus
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile, need

pytestmark = pytest.mark.interop
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())
HC18 = sorted(n for n, i in SAMPLE_INFO.items() if i["dataset"] == "hc18")
UNCALIBRATED = sorted(n for n, i in SAMPLE_INFO.items() if i["dataset"] != "hc18")
TESTDATA = ["US1_J2KR.dcm", "examples_ybr_color.dcm", "OBXXXX1A.dcm", "US1_UNCR.dcm"]


def secondary_capture(folder: Path) -> Path:
    """An HC18 sample as a Secondary Capture of an ultrasound image (accepted like a US image)."""
    ds = dcmread(SAMPLES / HC18[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.ConversionType = "WSD"
    path = folder / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


MADE = {
    "palette_16bit": corpus.palette_16bit,
    "no_calibration": corpus.no_calibration,
    "cine": corpus.cine_500_frames,
    "secondary_capture": secondary_capture,
}
# Sources on which the model finds a head (the others give an empty segment).
HEADS = {*HC18, *UNCALIBRATED, *MADE}


@dataclass
class Written:
    name: str
    src: Path
    outcome: Outcome
    seg_path: Path
    analysis: Analysis


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    # The head application's writer on every source (what the router gives other views: tests/unit/test_router.py).
    overrides = {"models.dir": str(MODELS), "output.enabled": ["seg"], "worker.application": "fetal-head"}
    settings = load_settings(None, env={}, overrides=overrides)
    return build_runtime(settings, destinations=[])


def run(src: Path, runtime: Runtime) -> Outcome:
    data = src.read_bytes()
    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return outcome


@pytest.fixture(scope="module", params=[*HC18, *UNCALIBRATED, *TESTDATA, *MADE])
def written(request, runtime, tmp_path_factory) -> Written:
    name = request.param
    folder = tmp_path_factory.mktemp("seg")
    if name in SAMPLE_INFO:
        src = SAMPLES / name
    elif name in MADE:
        src = MADE[name](folder)
    else:
        src = dicom_testfile(name)
    outcome = run(src, runtime)
    seg_path = folder / "seg.dcm"
    seg_path.write_bytes(outcome.built["seg"])
    return Written(name, src, outcome, seg_path, runtime.application.analyse(dcmread(src)))


def test_mask_is_the_models_head_mask(written) -> None:
    source = dcmread(written.src, stop_before_pixels=True)
    result, frame = written.analysis.result, written.analysis.decoded.frame_number
    seg = hd.seg.segread(written.seg_path)
    assert seg.SegmentationType == "BINARY" and seg.NumberOfFrames == 1
    if frame is None:
        pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    else:
        pixels = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [frame], segment_numbers=[1])
    got = pixels[0, :, :, 0].astype(bool)
    assert got.shape == (source.Rows, source.Columns)
    if written.name in HEADS:
        assert result.head_mask is not None and result.head_mask.any()
        assert np.array_equal(got, result.head_mask)
    else:
        assert result.head_mask is None and not result.analysed
        assert not got.any()


def test_dciodvfy_reports_no_errors(written) -> None:
    need("dciodvfy")
    result = subprocess.run(["dciodvfy", str(written.seg_path)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == []


def test_segment_algorithm_and_references(written) -> None:
    source = dcmread(written.src, stop_before_pixels=True)
    seg = hd.seg.segread(written.seg_path)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert "research use only" in seg.SeriesDescription and seg.SeriesNumber == 9104
    [segment] = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert segment.segment_label == "Fetal head"
    assert segment.segmented_property_category == codes.SEGMENT_CATEGORY
    assert segment.segmented_property_type == hd.sr.CodedConcept("69536005", "SCT", "Head")
    assert segment.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    algorithm = segment.algorithm_identification
    assert algorithm is not None
    assert (algorithm[0].AlgorithmName, algorithm[0].AlgorithmVersion) == written.analysis.result.seg_model
    [ours] = [e for e in seg.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "fetalnode"]
    assert ours.DeviceUID
    frame = written.analysis.decoded.frame_number
    references: list[Dataset] = [
        *seg.SourceImageSequence,
        *seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence,
    ]
    for item in references:
        assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert item.ReferencedSOPClassUID == source.SOPClassUID
        assert item.get("ReferencedFrameNumber") == frame
    [instance] = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert instance.ReferencedSOPClassUID == source.SOPClassUID and "ReferencedFrameNumber" not in instance


def test_uids_are_deterministic(written, runtime) -> None:
    again = dcmread(Path(written.seg_path))
    second = run(written.src, runtime)
    assert second.summary["outputs"] == written.outcome.summary["outputs"]
    other = hd.seg.Segmentation.from_dataset(dcmread(_bytes_file(second.built["seg"], written.seg_path)))
    assert other.SOPInstanceUID == again.SOPInstanceUID and other.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.DimensionOrganizationSequence[0].DimensionOrganizationUID == (
        again.DimensionOrganizationSequence[0].DimensionOrganizationUID
    )
    assert other.PixelData == again.PixelData


def _bytes_file(data: bytes, beside: Path) -> Path:
    path = beside.with_name("again.dcm")
    path.write_bytes(data)
    return path
