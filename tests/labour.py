"""PSFHS ground truth as the labour-progress application would answer it, for the output tests.

:class:`GroundTruthLabour` answers as the ``labour-progress`` application does, but from the image's PSFHS
ground-truth masks instead of the segmentation model: it decodes the received image as every application
does (``intake.decode_for_analysis``) and fills a :class:`~fetalnode.inference.labour.LabourResult` with the
application's own geometry (``inference.aop``, the FH-PS-AOP 2023 convention: equal to ``labels.csv``'s
``aop_deg``). The output tests so know the exact angle each object must carry.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.inference.aop import measure_label_map
from fetalnode.inference.labour import LabourResult
from fetalnode.inference.labour_analyzer import fill
from fetalnode.intake import DecodedImage, decode_for_analysis
from fetalnode.outcomes import Outcome, Received, Verdict
from fetalnode.outputs.registry import enabled_writers
from fetalnode.runner import Runtime, run_job
from fetalnode.wrap import wrap_png

APPLICATION = "labour-progress"
PSFHS_MINI = Path(__file__).resolve().parent / "data" / "psfhs_mini"
LABELS = {row["image_id"]: row for row in csv.DictReader((PSFHS_MINI / "labels.csv").open())}
HIGH_AOP, LOW_AOP = "04536", "04610"  # AoP 132.5 and 95.9 deg in labels.csv
SEG_MODEL = ("psfhs-seg-groundtruth", "0.0.0-test")
ALL_OUTPUTS = ["sr", "sc", "seg", "gsps"]


def ground_truth(image_id: str, spacing_mm: tuple[float, float] | None) -> LabourResult:
    """The application's geometry (``inference.aop``) on the image's PSFHS ground-truth masks."""
    labels = np.asarray(Image.open(PSFHS_MINI / LABELS[image_id]["mask_filename"]))
    result = LabourResult(analysed=False, reason="", seg_model=SEG_MODEL, ps_mask=labels == 1, fh_mask=labels == 2)
    fill(result, measure_label_map(labels), spacing_mm)
    assert result.analysed, result.reason
    return result


def not_analysed() -> LabourResult:
    return LabourResult(analysed=False, reason="no pubic symphysis found", seg_model=SEG_MODEL)


@dataclass
class GroundTruthLabour:
    """Stands in for the ``labour-progress`` application: the PSFHS ground truth of one image."""

    image_id: str
    analysed: bool = True
    name: str = APPLICATION
    applications: tuple[str, ...] = (APPLICATION,)
    answers: list[Analysis] = field(default_factory=list)

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        decoded = decoded or decode_for_analysis(ds, 40_000_000, 2000)
        result = ground_truth(self.image_id, decoded.spacing_mm) if self.analysed else not_analysed()
        self.answers.append(Analysis(APPLICATION, result, decoded, (SEG_MODEL,)))
        return self.answers[-1]

    def bundle_paths(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, str]:
        return {"segmentation": " ".join(SEG_MODEL)}


def wrapped(image_id: str, folder: Path, pixel_size_mm: float | None = None) -> Path:
    """The PSFHS image as a US Image Storage instance (``fetalnode wrap``); PSFHS has no pixel size, so a
    calibrated copy carries a made-up one (it only exercises the mm path)."""
    ds = wrap_png(PSFHS_MINI / LABELS[image_id]["filename"], pixel_size_mm=pixel_size_mm, patient_id="PSFHS-TEST")
    if pixel_size_mm is not None:  # another instance than the uncalibrated copy
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID])
    path = folder / f"psfhs_{image_id}{'_cal' if pixel_size_mm else ''}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Built:
    """One run of the job runner on a wrapped PSFHS image: its source, the analysis and the outputs."""

    src: Path
    source: Dataset
    analysis: Analysis
    outcome: Outcome

    def dataset(self, name: str) -> Dataset:
        from io import BytesIO

        return dcmread(BytesIO(self.outcome.built[name]))

    def write(self, name: str, folder: Path) -> Path:
        path = folder / f"{name}.dcm"
        path.write_bytes(self.outcome.built[name])
        return path


def build(src: Path, application: GroundTruthLabour, outputs: list[str] = ALL_OUTPUTS) -> Built:
    """The job runner on ``src`` with the stand-in application and the labour writers, no destination."""
    settings = load_settings(None, env={})
    runtime = Runtime(application, enabled_writers(outputs, [APPLICATION]), [], settings.output)
    data = src.read_bytes()
    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return Built(src, dcmread(src), application.answers[-1], outcome)
