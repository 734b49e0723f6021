"""Train the malformation classifier on ROI crops of a fetal_brain_abnormalities-format folder.

The ROI comes from the shipped segmentation bundle through the same code the worker runs
(``locate_head`` -> ``roi_crop``); where no head is found the whole image is used, padded square
(fitted on only with ``heads_only=False``; always scored, and reported apart from the images with a head).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fetalnode.inference.analyzer import locate_head, seg_settings
from fetalnode.inference.bundle import Bundle, history_section, load_bundle, save_bundle
from fetalnode.inference.calibration import Calibration
from fetalnode.inference.networks import build_classifier_net, transfer_unet_encoder
from fetalnode.inference.preprocess import roi_crop, to_unit_range
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
from fetalnode.training.data import Row, bootstrap_ci, case_split, load_gray, read_labels, subject_split
from fetalnode.training.early_stopping import EarlyStopping
from fetalnode.training.metrics import auroc, balanced_accuracy, confusion, macro_f1, per_class
from fetalnode.training.pretrain import PretrainRecipe, pretrain_base
from fetalnode.training.reference import CLS_FOLDER, no_reference_line, reference_name

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


def logistic_baseline(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, seed: int) -> np.ndarray:
    """L2 logistic regression (standardised features) -> probabilities on ``xte``."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a = torch.from_numpy((xtr - mu) / sd)
    b = torch.from_numpy(ytr.astype(np.float32))
    torch.manual_seed(seed)
    lin = torch.nn.Linear(a.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(a)[:, 0], b) + 1e-2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.sigmoid(lin(torch.from_numpy((xte - mu) / sd))[:, 0]).numpy()


def classifier_reference(
    cls_net: torch.nn.Module, seg: Bundle, root: Path, roi_size: int, margin: float, n: int = 4
) -> list[dict[str, Any]]:
    """Class probabilities on the first ``n`` images of ``root/fba_mini``, through the training crops."""
    folder = root / CLS_FOLDER
    rows = read_labels(folder)[:n]
    crops, _ = roi_crops(seg, folder, rows, roi_size, margin)
    probs = predict(cls_net, crops)
    return [
        {"image": reference_name(root, folder / r["filename"]), "probabilities": [round(float(x), 6) for x in p]}
        for r, p in zip(rows, probs, strict=True)
    ]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-2)
    gamma = torch.exp(torch.empty(x.shape[0], 1, 1, 1).uniform_(-0.3, 0.3, generator=gen))
    return x.clamp(0, 1) ** gamma


def predict_logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The network's class logits (N, K) on crops (N, size, size)."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            out.append(net(torch.from_numpy(x[i : i + 64])[:, None]).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Uncalibrated class probabilities (the softmax of :func:`predict_logits`)."""
    return torch.softmax(torch.from_numpy(predict_logits(net, x)), dim=1).numpy()


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], groups: np.ndarray) -> dict[str, Any]:
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
    return out


