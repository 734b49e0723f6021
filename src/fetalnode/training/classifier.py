"""Train the malformation classifier on ROI crops of a fetal_brain_abnormalities-format folder.

The ROI comes from the shipped segmentation bundle through the same code the worker runs
(``locate_head`` -> ``roi_crop``); where no head is found the whole image is used, padded square.
"""

from __future__ import annotations

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
from fetalnode.inference.bundle import Bundle, load_bundle, save_bundle
from fetalnode.inference.networks import build_classifier_net
from fetalnode.inference.preprocess import roi_crop, to_unit_range
from fetalnode.training.data import Row, bootstrap_ci, group_split, load_gray, read_labels
from fetalnode.training.metrics import auroc, balanced_accuracy, confusion, macro_f1, per_class

log = logging.getLogger(__name__)

NORMAL = "normal"


@dataclass
class ClsRecipe:
    roi_size: int = 128
    roi_margin: float = 0.12
    channels: tuple[int, ...] = (16, 32, 64, 128)
    fc: tuple[int, ...] = (128, 64)
    dropout: float = 0.3
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 8
    max_minutes: float = 25.0
    seed: int = 20261124
    limit: int = 0


def usable_rows(folder: Path) -> tuple[list[Row], int]:
    """Rows without label conflicts (dropped: a near-identical image carries another label)."""
    rows = read_labels(folder)
    kept = [r for r in rows if r.get("label_conflict", "0") != "1"]
    return kept, len(rows) - len(kept)


