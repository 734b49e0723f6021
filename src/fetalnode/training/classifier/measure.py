"""The classifier's metrics, the as-deployed figures, its calibration and the malformation-type reporting rule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fetalnode.inference.calibration import Calibration
from fetalnode.training.calibration import (
    ECE_BINS,
    MIN_CORRECT_GROUPS,
    MIN_PRECISION_CI_LOW,
    MIN_VAL_CORRECT_GROUPS,
    calibration_errors,
    choose_type_threshold,
    cross_fitted,
    fit_calibration,
    named_types,
    precision_at,
    reportable,
    type_precision,
)
from fetalnode.training.classifier.data import NORMAL, CropSet
from fetalnode.training.data import bootstrap_ci
from fetalnode.training.metadata import ClsMetrics, checked
from fetalnode.training.metrics import auroc, balanced_accuracy, confusion, macro_f1, per_class


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], groups: np.ndarray) -> ClsMetrics:
    """The metric set of ``fetalnode evaluate`` with group-bootstrap 95% CIs."""
    k = len(labels)
    normal = labels.index(NORMAL)
    pred = probs.argmax(1)
    cm = confusion(y, pred, k)
    precision, recall, _ = per_class(cm)
    out: dict[str, Any] = {
        "n": len(y),
        "n_groups": len(np.unique(groups)),
        "accuracy": float((pred == y).mean()),
        "accuracy_ci95": bootstrap_ci(pred == y, groups, lambda i: (pred[i] == y[i]).mean()),
        "balanced_accuracy": balanced_accuracy(y, pred, k),
        "balanced_accuracy_ci95": bootstrap_ci(y, groups, lambda i: balanced_accuracy(y[i], pred[i], k)),
        "macro_f1": macro_f1(y, pred, k),
        "macro_f1_ci95": bootstrap_ci(y, groups, lambda i: macro_f1(y[i], pred[i], k)),
        "per_class": {
            labels[c]: {"support": int(cm[c].sum()), "precision": _num(precision[c]), "recall": _num(recall[c])}
            for c in range(k)
            if cm[c].sum() or cm[:, c].sum()
        },
        "confusion_matrix": cm.tolist(),
    }
    out.update(abnormal_figures(1 - probs[:, normal], (y != normal).astype(int), groups))
    return checked(ClsMetrics, out, "metrics")


def abnormal_figures(p_abn: np.ndarray, is_abn: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Normal vs abnormal at the node's threshold (0.5): sensitivity, specificity, AUROC with its
    group-bootstrap 95% CI (AUROC None when only one of the two is present)."""
    pred_abn = p_abn >= 0.5
    out: dict[str, Any] = {
        "abnormal_sensitivity": float(pred_abn[is_abn == 1].mean()) if is_abn.any() else None,
        "abnormal_specificity": float(1 - pred_abn[is_abn == 0].mean()) if (is_abn == 0).any() else None,
        "abnormal_auroc": auroc_or_none(p_abn, is_abn),
    }
    if out["abnormal_auroc"] is not None:
        out["abnormal_auroc_ci95"] = bootstrap_ci(is_abn, groups, lambda i: auroc(p_abn[i], is_abn[i]))
    return out


def as_deployed(
    probs: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    found: np.ndarray,
    normal: int,
    baseline: np.ndarray | None = None,
) -> dict[str, Any]:
    """Normal vs abnormal on the images the node would classify: those where the segmentation's gate
    found a head (elsewhere it answers "not analysed"; the other classifier figures score the whole
    image there). ``baseline``: the trivial baseline's scores on the same images, for comparison."""
    keep = np.nonzero(found)[0]
    is_abn = (y[keep] != normal).astype(int)
    out: dict[str, Any] = {"n": len(keep), "not_analysed": len(y) - len(keep), "n_groups": len(np.unique(groups[keep]))}
    out.update(abnormal_figures(1 - probs[keep, normal], is_abn, groups[keep]))
    if baseline is not None:
        out["baseline_intensity_abnormal_auroc"] = auroc_or_none(baseline[keep], is_abn)
    return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


TYPE_RULE = (
    "a malformation type is named only if (1) under grouped cross-validation, as the node answers (images with a "
    "head, called abnormal, the most probable type named), its precision has a 95% CI lower bound (bootstrap by "
    f"case group) >= {MIN_PRECISION_CI_LOW} and its correct namings come from >= {MIN_CORRECT_GROUPS} case groups; "
    "and (2) on the image, its calibrated P(type | abnormal) >= type_probability_threshold, the lowest value from "
    f"which the validation namings of the reportable types are right >= {MIN_PRECISION_CI_LOW} of the time with "
    f"correct namings from >= {MIN_VAL_CORRECT_GROUPS} case groups (none: no type is named). Otherwise an abnormal "
    "finding says 'type not determined'."
)


