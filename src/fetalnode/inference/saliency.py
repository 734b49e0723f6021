"""Grad-CAM saliency, pseudo-colour mapping and fusion over the original image."""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM
from PIL import Image, ImageDraw
from torch import nn

from fetalnode.inference.ellipse import Ellipse

# Anchor points of the "jet" colour map (value -> RGB), interpolated linearly.
_JET = np.array(
    [
        [0.0, 0.0, 0.0, 0.5],
        [0.11, 0.0, 0.0, 1.0],
        [0.34, 0.0, 0.9, 1.0],
        [0.5, 0.3, 1.0, 0.7],
        [0.65, 1.0, 1.0, 0.0],
        [0.89, 1.0, 0.0, 0.0],
        [1.0, 0.5, 0.0, 0.0],
    ]
)


def grad_cam(net: nn.Module, layer: str, x: torch.Tensor, class_idx: int) -> np.ndarray:
    """Grad-CAM of ``class_idx`` at ``layer`` (MONAI), upsampled to the input size, in [0, 1]."""
    cam = GradCAM(nn_module=net, target_layers=layer)
    with torch.enable_grad():
        out = cam(x=x, class_idx=class_idx)
    return np.asarray(out.detach()[0, 0].cpu().numpy(), dtype=np.float32)


def pseudo_colour(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] values to RGB uint8 with a jet-like colour map."""
    v = np.clip(values, 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(v, _JET[:, 0], _JET[:, c]) for c in (1, 2, 3)], axis=1)
    return (rgb.reshape((*values.shape, 3)) * 255).round().astype(np.uint8)


def fuse(display_rgb: np.ndarray, heatmap: np.ndarray | None, alpha: float) -> np.ndarray:
    """Blend the pseudo-coloured heatmap over the image; opacity follows the saliency (max ``alpha``)."""
    base = display_rgb.astype(np.float32)
    if heatmap is None:
        return display_rgb.copy()
    # Opacity grows with the square of the saliency: the image stays readable where the CAM is low.
    weight = (alpha * np.clip(heatmap, 0.0, 1.0) ** 2)[..., None]
    out = base * (1 - weight) + pseudo_colour(heatmap).astype(np.float32) * weight
    return np.clip(out, 0, 255).round().astype(np.uint8)


def draw_roi(rgb: np.ndarray, ellipse: Ellipse | None) -> np.ndarray:
    """Mark the ROI shape (the fitted head ellipse) and its axes on an RGB image."""
    if ellipse is None:
        return rgb
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    width = max(1, round(min(rgb.shape[:2]) / 300))
    pts = [tuple(p) for p in ellipse.outline(720).tolist()]
    draw.line([*pts, pts[0]], fill=(0, 255, 0), width=width)
    ends = ellipse.axis_endpoints().tolist()
    draw.line([tuple(ends[0]), tuple(ends[1])], fill=(0, 255, 0), width=1)
    draw.line([tuple(ends[2]), tuple(ends[3])], fill=(0, 255, 0), width=1)
    return np.asarray(img)
