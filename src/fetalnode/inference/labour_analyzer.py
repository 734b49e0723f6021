"""Labour progress: pubic symphysis + fetal head segmentation -> gate -> AoP and HSD (:mod:`.aop`) -> LabourResult.

One code path for the node, training's validation and ``fetalnode evaluate``: :func:`segment_structures`
gives the cleaned masks on the source grid and :func:`gate` the reason a segmentation is not measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from fetalnode.errors import BundleError, InferenceError
from fetalnode.inference.aop import LabourGeometry, measure, nearest_point
from fetalnode.inference.bundle import Bundle, load_bundle
from fetalnode.inference.ellipse import fill_holes
from fetalnode.inference.labour import LabourResult
from fetalnode.inference.preprocess import Letterbox, frame01, letterbox

TASK = "multiclass-segmentation"
BACKGROUND, PS, FH = 0, 1, 2
NOT_ANALYSED = "not analysed"


@dataclass(frozen=True)
class LabourGate:
    """Plausibility limits of a segmentation: each structure's area as a fraction of the image, and the
    mean probability of its class inside it. Set at training time from the training masks (areas) and
    stored in the bundle (``postprocess.gate``)."""

    ps_area: tuple[float, float] = (0.002, 0.12)
    fh_area: tuple[float, float] = (0.02, 0.7)
    min_confidence: float = 0.6

    def as_dict(self) -> dict[str, Any]:
        return {"ps_area": list(self.ps_area), "fh_area": list(self.fh_area), "min_confidence": self.min_confidence}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabourGate:
        default = cls()
        return cls(
            ps_area=tuple(d.get("ps_area", default.ps_area)),  # type: ignore[arg-type]
            fh_area=tuple(d.get("fh_area", default.fh_area)),  # type: ignore[arg-type]
            min_confidence=float(d.get("min_confidence", default.min_confidence)),
        )


@dataclass(frozen=True)
class Structures:
    """The segmentation of one image on its source grid."""

    probs: np.ndarray  # (classes, H, W) softmax probabilities
    ps_mask: np.ndarray  # bool (H, W): the largest symphysis region, holes filled
    fh_mask: np.ndarray  # bool (H, W): the largest head region, holes filled

    def confidence(self, label: int) -> float:
        """Mean probability of ``label`` inside its cleaned mask (0 when the mask is empty)."""
        mask = self.ps_mask if label == PS else self.fh_mask
        return float(self.probs[label][mask].mean()) if mask.any() else 0.0


def content_probabilities(
    net: Callable[[torch.Tensor], torch.Tensor], canvas_hw: tuple[int, int], img01: np.ndarray
) -> tuple[np.ndarray, Letterbox]:
    """Softmax probabilities on the letterboxed image without its padding, (classes, h, w), and the box."""
    canvas, box = letterbox(img01, canvas_hw)
    with torch.no_grad():
        logits = net(torch.from_numpy(canvas)[None, None])
    h, w = box.content_hw
    return torch.softmax(logits, dim=1)[0, :, :h, :w].numpy(), box


def class_probabilities(
    net: Callable[[torch.Tensor], torch.Tensor], canvas_hw: tuple[int, int], img01: np.ndarray
) -> np.ndarray:
    """Softmax probabilities on the source grid, (classes, H, W) (the network sees a letterboxed canvas)."""
    probs, box = content_probabilities(net, canvas_hw, img01)
    if box.src_hw == tuple(canvas_hw) and box.scale == 1.0:
        return probs
    back = np.stack([box.to_source(p) for p in probs])
    return back / np.clip(back.sum(axis=0, keepdims=True), 1e-6, None)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of ``mask``, holes filled (all false when empty)."""
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return fill_holes(mask)


def structures_from_probabilities(probs: np.ndarray) -> Structures:
    """Arg-max labels, each structure kept as its largest region with holes filled (the head wins overlaps)."""
    labels = probs.argmax(axis=0)
    fh = largest_region(labels == FH)
    ps = largest_region(labels == PS) & ~fh
    return Structures(probs=probs, ps_mask=ps, fh_mask=fh)


def segment_structures(
    net: Callable[[torch.Tensor], torch.Tensor], canvas_hw: tuple[int, int], img01: np.ndarray
) -> Structures:
    return structures_from_probabilities(class_probabilities(net, canvas_hw, img01))


