"""Image preparation shared by training and inference (one code path for both)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fetalnode.errors import InferenceError


def to_unit_range(gray: np.ndarray) -> np.ndarray:
    """Scale a grayscale image to [0, 1] using its 0.5th and 99.5th percentiles."""
    img = gray.astype(np.float32, copy=False)
    lo, hi = np.percentile(img, (0.5, 99.5))
    if hi - lo < 1e-6:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def frame01(gray: np.ndarray, img01: np.ndarray | None = None) -> np.ndarray:
    """A frame the models take, scaled by :func:`to_unit_range` (``img01``: that scaling, when the caller
    has it already); :class:`InferenceError` unless it is 2D and at least 16x16 pixels."""
    if gray.ndim != 2 or min(gray.shape) < 16:
        raise InferenceError(f"expected a 2D image of at least 16x16 pixels, got shape {gray.shape}")
    return to_unit_range(gray) if img01 is None else img01


def resize(img: np.ndarray, out_hw: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize a 2D float array with torch (antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    shrink = out_hw[0] < img.shape[0] or out_hw[1] < img.shape[1]
    if mode == "nearest":
        out = F.interpolate(t, size=out_hw, mode="nearest")
    else:
        out = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy()


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a fixed canvas: ``canvas = image * scale`` placed at the origin."""

    scale: float
    src_hw: tuple[int, int]
    canvas_hw: tuple[int, int]

    @property
    def content_hw(self) -> tuple[int, int]:
        return (
            min(self.canvas_hw[0], max(1, round(self.src_hw[0] * self.scale))),
            min(self.canvas_hw[1], max(1, round(self.src_hw[1] * self.scale))),
        )

    def to_source(self, canvas_map: np.ndarray) -> np.ndarray:
        """Map a canvas-sized float map back onto the source image grid."""
        h, w = self.content_hw
        return resize(canvas_map[:h, :w], self.src_hw)


def letterbox(img: np.ndarray, canvas_hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Shrink/grow ``img`` keeping its aspect ratio and zero-pad it (bottom/right) to ``canvas_hw``."""
    h, w = img.shape
    scale = min(canvas_hw[0] / h, canvas_hw[1] / w)
    box = Letterbox(scale=scale, src_hw=(h, w), canvas_hw=canvas_hw)
    ch, cw = box.content_hw
    canvas = np.zeros(canvas_hw, dtype=np.float32)
    canvas[:ch, :cw] = resize(img, (ch, cw))
    return canvas, box


def equalize(img: np.ndarray, bins: int = 256) -> np.ndarray:
    """Global histogram equalisation of a [0, 1] image, ignoring the zero padding."""
    valid = img > 0
    if valid.sum() < 16:
        return img
    hist, edges = np.histogram(img[valid], bins=bins, range=(0.0, 1.0))
    cdf = np.cumsum(hist).astype(np.float64)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    out = np.interp(img, edges[1:], cdf).astype(np.float32)
    out[~valid] = 0.0
    return out


@dataclass(frozen=True)
class RoiCrop:
    """A square crop of the source image: source rows/cols ``[y0, y0+side)`` x ``[x0, x0+side)``."""

    y0: int
    x0: int
    side: int
    out_size: int

    def to_source(self, roi_map: np.ndarray, src_hw: tuple[int, int]) -> np.ndarray:
        """Place a map computed on the crop back into a zero source-sized map."""
        full = np.zeros(src_hw, dtype=np.float32)
        up = resize(roi_map, (self.side, self.side))
        ys, xs = max(self.y0, 0), max(self.x0, 0)
        ye, xe = min(self.y0 + self.side, src_hw[0]), min(self.x0 + self.side, src_hw[1])
        if ye > ys and xe > xs:
            full[ys:ye, xs:xe] = up[ys - self.y0 : ye - self.y0, xs - self.x0 : xe - self.x0]
        return full


def roi_crop(
    img01: np.ndarray, box_xyxy: tuple[float, float, float, float] | None, out_size: int, margin: float
) -> tuple[np.ndarray, RoiCrop]:
    """Crop the ROI box with a margin, pad it to a square (image filling), resize and enhance.

    With no box (no head found) the whole image is used, padded to a square.
    """
    h, w = img01.shape
    if box_xyxy is None:
        x0f, y0f, x1f, y1f = 0.0, 0.0, float(w), float(h)
    else:
        x0f, y0f, x1f, y1f = box_xyxy
    cx, cy = (x0f + x1f) / 2, (y0f + y1f) / 2
    side = max(round(max(x1f - x0f, y1f - y0f) * (1 + 2 * margin if box_xyxy is not None else 1)), 8)
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    square = np.zeros((side, side), dtype=np.float32)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + side, h), min(x0 + side, w)
    if ye > ys and xe > xs:
        square[ys - y0 : ye - y0, xs - x0 : xe - x0] = img01[ys:ye, xs:xe]
    crop = equalize(resize(square, (out_size, out_size)))
    return crop, RoiCrop(y0=y0, x0=x0, side=side, out_size=out_size)
