"""Temperature scaling, expected calibration error and the malformation-type reporting rule.

What the node may say about the malformation type is decided here, at training time, from held-out
evidence, and stored in the bundle (``calibration``, ``type_reporting``); the analyzer only applies it
(:mod:`fetalnode.inference.calibration`).

- Temperatures (Guo et al., ICML 2017): one for P(abnormal), one for P(type | abnormal), each the
  minimiser of the negative log-likelihood on the validation split (the images with a head, which is
  what the node classifies). A temperature changes no decision, only confidences.
- Expected calibration error (ECE): 10 equal-width bins of the confidence of the answer given,
  sum over bins of (share of images) x |accuracy - mean confidence|.
- Reportable types: per-type precision of the type the node would name (abnormal called, most
  probable type) under grouped cross-validation, with a 95% CI by case-group bootstrap; a type is
  reportable only if the CI's lower bound reaches :data:`MIN_PRECISION_CI_LOW` and its correct
  namings come from at least :data:`MIN_CORRECT_GROUPS` case groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fetalnode.inference.calibration import Calibration, abnormal_logit, calibrated

# A named type must be right more often than not, with 95% confidence: below that the name misleads
# more often than it informs (the most frequent malformation type alone is right for about 1 in 5
# abnormal images of the training data). Justified in the model card.
MIN_PRECISION_CI_LOW = 0.5
# Correct namings from fewer case groups are a few augmented copies of one or two source images, not
# evidence that the type is recognised in a new case.
MIN_CORRECT_GROUPS = 3
# The per-image threshold chosen on validation needs correct namings from this many case groups there
# (the validation split holds only ~10 groups in all).
MIN_VAL_CORRECT_GROUPS = 2
ECE_BINS = 10
N_BOOT = 1000
_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 1201))  # temperatures tried, 0.5% apart


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the mean NLL of softmax(logits / T) for labels ``y``.

    ``logits`` (N, C); a binary score z is fitted as ``np.stack([0 * z, z], 1)`` (softmax = sigmoid).
    No data: 1.0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if not len(logits):
        return 1.0
    scaled = logits[None] / _GRID[:, None, None]
    peak = scaled.max(axis=2, keepdims=True)
    log_z = peak[..., 0] + np.log(np.exp(scaled - peak).sum(axis=2))
    nll = (log_z - scaled[:, np.arange(len(y)), y]).mean(axis=1)
    return float(_GRID[int(np.argmin(nll))])


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width confidence bins (a confidence of 1 in the last)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        raise ValueError("ECE of no images")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def _group_bootstrap(
    values: dict[str, np.ndarray], groups: np.ndarray, stat: Any, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile CI of ``stat(values restricted to a resample of whole groups)``; None if undefined."""
    uniq = np.unique(groups)
    if not len(uniq):
        return None
    rng = np.random.default_rng(seed)
    index = {g: np.nonzero(groups == g)[0] for g in uniq}
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([index[g] for g in rng.choice(uniq, size=len(uniq), replace=True)])
        try:
            stats.append(float(stat({k: v[idx] for k, v in values.items()})))
        except ValueError:
            continue
    if not stats:
        return None
    lo, hi = np.percentile(stats, (2.5, 97.5))
    return (float(lo), float(hi))


