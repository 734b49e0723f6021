"""Labour progress (intrapartum transperineal ultrasound): what the application reports for one image.

The result contract between the ``labour-progress`` application and its output writers. Geometry
(angle of progression, head-symphysis distance) follows the FH-PS-AOP 2023 challenge convention;
see :mod:`fetalnode.inference.aop` for how each point is found. Coordinates are source pixels
(x right, y down), as in :class:`~fetalnode.inference.ellipse.Ellipse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fetalnode.inference.ellipse import Ellipse

Point = tuple[float, float]


@dataclass
class LabourResult:
    """Angle of progression and head-symphysis distance of one transperineal image.

    ``analysed`` is false (with ``reason``) when the structures were not found well enough to measure.
    ``vertex`` is the inferior apex of the pubic symphysis (the AoP vertex); ``ps_axis_end`` the other end of
    the symphysis major axis; ``tangent_point`` where the line from the vertex touches the far side of the
    head ellipse; ``hsd_point`` the head-contour point nearest the vertex.
    """

    analysed: bool
    reason: str
    seg_model: tuple[str, str]
    ps_mask: np.ndarray | None = None
    fh_mask: np.ndarray | None = None
    ps_ellipse: Ellipse | None = None
    fh_ellipse: Ellipse | None = None
    ps_contour: np.ndarray | None = None  # (N, 2) x, y, closed polygon
    fh_contour: np.ndarray | None = None
    vertex: Point | None = None
    ps_axis_end: Point | None = None
    tangent_point: Point | None = None
    hsd_point: Point | None = None
    aop_deg: float | None = None
    hsd_px: float | None = None
    hsd_mm: float | None = None
    measurement_note: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "analysed": self.analysed,
            "reason": self.reason,
            "aop_deg": round(self.aop_deg, 1) if self.aop_deg is not None else None,
            "hsd_px": round(self.hsd_px, 1) if self.hsd_px is not None else None,
            "hsd_mm": round(self.hsd_mm, 1) if self.hsd_mm is not None else None,
            "measurement_note": self.measurement_note,
            "models": {"segmentation": "/".join(self.seg_model)},
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
