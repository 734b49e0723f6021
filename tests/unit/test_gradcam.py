"""Grad-CAM of the classifier: one forward pass gives the probabilities and the map, equal to MONAI's
GradCAM run on its own; the map explains what the node reports."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from pydicom import dcmread
from torch import nn

from fetalnode.inference import Analyzer
from fetalnode.inference.analyzer import find_head, seg_settings
from fetalnode.inference.bundle import Bundle, load_bundle
from fetalnode.inference.preprocess import RoiCrop, roi_crop, to_unit_range
from fetalnode.inference.saliency import CamModel, class_score, fuse, grad_cam, pseudo_colour
from fetalnode.intake import decode_for_analysis
from harness.node import MODELS
from tests.conftest import SAMPLES

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def classifier() -> Bundle:
    return load_bundle(MODELS / "fba-classifier", "classification")


def head_crop(name: str) -> torch.Tensor:
    """The classifier input of a sample image, as the analyzer builds it."""
    return head_crop_and_box(name)[0]


def head_crop_and_box(name: str) -> tuple[torch.Tensor, RoiCrop, tuple[int, int]]:
    """The classifier input of a sample image, where it lies in the image, and the image size."""
    seg = load_bundle(MODELS / "hc18-headseg", "segmentation")
    cls_input = load_bundle(MODELS / "fba-classifier").metadata["input"]
    img01 = to_unit_range(decode_for_analysis(dcmread(SAMPLES / name), 10**8, 10).gray)
    head = find_head(seg.infer, seg_settings(seg), img01)
    assert head.ellipse is not None
    crop, box = roi_crop(img01, head.ellipse.box(), int(cls_input["roi_size"]), float(cls_input["roi_margin"]))
    return torch.from_numpy(crop)[None, None], box, img01.shape


def inputs() -> list[torch.Tensor]:
    noise = [torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    return [head_crop("hc18_669_HC.dcm"), *noise]


def test_one_forward_gives_the_classifier_logits_and_monais_gradcam(classifier: Bundle) -> None:
    net = classifier.net
    cam_model = CamModel(net, net.cam_layer)  # type: ignore[arg-type]
    for x in inputs():
        forward = cam_model.forward(x)
        with torch.no_grad():
            reference_logits = net(x)
        assert torch.allclose(forward.logits.detach(), reference_logits, atol=1e-6)
        for k in (0, 3, int(reference_logits.argmax())):
            reference = grad_cam(net, net.cam_layer, x, k)  # MONAI GradCAM: its own forward and backward
            fused = forward.cam(class_score(forward.logits, k))  # the same forward, several targets
            assert fused.shape == reference.shape == tuple(x.shape[2:])
            assert np.allclose(fused, reference, atol=1e-6), (k, float(np.abs(fused - reference).max()))


def test_the_most_salient_pixel_is_the_hottest(classifier: Bundle) -> None:
    """1 where the gradient-weighted activation is largest, 0 where it is smallest (MONAI's default
    normaliser maps them the other way round)."""
    net = classifier.net
    x = head_crop("hc18_669_HC.dcm")
    forward = CamModel(net, net.cam_layer).forward(x)  # type: ignore[arg-type]
    k = int(forward.logits.argmax())
    heat = forward.cam(class_score(forward.logits, k))
    (grad,) = torch.autograd.grad(forward.logits[0, k], forward.activation)
    raw = torch.relu((grad.mean((2, 3), keepdim=True) * forward.activation.detach()).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(raw, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[0, 0]
    assert float(up.max()) > float(up.min())
    assert heat.flat[int(up.argmax())] == pytest.approx(1.0)
    assert heat.flat[int(up.argmin())] == pytest.approx(0.0)
    assert heat.min() == pytest.approx(0.0) and heat.max() == pytest.approx(1.0)


ABNORMAL = "fba_ventriculomegaly_moderate_fba_01465.dcm"  # called abnormal by the shipped models


class WithAbnormalLogOdds(nn.Module):
    """The classifier with one more output, the log-odds of abnormal: MONAI's GradCAM can target it."""

    def __init__(self, net: nn.Module, normal: int) -> None:
        super().__init__()
        self.net, self.normal = net, normal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        others = [i for i in range(logits.shape[1]) if i != self.normal]
        z = torch.logsumexp(logits[:, others], dim=1) - logits[:, self.normal]
        return torch.cat([logits, z[:, None]], dim=1)


