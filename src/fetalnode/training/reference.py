"""Reference outputs stored in a bundle at training time and re-checked by the unit tests
(``tests/unit/test_bundles.py``, ``test_labour_progress.py``, ``test_router.py``), not by ``load_bundle``.

The images are the small dataset copies shipped in ``tests/data`` (same folder layout as the
training data), so the check runs on a machine without ``../shared``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fetalnode.inference.analyzer import locate_head, seg_settings
from fetalnode.inference.bundle import Bundle
from fetalnode.inference.preprocess import to_unit_range
from fetalnode.training.data import load_gray, read_labels

REPO = Path(__file__).resolve().parents[3]
SEG_IMAGES = REPO / "tests" / "data" / "hc18_mini"
CLS_IMAGES = REPO / "tests" / "data" / "fba_mini"


def segmentation_reference(seg: Bundle, n: int = 3) -> list[dict[str, Any]]:
    out = []
    for row in read_labels(SEG_IMAGES)[:n]:
        img01 = to_unit_range(load_gray(SEG_IMAGES / row["filename"]))
        ellipse, score, _ = locate_head(seg.infer, seg_settings(seg), img01)
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
