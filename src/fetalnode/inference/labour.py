"""Labour progress (intrapartum transperineal ultrasound): what the application reports for one image.

The result contract between the ``labour-progress`` application and its output writers. Geometry
(angle of progression, head-symphysis distance) follows the FH-PS-AOP 2023 challenge convention;
see :mod:`fetalnode.inference.aop` for how each point is found. Coordinates are source pixels
(x right, y down), as in :class:`~fetalnode.inference.ellipse.Ellipse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fetalnode.inference.aop import LabourGeometry


@dataclass
class LabourResult:
    """Angle of progression and head-symphysis distance of one transperineal image.

    ``analysed`` is false (with ``reason``) when the structures were not found well enough to measure.
    ``geometry`` is the AoP construction (:class:`~fetalnode.inference.aop.LabourGeometry`: both
    structures' contours and ellipses, the vertex at the inferior apex of the symphysis, the tangent
    point, the nearest head point, AoP and HSD in pixels); ``hsd_mm`` is the HSD where the image is calibrated.
    """

    analysed: bool
    reason: str
    seg_model: tuple[str, str]
    ps_mask: np.ndarray | None = None
    fh_mask: np.ndarray | None = None
    geometry: LabourGeometry = field(default_factory=lambda: LabourGeometry(reason="not measured"))
    hsd_mm: float | None = None
    measurement_note: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "analysed": self.analysed,
            "reason": self.reason,
            "aop_deg": round(g.aop_deg, 1) if (g := self.geometry).aop_deg is not None else None,
            "hsd_px": round(g.hsd_px, 1) if g.hsd_px is not None else None,
            "hsd_mm": round(self.hsd_mm, 1) if self.hsd_mm is not None else None,
            "measurement_note": self.measurement_note,
            "models": {"segmentation": "/".join(self.seg_model)},
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