def analyse(seg: Bundle, cls: Bundle, name: str):  # type: ignore[no-untyped-def]
    decoded = decode_for_analysis(dcmread(SAMPLES / name), 10**8, 10)
    return Analyzer(seg, cls).analyze(decoded.gray, decoded.spacing_mm)


def test_the_heatmap_explains_the_reported_finding(classifier: Bundle) -> None:
    seg = load_bundle(MODELS / "hc18-headseg", "segmentation")
    labels = list(classifier.metadata["labels"])
    normal = labels.index("normal")
    x, box, hw = head_crop_and_box(ABNORMAL)
    layer = "net." + classifier.net.cam_layer  # type: ignore[operator]

    # The shipped rule names no type: the map explains "abnormal", not the most probable type.
    untyped = analyse(seg, classifier, ABNORMAL)
    assert untyped.finding == "abnormal" and not untyped.malformation_type
    assert untyped.heatmap_target == "abnormal" and untyped.heatmap is not None
    wrapped = WithAbnormalLogOdds(copy.deepcopy(classifier.net), normal)
    reference = box.to_source(grad_cam(wrapped, layer, x, len(labels)), hw)
    assert np.allclose(untyped.heatmap, reference, atol=1e-5)

    # A rule that names the most probable type: the map explains that type.
    types = {k: v for k, v in untyped.class_probabilities.items() if k != "normal"}
    top = max(types, key=types.__getitem__)
    meta = copy.deepcopy(classifier.metadata)
    meta["type_reporting"] = {"reportable_types": [top], "type_probability_threshold": 0.0}
    typed = analyse(seg, dataclasses.replace(classifier, metadata=meta), ABNORMAL)
    assert typed.malformation_type == top and typed.heatmap_target == top and typed.heatmap is not None
    reference = box.to_source(grad_cam(classifier.net, classifier.net.cam_layer, x, labels.index(top)), hw)
    assert np.allclose(typed.heatmap, reference, atol=1e-5)
    assert float(np.abs(typed.heatmap - untyped.heatmap).max()) > 0.05, "the target changed, the map did not"

    # A normal finding: the normal class.
    normal_result = analyse(seg, classifier, "fba_normal_fba_00786.dcm")
    assert normal_result.finding == "normal" and normal_result.heatmap_target == "normal"


def blend_everywhere(display_rgb: np.ndarray, heatmap: np.ndarray, alpha: float) -> np.ndarray:
    """The fusion computed on every pixel (what :func:`fuse` did before it skipped zero saliency)."""
    weight = (alpha * np.clip(heatmap, 0.0, 1.0) ** 2)[..., None]
    out = display_rgb.astype(np.float32) * (1 - weight) + pseudo_colour(heatmap).astype(np.float32) * weight
    return np.clip(out, 0, 255).round().astype(np.uint8)


def test_fusing_only_the_salient_box_gives_the_same_pixels() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    heat = np.zeros((90, 120), np.float32)
    heat[20:61, 35:100] = rng.random((41, 65), dtype=np.float32)
    heat[30, 40] = 0.0
    cases = [heat, np.zeros_like(heat), rng.random((90, 120), dtype=np.float32) * 1.2 - 0.1]
    for h in cases:
        assert np.array_equal(fuse(rgb, h, 0.6), blend_everywhere(rgb, h, 0.6))
    assert not np.array_equal(fuse(rgb, heat, 0.6), rgb)
