"""Classification metrics without extra dependencies."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    pos = scores[positives.astype(bool)]
    neg = scores[~positives.astype(bool)]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs both classes")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 per class (NaN where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / cm.sum(axis=0)
        recall = tp / cm.sum(axis=1)
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    _, recall, _ = per_class(confusion(y_true, y_pred, n_classes))
    present = np.bincount(y_true, minlength=n_classes) > 0
    return float(np.nanmean(recall[present]))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present in ``y_true`` (undefined F1 counts as 0)."""
    _, _, f1 = per_class(confusion(y_true, y_pred, n_classes))
    present = np.bincount(y_true, minlength=n_classes) > 0
    return float(np.nan_to_num(f1[present]).mean())
