"""The angle of progression and head-symphysis distance against PSFHS's own reference values.

``aop_deg`` / ``hsd_px`` in PSFHS's labels.csv were computed from the masks with the FH-PS-AOP 2023
organisers' code (OpenCV); the same masks must give the same angle within 0.5 degrees here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalnode.inference.aop import (
    angle_at,
    ellipse_from_rotated_rect,
    measure,
    measure_label_map,
    symphysis_axis,
    tangent_points,
)
from fetalnode.inference.ellipse import Ellipse
from fetalnode.training.data import read_labels

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "tests" / "data" / "psfhs_mini"
SHARED = ROOT.parent / "shared" / "datasets" / "psfhs"


def agreement(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """|AoP - aop_deg| and |HSD - hsd_px| of every row of a PSFHS-format folder."""
    d_aop, d_hsd = [], []
    for row in read_labels(folder):
        with Image.open(folder / row["mask_filename"]) as im:
            geometry = measure_label_map(np.asarray(im))
        assert geometry.aop_deg is not None and geometry.hsd_px is not None, (row["filename"], geometry.reason)
        d_aop.append(abs(geometry.aop_deg - float(row["aop_deg"])))
        d_hsd.append(abs(geometry.hsd_px - float(row["hsd_px"])))
    return np.array(d_aop), np.array(d_hsd)


def test_bundled_masks_give_the_reference_aop_and_hsd() -> None:
    d_aop, d_hsd = agreement(MINI)
    assert len(d_aop) == 12
    assert d_aop.max() <= 0.5, d_aop
    assert d_hsd.max() <= 0.5, d_hsd


@pytest.mark.skipif(not (SHARED / "labels.csv").is_file(), reason="../shared/datasets/psfhs is not on this machine")
def test_every_psfhs_mask_gives_the_reference_aop_and_hsd() -> None:
    d_aop, d_hsd = agreement(SHARED)
    within = float((d_aop <= 0.5).mean())
    print(f"AoP: {within:.4f} of {len(d_aop)} within 0.5 deg, max {d_aop.max():.4f}; HSD max {d_hsd.max():.4f} px")
    assert within == 1.0, f"{within:.4f} within 0.5 deg, max diff {d_aop.max():.3f}"
    assert d_hsd.max() <= 0.5


def disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def bar(shape: tuple[int, int], start: tuple[float, float], end: tuple[float, float], half_width: float) -> np.ndarray:
    """A filled ellipse whose major axis runs from ``start`` to ``end``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cx, cy = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    a = math.dist(start, end) / 2
    t = math.atan2(end[1] - start[1], end[0] - start[0])
    u = ((xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)) / a
    v = (-(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)) / half_width
    return u * u + v * v <= 1


def test_synthetic_aop_matches_the_construction() -> None:
    """A symphysis ellipse from (40, 40) to (120, 70) and a round head: AoP = angle to the centre + asin(r / d)."""
    shape = (256, 256)
    start, apex = (40.0, 40.0), (120.0, 70.0)
    centre, r = (150.0, 170.0), 60.0
    g = measure(bar(shape, start, apex, 12.0), disc(shape, *centre, r))
    assert g.reason == "" and g.vertex is not None and g.aop_deg is not None and g.hsd_px is not None
    assert math.dist(g.vertex, apex) < 1.5
    d = math.dist(apex, centre)
    expected = angle_at(apex, start, centre) + math.degrees(math.asin(r / d))
    assert g.aop_deg == pytest.approx(expected, abs=1.0)
    assert g.hsd_px == pytest.approx(d - r, abs=1.0)
    # The tangent point is on the head circle, and the tangent is perpendicular to the radius there.
    assert g.tangent_point is not None
    assert math.dist(g.tangent_point, centre) == pytest.approx(r, abs=1.0)
    radius = np.subtract(g.tangent_point, centre)
    assert (
        abs(float(radius @ np.subtract(g.tangent_point, g.vertex))) / (r * math.dist(g.vertex, g.tangent_point)) < 0.03
    )


def test_tangent_points_touch_the_ellipse() -> None:
    e = Ellipse(cx=100.0, cy=80.0, a=50.0, b=30.0, angle_deg=25.0)
    p = (10.0, 190.0)
    touches = tangent_points(p, e)
    assert len(touches) == 2
    t = math.radians(e.angle_deg)
    for x, y in touches:
        dx, dy = x - e.cx, y - e.cy
        u = (dx * math.cos(t) + dy * math.sin(t)) / e.a
        v = (-dx * math.sin(t) + dy * math.cos(t)) / e.b
        assert u * u + v * v == pytest.approx(1.0, abs=1e-9)
        # The normal of the ellipse at the point is perpendicular to the line from p.
        nx = u / e.a * math.cos(t) - v / e.b * math.sin(t)
        ny = u / e.a * math.sin(t) + v / e.b * math.cos(t)
        assert abs(nx * (x - p[0]) + ny * (y - p[1])) < 1e-9
    assert tangent_points((e.cx + 5, e.cy), e) == []


def test_vertex_is_the_right_most_end_and_opencv_angles_map_to_the_ellipse() -> None:
    vertex, other = symphysis_axis(Ellipse(50.0, 50.0, 20.0, 5.0, -30.0))
    assert vertex[0] > other[0]
    vertex, other = symphysis_axis(Ellipse(50.0, 50.0, 20.0, 5.0, 90.0))
    assert vertex == pytest.approx((50.0, 30.0)) and other == pytest.approx((50.0, 70.0))
    # OpenCV's fitEllipse answers (width <= height, angle of the width side); either side order is accepted.
    e = ellipse_from_rotated_rect(((10.0, 20.0), (8.0, 30.0), 120.0))
    assert (e.a, e.b) == (15.0, 4.0) and e.angle_deg == pytest.approx(30.0)
    assert ellipse_from_rotated_rect(((10.0, 20.0), (30.0, 8.0), 30.0)) == e
    assert ellipse_from_rotated_rect(((0.0, 0.0), (8.0, 30.0), 0.0)).angle_deg == 90.0


def test_missing_or_degenerate_structures_give_a_reason() -> None:
    shape = (128, 128)
    head = disc(shape, 80, 80, 30)
    assert measure(np.zeros(shape, bool), head).reason == "pubic symphysis not found"
    ps = bar(shape, (10.0, 10.0), (40.0, 20.0), 5.0)
    no_head = measure(ps, np.zeros(shape, bool))
    assert no_head.reason == "fetal head not found" and no_head.aop_deg is None
    tiny = np.zeros(shape, bool)
    tiny[5:7, 5:7] = True  # a contour too small for a six-vertex polygon
    assert measure(tiny, head).reason == "pubic symphysis not found"
    inside = measure(bar(shape, (60.0, 70.0), (90.0, 80.0), 4.0), disc(shape, 80, 80, 40))
    assert inside.aop_deg is None and "inside the fetal head" in inside.reason
    assert inside.hsd_px is not None