def _ece_entry(confidence: np.ndarray, correct: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    if not len(confidence):
        return {"ece": None, "ece_ci95": None}
    return {
        "ece": ece(confidence, correct),
        "ece_ci95": _group_bootstrap({"c": confidence, "k": correct}, groups, lambda v: ece(v["c"], v["k"])),
    }


def _apply(logits: np.ndarray, normal: int, cal: Calibration | list[Calibration]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`calibrated` with one calibration, or one per image (cross-fitted temperatures)."""
    if isinstance(cal, Calibration):
        return calibrated(logits, normal, cal)
    rows = [calibrated(logits[i : i + 1], normal, c) for i, c in enumerate(cal)]
    return np.concatenate([p for p, _ in rows]), np.concatenate([t for _, t in rows])


def calibration_errors(
    logits: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    normal: int,
    cals: Mapping[str, Calibration | list[Calibration]],
) -> dict[str, Any]:
    """ECE of P(abnormal) (every image) and of P(type | abnormal) (the truly abnormal images), with
    case-group bootstrap 95% CIs, for each named calibration (e.g. ``before``: T = 1, ``after``).

    The confidence scored is that of the answer given: max(P(abnormal), P(normal)) against "the
    normal/abnormal call is right", and the most probable type's P(type | abnormal) against "that type
    is the true one". A calibration may be a list with one per image (cross-fitted temperatures).
    """
    y = np.asarray(y)
    is_abn = y != normal
    true_type = np.where(y > normal, y - 1, y)  # label index -> index among the malformation types
    out: dict[str, Any] = {
        "n": len(y),
        "n_groups": len(np.unique(groups)),
        "n_abnormal": int(is_abn.sum()),
        "n_abnormal_groups": len(np.unique(groups[is_abn])),
        "abnormal": {},
        "type": {},
    }
    for name, cal in cals.items():
        if not len(y):
            out["abnormal"][name] = out["type"][name] = _ece_entry(np.zeros(0), np.zeros(0), groups)
            continue
        p_abn, types = _apply(np.asarray(logits, dtype=np.float64), normal, cal)
        out["abnormal"][name] = _ece_entry(np.maximum(p_abn, 1 - p_abn), (p_abn >= 0.5) == is_abn, groups)
        out["type"][name] = _ece_entry(
            types[is_abn].max(axis=1), types[is_abn].argmax(axis=1) == true_type[is_abn], groups[is_abn]
        )
    return out


def fit_calibration(logits: np.ndarray, y: np.ndarray, normal: int) -> Calibration:
    """Both temperatures from one set of (logits, labels): P(abnormal) on every image, P(type | abnormal)
    on the truly abnormal ones."""
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y)
    z = abnormal_logit(logits, normal) if len(logits) else np.zeros(0)
    t_abn = fit_temperature(np.stack([np.zeros_like(z), z], axis=1), (y != normal).astype(int))
    abn = y != normal
    t_type = fit_temperature(np.delete(logits[abn], normal, axis=1), np.where(y[abn] > normal, y[abn] - 1, y[abn]))
    return Calibration(t_abn, t_type)


def cross_fitted(logits: np.ndarray, y: np.ndarray, fold: np.ndarray, normal: int) -> list[Calibration]:
    """Per image, the temperatures fitted on the out-of-fold predictions of the *other* folds."""
    fits = {k: fit_calibration(logits[fold != k], y[fold != k], normal) for k in np.unique(fold)}
    return [fits[k] for k in fold]


def named_types(
    logits: np.ndarray, normal: int, cal: Calibration, abnormal_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The label index of the type the node would name (-1 where it calls the image normal) and its
    calibrated P(type | abnormal)."""
    p_abn, types = calibrated(logits, normal, cal)
    k = types.argmax(axis=1)
    label = np.where(k >= normal, k + 1, k)
    return np.where(p_abn >= abnormal_threshold, label, -1), types.max(axis=1)


def type_precision(
    named: np.ndarray, y: np.ndarray, groups: np.ndarray, labels: list[str], normal: int
) -> dict[str, dict[str, Any]]:
    """Per malformation type: how often the node would name it and be right (precision, with a 95% CI
    by case-group bootstrap), its recall, support and case groups, and the case groups of the correct
    namings. ``named``: per image, the label index the node names (-1: none)."""
    uniq, g_index = np.unique(groups, return_inverse=True)
    k = len(labels)
    named_counts = np.zeros((len(uniq), k))
    correct_counts = np.zeros((len(uniq), k))
    ok = named >= 0
    np.add.at(named_counts, (g_index[ok], named[ok]), 1)
    hit = ok & (named == y)
    np.add.at(correct_counts, (g_index[hit], named[hit]), 1)
    # Whole-group bootstrap, all types at once: draw counts per group, then sum.
    rng = np.random.default_rng(0)
    draws = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=N_BOOT) if len(uniq) else None
    out: dict[str, dict[str, Any]] = {}
    for c in range(k):
        if c == normal:
            continue
        n_named, n_correct = int(named_counts[:, c].sum()), int(correct_counts[:, c].sum())
        support = int((y == c).sum())
        ci: tuple[float, float] | None = None
        if draws is not None and n_named:
            boot_named, boot_correct = draws @ named_counts[:, c], draws @ correct_counts[:, c]
            defined = boot_named > 0  # a resample without the type named leaves its precision undefined
            if defined.any():
                lo, hi = np.percentile(boot_correct[defined] / boot_named[defined], (2.5, 97.5))
                ci = (float(lo), float(hi))
        out[labels[c]] = {
            "support": support,
            "case_groups": len(np.unique(groups[y == c])),
            "named": n_named,
            "named_case_groups": int((named_counts[:, c] > 0).sum()),
            "correct": n_correct,
            "correct_case_groups": int((correct_counts[:, c] > 0).sum()),
            "precision": n_correct / n_named if n_named else None,
            "precision_ci95": ci,
            "recall": n_correct / support if support else None,
        }
    return out


def reportable(entry: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a type passes the rule, and why not."""
    ci = entry.get("precision_ci95")
    if not entry.get("named") or ci is None:
        return False, "never named"
    if ci[0] < MIN_PRECISION_CI_LOW:
        return False, f"precision 95% CI lower bound {ci[0]:.2f} < {MIN_PRECISION_CI_LOW}"
    if entry["correct_case_groups"] < MIN_CORRECT_GROUPS:
        return False, f"correct in {entry['correct_case_groups']} case groups < {MIN_CORRECT_GROUPS}"
    return True, "meets the rule"


def choose_type_threshold(
    named: np.ndarray, probability: np.ndarray, y: np.ndarray, groups: np.ndarray, allowed: set[int]
) -> float | None:
    """The lowest calibrated P(type | abnormal) from which the validation namings of the ``allowed``
    types are right at least :data:`MIN_PRECISION_CI_LOW` of the time, with correct namings from at
    least :data:`MIN_VAL_CORRECT_GROUPS` case groups; None when no threshold does (no type named)."""
    mask = np.isin(named, sorted(allowed)) if allowed else np.zeros(len(named), bool)
    for t in np.unique(probability[mask]):
        keep = mask & (probability >= t)
        right = keep & (named == y)
        if right.sum() / keep.sum() >= MIN_PRECISION_CI_LOW and len(np.unique(groups[right])) >= MIN_VAL_CORRECT_GROUPS:
            return float(t)
    return None


def precision_at(
    named: np.ndarray, probability: np.ndarray, y: np.ndarray, thresholds: tuple[float, ...] = (0.0, 0.5, 0.7, 0.9)
) -> list[dict[str, Any]]:
    """Pooled precision of every named type at a few calibrated-probability thresholds (information)."""
    out = []
    for t in thresholds:
        keep = (named >= 0) & (probability >= t)
        out.append(
            {
                "threshold": t,
                "named": int(keep.sum()),
                "precision": float((named[keep] == y[keep]).mean()) if keep.any() else None,
            }
        )
    return out
