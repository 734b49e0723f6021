"""Dataset folders in the ``../shared/datasets/<name>`` layout and group-aware splits."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

Row = dict[str, str]


def read_labels(folder: str | Path) -> list[Row]:
    """Rows of ``labels.csv`` in a dataset folder."""
    path = Path(folder) / "labels.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_gray(path: str | Path) -> np.ndarray:
    """An image file as a 2D float32 array (0..255)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)


def group_split(
    rows: list[Row], group_col: str, fractions: dict[str, float], seed: int, stratify_col: str | None = None
) -> dict[str, list[Row]]:
    """Split rows by whole groups (never by image).

    Groups are shuffled with ``seed`` (within each stratum when ``stratify_col`` is given) and
    dealt into the splits in the order of ``fractions``; the first split takes the remainder.
    A stratum with fewer groups than splits goes entirely to the first split.
    """
    names = list(fractions)
    strata: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        strata[row[stratify_col] if stratify_col else ""].add(row[group_col])
    assignment: dict[str, str] = {}
    rng = random.Random(seed)
    for stratum in sorted(strata):
        groups = sorted(strata[stratum])
        rng.shuffle(groups)
        if len(groups) < len(names):
            assignment.update({g: names[0] for g in groups})
            continue
        start = 0
        for name in reversed(names[1:]):
            k = max(1, round(len(groups) * fractions[name]))
            for g in groups[start : start + k]:
                assignment[g] = name
            start += k
        for g in groups[start:]:
            assignment[g] = names[0]
    out: dict[str, list[Row]] = {name: [] for name in names}
    for row in rows:
        out[assignment[row[group_col]]].append(row)
    return out


def subject_split(rows: list[Row], seed: int) -> dict[str, list[Row]]:
    """The segmentation's train/val/test split of an HC18-format folder (70/15/15 by ``subject_group``).

    Everything that reuses HC18 heads (extra normals, pretraining, the gate benchmark) calls this,
    so the segmentation's test heads stay unseen everywhere.
    """
    return group_split(rows, "subject_group", {"train": 0.7, "val": 0.15, "test": 0.15}, seed)


def case_split(rows: list[Row], seed: int) -> dict[str, list[Row]]:
    """The classifier's train/val/test split of a fetal_brain_abnormalities-format folder
    (70/15/15 by ``case_group``, stratified by label)."""
    return group_split(rows, "case_group", {"train": 0.7, "val": 0.15, "test": 0.15}, seed, "label")


def block_split(rows: list[Row], seed: int) -> dict[str, list[Row]]:
    """The labour segmentation's train/val/test split of a PSFHS-format folder (70/15/15 by ``id_block``:
    blocks of 20 consecutive image numbers, as a woman's images are likely neighbours)."""
    return group_split(rows, "id_block", {"train": 0.7, "val": 0.15, "test": 0.15}, seed)


def bootstrap_ci(
    values: np.ndarray, groups: np.ndarray, stat, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap CI of ``stat(values_subset)`` resampling whole groups."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    if len(uniq) == 0:
        return (float("nan"), float("nan"))
    index = {g: np.nonzero(groups == g)[0] for g in uniq}
    stats = []
    for _ in range(n_boot):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        idx = np.concatenate([index[g] for g in pick])
        try:
            stats.append(float(stat(idx)))
        except ValueError:
            continue
    if not stats:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(stats, (2.5, 97.5))
    return (float(lo), float(hi))
