import math

import numpy as np
import pytest
from scipy import ndimage

from benchmarks.inference import agreement_every_pixel  # the check as it was before issue 20
from fetalnode.inference.ellipse import (
    Ellipse,
    biometry,
    fill_holes,
    fit_ellipse,
    head_region,
    ramanujan_perimeter,
)
from fetalnode.inference.preprocess import letterbox, roi_crop

pytestmark = pytest.mark.unit


def raster(e: Ellipse, shape: tuple[int, int], supersample: int = 4) -> np.ndarray:
    """Area-weighted rasterisation of an ellipse (fraction of each pixel inside)."""
    h, w = shape
    s = supersample
    yy, xx = np.mgrid[0 : h * s, 0 : w * s]
    xx = (xx + 0.5) / s - 0.5
    yy = (yy + 0.5) / s - 0.5
    t = math.radians(e.angle_deg)
    dx, dy = xx - e.cx, yy - e.cy
    u = (dx * math.cos(t) + dy * math.sin(t)) / e.a
    v = (-dx * math.sin(t) + dy * math.cos(t)) / e.b
    inside = (u * u + v * v <= 1).astype(np.float32)
    return inside.reshape(h, s, w, s).mean(axis=(1, 3))


@pytest.mark.parametrize("angle", [0.0, 30.0, -60.0, 89.0])
def test_fit_recovers_ellipse_subpixel(angle: float) -> None:
    truth = Ellipse(cx=150.3, cy=110.7, a=90.0, b=65.0, angle_deg=angle)
    fit = fit_ellipse(raster(truth, (240, 320)))
    assert fit is not None
    assert abs(fit.cx - truth.cx) < 0.2 and abs(fit.cy - truth.cy) < 0.2
    assert abs(fit.a - truth.a) < 0.5 and abs(fit.b - truth.b) < 0.5
    assert min(abs(fit.angle_deg - angle), 180 - abs(fit.angle_deg - angle)) < 1.0


def test_fit_ignores_small_spurious_blobs_and_empty() -> None:
    prob = raster(Ellipse(100, 100, 60, 40, 10), (200, 220))
    prob[5:9, 200:205] = 1.0
    fit = fit_ellipse(prob)
    assert fit is not None and abs(fit.cx - 100) < 0.3
    assert fit_ellipse(np.zeros((50, 50))) is None


def test_head_region_is_the_largest_region_with_holes_filled() -> None:
    prob = raster(Ellipse(100, 100, 60, 40, 10), (200, 220))
    prob[5:9, 200:205] = 1.0
    prob[95:105, 95:105] = 0.0
    region = head_region(prob)
    assert region.dtype == bool and region.shape == prob.shape
    assert not region[5:9, 200:205].any() and region[95:105, 95:105].all()
    assert not (region & (prob < 0.5) & ~np.pad(np.ones((10, 10), bool), ((95, 95), (95, 115)))).any()
    assert fit_ellipse(prob, mask=region) == fit_ellipse(prob)
    assert not head_region(np.zeros((50, 50))).any()


def test_fill_holes_is_scipys_on_random_masks() -> None:
    """The bounded fill (one labelling of the background in the mask's box) gives scipy's pixels, masks
    touching the frame's border and masks with holes in holes included."""
    rng = np.random.default_rng(7)
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(3, 60, 2))
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.9)
        if rng.random() < 0.5:
            mask = ndimage.binary_opening(mask)
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8], ring[2:7, 2:7], ring[3:6, 3:6], ring[4, 4] = True, False, True, False
    assert fill_holes(ring).all() == ndimage.binary_fill_holes(ring).all() and fill_holes(ring)[1:8, 1:8].all()


def whole_frame_fit(prob: np.ndarray) -> tuple[float, float, float, float, float]:
    """fit_ellipse's moments computed over the whole frame (how it was written before its bounding box)."""
    mask = head_region(prob)
    region = ndimage.binary_dilation(mask, iterations=2)
    w = np.where(region, np.clip(prob, 0.0, 1.0), 0.0)
    w[mask] = np.maximum(w[mask], 0.5)
    total = float(w.sum())
    ys, xs = np.nonzero(w)
    ww = w[ys, xs]
    cx, cy = float((ww * xs).sum() / total), float((ww * ys).sum() / total)
    dx, dy = xs - cx, ys - cy
    return cx, cy, float((ww * dx * dx).sum()), float((ww * dx * dy).sum()), float((ww * dy * dy).sum())


@pytest.mark.parametrize("where", ["inside", "touching the border"])
def test_fit_in_the_bounding_box_equals_the_whole_frame_bit_for_bit(where: str) -> None:
    truth = Ellipse(cx=60.4 if where == "inside" else 8.0, cy=50.2, a=40.0, b=28.0, angle_deg=25.0)
    rng = np.random.default_rng(3)
    prob = np.clip(raster(truth, (120, 160)) + rng.normal(0, 0.05, (120, 160)), 0, 1).astype(np.float32)
    fit = fit_ellipse(prob)
    assert fit is not None
    cx, cy, *_ = whole_frame_fit(prob)
    assert (fit.cx, fit.cy) == (cx, cy)


