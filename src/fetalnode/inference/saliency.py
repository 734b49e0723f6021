"""Grad-CAM saliency, pseudo-colour mapping and fusion over the original image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import ScaleIntensity
from monai.visualize import GradCAM, ModelWithHooks
from monai.visualize.visualizer import default_upsampler
from PIL import Image, ImageDraw
from torch import nn
from torch.nn import functional as F

from fetalnode.inference.ellipse import Ellipse, bounding_window

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


def cam_normalizer(x: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of each map to [0, 1], the most salient pixel 1 (a constant map becomes 0).

    MONAI's ``default_normalizer`` maps (min, max) to (1, 0): it flips the magnitudes (its docstring
    says so; Project-MONAI/tutorials#1796), which painted the least salient pixels hottest.
    """
    scaler = ScaleIntensity(minv=0.0, maxv=1.0)
    data = x.detach().cpu().numpy()
    return torch.as_tensor(np.stack([np.asarray(scaler(i)) for i in data], axis=0), device=x.device)


def grad_cam(net: nn.Module, layer: str, x: torch.Tensor, class_idx: int) -> np.ndarray:
    """Grad-CAM of the logit ``class_idx`` at ``layer`` with MONAI's :class:`GradCAM` (its own forward and
    a full backward), upsampled to the input size, in [0, 1].

    The reference :class:`CamForward` is tested against; the node uses :class:`CamForward` (one forward
    for the probabilities and the map). Registers hooks on ``net`` on every call: not for a loop.
    """
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=cam_normalizer)
    with torch.enable_grad():
        out = cam(x=x, class_idx=class_idx)
    return np.asarray(out.detach()[0, 0].cpu().numpy(), dtype=np.float32)


class CamModel:
    """A classifier with a MONAI forward hook on its Grad-CAM layer, registered once.

    :meth:`forward` is the classifier's forward pass (its logits give the probabilities) that also keeps
    what Grad-CAM needs, so the map of any score of those logits costs a backward pass from the score
    to the layer only (not through the layers before it, not to the weights).
    """

    def __init__(self, net: nn.Module, layer: str) -> None:
        self.layer = layer
        self.hooks = ModelWithHooks(net, layer, register_forward=True, register_backward=False)

    def forward(self, x: torch.Tensor) -> CamForward:
        with torch.enable_grad():
            logits, activations, _ = self.hooks(x)
        self.hooks.activations.clear()  # the result holds it; the hook does not keep the graph alive
        return CamForward(logits=logits, activation=activations[-1], input_hw=tuple(x.shape[2:]))


@dataclass(frozen=True)
class CamForward:
    """One classifier forward pass: ``logits`` (N, K, graph attached) and the CAM layer's activation."""

    logits: torch.Tensor
    activation: torch.Tensor
    input_hw: Sequence[int]

    def probabilities_input(self) -> np.ndarray:
        """The logits as float64 numpy (N, K), for the calibrated probabilities."""
        return np.asarray(self.logits.detach().cpu().numpy(), dtype=np.float64)

    def cam(self, score: torch.Tensor) -> np.ndarray:
        """Grad-CAM (Selvaraju et al. 2017, MONAI's formula) of ``score`` (N,), a function of ``logits``:
        ReLU of the activation weighted by its spatially averaged gradient, bilinearly upsampled to the
        input, min-max scaled to [0, 1] (:func:`cam_normalizer`). First image of the batch."""
        (grad,) = torch.autograd.grad(score.sum(), self.activation, retain_graph=True)
        acti = self.activation.detach()
        b, c, *spatial = grad.shape
        weights = grad.view(b, c, -1).mean(2).view(b, c, *[1] * len(spatial))
        acti_map = F.relu((weights * acti).sum(1, keepdim=True))
        out = cam_normalizer(default_upsampler(list(self.input_hw))(acti_map))
        return np.asarray(out[0, 0].cpu().numpy(), dtype=np.float32)


def class_score(logits: torch.Tensor, index: int) -> torch.Tensor:
    """The logit of one class (MONAI GradCAM's ``class_idx`` score)."""
    return logits[:, index]


def log_odds_score(logits: torch.Tensor, positive: Sequence[int], negative: int) -> torch.Tensor:
    """log(P(positive classes) / P(negative class)) under the softmax: logsumexp of the positive logits
    minus the negative logit. With the abnormal classes against ``normal`` it is the log-odds whose
    sigmoid (after the bundle's temperature) is the reported P(abnormal)."""
    return torch.logsumexp(logits[:, list(positive)], dim=1) - logits[:, negative]


def pseudo_colour(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] values to RGB uint8 with a jet-like colour map."""
    v = np.clip(values, 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(v, _JET[:, 0], _JET[:, c]) for c in (1, 2, 3)], axis=1)
    return (rgb.reshape((*values.shape, 3)) * 255).round().astype(np.uint8)


def fuse(display_rgb: np.ndarray, heatmap: np.ndarray | None, alpha: float) -> np.ndarray:
    """Blend the pseudo-coloured heatmap over the image; opacity follows the saliency (max ``alpha``).

    Only the box around the positive saliency is computed: elsewhere the opacity is 0 and the image is
    unchanged (the same pixels as blending everywhere, tested).
    """
    out = display_rgb.copy()
    if heatmap is None:
        return out
    positive = heatmap > 0
    if not positive.any():
        return out
    box = bounding_window(positive, 0)
    heat, base = heatmap[box], display_rgb[box].astype(np.float32)
    # Opacity grows with the square of the saliency: the image stays readable where the CAM is low.
    weight = (alpha * np.clip(heat, 0.0, 1.0) ** 2)[..., None]
    blended = base * (1 - weight) + pseudo_colour(heat).astype(np.float32) * weight
    out[box] = np.clip(blended, 0, 255).round().astype(np.uint8)
    return out


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
