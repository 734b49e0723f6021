"""Segmentation -> ROI shape -> crop/pad/enhance -> classification -> Grad-CAM -> fused heatmap."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fetalnode.errors import InferenceError
from fetalnode.inference.bundle import Bundle, load_bundle
from fetalnode.inference.calibration import Calibration, TypeRule, calibrated
from fetalnode.inference.ellipse import Biometry, Ellipse, biometry, fit_ellipse, head_region
from fetalnode.inference.preprocess import frame01, letterbox, roi_crop
from fetalnode.inference.saliency import CamModel, class_score, draw_roi, fuse, log_odds_score
from fetalnode.vocab import TypeNote

NOT_A_HEAD = "not analysed: no fetal head found"
# An ellipse with a shorter semi-major axis (source pixels) is "nothing segmented".
MIN_SEMI_AXIS_PX = 4.0


@dataclass
class AnalysisResult:
    """What the models say about one image (source pixel coordinates throughout).

    ``head_mask`` is the segmented head the ellipse was fitted to (bool, rows x columns of the analysed
    frame), set when a head was found. Probabilities are calibrated (the bundle's temperatures).
    When the finding is abnormal, either ``malformation_type`` names a type the bundle's reporting rule
    allows (with its P(type | abnormal) in ``type_probability``), or it is empty and ``type_note`` says
    "type not determined".
    ``heatmap`` (Grad-CAM, [0, 1]) explains ``heatmap_target``: the named type's logit, "abnormal" (the
    log-odds of abnormal, logsumexp of the malformation logits minus the normal logit) when the finding
    is abnormal and no type is named, or the normal class's logit.
    """

    analysed: bool
    reason: str
    seg_model: tuple[str, str]
    cls_model: tuple[str, str]
    ellipse: Ellipse | None = None
    head_mask: np.ndarray | None = None
    head_score: float = 0.0
    biometry: Biometry | None = None
    measurement_note: str = ""
    finding: str = ""
    malformation_type: str = ""
    type_note: str = ""
    p_abnormal: float = 0.0
    type_probability: float = 0.0
    class_probabilities: dict[str, float] = field(default_factory=dict)
    heatmap: np.ndarray | None = None
    heatmap_target: str = ""
    fused_rgb: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        """Probability of the reported finding (normal or abnormal)."""
        return self.p_abnormal if self.finding == "abnormal" else 1.0 - self.p_abnormal

    def type_words(self) -> str:
        """The type decision in words ("suspected <type>" or "type not determined"); "" unless abnormal."""
        if self.finding != "abnormal":
            return ""
        if self.malformation_type:
            return f"suspected {self.malformation_type.replace('_', ' ')}"
        return self.type_note or TypeNote.NOT_DETERMINED.value

    def summary(self) -> dict[str, object]:
        bio = self.biometry
        return {
            "analysed": self.analysed,
            "reason": self.reason,
            "finding": self.finding,
            "malformation_type": self.malformation_type,
            "type_note": self.type_note,
            "p_abnormal": round(self.p_abnormal, 4),
            "confidence": round(self.confidence, 4) if self.analysed else None,
            "hc_mm": round(bio.hc_mm, 1) if bio else None,
            "bpd_mm": round(bio.bpd_mm, 1) if bio else None,
            "ofd_mm": round(bio.ofd_mm, 1) if bio else None,
            "measurement_note": self.measurement_note,
            "head_score": round(self.head_score, 3),
            "models": {"segmentation": "/".join(self.seg_model), "classifier": "/".join(self.cls_model)},
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


def segment_probability(
    net: Callable[[torch.Tensor], torch.Tensor], canvas_hw: tuple[int, int], img01: np.ndarray
) -> np.ndarray:
    """Head probability on the source pixel grid (the network sees a letterboxed canvas)."""
    canvas, box = letterbox(img01, canvas_hw)
    with torch.no_grad():
        logits = net(torch.from_numpy(canvas)[None, None])
    prob = torch.sigmoid(logits)[0, 0].numpy()
    return np.clip(box.to_source(prob), 0.0, 1.0)


@dataclass(frozen=True)
class SegSettings:
    """How a segmentation bundle is run and read: canvas, axis correction and plausibility gate.

    ``axis_scale`` is the bias correction of the ellipse axes fitted on training data; the gate's
    ``min_iou`` / ``min_confidence`` are set at training time from the validation heads (never lower
    than the defaults here).
    """

    canvas_hw: tuple[int, int]
    axis_scale: float = 1.0
    min_iou: float = 0.85
    min_confidence: float = 0.7


@dataclass(frozen=True)
class HeadLocation:
    """The gated head of one image: ellipse and mask (source pixels) are ``None`` when rejected."""

    ellipse: Ellipse | None
    mask: np.ndarray | None
    score: float
    reason: str


def find_head(net: Callable[[torch.Tensor], torch.Tensor], settings: SegSettings, img01: np.ndarray) -> HeadLocation:
    """Segment, fit the skull ellipse to the head region and gate it.

    The mask is the region the ellipse is fitted to, on the source grid (the probability map is
    mapped back from the canvas before thresholding); ``axis_scale`` corrects the ellipse only.
    """
    prob = segment_probability(net, settings.canvas_hw, img01)
    mask = head_region(prob)
    ellipse = fit_ellipse(prob, mask=mask)
    score, why = head_plausibility(prob, ellipse, settings)
    if why or ellipse is None:
        return HeadLocation(None, None, score, why)
    scale = settings.axis_scale
    if scale != 1.0:
        ellipse = Ellipse(ellipse.cx, ellipse.cy, ellipse.a * scale, ellipse.b * scale, ellipse.angle_deg)
    return HeadLocation(ellipse, mask, score, why)


def locate_head(
    net: Callable[[torch.Tensor], torch.Tensor], settings: SegSettings, img01: np.ndarray
) -> tuple[Ellipse | None, float, str]:
    """:func:`find_head` as (ellipse, plausibility score, reason if rejected)."""
    head = find_head(net, settings, img01)
    return head.ellipse, head.score, head.reason


def seg_settings(seg: Bundle) -> SegSettings:
    """Canvas size, ellipse axis correction and gate thresholds of a segmentation bundle."""
    hw = seg.metadata["input"]["canvas_hw"]
    post = seg.metadata.get("postprocess", {})
    gate = post.get("gate", {})
    return SegSettings(
        canvas_hw=(int(hw[0]), int(hw[1])),
        axis_scale=float(post.get("axis_scale", 1.0)),
        min_iou=float(gate.get("min_iou", SegSettings.min_iou)),
        min_confidence=float(gate.get("min_confidence", SegSettings.min_confidence)),
    )


def ellipse_agreement(prob: np.ndarray, ellipse: Ellipse) -> tuple[float, float, float]:
    """IoU of the ellipse with the thresholded mask, mean probability inside the ellipse, and the
    fraction of the image inside the ellipse.

    Pixel tests run on the ellipse's bounding box only (no pixel outside it is inside the ellipse);
    the mask's pixels outside the box enter the union by count.
    """
    h, w = prob.shape
    x0, y0, x1, y1 = ellipse.box()
    r0, r1 = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 2, h)
    c0, c1 = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 2, w)
    mask = prob >= 0.5
    n_mask = int(mask.sum())
    if r1 <= r0 or c1 <= c0:
        return 0.0, 0.0, 0.0
    yy, xx = np.mgrid[r0:r1, c0:c1]
    t = np.radians(ellipse.angle_deg)
    dx, dy = xx - ellipse.cx, yy - ellipse.cy
    u = (dx * np.cos(t) + dy * np.sin(t)) / ellipse.a
    v = (-dx * np.sin(t) + dy * np.cos(t)) / max(ellipse.b, 1e-6)
    inside = u * u + v * v <= 1.0
    n_inside, n_both = int(inside.sum()), int((inside & mask[r0:r1, c0:c1]).sum())
    union = n_inside + n_mask - n_both
    iou = n_both / union if union else 0.0
    confidence = float(prob[r0:r1, c0:c1][inside].mean()) if n_inside else 0.0
    return iou, confidence, n_inside / (h * w)


def head_plausibility(prob: np.ndarray, ellipse: Ellipse | None, settings: SegSettings) -> tuple[float, str]:
    """Score in [0, 1] that the segmentation is one plausible fetal skull, and why not if low."""
    if ellipse is None or ellipse.a < MIN_SEMI_AXIS_PX:
        return 0.0, "nothing segmented"
    h, w = prob.shape
    iou, confidence, area_frac = ellipse_agreement(prob, ellipse)
    ratio = ellipse.b / ellipse.a
    x0, y0, x1, y1 = ellipse.box()
    in_frame = (min(x1, w) - max(x0, 0)) * (min(y1, h) - max(y0, 0)) / max((x1 - x0) * (y1 - y0), 1e-6)
    checks = [
        (iou >= settings.min_iou, f"segmentation is not elliptical (IoU {iou:.2f})"),
        (ratio >= 0.5, f"ellipse too elongated (axis ratio {ratio:.2f})"),
        (0.01 <= area_frac <= 0.9, f"implausible head size ({area_frac:.1%} of the image)"),
        (in_frame >= 0.8, "head mostly outside the image"),
        (confidence >= settings.min_confidence, f"low segmentation confidence ({confidence:.2f})"),
    ]
    score = min(iou, confidence, float(in_frame))
    for ok, why in checks:
        if not ok:
            return min(score, 0.49), why
    return score, ""


class Analyzer:
    """Runs the segmentation and classifier bundles on one grayscale image."""

    def __init__(self, segmentation: Bundle, classifier: Bundle, heatmap_alpha: float = 0.6) -> None:
        if segmentation.task != "segmentation" or classifier.task != "classification":
            raise InferenceError("Analyzer needs a segmentation and a classification bundle")
        self.seg = segmentation
        self.cls = classifier
        self.alpha = heatmap_alpha
        self.labels: list[str] = list(classifier.metadata["labels"])
        self.normal_index = self.labels.index(str(classifier.metadata.get("normal_label", "normal")))
        self.threshold = float(classifier.metadata.get("abnormal_threshold", 0.5))
        self.calibration = Calibration.from_metadata(classifier.metadata)
        self.type_rule = TypeRule.from_metadata(classifier.metadata)
        # One forward pass gives the probabilities and what Grad-CAM needs (hooks registered once).
        self.cam_model = CamModel(classifier.net, classifier.net.cam_layer)  # type: ignore[arg-type]

    def locate(self, img01: np.ndarray) -> HeadLocation:
        """The gated head of a frame scaled by ``to_unit_range`` (:func:`find_head` with this bundle)."""
        return find_head(self.seg.infer, seg_settings(self.seg), img01)

    @classmethod
    def from_dir(cls, models_dir: str | Path, seg_name: str, cls_name: str, heatmap_alpha: float = 0.6) -> Analyzer:
        root = Path(models_dir)
        return cls(
            load_bundle(root / seg_name, "segmentation"),
            load_bundle(root / cls_name, "classification"),
            heatmap_alpha,
        )

    def analyze(
        self,
        gray: np.ndarray,
        spacing_mm: tuple[float, float] | None,
        display_rgb: np.ndarray | None = None,
        spacing_note: str = "",
        img01: np.ndarray | None = None,
        head: HeadLocation | None = None,
    ) -> AnalysisResult:
        """Analyse one 2D grayscale frame.

        Parameters
        ----------
        gray
            2D array, any numeric range.
        spacing_mm
            (row, column) pixel spacing in mm, or ``None`` when the image is not calibrated.
        display_rgb
            The image as shown to a person (H, W, 3 uint8), for the fused heatmap; derived from
            ``gray`` when not given.
        spacing_note
            Why there is no spacing, reported with the result.
        img01
            ``to_unit_range(gray)`` when the caller has it already (the node computes it once per image).
        head
            :meth:`locate` of this frame when the caller has it already (a router asked for it).
        """
        t0 = time.perf_counter()
        img01 = frame01(gray, img01)
        if display_rgb is None:
            display_rgb = np.repeat((img01 * 255).round().astype(np.uint8)[..., None], 3, axis=2)
        result = AnalysisResult(
            analysed=False,
            reason="",
            seg_model=(self.seg.name, self.seg.version),
            cls_model=(self.cls.name, self.cls.version),
        )
        head = head or self.locate(img01)
        ellipse, why = head.ellipse, head.reason
        result.head_score = head.score
        t1 = time.perf_counter()
        result.timings_ms["segmentation"] = (t1 - t0) * 1000
        if why:
            result.reason = f"{NOT_A_HEAD} ({why})"
            result.fused_rgb = display_rgb.copy()
            return result
        assert ellipse is not None
        result.ellipse = ellipse
        result.head_mask = head.mask
        if spacing_mm is not None:
            result.biometry = biometry(ellipse, spacing_mm)
        else:
            result.measurement_note = spacing_note or "image has no physical calibration"
        params = self.cls.metadata["input"]
        crop, crop_box = roi_crop(img01, ellipse.box(), int(params["roi_size"]), float(params["roi_margin"]))
        x = torch.from_numpy(crop)[None, None]
        forward = self.cam_model.forward(x)
        logits = forward.probabilities_input()[0]
        p_abnormal, type_probs = calibrated(logits[None], self.normal_index, self.calibration)
        result.p_abnormal = float(p_abnormal[0])
        abnormal = [i for i in range(len(self.labels)) if i != self.normal_index]
        result.class_probabilities = {self.labels[self.normal_index]: 1.0 - result.p_abnormal}
        result.class_probabilities.update(
            {self.labels[i]: result.p_abnormal * float(p) for i, p in zip(abnormal, type_probs[0], strict=True)}
        )
        k = int(type_probs[0].argmax())
        top, top_probability = abnormal[k], float(type_probs[0, k])
        result.finding = "abnormal" if result.p_abnormal >= self.threshold else "normal"
        if result.finding == "abnormal":
            if self.type_rule.allows(self.labels[top], top_probability):
                result.malformation_type = self.labels[top]
                result.type_probability = top_probability
            else:
                result.type_note = TypeNote.NOT_DETERMINED.value
        t2 = time.perf_counter()
        result.timings_ms["classification"] = (t2 - t1) * 1000
        # The map explains what the node reports: the named type, else the abnormal finding as a whole
        # (the log-odds behind P(abnormal)), else the normal class.
        if result.malformation_type:
            result.heatmap_target = result.malformation_type
            score = class_score(forward.logits, top)
        elif result.finding == "abnormal":
            result.heatmap_target = "abnormal"
            score = log_odds_score(forward.logits, abnormal, self.normal_index)
        else:
            result.heatmap_target = self.labels[self.normal_index]
            score = class_score(forward.logits, self.normal_index)
        cam = forward.cam(score)
        result.heatmap = crop_box.to_source(cam, img01.shape)
        result.fused_rgb = draw_roi(fuse(display_rgb, result.heatmap, self.alpha), ellipse)
        result.timings_ms["gradcam"] = (time.perf_counter() - t2) * 1000
        result.analysed = True
        return result
