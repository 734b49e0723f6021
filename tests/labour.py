"""PSFHS ground truth as the labour-progress application would answer it, for the output tests.

The real application (segmentation model + ``inference/aop.py``) is built on another branch; until it is
merged, :class:`GroundTruthLabour` stands in for it: a registered-like application whose ``analyse``
decodes the received image as every application does (``intake.decode_for_analysis``) and answers with a
:class:`~fetalnode.inference.labour.LabourResult` computed from the image's PSFHS ground-truth mask:
moment ellipse fits (``inference.ellipse.fit_ellipse``), the vertex at the right-most end of the symphysis
major axis, the tangent from it to the far side of the head ellipse (the larger angle), the HSD to the
nearest head boundary pixel (the FH-PS-AOP 2023 convention of the dataset README, with moment instead of
OpenCV ellipse fits: on the two bundled images the angle is within 0.2 deg of ``labels.csv``).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.inference.ellipse import Ellipse, fit_ellipse
from fetalnode.inference.labour import LabourResult, Point
from fetalnode.intake import decode_for_analysis
from fetalnode.outputs.registry import enabled_writers
from fetalnode.runner import Outcome, Received, Runtime, Verdict, run_job
from fetalnode.wrap import wrap_png

APPLICATION = "labour-progress"
PSFHS_MINI = Path(__file__).resolve().parent / "data" / "psfhs_mini"
LABELS = {row["image_id"]: row for row in csv.DictReader((PSFHS_MINI / "labels.csv").open())}
HIGH_AOP, LOW_AOP = "04536", "04610"  # AoP 132.5 and 95.9 deg in labels.csv
SEG_MODEL = ("psfhs-seg-groundtruth", "0.0.0-test")
ALL_OUTPUTS = ["sr", "sc", "seg", "gsps"]


def tangent_points(e: Ellipse, p: Point) -> list[Point]:
    """The two points where lines from ``p`` (outside the ellipse) touch it."""
    t = math.radians(e.angle_deg)
    c, s = math.cos(t), math.sin(t)
    dx, dy = p[0] - e.cx, p[1] - e.cy
    qx, qy = (c * dx + s * dy) / e.a, (-s * dx + c * dy) / e.b
    r = math.hypot(qx, qy)
    if r <= 1:
        return []
    phi, d = math.atan2(qy, qx), math.acos(1 / r)
    points = []
    for angle in (phi + d, phi - d):
        ux, uy = e.a * math.cos(angle), e.b * math.sin(angle)
        points.append((e.cx + c * ux - s * uy, e.cy + s * ux + c * uy))
    return points


def angle_at(vertex: Point, a: Point, b: Point) -> float:
    u, w = np.subtract(a, vertex), np.subtract(b, vertex)
    return math.degrees(math.acos(float(np.clip(np.dot(u, w) / np.linalg.norm(u) / np.linalg.norm(w), -1, 1))))


def contour(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a (star-shaped) region in order of angle around its centroid, (N, 2) x, y."""
    ys, xs = np.nonzero(mask & ~ndimage.binary_erosion(mask))
    cy, cx = ndimage.center_of_mass(mask)
    order = np.argsort(np.arctan2(ys - cy, xs - cx))
    return np.column_stack([xs[order], ys[order]]).astype(np.float64)


def ground_truth(image_id: str, spacing_mm: tuple[float, float] | None) -> LabourResult:
    labels = np.asarray(Image.open(PSFHS_MINI / LABELS[image_id]["mask_filename"]))
    ps, fh = labels == 1, labels == 2
    ps_ellipse, fh_ellipse = fit_ellipse(ps.astype(float), mask=ps), fit_ellipse(fh.astype(float), mask=fh)
    assert ps_ellipse is not None and fh_ellipse is not None
    ends = ps_ellipse.axis_endpoints()[:2]
    right = int(np.argmax(ends[:, 0]))
    vertex: Point = (float(ends[right][0]), float(ends[right][1]))
    axis_end: Point = (float(ends[1 - right][0]), float(ends[1 - right][1]))
    tangent = max(tangent_points(fh_ellipse, vertex), key=lambda t: angle_at(vertex, axis_end, t))
    fh_contour = contour(fh)
    distances = np.hypot(fh_contour[:, 0] - vertex[0], fh_contour[:, 1] - vertex[1])
    nearest = fh_contour[int(np.argmin(distances))]
    hsd_px = float(distances.min())
    isotropic = spacing_mm is not None and math.isclose(spacing_mm[0], spacing_mm[1], rel_tol=0.01)
    return LabourResult(
        analysed=True,
        reason="",
        seg_model=SEG_MODEL,
        ps_mask=ps,
        fh_mask=fh,
        ps_ellipse=ps_ellipse,
        fh_ellipse=fh_ellipse,
        ps_contour=contour(ps),
        fh_contour=fh_contour,
        vertex=vertex,
        ps_axis_end=axis_end,
        tangent_point=tangent,
        hsd_point=(float(nearest[0]), float(nearest[1])),
        aop_deg=angle_at(vertex, axis_end, tangent),
        hsd_px=hsd_px,
        hsd_mm=hsd_px * spacing_mm[0] if spacing_mm is not None and isotropic else None,
        measurement_note="" if isotropic else "the image carries no calibration",
    )


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

    def analyse(self, ds: Dataset) -> Analysis:
        decoded = decode_for_analysis(ds, 40_000_000, 2000)
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
