"""The classifier's recipe, its dataset rows and the ROI crops it is fitted on."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fetalnode.inference.analyzer import locate_head, seg_settings
from fetalnode.inference.bundle import Bundle
from fetalnode.inference.preprocess import roi_crop, to_unit_range
from fetalnode.training.data import Row, load_gray, read_labels, subject_split

log = logging.getLogger(__name__)


NORMAL = "normal"


@dataclass
class ClsRecipe:
    roi_size: int = 128
    roi_margin: float = 0.12
    channels: tuple[int, ...] = (16, 32, 64, 128)
    fc: tuple[int, ...] = (128, 64)
    dropout: float = 0.3
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-4
    patience: int = 12
    max_minutes: float = 25.0
    seed: int = 20261124
    limit: int = 0
    extra_normals: str = ""
    extra_normals_n: int = 150
    cv_folds: int = 0
    # "segmentation": base stages start from the segmentation bundle's trained encoder (transfer
    # from our own model); "random": from scratch. Measured side by side in docs/models.md.
    base_init: str = "segmentation"
    # "contrastive" only: folders of unlabelled images for self-supervised pretraining of the base.
    pretrain_data: tuple[str, ...] = ()
    pretrain_epochs: int = 60
    # Fit (and cross-validate) only on the images where the segmentation found a head, as the node
    # classifies only those (fba-classifier 0.6.0); False also trains on the whole image (padded square)
    # where none is found (0.4.0, 0.5.0).
    heads_only: bool = True
    # Weight of an extra normal-vs-abnormal term in the loss: the cross-entropy of P(normal) against
    # "abnormal = any malformation class", normals and abnormals weighted half each. The node's first
    # answer is normal vs abnormal; the 16-class loss alone gives the normal class 1/16 of the weight.
    # 1.0 since fba-classifier 0.8.0; 0: off (0.6.0's recipe).
    abnormal_weight: float = 1.0


def usable_rows(folder: Path) -> tuple[list[Row], int]:
    """Rows without label conflicts (dropped: a near-identical image carries another label)."""
    rows = read_labels(folder)
    kept = [r for r in rows if r.get("label_conflict", "0") != "1"]
    return kept, len(rows) - len(kept)


def roi_crops(
    seg: Bundle, folder: Path, rows: list[Row], roi_size: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N, size, size) and whether a head was found, through the inference code path."""
    settings = seg_settings(seg)
    crops, found = [], []
    for row in tqdm(rows, desc="ROI crops", leave=False):
        img01 = to_unit_range(load_gray(folder / row["filename"]))
        ellipse, _, _ = locate_head(seg.infer, settings, img01)
        crop, _ = roi_crop(img01, ellipse.box() if ellipse else None, roi_size, margin)
        crops.append(crop)
        found.append(ellipse is not None)
    return np.stack(crops).astype(np.float32), np.array(found)


def intensity_features(folder: Path, rows: list[Row]) -> np.ndarray:
    """Global intensity statistics of each whole image: the trivial baseline's input."""
    feats = []
    for row in rows:
        img = load_gray(folder / row["filename"]) / 255.0
        hist = np.histogram(img, bins=16, range=(0, 1))[0] / img.size
        feats.append(
            np.concatenate(
                [[img.mean(), img.std(), *np.percentile(img, (5, 25, 50, 75, 95)), (img < 0.05).mean()], hist]
            )
        )
    return np.array(feats, dtype=np.float32)


@dataclass
class CropSet:
    """ROI crops of some rows, their label indices and groups."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    found: np.ndarray
    # Global intensity statistics of each whole image (the trivial baseline's input).
    intensity: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> CropSet:
        return CropSet(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(parts: list[CropSet]) -> CropSet:
        return CropSet(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(CropSet)))


def crop_rows(
    seg: Bundle,
    folder: Path,
    rows: list[Row],
    labels: list[str],
    recipe: ClsRecipe,
    label_col: str = "label",
    group_col: str = "case_group",
) -> CropSet:
    x, found = roi_crops(seg, folder, rows, recipe.roi_size, recipe.roi_margin)
    return CropSet(
        x,
        np.array([labels.index(r.get(label_col, NORMAL)) for r in rows]),
        np.array([r[group_col] for r in rows]),
        found,
        intensity_features(folder, rows),
    )


def unlabelled_crops(seg: Bundle, folder: Path, recipe: ClsRecipe) -> np.ndarray:
    """ROI crops of a folder's images for pretraining (labels are not read).

    An HC18-format folder (``subject_group`` column) gives only the train and validation parts of
    its split: its test heads measure the source shift and stay unseen.
    """
    rows = read_labels(folder)
    if rows and "subject_group" in rows[0]:
        split = subject_split(rows, recipe.seed)
        rows = split["train"] + split["val"]
    crops, _ = roi_crops(seg, folder, rows, recipe.roi_size, recipe.roi_margin)
    log.info("pretraining images from %s: %d", folder, len(rows))
    return crops


def crop_features(x: np.ndarray) -> np.ndarray:
    """Global intensity statistics of the equalised ROI crops (the baseline after normalisation)."""
    flat = x.reshape(len(x), -1)
    hist = np.stack([np.histogram(v, bins=16, range=(0, 1))[0] for v in flat]) / flat.shape[1]
    pct = np.percentile(flat, (5, 25, 50, 75, 95), axis=1).T
    return np.concatenate([flat.mean(1, keepdims=True), flat.std(1, keepdims=True), pct, hist], 1).astype(np.float32)
