"""A fixed head for the output tests: the ``fetal-head`` application's answer with values the test chooses.

:class:`FixedHead` answers as the ``fetal-head`` application does (it decodes the received image as every
application does, ``intake.decode_for_analysis``, and fills an
:class:`~fetalnode.inference.AnalysisResult` the way the analyser does), but the head, the finding and the
probabilities are set by the test instead of the models: an ellipse at fixed fractions of the frame, its
mask and a saliency map computed from it, so that an output's bytes depend on the writers and the image
only, never on CPU torch arithmetic (which may differ in the last bits from one machine to another).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis
from fetalnode.inference import AnalysisResult
from fetalnode.inference.analyzer import NOT_A_HEAD
from fetalnode.inference.ellipse import Ellipse, biometry
from fetalnode.inference.saliency import draw_roi, fuse
from fetalnode.inference.view import ViewPrediction
from fetalnode.intake import DecodedImage, decode_for_analysis
from fetalnode.vocab import TypeNote, View

APPLICATION = "fetal-head"
SEG_MODEL = ("hc18-headseg-fixed", "0.0.0-test")
CLS_MODEL = ("fba-classifier-fixed", "0.0.0-test")
VIEW_MODEL = ("fetal-view-fixed", "0.0.0-test")


def fixed_ellipse(rows: int, columns: int) -> Ellipse:
    """A head in the middle of the frame, 60% of its smaller side long, at 17 degrees."""
    side = min(rows, columns)
    return Ellipse(cx=columns / 2 + 0.25, cy=rows * 0.52, a=0.3 * side, b=0.24 * side, angle_deg=17.0)


def _inside(ellipse: Ellipse, rows: int, columns: int) -> np.ndarray:
    """(x' / a)^2 + (y' / b)^2 of each pixel centre, in the ellipse's own axes."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    t = math.radians(ellipse.angle_deg)
    dx, dy = x - ellipse.cx, y - ellipse.cy
    u, v = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
    return np.asarray((u / ellipse.a) ** 2 + (v / ellipse.b) ** 2)


def fixed_result(
    decoded: DecodedImage,
    *,
    finding: str = "normal",
    p_abnormal: float = 0.08,
    malformation_type: str = "",
    type_probability: float = 0.0,
    found: bool = True,
) -> AnalysisResult:
    """What the analyser would answer for this frame if its models saw :func:`fixed_ellipse` and these
    probabilities (``found`` false: no head passed the gate)."""
    result = AnalysisResult(analysed=False, reason="", seg_model=SEG_MODEL, cls_model=CLS_MODEL, head_score=0.93)
    if not found:
        result.reason = f"{NOT_A_HEAD} (head score below the gate)"
        result.fused_rgb = decoded.display_rgb.copy()
        return result
    rows, columns = decoded.gray.shape
    ellipse = fixed_ellipse(rows, columns)
    inside = _inside(ellipse, rows, columns)
    result.ellipse, result.head_mask = ellipse, inside <= 1.0
    if decoded.spacing_mm is not None:
        result.biometry = biometry(ellipse, decoded.spacing_mm)
    else:
        result.measurement_note = decoded.spacing_note or "image has no physical calibration"
    result.p_abnormal, result.finding = p_abnormal, finding
    if finding == "abnormal":
        if malformation_type:
            result.malformation_type, result.type_probability = malformation_type, type_probability
        else:
            result.type_note = TypeNote.NOT_DETERMINED.value
    result.heatmap_target = malformation_type or ("abnormal" if finding == "abnormal" else "normal")
    result.heatmap = np.clip(1.0 - inside, 0.0, 1.0)
    result.fused_rgb = draw_roi(fuse(decoded.display_rgb, result.heatmap, 0.5), ellipse)
    result.analysed = True
    return result


@dataclass
class FixedHead:
    """Stands in for the ``fetal-head`` application: the fixed head of :func:`fixed_result` on every image
    (``routed``: as the view router answers, with its view line and the view model among the models)."""

    finding: str = "normal"
    p_abnormal: float = 0.08
    malformation_type: str = ""
    type_probability: float = 0.0
    found: bool = True
    routed: bool = False
    name: str = APPLICATION
    applications: tuple[str, ...] = (APPLICATION,)
    answers: list[Analysis] = field(default_factory=list)

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        decoded = decoded or decode_for_analysis(ds, 40_000_000, 2000)
        result = fixed_result(
            decoded,
            finding=self.finding,
            p_abnormal=self.p_abnormal,
            malformation_type=self.malformation_type,
            type_probability=self.type_probability,
            found=self.found,
        )
        analysis = Analysis(APPLICATION, result, decoded, (SEG_MODEL, CLS_MODEL))
        if self.routed:
            analysis = Analysis(
                APPLICATION, result, decoded, (SEG_MODEL, CLS_MODEL, VIEW_MODEL), view=view(View.AXIAL_FETAL_HEAD)
            )
        self.answers.append(analysis)
        return analysis

    def bundle_paths(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, str]:
        return {"segmentation": " ".join(SEG_MODEL), "classifier": " ".join(CLS_MODEL)}


def view(label: View, probability: float = 0.87) -> ViewPrediction:
    """The view model's answer ``label`` with ``probability`` (the rest on "other fetal plane")."""
    rest = View.OTHER_FETAL_PLANE if label is not View.OTHER_FETAL_PLANE else View.NOT_FETAL
    return ViewPrediction(
        label, probability, label, VIEW_MODEL, {str(label): probability, str(rest): round(1 - probability, 6)}
    )


def no_application(ds: Dataset) -> Analysis:
    """The view router's answer for an image whose view has no application (another fetal plane)."""
    from fetalnode.applications.view_router import NAME
    from fetalnode.applications.view_router.result import NoApplication

    decoded = decode_for_analysis(ds, 40_000_000, 2000)
    result = NoApplication.of(View.OTHER_FETAL_PLANE, False, VIEW_MODEL, decoded.display_rgb.copy())
    return Analysis(NAME, result, decoded, (VIEW_MODEL,), view=view(View.OTHER_FETAL_PLANE))
