"""Reference outputs stored in a bundle at training time and re-checked by the unit tests
(``tests/unit/test_bundles.py``, ``test_labour_progress.py``, ``test_router.py``), not by ``load_bundle``.

The images come from a reference folder given to ``fetalnode train`` / ``models finalize``
(``--reference-data``): a folder laid out as the repository's ``tests/data`` (``hc18_mini/``, ``fba_mini/``,
``psfhs_mini/``, ``view_mini/``, each in its training data's format), so the check runs on a machine without
the full datasets. Without one a bundle stores no reference outputs, and its model card says so.

A stored image is named by its path under the reference folder prefixed with ``tests/data``
(:data:`NAME_PREFIX`), whatever the folder given: the names do not depend on where the folder was, and
the repository's tests resolve them against their own copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from fetalnode.inference.analyzer import locate_head, seg_settings
from fetalnode.inference.bundle import Bundle
from fetalnode.inference.preprocess import to_unit_range
from fetalnode.training.data import load_gray, read_labels
from fetalnode.training.metadata import SegReference

NAME_PREFIX = PurePosixPath("tests/data")
SEG_FOLDER = "hc18_mini"
CLS_FOLDER = "fba_mini"
LABOUR_FOLDER = "psfhs_mini"
VIEW_FOLDER = "view_mini"


def reference_name(root: Path, path: Path) -> str:
    """The stored name of the image ``path`` of the reference folder ``root``."""
    return str(NAME_PREFIX / path.relative_to(root).as_posix())


def reference_path(root: Path, name: str) -> Path:
    """The image a stored name refers to, in the reference folder ``root``."""
    return root / PurePosixPath(name).relative_to(NAME_PREFIX)


def require_reference_data(path: Path, meta: Mapping[str, Any], reference_data: Path | None) -> None:
    """Refuse (ValueError) to finalize a bundle that stores reference outputs without the folder of their
    images: its outputs would be dropped, or could not be checked."""
    if meta.get("reference_outputs") and reference_data is None:
        raise ValueError(f"{path} stores reference outputs: give the folder of their images (--reference-data)")


def no_reference_line(meta: Mapping[str, Any]) -> str:
    """The model-card sentence of a bundle trained without a reference folder (empty when it has outputs)."""
    if "reference_outputs" in meta:
        return ""
    return (
        "\nNo reference outputs are stored (trained without `--reference-data`): no test re-checks that this "
        "bundle still gives the outputs it gave at training time.\n"
    )


def segmentation_reference(seg: Bundle, root: Path, n: int = 3) -> list[SegReference]:
    """Head score and ellipse of the segmentation bundle on the first ``n`` images of ``root/hc18_mini``."""
    folder = root / SEG_FOLDER
    out: list[SegReference] = []
    for row in read_labels(folder)[:n]:
        img01 = to_unit_range(load_gray(folder / row["filename"]))
        ellipse, score, _ = locate_head(seg.infer, seg_settings(seg), img01)
        out.append(
            {
                "image": reference_name(root, folder / row["filename"]),
                "head_score": round(score, 5),
                "ellipse": None
                if ellipse is None
                else [round(v, 4) for v in (ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle_deg)],
            }
        )
    return out
