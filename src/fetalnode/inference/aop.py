"""Angle of progression (AoP) and head-symphysis distance (HSD) from pubic symphysis and fetal head masks.

The FH-PS-AOP 2023 challenge convention, as its organisers' evaluation computes it (``maskoffs/PS-FH-MICCAI23``,
``evaluation.py`` / ``ellipse.py``; re-implemented here, see docs/models.md):

1. Each structure: the largest external contour of its mask (OpenCV border following, every boundary pixel),
   simplified by Douglas-Peucker with a 1-pixel tolerance as a closed polygon, and OpenCV's least-squares
   ellipse fit to the polygon's vertices (at least six are needed).
2. The symphysis line is the major axis of the symphysis ellipse; the **vertex** is its right-most end
   (largest image x; the inferior apex in transperineal images oriented as PSFHS), the other end is
   ``ps_axis_end``.
3. From the vertex there are two tangents to the head ellipse; the AoP uses the one on the far side of the
   head: of the two, the one making the larger angle with the symphysis line (the head lies inside the angle).
4. AoP is the angle at the vertex between ``ps_axis_end`` and the tangent point, 0-180 degrees.

HSD: the distance from the vertex to the nearest point of the head contour (every boundary pixel).
Coordinates are source pixels, x right, y down, pixel centres at integers. OpenCV matters here: the same
masks fitted without the polygon step, or with scikit-image's contour and ellipse fits, give AoPs up to
19 degrees away from the organisers' (docs/models.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fetalnode.inference.ellipse import Ellipse

Point = tuple[float, float]

# Douglas-Peucker tolerance (pixels) and the fewest polygon vertices OpenCV's ellipse fit takes here.
POLYGON_TOLERANCE_PX = 1.0
MIN_POLYGON_VERTICES = 6


@dataclass(frozen=True)
class StructureFit:
    """One structure's largest contour, the polygon simplified from it, and the ellipse fitted to the polygon."""

    contour: np.ndarray  # (N, 2) float x, y: every boundary pixel, a closed polygon
    polygon: np.ndarray  # (M, 2) float x, y: the Douglas-Peucker vertices the ellipse is fitted to
    ellipse: Ellipse


@dataclass(frozen=True)
class LabourGeometry:
    """The AoP construction of one image; ``reason`` says why it could not be measured (then fields are ``None``)."""

    reason: str
    ps: StructureFit | None = None
    fh: StructureFit | None = None
    vertex: Point | None = None
    ps_axis_end: Point | None = None
    tangent_point: Point | None = None
    hsd_point: Point | None = None
    aop_deg: float | None = None
    hsd_px: float | None = None


def largest_contour(mask: np.ndarray) -> np.ndarray | None:
    """The largest (most boundary pixels) external contour of a binary mask as (N, 2) float x, y, or ``None``."""
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    best = max(contours, key=len)
    return np.asarray(best[:, 0, :], dtype=np.float64)


def ellipse_from_rotated_rect(rect: tuple[Sequence[float], Sequence[float], float]) -> Ellipse:
    """An OpenCV ``RotatedRect`` (centre, full side lengths, degrees of the first side from +x) as an Ellipse."""
    (cx, cy), (w, h), theta = rect
    if w >= h:
        a, b, angle = w / 2, h / 2, theta
    else:
        a, b, angle = h / 2, w / 2, theta + 90.0
    angle = (angle + 90.0) % 180.0 - 90.0  # [-90, 90)
    if angle == -90.0:
        angle = 90.0
    return Ellipse(cx=float(cx), cy=float(cy), a=float(a), b=float(b), angle_deg=float(angle))


def fit_structure(mask: np.ndarray) -> StructureFit | None:
    """Contour, simplified polygon and ellipse of a structure's mask (step 1 above); ``None`` when it has none."""
    contour = largest_contour(mask)
    if contour is None:
        return None
    polygon = cv2.approxPolyDP(contour.astype(np.int32)[:, None, :], POLYGON_TOLERANCE_PX, closed=True)
    if len(polygon) < MIN_POLYGON_VERTICES:
        return None
    ellipse = ellipse_from_rotated_rect(cv2.fitEllipse(polygon))
    if not (ellipse.a > 0 and ellipse.b > 0 and math.isfinite(ellipse.a) and math.isfinite(ellipse.b)):
        return None
    return StructureFit(contour=contour, polygon=np.asarray(polygon[:, 0, :], dtype=np.float64), ellipse=ellipse)


