"""Head ellipse from a segmentation probability map, and biometry in millimetres."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in source pixel coordinates (x right, y down; pixel centres at integers).

    ``a`` is the semi-major axis, ``b`` the semi-minor axis, ``angle_deg`` the angle of the
    major axis from +x (y down), in (-90, 90].
    """

    cx: float
    cy: float
    a: float
    b: float
    angle_deg: float

    def axis_endpoints(self) -> np.ndarray:
        """Major-axis end points then minor-axis end points, shape (4, 2) as (x, y)."""
        t = math.radians(self.angle_deg)
        ux, uy = math.cos(t), math.sin(t)
        vx, vy = -uy, ux
        return np.array(
            [
                [self.cx - self.a * ux, self.cy - self.a * uy],
                [self.cx + self.a * ux, self.cy + self.a * uy],
                [self.cx - self.b * vx, self.cy - self.b * vy],
                [self.cx + self.b * vx, self.cy + self.b * vy],
            ]
        )

    def calliper_endpoints(self, spacing_mm: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
        """(BPD, OFD) calliper end points, each (2, 2) as (x, y): the minor and the major axis, swapped
        when anisotropic pixels (``spacing_mm`` as (row, column)) make the minor axis the longer in mm."""
        ends = self.axis_endpoints()
        major, minor = ends[:2], ends[2:]
        if spacing_mm is not None and not _isotropic(spacing_mm):
            scale = np.array([spacing_mm[1], spacing_mm[0]])
            if np.linalg.norm((minor[1] - minor[0]) * scale) > np.linalg.norm((major[1] - major[0]) * scale):
                major, minor = minor, major
        return minor, major

    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounding box (x0, y0, x1, y1)."""
        t = math.radians(self.angle_deg)
        hw = math.sqrt((self.a * math.cos(t)) ** 2 + (self.b * math.sin(t)) ** 2)
        hh = math.sqrt((self.a * math.sin(t)) ** 2 + (self.b * math.cos(t)) ** 2)
        return (self.cx - hw, self.cy - hh, self.cx + hw, self.cy + hh)

    def outline(self, n: int = 3600) -> np.ndarray:
        """Points on the ellipse, shape (n, 2) as (x, y)."""
        s = np.linspace(0, 2 * np.pi, n, endpoint=False)
        t = math.radians(self.angle_deg)
        x = self.a * np.cos(s)
        y = self.b * np.sin(s)
        return np.stack(
            [self.cx + x * math.cos(t) - y * math.sin(t), self.cy + x * math.sin(t) + y * math.cos(t)], axis=1
        )


def _isotropic(spacing_mm: tuple[float, float]) -> bool:
    dy, dx = spacing_mm
    return abs(dx - dy) <= 0.01 * max(dx, dy)


def ramanujan_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation of an ellipse's perimeter."""
    h = ((a - b) / (a + b)) ** 2 if a + b > 0 else 0.0
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def bounding_window(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of ``mask``'s true pixels grown by ``margin`` on each side, clipped to the array
    (``mask`` must have a true pixel)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return (
        slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, mask.shape[0])),
        slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, mask.shape[1])),
    )


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (background 4-connected to the border stays background), the
    same pixels, by labelling the background once inside the mask's bounding box grown by one pixel
    rather than by scipy's repeated dilations of the whole frame: the grown box's outer ring lies outside
    the mask, so a background pixel of the box reaches the frame's border exactly when it reaches the box's."""
    out = np.array(mask, dtype=bool)
    if not out.any():
        return out
    window = bounding_window(out, 1)
    background, n = ndimage.label(~out[window])
    if n:
        edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        holes = ~np.isin(background, edge) & (background > 0)
        out[window] |= holes
    return out


def head_region(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The segmented head: the largest connected region of ``prob >= threshold``, holes filled
    (bool, the shape of ``prob``; all false when nothing is segmented)."""
    mask = prob >= threshold
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return fill_holes(mask)


def fit_ellipse(prob: np.ndarray, threshold: float = 0.5, mask: np.ndarray | None = None) -> Ellipse | None:
    """Fit an ellipse to the head region of ``prob`` (:func:`head_region`, or ``mask`` when given).

    Uses the region's intensity-weighted second moments: for a filled ellipse the covariance
    eigenvalues are ``a²/4`` and ``b²/4``. Weighting by the probability near the boundary gives
    sub-pixel accuracy. Returns ``None`` when nothing is segmented.
    """
    if mask is None:
        mask = head_region(prob, threshold)
    if not mask.any():
        return None
    # The weights are made in the mask's bounding box grown beyond the dilation's reach (the same pixels, in
    # the same order, as over the whole frame), and summed over the whole frame, as numpy's pairwise sum of
    # the frame adds them.
    window = bounding_window(mask, 3)
    inner = mask[window]
    region = ndimage.binary_dilation(inner, iterations=2)
    w = np.where(region, np.clip(prob[window], 0.0, 1.0), 0.0)
    w[inner] = np.maximum(w[inner], 0.5)
    frame = np.zeros(prob.shape, dtype=w.dtype)
    frame[window] = w
    total = float(frame.sum())
    if total < 4.0:
        return None
    ys, xs = np.nonzero(w)
    ww = w[ys, xs]
    ys, xs = ys + window[0].start, xs + window[1].start
    cx = float((ww * xs).sum() / total)
    cy = float((ww * ys).sum() / total)
    dx, dy = xs - cx, ys - cy
    cov = np.array([[(ww * dx * dx).sum(), (ww * dx * dy).sum()], [(ww * dx * dy).sum(), (ww * dy * dy).sum()]]) / total
    evals, evecs = np.linalg.eigh(cov)
    lam_minor, lam_major = max(float(evals[0]), 0.0), max(float(evals[1]), 0.0)
    vx, vy = evecs[:, 1]
    angle = math.degrees(math.atan2(vy, vx))
    if angle <= -90:
        angle += 180
    elif angle > 90:
        angle -= 180
    # +1/12 px² is the variance of a unit pixel: remove it to measure the continuous shape.
    a = 2 * math.sqrt(max(lam_major - 1 / 12, 0.0))
    b = 2 * math.sqrt(max(lam_minor - 1 / 12, 0.0))
    return Ellipse(cx=cx, cy=cy, a=a, b=b, angle_deg=angle)


@dataclass(frozen=True)
class Biometry:
    """Head biometry in millimetres (outer-to-outer axes of the fitted skull ellipse)."""

    hc_mm: float
    bpd_mm: float
    ofd_mm: float


def biometry(ellipse: Ellipse, spacing_mm: tuple[float, float]) -> Biometry:
    """HC (Ramanujan for isotropic pixels, polygon length otherwise), BPD and OFD in mm.

    ``spacing_mm`` is (row spacing, column spacing) as in DICOM Pixel Spacing.
    """
    dy, dx = spacing_mm
    scale = np.array([dx, dy])
    bpd_ends, ofd_ends = ellipse.calliper_endpoints(spacing_mm)
    ofd = float(np.linalg.norm((ofd_ends[1] - ofd_ends[0]) * scale))
    bpd = float(np.linalg.norm((bpd_ends[1] - bpd_ends[0]) * scale))
    if _isotropic(spacing_mm):
        hc = ramanujan_perimeter(ellipse.a, ellipse.b) * (dx + dy) / 2
    else:
        pts = ellipse.outline() * scale
        hc = float(np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1).sum())
    return Biometry(hc_mm=hc, bpd_mm=bpd, ofd_mm=ofd)