def roi_crops(
    seg: Bundle, folder: Path, rows: list[Row], roi_size: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N, size, size) and whether a head was found, through the inference code path."""
    canvas_hw, axis_scale = seg_settings(seg)
    crops, found = [], []
    for row in tqdm(rows, desc="ROI crops", leave=False):
        img01 = to_unit_range(load_gray(folder / row["filename"]))
        ellipse, _, _ = locate_head(seg.net, canvas_hw, axis_scale, img01)
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


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-2)
    gamma = torch.exp(torch.empty(x.shape[0], 1, 1, 1).uniform_(-0.3, 0.3, generator=gen))
    return x.clamp(0, 1) ** gamma


def predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            out.append(torch.softmax(net(torch.from_numpy(x[i : i + 64])[:, None]), dim=1).numpy())
    return np.concatenate(out)


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], groups: np.ndarray) -> dict[str, Any]:
    """The metric set of ``fetalnode evaluate`` with group-bootstrap 95% CIs."""
    k = len(labels)
    normal = labels.index(NORMAL)
    pred = probs.argmax(1)
    p_abn = 1 - probs[:, normal]
    is_abn = (y != normal).astype(int)
    pred_abn = (p_abn >= 0.5).astype(int)
    cm = confusion(y, pred, k)
    precision, recall, _ = per_class(cm)

    def safe_auroc(i: np.ndarray) -> float:
        return auroc(p_abn[i], is_abn[i])

    out: dict[str, Any] = {
        "n": len(y),
        "n_groups": len(np.unique(groups)),
        "accuracy": float((pred == y).mean()),
        "accuracy_ci95": bootstrap_ci(pred == y, groups, lambda i: (pred[i] == y[i]).mean()),
        "balanced_accuracy": balanced_accuracy(y, pred, k),
        "balanced_accuracy_ci95": bootstrap_ci(y, groups, lambda i: balanced_accuracy(y[i], pred[i], k)),
        "macro_f1": macro_f1(y, pred, k),
        "macro_f1_ci95": bootstrap_ci(y, groups, lambda i: macro_f1(y[i], pred[i], k)),
        "abnormal_sensitivity": float(pred_abn[is_abn == 1].mean()) if is_abn.any() else None,
        "abnormal_specificity": float(1 - pred_abn[is_abn == 0].mean()) if (is_abn == 0).any() else None,
        "per_class": {
            labels[c]: {"support": int(cm[c].sum()), "precision": _num(precision[c]), "recall": _num(recall[c])}
            for c in range(k)
            if cm[c].sum() or cm[:, c].sum()
        },
        "confusion_matrix": cm.tolist(),
    }
    try:
        out["abnormal_auroc"] = safe_auroc(np.arange(len(y)))
        out["abnormal_auroc_ci95"] = bootstrap_ci(y, groups, safe_auroc)
    except ValueError:
        out["abnormal_auroc"] = None
    return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def train_classifier(
    data: Path, seg_path: Path, out: Path, recipe: ClsRecipe, name: str, version: str
) -> dict[str, Any]:
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    rows, dropped = usable_rows(data)
    labels = sorted({r["label"] for r in rows})
    if NORMAL not in labels:
        raise ValueError(f"{data}: no '{NORMAL}' class")
    splits = group_split(rows, "case_group", {"train": 0.7, "val": 0.15, "test": 0.15}, recipe.seed, "label")
    if recipe.limit:
        splits = {k: v[: recipe.limit if k == "train" else max(4, recipe.limit // 2)] for k, v in splits.items()}
    log.info(
        "split by case_group (stratified by label): %s; %d label-conflict rows dropped",
        {k: len(v) for k, v in splits.items()},
        dropped,
    )
    seg = load_bundle(seg_path, "segmentation")
    data_x, data_y, found, grp = {}, {}, {}, {}
    for split, srows in splits.items():
        data_x[split], found[split] = roi_crops(seg, data, srows, recipe.roi_size, recipe.roi_margin)
        data_y[split] = np.array([labels.index(r["label"]) for r in srows])
        grp[split] = np.array([r["case_group"] for r in srows])
    params = {
        "channels": list(recipe.channels),
        "fc": list(recipe.fc),
        "n_classes": len(labels),
        "dropout": recipe.dropout,
    }
    net = build_classifier_net(params)
    counts = np.bincount(data_y["train"], minlength=len(labels)).astype(np.float32)
    weights = torch.from_numpy(np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)).float()
    weights = weights / weights[counts > 0].mean()
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    xtr = torch.from_numpy(data_x["train"])[:, None]
    ytr = torch.from_numpy(data_y["train"])
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    stale, history = 0, []
    start = time.monotonic()
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        losses = []
        for i in tqdm(range(0, len(perm), recipe.batch_size), desc=f"cls epoch {epoch}", leave=False):
            idx = perm[i : i + recipe.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss = loss_fn(net(_augment(xtr[idx], gen)), ytr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        pv = predict(net, data_x["val"])
        val_loss = float(-np.log(np.clip(pv[np.arange(len(pv)), data_y["val"]], 1e-7, 1)).mean())
        val_bacc = balanced_accuracy(data_y["val"], pv.argmax(1), len(labels))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_loss": val_loss, "val_bacc": val_bacc})
        log.info("epoch %d loss %.4f val loss %.4f val balanced acc %.3f", epoch, np.mean(losses), val_loss, val_bacc)
        if best is None or val_loss < best[0]:
            best = (val_loss, {k: v.clone() for k, v in net.state_dict().items()})
            stale = 0
        else:
            stale += 1
        if stale >= recipe.patience or time.monotonic() - start > recipe.max_minutes * 60:
            break
    assert best is not None
    net.load_state_dict(best[1])
    minutes = (time.monotonic() - start) / 60
    test_probs = predict(net, data_x["test"])
    metrics = classification_metrics(test_probs, data_y["test"], labels, grp["test"])
    metrics["split"] = "test (15% of case groups per class with >=3 groups; never used for training or early stopping)"
    metrics["head_found_rate"] = float(found["test"].mean())
    normal = labels.index(NORMAL)
    feats = {s: intensity_features(data, splits[s]) for s in ("train", "test")}
    base = logistic_baseline(feats["train"], (data_y["train"] != normal).astype(int), feats["test"], recipe.seed)
    try:
        metrics["baseline_intensity_logreg_abnormal_auroc"] = auroc(base, (data_y["test"] != normal).astype(int))
    except ValueError:
        metrics["baseline_intensity_logreg_abnormal_auroc"] = None
    test_classes = sorted({labels[i] for i in data_y["test"]})
    metadata = {
        "name": name,
        "version": version,
        "task": "classification",
        "description": "Normal vs malformation and malformation type on the fetal head ROI.",
        "intended_use": "RESEARCH USE ONLY, NOT FOR DIAGNOSIS",
        "network": {"class": "fetalnode.inference.networks.HeadClassifier", "params": params},
        "input": {
            "roi_size": recipe.roi_size,
            "roi_margin": recipe.roi_margin,
            "roi": "segmentation ellipse box + margin, zero-padded square, histogram-equalised",
            "segmentation_bundle": f"{seg.name} {seg.version}",
        },
        "labels": labels,
        "normal_label": NORMAL,
        "abnormal_threshold": 0.5,
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
        },
        "metrics": metrics,
    }
    save_bundle(out, net, metadata, cls_model_card(metadata))
    return metadata


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
{", ".join(meta["labels"])}. The node reports abnormal when P(not normal) >= {meta["abnormal_threshold"]} and then the most
probable malformation type. Grad-CAM (MONAI) on the last base stage gives the heatmap.

## Training data
{td["name"]} — {td["citation"]}; licence {td["licence"]}. Split by {td["split_by"]} (seed {td["seed"]}):
{td["splits"]}. {td["label_conflict_rows_dropped"]} rows with conflicting labels were dropped.
Classes in the test split: {", ".join(td["test_classes"])}.

## Metrics ({m["split"]})
| metric | value | 95% CI (bootstrap by case group) |
|---|---|---|
| n images / groups | {m["n"]} / {m["n_groups"]} | |
| accuracy (16 classes) | {f(m["accuracy"])} | {ci(m.get("accuracy_ci95"))} |
| balanced accuracy | {f(m["balanced_accuracy"])} | {ci(m.get("balanced_accuracy_ci95"))} |
| macro F1 | {f(m["macro_f1"])} | {ci(m.get("macro_f1_ci95"))} |
| normal vs abnormal AUROC | {f(m.get("abnormal_auroc"))} | {ci(m.get("abnormal_auroc_ci95"))} |
| trivial baseline AUROC (logistic regression on global intensity statistics) | {f(m.get("baseline_intensity_logreg_abnormal_auroc"))} | |
| abnormal sensitivity / specificity | {f(m["abnormal_sensitivity"])} / {f(m["abnormal_specificity"])} | |
| head found by the segmentation on these images | {f(m["head_found_rate"])} | |

Training: {meta["training"]["epochs_run"]} epochs, {meta["training"]["minutes"]} minutes on {meta["training"]["device"]} (2 cores).

## What it can and cannot claim
- All `normal` images come from FETAL_PLANES_DB, the abnormal ones from another, undocumented source: normal-vs-abnormal
  separation is partly a *source* shortcut. Compare the AUROC with the trivial intensity baseline above.
- Per-type figures rest on 1–6 source images per class; classes with fewer than 3 case groups are only in training.
- Images are Roboflow-stretched squares without physical calibration.
"""