def symphysis_axis(ps: Ellipse) -> tuple[Point, Point]:
    """(vertex, other end) of the symphysis major axis: the vertex is the end with the larger x
    (a vertical axis: the upper end)."""
    ends = ps.axis_endpoints()[:2]
    first, second = (float(ends[0][0]), float(ends[0][1])), (float(ends[1][0]), float(ends[1][1]))
    if (first[0], -first[1]) >= (second[0], -second[1]):
        return first, second
    return second, first


def tangent_points(point: Point, ellipse: Ellipse) -> list[Point]:
    """The two points where the tangents from ``point`` touch ``ellipse`` (none when the point is inside it).

    In the ellipse's own frame scaled to a unit circle, the tangent points from ``q`` are at the angles
    ``atan2(q) ± acos(1 / |q|)``; they are mapped back to the image.
    """
    t = math.radians(ellipse.angle_deg)
    u = np.array([math.cos(t), math.sin(t)])
    v = np.array([-math.sin(t), math.cos(t)])
    d = np.array(point) - np.array([ellipse.cx, ellipse.cy])
    q = np.array([float(d @ u) / ellipse.a, float(d @ v) / ellipse.b])
    r = float(np.hypot(*q))
    if r <= 1.0:
        return []
    base, half = math.atan2(q[1], q[0]), math.acos(1.0 / r)
    out = []
    for s in (base + half, base - half):
        p = np.array([ellipse.cx, ellipse.cy]) + ellipse.a * math.cos(s) * u + ellipse.b * math.sin(s) * v
        out.append((float(p[0]), float(p[1])))
    return out


def angle_at(vertex: Point, a: Point, b: Point) -> float:
    """The angle a-vertex-b in degrees, 0-180."""
    x = np.array(a) - np.array(vertex)
    y = np.array(b) - np.array(vertex)
    cos = float(x @ y) / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-12)
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def nearest_point(point: Point, contour: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> tuple[float, Point]:
    """(distance, contour point) nearest ``point``; ``scale`` (x, y) multiplies the offsets (mm per pixel)."""
    d = (contour - np.array(point)) * np.array(scale)
    dist = np.hypot(d[:, 0], d[:, 1])
    i = int(np.argmin(dist))
    return float(dist[i]), (float(contour[i, 0]), float(contour[i, 1]))


def measure(ps_mask: np.ndarray, fh_mask: np.ndarray) -> LabourGeometry:
    """AoP and HSD of one image from its pubic symphysis and fetal head masks (the module's convention)."""
    ps = fit_structure(ps_mask)
    if ps is None:
        return LabourGeometry(reason="pubic symphysis not found")
    fh = fit_structure(fh_mask)
    if fh is None:
        return LabourGeometry(reason="fetal head not found", ps=ps)
    vertex, other = symphysis_axis(ps.ellipse)
    hsd_px, hsd_point = nearest_point(vertex, fh.contour)
    touches = tangent_points(vertex, fh.ellipse)
    if not touches:
        return LabourGeometry(
            reason="symphysis apex inside the fetal head outline (no tangent)",
            ps=ps,
            fh=fh,
            vertex=vertex,
            ps_axis_end=other,
            hsd_point=hsd_point,
            hsd_px=hsd_px,
        )
    angles = [angle_at(vertex, other, p) for p in touches]
    far = int(np.argmax(angles))
    return LabourGeometry(
        reason="",
        ps=ps,
        fh=fh,
        vertex=vertex,
        ps_axis_end=other,
        tangent_point=touches[far],
        hsd_point=hsd_point,
        aop_deg=angles[far],
        hsd_px=hsd_px,
    )


def measure_label_map(labels: np.ndarray, ps_label: int = 1, fh_label: int = 2) -> LabourGeometry:
    """:func:`measure` on a label map (PSFHS: 0 background, 1 pubic symphysis, 2 fetal head)."""
    return measure(labels == ps_label, labels == fh_label)