def gate(structures: Structures, limits: LabourGate) -> str:
    """Why this segmentation is not measured ("" when it is plausible)."""
    area = float(structures.ps_mask.size)
    for label, name, mask, (lo, hi) in (
        (PS, "pubic symphysis", structures.ps_mask, limits.ps_area),
        (FH, "fetal head", structures.fh_mask, limits.fh_area),
    ):
        if not mask.any():
            return f"{name} not found"
        frac = float(mask.sum()) / area
        if not lo <= frac <= hi:
            return f"{name} implausible ({frac:.1%} of the image; expected {lo:.1%}-{hi:.1%})"
        confidence = structures.confidence(label)
        if confidence < limits.min_confidence:
            return f"{name} segmented with low confidence ({confidence:.2f})"
    return ""


@dataclass(frozen=True)
class LabourSettings:
    """How a labour segmentation bundle is run and read."""

    canvas_hw: tuple[int, int]
    gate: LabourGate


def labour_settings(bundle: Bundle) -> LabourSettings:
    hw = bundle.metadata["input"]["canvas_hw"]
    return LabourSettings(
        canvas_hw=(int(hw[0]), int(hw[1])),
        gate=LabourGate.from_dict(bundle.metadata.get("postprocess", {}).get("gate", {})),
    )


def load_labour_bundle(path: str | Path) -> Bundle:
    """A labour-progress segmentation bundle (background, pubic symphysis, fetal head)."""
    bundle = load_bundle(path, TASK)
    labels = list(bundle.metadata.get("labels", []))
    if labels[:3] != ["background", "pubic symphysis", "fetal head"]:
        raise BundleError(f"bundle {path}: labels {labels} are not background, pubic symphysis, fetal head")
    return bundle


class LabourAnalyzer:
    """Runs a labour segmentation bundle on one grayscale image and measures AoP and HSD."""

    def __init__(self, bundle: Bundle) -> None:
        if bundle.task != TASK:
            raise InferenceError(f"LabourAnalyzer needs a {TASK} bundle, got {bundle.task!r}")
        self.bundle = bundle
        self.settings = labour_settings(bundle)

    def analyze(
        self,
        gray: np.ndarray,
        spacing_mm: tuple[float, float] | None,
        spacing_note: str = "",
        img01: np.ndarray | None = None,
    ) -> LabourResult:
        """Analyse one 2D grayscale frame; ``spacing_mm`` is (row, column) mm per pixel or ``None``;
        ``img01`` its ``to_unit_range`` when already computed."""
        t0 = time.perf_counter()
        img01 = frame01(gray, img01)
        structures = segment_structures(self.bundle.infer, self.settings.canvas_hw, img01)
        t1 = time.perf_counter()
        result = LabourResult(
            analysed=False,
            reason="",
            seg_model=(self.bundle.name, self.bundle.version),
            ps_mask=structures.ps_mask,
            fh_mask=structures.fh_mask,
        )
        result.timings_ms["segmentation"] = (t1 - t0) * 1000
        why = gate(structures, self.settings.gate)
        geometry = measure(structures.ps_mask, structures.fh_mask) if not why else LabourGeometry(reason=why)
        fill(result, geometry, spacing_mm, spacing_note)
        result.timings_ms["measurement"] = (time.perf_counter() - t1) * 1000
        return result

    def recognise(self, gray: np.ndarray, img01: np.ndarray | None = None) -> str:
        """Whether ``gray`` shows the structures of a transperineal view, as :func:`recognised` (the view
        router's cross-check of an image it would give another application)."""
        # On the network's grid (no mapping back to the source: a third of the time on an 800x540 image);
        # the gate's areas are fractions of the image, which scaling keeps.
        probs, _ = content_probabilities(self.bundle.infer, self.settings.canvas_hw, frame01(gray, img01))
        return recognised(structures_from_probabilities(probs), self.settings.gate)


def recognised(structures: Structures, limits: LabourGate) -> str:
    """What an image shows of a transperineal view ("" when the gate refuses its segmentation)."""
    if gate(structures, limits):
        return ""
    return f"a pubic symphysis (confidence {structures.confidence(PS):.2f}) and a fetal head were found"


def fill(
    result: LabourResult, geometry: LabourGeometry, spacing_mm: tuple[float, float] | None, spacing_note: str = ""
) -> None:
    """Put a geometry into a result, with the HSD in mm where the image is calibrated and the verdict."""
    result.geometry = geometry
    if geometry.hsd_px is not None and geometry.vertex is not None and geometry.fh is not None:
        if spacing_mm is not None:
            dy, dx = spacing_mm
            result.hsd_mm, _ = nearest_point(geometry.vertex, geometry.fh.contour, (dx, dy))
        else:
            result.measurement_note = (
                f"{spacing_note or 'image has no physical calibration'}: head-symphysis distance in pixels only"
            )
    if geometry.reason:
        result.analysed, result.reason = False, f"{NOT_ANALYSED}: {geometry.reason}"
    else:
        result.analysed, result.reason = True, ""
