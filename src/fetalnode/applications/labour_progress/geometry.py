"""The labour-progress graphics in image pixel units, shared by the SR, the Presentation State and the
Secondary Capture.

:class:`~fetalnode.inference.labour.LabourResult` points are analysis coordinates (x right, y down, pixel
centres at integers). SCOORD Graphic Data (PS3.3 C.18.6.1.1) and PIXEL graphic annotations (C.10.5.1.2) put
(0.0, 0.0) at the top left corner of the top left pixel, hence ``+ 0.5``. Nothing is written outside the
image: a line whose far end lies outside (the tangent point on a head ellipse that runs past the image
edge) is shortened along its own direction to the border, so the angle it makes is unchanged; contour
points are clipped to the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fetalnode.errors import EncodingError
from fetalnode.inference.aop import Point
from fetalnode.inference.labour import LabourResult

PIXEL_CENTRE = 0.5
MAX_CONTOUR_POINTS = 128  # a closed contour is written with at most this many points (+ the first repeated)


@dataclass(frozen=True)
class LabourGraphics:
    """The measured lines and the two outlines, (column, row) in image pixel units."""

    angle: np.ndarray  # (3, 2) open: symphysis axis end, vertex, tangent point (the AoP as drawn)
    symphysis_axis: np.ndarray  # (2, 2) open: symphysis axis end -> vertex
    tangent: np.ndarray  # (2, 2) open: vertex -> tangent point on the fetal head
    hsd: np.ndarray | None  # (2, 2) open: vertex -> nearest point of the fetal head
    ps_contour: np.ndarray | None  # closed, first point repeated at the end
    fh_contour: np.ndarray | None


def _pixel(point: Point, rows: int, columns: int) -> np.ndarray:
    p = np.asarray(point, dtype=np.float64) + PIXEL_CENTRE
    return np.array([min(max(p[0], 0.0), columns), min(max(p[1], 0.0), rows)])


def _towards(anchor: np.ndarray, point: Point, rows: int, columns: int) -> np.ndarray:
    """``point`` (analysis coordinates) in pixel units, moved along the line from ``anchor`` to the image border
    if it lies outside."""
    target = np.asarray(point, dtype=np.float64) + PIXEL_CENTRE
    d = target - anchor
    t = 1.0
    for k, limit in ((0, float(columns)), (1, float(rows))):
        if d[k] > 0 and target[k] > limit:
            t = min(t, (limit - anchor[k]) / d[k])
        elif d[k] < 0 and target[k] < 0:
            t = min(t, -anchor[k] / d[k])
    return np.asarray(anchor + max(t, 0.0) * d)


def closed_contour(points: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """An (N, 2) polygon as a closed POLYLINE: evenly subsampled to :data:`MAX_CONTOUR_POINTS`, clipped
    to the image, the first point repeated at the end."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) < 3:
        raise EncodingError(f"a contour needs at least 3 points, got {len(pts)}")
    if len(pts) > MAX_CONTOUR_POINTS:
        pts = pts[np.linspace(0, len(pts), MAX_CONTOUR_POINTS, endpoint=False).astype(int)]
    pts = pts + PIXEL_CENTRE
    pts = np.column_stack([np.clip(pts[:, 0], 0.0, columns), np.clip(pts[:, 1], 0.0, rows)])
    return np.vstack([pts, pts[:1]])


def labour_graphics(result: LabourResult, rows: int, columns: int) -> LabourGraphics:
    """The graphics of an analysed result; :class:`EncodingError` if it lacks the points of its angle."""
    g = result.geometry
    if g.vertex is None or g.ps_axis_end is None or g.tangent_point is None:
        raise EncodingError("an analysed labour result needs the vertex, the symphysis axis end and the tangent point")
    vertex = _pixel(g.vertex, rows, columns)
    axis_end = _towards(vertex, g.ps_axis_end, rows, columns)
    tangent = _towards(vertex, g.tangent_point, rows, columns)
    hsd = None if g.hsd_point is None else np.vstack([vertex, _towards(vertex, g.hsd_point, rows, columns)])
    return LabourGraphics(
        angle=np.vstack([axis_end, vertex, tangent]),
        symphysis_axis=np.vstack([axis_end, vertex]),
        tangent=np.vstack([vertex, tangent]),
        hsd=hsd,
        ps_contour=None if g.ps is None else closed_contour(g.ps.contour, rows, columns),
        fh_contour=None if g.fh is None else closed_contour(g.fh.contour, rows, columns),
    )


def angle_deg(points: np.ndarray) -> float:
    """The angle at the middle point of a 3-point polyline, in degrees (0-180)."""
    u, w = points[0] - points[1], points[2] - points[1]
    cos = float(np.dot(u, w) / (np.linalg.norm(u) * np.linalg.norm(w)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def hsd_text(result: LabourResult) -> str:
    """The distance as shown: ``HSD 7.1 mm``, else ``HSD 23.4 px``, else empty."""
    if result.hsd_mm is not None:
        return f"HSD {result.hsd_mm:.1f} mm"
    if result.geometry.hsd_px is not None:
        return f"HSD {result.geometry.hsd_px:.1f} px"
    return ""


def not_analysed_reason(result: LabourResult) -> str:
    """Why the image was not measured, without a leading "not analysed:" (every writer puts its own)."""
    reason = result.reason.strip()
    if reason.lower().startswith("not analysed"):
        reason = reason[len("not analysed") :].lstrip(" :-")
    return reason or "pubic symphysis or fetal head not found"