def test_biometry_isotropic_and_anisotropic() -> None:
    e = Ellipse(0, 0, 100, 80, 0)
    b = biometry(e, (0.5, 0.5))
    assert b.ofd_mm == pytest.approx(100.0)
    assert b.bpd_mm == pytest.approx(80.0)
    assert b.hc_mm == pytest.approx(ramanujan_perimeter(50, 40), rel=1e-9)
    # A circle of radius 100 px with 0.5 mm columns and 0.25 mm rows is a 50 x 25 mm ellipse.
    c = biometry(Ellipse(0, 0, 100, 100, 0), (0.25, 0.5))
    assert c.hc_mm == pytest.approx(ramanujan_perimeter(50, 25), rel=1e-4)
    assert (c.ofd_mm, c.bpd_mm) == pytest.approx((100.0, 50.0))


def test_letterbox_round_trip_and_roi_mapping() -> None:
    img = np.random.default_rng(0).random((432, 640)).astype(np.float32)
    canvas, box = letterbox(img, (224, 320))
    assert canvas.shape == (224, 320)
    assert box.content_hw == (216, 320)
    assert np.all(canvas[216:] == 0)
    back = box.to_source(canvas)
    assert back.shape == img.shape
    crop, rc = roi_crop(img, (100.0, 50.0, 300.0, 250.0), 64, 0.1)
    assert crop.shape == (64, 64)
    full = rc.to_source(np.ones((64, 64), np.float32), img.shape)
    assert full[150, 200] == pytest.approx(1.0) and full[400, 600] == 0.0


@pytest.mark.parametrize(
    "ellipse, spacing, swapped",
    [
        (Ellipse(120.2, 80.7, 60.0, 45.0, 30.0), (0.2, 0.2), False),
        (Ellipse(120.2, 80.7, 60.0, 45.0, 30.0), None, False),
        # Major axis along rows (0.1 mm), minor along columns (0.3 mm): the minor axis is the longer in mm.
        (Ellipse(120.2, 80.7, 60.0, 45.0, 90.0), (0.1, 0.3), True),
    ],
)
def test_sr_head_geometry(ellipse: Ellipse, spacing: tuple[float, float] | None, swapped: bool) -> None:
    """The SR's graphics: ELLIPSE = axis end points, a closed 64-point contour on the ellipse, callipers on the
    axes biometry measures; all (column, row) with (0, 0) at the top left corner of the top left pixel."""
    from fetalnode.applications.fetal_head.report import CONTOUR_POINTS, head_geometry

    g = head_geometry(ellipse, spacing)
    ends = ellipse.axis_endpoints() + 0.5
    assert np.array_equal(g.ellipse, ends)
    major, minor = ends[:2], ends[2:]
    assert np.array_equal(g.bpd, major if swapped else minor)
    assert np.array_equal(g.ofd, minor if swapped else major)
    assert g.contour.shape == (CONTOUR_POINTS + 1, 2) and np.array_equal(g.contour[0], g.contour[-1])
    t = math.radians(ellipse.angle_deg)
    dx, dy = g.contour[:, 0] - 0.5 - ellipse.cx, g.contour[:, 1] - 0.5 - ellipse.cy
    u = (dx * math.cos(t) + dy * math.sin(t)) / ellipse.a
    v = (-dx * math.sin(t) + dy * math.cos(t)) / ellipse.b
    assert np.allclose(u * u + v * v, 1.0)
    if spacing is not None:
        scale = np.array([spacing[1], spacing[0]])
        bio = biometry(ellipse, spacing)
        assert np.linalg.norm((g.bpd[1] - g.bpd[0]) * scale) == pytest.approx(bio.bpd_mm)
        assert np.linalg.norm((g.ofd[1] - g.ofd[0]) * scale) == pytest.approx(bio.ofd_mm)
        assert bio.ofd_mm >= bio.bpd_mm


def test_ellipse_agreement_on_its_box_equals_every_pixel() -> None:
    """Same IoU, confidence and area fraction, bit for bit, for ellipses inside, across and outside the
    image edge, any angle, with mask pixels away from the ellipse."""
    from fetalnode.inference.analyzer import ellipse_agreement

    rng = np.random.default_rng(7)
    for _ in range(200):
        h, w = rng.integers(20, 120, 2)
        prob = rng.random((h, w), dtype=np.float32)
        e = Ellipse(
            float(rng.uniform(-30, w + 30)),
            float(rng.uniform(-30, h + 30)),
            float(rng.uniform(4, 60)),
            float(rng.uniform(0.5, 60)),
            float(rng.uniform(-180, 180)),
        )
        assert ellipse_agreement(prob, e) == agreement_every_pixel(prob, e), e