def abnormal_figures(p_abn: np.ndarray, is_abn: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Normal vs abnormal at the node's threshold (0.5): sensitivity, specificity, AUROC with its
    group-bootstrap 95% CI (AUROC None when only one of the two is present)."""
    pred_abn = p_abn >= 0.5
    out: dict[str, Any] = {
        "abnormal_sensitivity": float(pred_abn[is_abn == 1].mean()) if is_abn.any() else None,
        "abnormal_specificity": float(1 - pred_abn[is_abn == 0].mean()) if (is_abn == 0).any() else None,
        "abnormal_auroc": _auroc_or_none(p_abn, is_abn),
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
        out["baseline_intensity_abnormal_auroc"] = _auroc_or_none(baseline[keep], is_abn)
    return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


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


def abnormal_nll(log_p: torch.Tensor, is_abnormal: torch.Tensor, normal: int) -> torch.Tensor:
    """Per-image negative log-likelihood of normal vs abnormal, P(abnormal) = 1 - P(normal)."""
    others = torch.cat([log_p[:, :normal], log_p[:, normal + 1 :]], dim=1)
    return -torch.where(is_abnormal, torch.logsumexp(others, dim=1), log_p[:, normal])


def fit(
    train: CropSet,
    val: CropSet | None,
    n_classes: int,
    recipe: ClsRecipe,
    base: dict[str, torch.Tensor] | None,
    normal: int,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train; early stopping on ``val`` loss when given, else ``recipe.epochs`` epochs.

    ``base``: starting weights of the base stages (``base.*`` tensors, see :func:`initial_base`);
    ``None`` starts them at random. ``normal``: index of the normal class (for
    ``recipe.abnormal_weight``; the validation loss then adds the same term, unweighted).
    """
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    net = build_classifier_net(classifier_params(recipe, n_classes))
    if base is not None:
        net.load_state_dict(base, strict=False)
    counts = np.bincount(train.y, minlength=n_classes).astype(np.float32)
    weights = torch.from_numpy(np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)).float()
    weights = weights / weights[counts > 0].mean()
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    n_abn = int((train.y != normal).sum())
    # Normals and abnormals carry half of the extra term each (a missing side weighs nothing).
    side_w = torch.tensor([len(train.y) / (2 * max(len(train.y) - n_abn, 1)), len(train.y) / (2 * max(n_abn, 1))])

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(logits, y)
        if recipe.abnormal_weight:
            abn = y != normal
            term = abnormal_nll(torch.log_softmax(logits, dim=1), abn, normal) * side_w[abn.long()]
            loss = loss + recipe.abnormal_weight * term.mean()
        return loss

    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    xtr = torch.from_numpy(train.x)[:, None]
    ytr = torch.from_numpy(train.y)
    stopping, history = EarlyStopping(recipe.patience, recipe.max_minutes), []
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        losses = []
        for i in tqdm(range(0, len(perm), recipe.batch_size), desc=f"cls epoch {epoch}", leave=False):
            idx = perm[i : i + recipe.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss = objective(net(_augment(xtr[idx], gen)), ytr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        record: dict[str, float] = {"epoch": epoch, "loss": float(np.mean(losses))}
        if val is not None and len(val):
            pv = predict(net, val.x)
            log_pv = torch.from_numpy(np.log(np.clip(pv, 1e-7, 1)))
            record["val_loss"] = float(-log_pv[np.arange(len(pv)), val.y].mean())
            if recipe.abnormal_weight:
                nll = abnormal_nll(log_pv, torch.from_numpy(val.y != normal), normal).mean()
                record["val_loss"] += recipe.abnormal_weight * float(nll)
            record["val_bacc"] = balanced_accuracy(val.y, pv.argmax(1), n_classes)
            stopping.update(record["val_loss"], epoch, net)
        history.append(record)
        log.info("epoch %s", {k: round(v, 4) for k, v in record.items()})
        if stopping.stop():
            break
    stopping.restore(net)
    return net, history


def classifier_params(recipe: ClsRecipe, n_classes: int) -> dict[str, Any]:
    return {"channels": list(recipe.channels), "fc": list(recipe.fc), "n_classes": n_classes, "dropout": recipe.dropout}


def initial_base(
    recipe: ClsRecipe, seg: Bundle, n_classes: int
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The base stages' starting weights for ``recipe.base_init``, computed once for the model and every CV fold.

    ``segmentation``: the segmentation bundle's encoder (transfer from our own model); ``contrastive``:
    self-supervised pretraining on the unlabelled ROI crops of ``recipe.pretrain_data``; ``random``: none.
    """
    if recipe.base_init == "random":
        return None, {}
    net = build_classifier_net(classifier_params(recipe, n_classes))
    if recipe.base_init == "segmentation":
        levels = len(seg.metadata["network"]["params"]["channels"])
        copied = transfer_unet_encoder(net, seg.net.state_dict(), levels)
        log.info("base initialised from %s %s encoder: %d tensors", seg.name, seg.version, copied)
        info: dict[str, Any] = {"tensors_copied": copied}
    elif recipe.base_init == "contrastive":
        if not recipe.pretrain_data:
            raise ValueError("base_init 'contrastive' needs pretrain_data (folders of unlabelled images)")
        crops = np.concatenate([unlabelled_crops(seg, Path(f), recipe) for f in recipe.pretrain_data])
        info = pretrain_base(net, crops, PretrainRecipe(epochs=recipe.pretrain_epochs, seed=recipe.seed))
        info["folders"] = list(recipe.pretrain_data)
    else:
        raise ValueError(f"unknown base_init {recipe.base_init!r} (segmentation, contrastive or random)")
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith("base.")}, info


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


def grouped_cv(
    data: CropSet, n_classes: int, normal: int, recipe: ClsRecipe, folds: int, base: dict[str, torch.Tensor] | None
) -> dict[str, Any]:
    """Out-of-fold predictions by case group (each group in exactly one fold), fixed epochs.

    The same folds also give the trivial baselines' out-of-fold normal-vs-abnormal scores (logistic
    regression on whole-image and on equalised-crop intensity statistics) and the classifier's
    predictions with horizontal-flip test-time augmentation, so they compare side by side.
    """
    uniq = np.array(sorted(set(data.groups.tolist())))
    rng = np.random.default_rng(recipe.seed)
    rng.shuffle(uniq)
    fold_of = {g: i % folds for i, g in enumerate(uniq)}
    fold = np.array([fold_of[g] for g in data.groups])
    logits = np.zeros((len(data), n_classes), dtype=np.float32)
    probs = np.zeros((len(data), n_classes))
    probs_flip = np.zeros((len(data), n_classes))
    features = {"intensity": data.intensity, "equalised_crop": crop_features(data.x)}
    baselines = {name: np.zeros(len(data)) for name in features}
    for k in range(folds):
        tr, te = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        if recipe.heads_only:
            # The fold's classifier and its baselines fit on the same images: those with a head.
            tr = tr[data.found[tr]]
        net, _ = fit(data.take(tr), None, n_classes, recipe, base, normal)
        logits[te] = predict_logits(net, data.x[te])
        probs[te] = torch.softmax(torch.from_numpy(logits[te]), dim=1).numpy()
        probs_flip[te] = predict(net, data.x[te][:, :, ::-1].copy())
        y_abn = (data.y[tr] != normal).astype(int)
        for name, feats in features.items():
            baselines[name][te] = logistic_baseline(feats[tr], y_abn, feats[te], recipe.seed)
    return {
        "folds": folds,
        "fold": fold,
        "logits": logits,
        "probs": probs,
        "probs_tta": (probs + probs_flip) / 2,
        "baselines": baselines,
    }


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


def train_classifier(
    data: Path,
    seg_path: Path,
    out: Path,
    recipe: ClsRecipe,
    name: str,
    version: str,
    reference_data: Path | None = None,
) -> dict[str, Any]:
    """Train, calibrate, choose the type reporting rule, measure the test split, write the bundle
    (``reference_data``: the folder of the reference images, see :mod:`fetalnode.training.reference`)."""
    recipe_start = time.monotonic()
    rows, dropped = usable_rows(data)
    labels = sorted({r["label"] for r in rows})
    if NORMAL not in labels:
        raise ValueError(f"{data}: no '{NORMAL}' class")
    splits = case_split(rows, recipe.seed)
    if recipe.limit:
        splits = {k: v[: recipe.limit if k == "train" else max(4, recipe.limit // 2)] for k, v in splits.items()}
    log.info(
        "split by case_group (stratified by label): %s; %d label-conflict rows dropped",
        {k: len(v) for k, v in splits.items()},
        dropped,
    )
    seg = load_bundle(seg_path, "segmentation")
    sets = {k: crop_rows(seg, data, v, labels, recipe) for k, v in splits.items()}
    extra_info: dict[str, Any] = {}
    shift_test: CropSet | None = None
    if recipe.extra_normals:
        # Heads of another source (HC18) as extra normals: train/val parts of the segmentation's own
        # split only, so the HC18 test heads stay unseen and measure the source shift.
        hc_rows = read_labels(recipe.extra_normals)
        hc_split = subject_split(hc_rows, recipe.seed)
        take = {"train": recipe.extra_normals_n, "val": max(1, recipe.extra_normals_n // 5)}
        for part, n in take.items():
            extra = crop_rows(
                seg, Path(recipe.extra_normals), hc_split[part][:n], labels, recipe, group_col="subject_group"
            )
            sets[part] = CropSet.concat([sets[part], extra])
        shift_test = crop_rows(
            seg, Path(recipe.extra_normals), hc_split["test"], labels, recipe, group_col="subject_group"
        )
        extra_info = {"extra_normals": str(recipe.extra_normals), "train": take["train"], "val": take["val"]}
    # What the network is fitted on; everything measured below (test, baselines, cross-validation pool)
    # keeps every image.
    fitting = {part: sets[part] for part in ("train", "val")}
    if recipe.heads_only:
        fitting = {part: s.take(np.nonzero(s.found)[0]) for part, s in fitting.items()}
        log.info("heads only: fitting on %s images", {k: len(v) for k, v in fitting.items()})
        if not len(fitting["train"]) or not len(fitting["val"]):
            raise ValueError(
                f"--heads-only: {seg.name} {seg.version} found no head in the training or validation images"
            )
    base, base_info = initial_base(recipe, seg, len(labels))
    start = time.monotonic()
    normal = labels.index(NORMAL)
    net, history = fit(fitting["train"], fitting["val"], len(labels), recipe, base, normal)
    minutes = (time.monotonic() - start) / 60
    test = sets["test"]
    test_logits = predict_logits(net, test.x)
    test_probs = torch.softmax(torch.from_numpy(test_logits), dim=1).numpy()
    metrics = classification_metrics(test_probs, test.y, labels, test.groups)
    metrics["split"] = "test (15% of case groups per class with >=3 groups; never used for training or early stopping)"
    metrics["head_found_rate"] = float(test.found.mean())
    test_abn = (test.y != normal).astype(int)
    # The whole-image baseline learns from this dataset's training images only: sets["train"] holds
    # them first, then any extra normals.
    own = sets["train"].take(np.arange(len(splits["train"])))
    test_baseline = logistic_baseline(own.intensity, (own.y != normal).astype(int), test.intensity, recipe.seed)
    metrics["baseline_intensity_logreg_abnormal_auroc"] = _auroc_or_none(test_baseline, test_abn)
    crop_feats = {s: crop_features(sets[s].x) for s in ("train", "test")}
    metrics["baseline_equalised_crop_logreg_abnormal_auroc"] = _auroc_or_none(
        logistic_baseline(
            crop_feats["train"], (sets["train"].y != normal).astype(int), crop_feats["test"], recipe.seed
        ),
        test_abn,
    )
    metrics["as_deployed"] = as_deployed(test_probs, test.y, test.groups, test.found, normal, test_baseline)
    if shift_test is not None and len(shift_test):
        p_abn = 1 - predict(net, shift_test.x)[:, normal]
        metrics["source_shift_hc18_test_heads"] = {
            "n": len(shift_test),
            "groups": len(np.unique(shift_test.groups)),
            "specificity": float((p_abn < 0.5).mean()),
            "specificity_ci95": bootstrap_ci(p_abn, shift_test.groups, lambda i: (p_abn[i] < 0.5).mean()),
            "note": "HC18 test-split heads (presumed normal, another source) never seen in training",
        }
    cv: dict[str, Any] | None = None
    pooled = CropSet.concat([sets["train"], sets["val"], sets["test"]])
    if recipe.cv_folds > 1:
        # Each fold trains as long as the final model did until its best validation epoch.
        best_epoch = 1 + int(np.argmin([h.get("val_loss", np.inf) for h in history]))
        cv_recipe = dataclasses.replace(recipe, epochs=best_epoch)
        cv = grouped_cv(pooled, len(labels), normal, cv_recipe, recipe.cv_folds, base)
        cvm = classification_metrics(cv["probs"], pooled.y, labels, pooled.groups)
        tta = classification_metrics(cv["probs_tta"], pooled.y, labels, pooled.groups)
        metrics["grouped_cv"] = {
            k: cvm[k]
            for k in (
                "n",
                "n_groups",
                "accuracy",
                "balanced_accuracy",
                "balanced_accuracy_ci95",
                "macro_f1",
                "macro_f1_ci95",
                "abnormal_auroc",
                "abnormal_auroc_ci95",
                "per_class",
            )
        }
        metrics["grouped_cv"]["folds"] = recipe.cv_folds
        metrics["grouped_cv"]["epochs_per_fold"] = cv_recipe.epochs
        metrics["grouped_cv"]["tta_hflip"] = {k: tta[k] for k in ("balanced_accuracy", "macro_f1", "abnormal_auroc")}
        y_abn = (pooled.y != normal).astype(int)
        metrics["grouped_cv"]["baseline_abnormal_auroc"] = {
            name: _auroc_or_none(scores, y_abn) for name, scores in cv["baselines"].items()
        }
        metrics["grouped_cv"]["type_limits"] = type_limits(cv["probs"], pooled, labels)
        metrics["grouped_cv"]["as_deployed"] = as_deployed(
            cv["probs"], pooled.y, pooled.groups, pooled.found, normal, cv["baselines"]["intensity"]
        )
    calibration, type_reporting = type_evidence(
        labels, normal, fitting["val"], predict_logits(net, fitting["val"].x), test, test_logits, cv, pooled
    )
    test_classes = sorted({labels[i] for i in test.y})
    metadata: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": "classification",
        "description": "Normal vs malformation and malformation type on the fetal head ROI.",
        "intended_use": "RESEARCH USE ONLY, NOT FOR DIAGNOSIS",
        "network": {
            "class": "fetalnode.inference.networks.HeadClassifier",
            "params": {
                "channels": list(recipe.channels),
                "fc": list(recipe.fc),
                "n_classes": len(labels),
                "dropout": recipe.dropout,
            },
        },
        "input": {
            "roi_size": recipe.roi_size,
            "roi_margin": recipe.roi_margin,
            "roi": "segmentation ellipse box + margin, zero-padded square, histogram-equalised",
            "segmentation_bundle": f"{seg.name} {seg.version}",
        },
        "labels": labels,
        "normal_label": NORMAL,
        "abnormal_threshold": 0.5,
        "calibration": calibration,
        "type_reporting": type_reporting,
        "training_data": [
            {
                "name": "Fetal Brain Abnormalities Ultrasound v1 (Roboflow Universe), shared part",
                "citation": "https://universe.roboflow.com/hritwik-trivedi-gkgrv/fetal-brain-abnormalities-ultrasound; "
                "normals from FETAL_PLANES_DB, Burgos-Artizzu et al., Sci Rep 10:10200 (2020)",
                "licence": "CC BY 4.0 (as stated by the Roboflow export)",
                "splits": {
                    k: {"images": len(v), "groups": len({r["case_group"] for r in v})} for k, v in splits.items()
                },
                "split_by": "case_group, stratified by label",
                "seed": recipe.seed,
                "label_conflict_rows_dropped": dropped,
                "test_classes": test_classes,
            }
        ],
        "training": {
            "epochs_run": len(history),
            "minutes": round(minutes, 1),
            "device": "cpu",
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()},
            "history": history,
            "base_init": base_info,
            "fitted_images": {k: len(v) for k, v in fitting.items()},
        },
        "metrics": metrics,
    }
    if extra_info:
        metadata["training_data"].append(
            {
                "name": "HC18 heads as extra 'normal' images (another source)",
                "citation": "van den Heuvel et al., PLoS ONE 13(8): e0200412 (2018), doi:10.5281/zenodo.1327317",
                "licence": "CC BY 4.0",
                **extra_info,
            }
        )
    if reference_data is None:
        log.warning("%s: no --reference-data, so no reference outputs are stored", out)
    else:
        metadata["reference_outputs"] = {
            "segmentation_bundle": f"{seg.name} {seg.version}",
            "images": classifier_reference(net, seg, reference_data, recipe.roi_size, recipe.roi_margin),
        }
    metadata["training"]["recipe_minutes"] = round((time.monotonic() - recipe_start) / 60, 1)
    return save_bundle(out, net, metadata, cls_model_card)


def base_init_line(meta: dict[str, Any]) -> str:
    """Where the base network's weights started: the segmentation encoder (transfer) or random."""
    if meta["training"]["recipe"].get("base_init") == "segmentation":
        return (
            f"The base stages were initialised from the encoder of `{meta['input']['segmentation_bundle']}` "
            "(transfer from our own segmentation model, tensor by tensor where shapes agree), then fine-tuned."
        )
    if meta["training"]["recipe"].get("base_init") == "contrastive":
        info = meta["training"].get("base_init", {})
        return (
            f"The base stages were pretrained self-supervised (contrastive, SimCLR-style) on {info.get('images')} "
            f"unlabelled ROI crops of {info.get('folders')} ({info.get('minutes')} min), then fine-tuned."
        )
    return "The base network was trained from random initialisation."


def recipe_time(meta: dict[str, Any]) -> str:
    total = meta["training"].get("recipe_minutes")
    return f"; the whole recipe (ROI crops, fitting, baselines, cross-validation) took {total} minutes" if total else ""


def extra_data_line(meta: dict[str, Any]) -> str:
    """The extra 'normal' heads from another source, when used."""
    extra = meta["training_data"][1:] if len(meta["training_data"]) > 1 else []
    return "".join(
        f"Extra normals: {e['train']} training and {e['val']} validation images from the training/validation split of "
        f"{e['name']} ({e['citation']}; {e['licence']}); its test split is kept for the source-shift check below; "
        "the grouped cross-validation pools them with the shared images.\n"
        for e in extra
    )


def cv_side_by_side(cv: dict[str, Any]) -> str:
    """Model-card lines for the baselines, TTA and type limits measured on the same folds (when present)."""
    if "baseline_abnormal_auroc" not in cv:
        return ""
    base, tta, lim = cv["baseline_abnormal_auroc"], cv["tta_hflip"], cv["type_limits"]
    per_class = ", ".join(f"{k} {n}" for k, n in lim["case_groups_per_class"].items())
    return f"""
On the same folds: trivial baselines (logistic regression on intensity statistics) reach normal-vs-abnormal
AUROC {_r(base["intensity"])} (whole images) and {_r(base["equalised_crop"])} (equalised ROI crops); the
classifier with horizontal-flip test-time augmentation: balanced accuracy {_r(tta["balanced_accuracy"])},
AUROC {_r(tta["abnormal_auroc"])}. What limits the type figure: case groups per class:
{per_class}; a class with one group is never in training when it is tested, so the
reachable balanced accuracy is at most {_r(lim["balanced_accuracy_ceiling"])}; over the
{lim["classes_with_3plus_groups"]} classes with at least three groups it is
{_r(lim["balanced_accuracy_classes_with_3plus_groups"])}."""


def fitting_line(meta: dict[str, Any]) -> str:
    """The loss (when it has the normal-vs-abnormal term) and whether fitting used only the images with a head."""
    recipe = meta["training"].get("recipe", {})
    weight = recipe.get("abnormal_weight") or 0
    loss = f"loss: 16-class cross-entropy + {weight:g} × normal-vs-abnormal cross-entropy; " if weight else ""
    if recipe.get("heads_only"):
        return f"{loss}fitted (and cross-validated) only on the images where a head was found, "
    return f"{loss}fitted on the ROI crops, and on the whole image where no head was found, "


def deployed_row(d: dict[str, Any] | None, where: str) -> str:
    """A model-card table row: normal vs abnormal on the images where a head is found, with the baseline."""
    if not d:
        return ""
    auc = _r(d["abnormal_auroc"])
    lo, hi = d.get("abnormal_auroc_ci95", (math.nan, math.nan))
    interval = "n/a" if math.isnan(lo) else f"{lo:.3f}–{hi:.3f}"
    return (
        f"| as the node answers ({where}, head found: {d['n']} images, {d['not_analysed']} not analysed): "
        f"AUROC / trivial baseline / sensitivity / specificity | {auc} / {_r(d.get('baseline_intensity_abnormal_auroc'))}"
        f" / {_r(d['abnormal_sensitivity'])} / {_r(d['abnormal_specificity'])} | AUROC {interval} |\n"
    )


def _r(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


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


def extra_sections(m: dict[str, Any]) -> str:
    """Model-card sections for the source-shift check and grouped cross-validation, when measured."""
    out = []
    shift = m.get("source_shift_hc18_test_heads")
    if shift:
        lo, hi = shift["specificity_ci95"]
        out.append(f"""## Normal vs abnormal when the source changes
On {shift["n"]} HC18 test-split heads ({shift["groups"]} subjects; presumed normal, another centre and scanner,
never seen in training) the model calls {shift["specificity"]:.3f} of them normal (95% CI {lo:.3f}–{hi:.3f}).
Other HC18 subjects' heads are among the training normals (extra normals above), so this measures new subjects
from a source the model was taught as normal, not a source it has never seen.
""")
    cv = m.get("grouped_cv")
    if cv:
        b, f1 = cv["balanced_accuracy_ci95"], cv["macro_f1_ci95"]
        out.append(f"""## Malformation type by grouped cross-validation
{cv["folds"]}-fold cross-validation by case group over all shared images ({cv["n"]} images, {cv["n_groups"]} groups;
{cv["epochs_per_fold"]} epochs per fold, no early stopping): balanced accuracy {cv["balanced_accuracy"]:.3f}
(95% CI {b[0]:.3f}–{b[1]:.3f}), macro F1 {cv["macro_f1"]:.3f} ({f1[0]:.3f}–{f1[1]:.3f}), normal-vs-abnormal AUROC
{cv["abnormal_auroc"] if cv["abnormal_auroc"] is None else round(cv["abnormal_auroc"], 3)}. Per class recall:
{", ".join(f"{k} {v['recall']:.2f} (n={v['support']})" for k, v in cv["per_class"].items() if v["support"])}.
{cv_side_by_side(cv)}
""")
    return "\n".join(out)


def what_type_line(meta: dict[str, Any]) -> str:
    """The model card's one line on the malformation type the node names."""
    rule = meta.get("type_reporting") or {}
    types = rule.get("reportable_types") or []
    if types and rule.get("type_probability_threshold") is not None:
        return (
            f"it names a malformation type only for {', '.join(types)}, from a calibrated P(type | abnormal) of "
            f'{rule["type_probability_threshold"]:.2f} (rule below), and otherwise says "type not determined".'
        )
    return (
        'it names **no** malformation type ("abnormal - type not determined"): no type meets the reporting rule below.'
    )


def _ci(v: Any) -> str:
    return "n/a" if not v or any(math.isnan(x) for x in v) else f"{v[0]:.3f}–{v[1]:.3f}"


def _ece_rows(block: dict[str, Any] | None, where: str) -> str:
    if not block:
        return ""
    rows = []
    for kind, what in (
        ("abnormal", "P(abnormal): the normal/abnormal call"),
        ("type", "P(type \\| abnormal): the most probable type"),
    ):
        before, after = block[kind]["before"], block[kind]["after"]
        n = (
            f"{block['n']} images / {block['n_groups']} groups"
            if kind == "abnormal"
            else (f"{block['n_abnormal']} abnormal images / {block['n_abnormal_groups']} groups")
        )
        rows.append(
            f"| {where} | {what} | {n} | {_r(before['ece'])} ({_ci(before['ece_ci95'])}) | "
            f"{_r(after['ece'])} ({_ci(after['ece_ci95'])}) |"
        )
    return "\n".join(rows) + "\n"


def calibration_section(meta: dict[str, Any]) -> str:
    """Model-card section: the temperatures and the ECE before and after on held-out data."""
    cal = meta.get("calibration")
    if not cal:
        return ""
    fitted = cal["fitted_on"]
    return f"""## Calibration
Temperature scaling (Guo et al., ICML 2017), fitted on the validation split ({fitted["images"]} images with a head,
{fitted["abnormal_images"]} abnormal, {fitted["case_groups"]} case groups): P(abnormal) = sigmoid(z / {cal["abnormal_temperature"]:.3f}),
z = the log-odds of abnormal under the softmax; P(type | abnormal) = softmax(malformation logits / {cal["type_temperature"]:.3f}).
The node shows only these calibrated probabilities. A temperature changes no decision (the 0.5 call and the
most probable type stay the same), only the confidences. Expected calibration error ({cal["ece_bins"]} equal-width bins of
the confidence of the answer given), 95% CI by case-group bootstrap, on images with a head:

| data | probability | n | ECE before (T = 1) | ECE after |
|---|---|---|---|---|
{_ece_rows(cal.get("test"), "test split (held out)")}{_ece_rows(cal.get("grouped_cv"), "grouped CV (temperatures cross-fitted: each fold's from the other folds' out-of-fold predictions)")}
{_not_lowered(cal)}"""


def _not_lowered(cal: dict[str, Any]) -> str:
    """A model-card sentence naming where the temperature did not lower the ECE (none: empty)."""
    worse = [
        f"{where} {kind} ({block[kind]['before']['ece']:.3f} -> {block[kind]['after']['ece']:.3f})"
        for where, block in (("test split", cal.get("test")), ("grouped CV", cal.get("grouped_cv")))
        if block
        for kind in ("abnormal", "type")
        if block[kind]["after"]["ece"] is not None and block[kind]["after"]["ece"] >= block[kind]["before"]["ece"]
    ]
    if not worse:
        return ""
    return (
        f"The temperatures did not lower the ECE of: {'; '.join(worse)}. Read the confidences with the intervals "
        "above: they are calibrated on the validation split, not guaranteed on a new case.\n"
    )


def type_rule_section(meta: dict[str, Any]) -> str:
    """Model-card section: the type reporting rule, its justification and the per-type evidence."""
    rule = meta.get("type_reporting")
    if not rule:
        return ""
    cv = rule.get("grouped_cv") or {}

    def prec(e: dict[str, Any]) -> str:
        return "n/a" if e.get("precision") is None else f"{e['precision']:.2f} ({_ci(e.get('precision_ci95'))})"

    cv_rows = "\n".join(
        f"| {label} | {e['support']} / {e['case_groups']} | {e['named']} | {prec(e)} | {_r(e['recall'])} | "
        f"{e['correct_case_groups']} | {'**yes**' if e['reportable'] else 'no: ' + e['why']} |"
        for label, e in cv.items()
    )
    test_rows = ", ".join(
        f"{label} {prec(e)} (named {e['named']}, support {e['support']})"
        for label, e in rule.get("test", {}).items()
        if e["named"] or e["support"]
    )
    at = "; ".join(
        f">= {a['threshold']:.1f}: {a['named']} named, precision {_r(a['precision'])}"
        for a in rule.get("validation_precision_at", [])
    )
    types = rule["reportable_types"]
    outcome = (
        f"Reportable: {', '.join(types)}, from a calibrated P(type | abnormal) of {rule['type_probability_threshold']}."
        if types and rule.get("type_probability_threshold") is not None
        else f"**No type is reportable** ({rule.get('why_none', '')}): every abnormal finding says "
        '"abnormal - type not determined" in the SR (Malformation type = (373068000, SCT, "Undetermined")), the '
        "Secondary Capture banner, the Presentation State text, the OB-GYN SR comments, the Orthanc panel and the triage list."
    )
    table = (
        f"""Grouped cross-validation, as the node answers (images with a head; a type is "named" when the image is
called abnormal and the type is the most probable one):

| type | images / case groups | named | precision (95% CI) | recall | case groups of the correct namings | reportable |
|---|---|---|---|---|---|---|
{cv_rows}
"""
        if cv
        else "No grouped cross-validation was run for this bundle: no type has evidence.\n"
    )
    share = rule.get("most_frequent_type_share")
    return f"""## Malformation type: what the node names
Rule (stored in `type_reporting`, applied by the node): {rule["rule"]}

Why this bar: a type name that is wrong more often than right misleads more than it informs, so a type must be
right more often than not, and with 95% confidence, on case groups the model never saw; the bound is on the
lower end of the interval because the per-type evidence is a handful of case groups. Correct namings from
fewer than {rule["min_correct_case_groups"]} case groups are augmented copies of one or two source images, not evidence that the type is
recognised in a new case. {"" if share is None else f"For scale: naming the most frequent malformation type for every abnormal image would be right for {share:.2f} of them."}

{table}
{outcome}

Held-out test split, same definition (information; types present or named): {test_rows or "none"}.
On the validation split, pooled precision of the named types by calibrated P(type | abnormal): {at or "n/a"}.
"""


def crop_features(x: np.ndarray) -> np.ndarray:
    """Global intensity statistics of the equalised ROI crops (the baseline after normalisation)."""
    flat = x.reshape(len(x), -1)
    hist = np.stack([np.histogram(v, bins=16, range=(0, 1))[0] for v in flat]) / flat.shape[1]
    pct = np.percentile(flat, (5, 25, 50, 75, 95), axis=1).T
    return np.concatenate([flat.mean(1, keepdims=True), flat.std(1, keepdims=True), pct, hist], 1).astype(np.float32)


def _auroc_or_none(scores: np.ndarray, positives: np.ndarray) -> float | None:
    try:
        return auroc(scores, positives)
    except ValueError:
        return None


def cls_model_card(meta: dict[str, Any]) -> str:
    m = meta["metrics"]
    td = meta["training_data"][0]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def ci(v: Any) -> str:
        return "n/a" if not v or any(math.isnan(x) for x in v) else f"{v[0]:.3f}–{v[1]:.3f}"

    return f"""# {meta["name"]} {meta["version"]} — fetal head malformation classifier

**{meta["intended_use"]}.** A prototype trained on ~{td["splits"]["train"]["groups"]} case groups of a small public
dataset; it must not be used to make or exclude any diagnosis.

## What it does
On the head ROI found by `{meta["input"]["segmentation_bundle"]}` ({meta["input"]["roi"]}, {meta["input"]["roi_size"]} px),
a residual CNN base ({meta["network"]["params"]["channels"]}) extended with {len(meta["network"]["params"]["fc"])}
extra fully-connected layers ({meta["network"]["params"]["fc"]}) outputs {len(meta["labels"])} classes:
{", ".join(meta["labels"])}. The node reports abnormal when its calibrated P(abnormal) >= {meta["abnormal_threshold"]};
{what_type_line(meta)} Grad-CAM on the last base stage gives the heatmap, of what is reported: the named type's logit, the log-odds of abnormal when no type is named, the normal logit for a normal finding.
{base_init_line(meta)}

## Training data
{td["name"]} — {td["citation"]}; licence {td["licence"]}. Split by {td["split_by"]} (seed {td["seed"]}):
{td["splits"]}. {td["label_conflict_rows_dropped"]} rows with conflicting labels were dropped.
Classes in the test split: {", ".join(td["test_classes"])}.
{extra_data_line(meta)}

## Metrics ({m["split"]})
| metric | value | 95% CI (bootstrap by case group) |
|---|---|---|
| n images / groups | {m["n"]} / {m["n_groups"]} | |
| accuracy (16 classes) | {f(m["accuracy"])} | {ci(m.get("accuracy_ci95"))} |
| balanced accuracy | {f(m["balanced_accuracy"])} | {ci(m.get("balanced_accuracy_ci95"))} |
| macro F1 | {f(m["macro_f1"])} | {ci(m.get("macro_f1_ci95"))} |
| normal vs abnormal AUROC | {f(m.get("abnormal_auroc"))} | {ci(m.get("abnormal_auroc_ci95"))} |
| trivial baseline AUROC (logistic regression on global intensity statistics of the whole image) | {f(m.get("baseline_intensity_logreg_abnormal_auroc"))} | |
| same baseline on the histogram-equalised ROI crops the model sees | {f(m.get("baseline_equalised_crop_logreg_abnormal_auroc"))} | |
| abnormal sensitivity / specificity | {f(m["abnormal_sensitivity"])} / {f(m["abnormal_specificity"])} | |
| head found by the segmentation on these images | {f(m["head_found_rate"])} | |
{deployed_row(m.get("as_deployed"), "test split")}{deployed_row(m.get("grouped_cv", {}).get("as_deployed"), "grouped CV")}
Where no head is found the node answers "not analysed" and never classifies; the rows above the "as the node
answers" ones score the whole image there, those rows keep only the images with a head found.

Training: {fitting_line(meta)}{meta["training"]["epochs_run"]} epochs, {meta["training"]["minutes"]} minutes of fitting on {meta["training"]["device"]} (2 cores){recipe_time(meta)}.

{extra_sections(m)}
{calibration_section(meta)}
{type_rule_section(meta)}
## What it can and cannot claim
- The malformation type: see "Malformation type: what the node names" above; where no type meets the rule the
  node never names one.
- All `normal` images come from FETAL_PLANES_DB, the abnormal ones from another, undocumented source: normal-vs-abnormal
  separation is partly a *source* shortcut. Compare the AUROC with the trivial intensity baseline above.
- Per-type figures rest on 1–6 source images per class; classes with fewer than 3 case groups are only in training.
- Images are Roboflow-stretched squares without physical calibration.
{no_reference_line(meta)}{history_section(meta)}"""
