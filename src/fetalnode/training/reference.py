"""Reference outputs stored in a bundle at training time, re-checked by the tests on every load.

The images are the small dataset copies shipped in ``tests/data`` (same folder layout as the
training data), so the check runs on a machine without ``../shared``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fetalnode.inference.analyzer import locate_head, seg_settings
from fetalnode.inference.bundle import Bundle
from fetalnode.inference.preprocess import roi_crop, to_unit_range
from fetalnode.training.data import load_gray, read_labels

REPO = Path(__file__).resolve().parents[3]
SEG_IMAGES = REPO / "tests" / "data" / "hc18_mini"
CLS_IMAGES = REPO / "tests" / "data" / "fba_mini"


def segmentation_reference(seg: Bundle, n: int = 3) -> list[dict[str, Any]]:
    canvas_hw, axis_scale = seg_settings(seg)
    out = []
    for row in read_labels(SEG_IMAGES)[:n]:
        img01 = to_unit_range(load_gray(SEG_IMAGES / row["filename"]))
        ellipse, score, _ = locate_head(seg.infer, canvas_hw, axis_scale, img01)
        out.append(
            {
                "image": str((SEG_IMAGES / row["filename"]).relative_to(REPO)),
                "head_score": round(score, 5),
                "ellipse": None
                if ellipse is None
                else [round(v, 4) for v in (ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle_deg)],
            }
        )
    return out


def classifier_reference(
    cls_net: torch.nn.Module, seg: Bundle, roi_size: int, margin: float, n: int = 4
) -> list[dict[str, Any]]:
    canvas_hw, axis_scale = seg_settings(seg)
    out = []
    for row in read_labels(CLS_IMAGES)[:n]:
        img01 = to_unit_range(load_gray(CLS_IMAGES / row["filename"]))
        ellipse, _, _ = locate_head(seg.infer, canvas_hw, axis_scale, img01)
        crop, _ = roi_crop(img01, ellipse.box() if ellipse else None, roi_size, margin)
        cls_net.eval()
        with torch.no_grad():
            probs = torch.softmax(cls_net(torch.from_numpy(crop)[None, None]), dim=1)[0].numpy()
        out.append(
            {
                "image": str((CLS_IMAGES / row["filename"]).relative_to(REPO)),
                "probabilities": [round(float(p), 6) for p in np.asarray(probs)],
            }
        )
    return out