def type_evidence(
    labels: list[str],
    normal: int,
    val: CropSet,
    val_logits: np.ndarray,
    test: CropSet,
    test_logits: np.ndarray,
    cv: dict[str, Any] | None,
    pooled: CropSet,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle's ``calibration`` and ``type_reporting`` blocks (see :mod:`fetalnode.training.calibration`).

    Everything is measured on the images where a head was found: the only ones the node classifies.
    Temperatures: the validation split. ECE before/after: the test split, and the grouped-CV
    out-of-fold predictions with cross-fitted temperatures (each fold's from the other folds).
    Reportable types: grouped CV (none without it); the per-image threshold: the validation split.
    """
    vf, tf = np.nonzero(val.found)[0], np.nonzero(test.found)[0]
    cal = fit_calibration(val_logits[vf], val.y[vf], normal)
    raw = Calibration()
    calibration: dict[str, Any] = {
        "method": "temperature scaling (Guo et al., ICML 2017): P(abnormal) = sigmoid(z / abnormal_temperature), "
        "z = log-odds of abnormal under the softmax; P(type | abnormal) = softmax(malformation logits / "
        "type_temperature); each temperature minimises the negative log-likelihood on the validation split. "
        "No decision changes (the 0.5 call and the most probable type are the same), only the confidences.",
        "abnormal_temperature": cal.abnormal_temperature,
        "type_temperature": cal.type_temperature,
        "fitted_on": {
            "split": "val (images with a head)",
            "images": len(vf),
            "abnormal_images": int((val.y[vf] != normal).sum()),
            "case_groups": len(np.unique(val.groups[vf])),
        },
        "ece_bins": ECE_BINS,
        "test": calibration_errors(test_logits[tf], test.y[tf], test.groups[tf], normal, {"before": raw, "after": cal}),
    }
    validation_named, validation_p = named_types(val_logits[vf], normal, cal)
    test_named, _ = named_types(test_logits[tf], normal, cal)
    rule: dict[str, Any] = {
        "rule": TYPE_RULE,
        "min_precision_ci_low": MIN_PRECISION_CI_LOW,
        "min_correct_case_groups": MIN_CORRECT_GROUPS,
        "min_val_correct_case_groups": MIN_VAL_CORRECT_GROUPS,
        "reportable_types": [],
        "type_probability_threshold": None,
        "grouped_cv": None,
        "test": type_precision(test_named, test.y[tf], test.groups[tf], labels, normal),
        "validation_precision_at": precision_at(validation_named, validation_p, val.y[vf]),
    }
    if cv is None:
        rule["why_none"] = "no grouped cross-validation was run (--cv-folds 0): no evidence for any type"
        return calibration, rule
    pf = np.nonzero(pooled.found)[0]
    logits, y, groups = cv["logits"][pf], pooled.y[pf], pooled.groups[pf]
    calibration["grouped_cv"] = calibration_errors(
        logits, y, groups, normal, {"before": raw, "after": cross_fitted(logits, y, cv["fold"][pf], normal)}
    )
    # The 0.5 call and the most probable type do not depend on the temperatures: the raw ones name the same.
    cv_named, _ = named_types(logits, normal, raw)
    table = type_precision(cv_named, y, groups, labels, normal)
    for entry in table.values():
        entry["reportable"], entry["why"] = reportable(entry)
    abnormal_support = [e["support"] for e in table.values()]
    rule["grouped_cv"] = table
    rule["most_frequent_type_share"] = max(abnormal_support) / max(sum(abnormal_support), 1)
    rule["reportable_types"] = [label for label, e in table.items() if e["reportable"]]
    allowed = {labels.index(label) for label in rule["reportable_types"]}
    rule["type_probability_threshold"] = choose_type_threshold(
        validation_named, validation_p, val.y[vf], val.groups[vf], allowed
    )
    if not rule["reportable_types"]:
        rule["why_none"] = "no type meets the grouped-CV precision rule"
    elif rule["type_probability_threshold"] is None:
        rule["why_none"] = "no calibrated-probability threshold meets the rule on the validation split"
    return calibration, rule


def type_limits(probs: np.ndarray, data: CropSet, labels: list[str]) -> dict[str, Any]:
    """What bounds the malformation-type figure under grouped cross-validation.

    A class whose images all come from one case group has no training example whenever that group
    is held out, so its recall is 0 by construction: the best reachable balanced accuracy is the
    share of classes with at least two groups. Also the balanced accuracy over the classes with at
    least three groups (where a held-out group still leaves two to learn from).
    """
    groups_per_class = {labels[c]: len(np.unique(data.groups[data.y == c])) for c in np.unique(data.y)}
    _, recall, _ = per_class(confusion(data.y, probs.argmax(1), len(labels)))
    multi = [labels.index(k) for k, n in groups_per_class.items() if n >= 3]
    return {
        "case_groups_per_class": groups_per_class,
        "balanced_accuracy_ceiling": sum(n >= 2 for n in groups_per_class.values()) / len(groups_per_class),
        "balanced_accuracy_classes_with_3plus_groups": float(np.nanmean(recall[multi])) if multi else None,
        "classes_with_3plus_groups": len(multi),
    }


def auroc_or_none(scores: np.ndarray, positives: np.ndarray) -> float | None:
    try:
        return auroc(scores, positives)
    except ValueError:
        return None
