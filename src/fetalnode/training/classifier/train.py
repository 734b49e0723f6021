"""``fetalnode train classifier``: the whole recipe, from the dataset folder to the bundle."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fetalnode.inference.bundle import load_bundle, save_bundle
from fetalnode.training.classifier.card import cls_model_card
from fetalnode.training.classifier.data import NORMAL, ClsRecipe, CropSet, crop_features, crop_rows, usable_rows
from fetalnode.training.classifier.fitting import (
    classifier_reference,
    fit,
    grouped_cv,
    initial_base,
    logistic_baseline,
    predict,
    predict_logits,
)
from fetalnode.training.classifier.measure import (
    as_deployed,
    auroc_or_none,
    classification_metrics,
    type_evidence,
    type_limits,
)
from fetalnode.training.data import bootstrap_ci, case_split, read_labels, subject_split
from fetalnode.training.metadata import ClsMetadata

log = logging.getLogger(__name__)


def train_classifier(
    data: Path,
    seg_path: Path,
    out: Path,
    recipe: ClsRecipe,
    name: str,
    version: str,
    reference_data: Path | None = None,
) -> ClsMetadata:
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
    metrics["baseline_intensity_logreg_abnormal_auroc"] = auroc_or_none(test_baseline, test_abn)
    crop_feats = {s: crop_features(sets[s].x) for s in ("train", "test")}
    metrics["baseline_equalised_crop_logreg_abnormal_auroc"] = auroc_or_none(
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
        # Picked by name below: read as plain mappings.
        cvm: Mapping[str, Any] = classification_metrics(cv["probs"], pooled.y, labels, pooled.groups)
        tta: Mapping[str, Any] = classification_metrics(cv["probs_tta"], pooled.y, labels, pooled.groups)
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
            name: auroc_or_none(scores, y_abn) for name, scores in cv["baselines"].items()
        }
        metrics["grouped_cv"]["type_limits"] = type_limits(cv["probs"], pooled, labels)
        metrics["grouped_cv"]["as_deployed"] = as_deployed(
            cv["probs"], pooled.y, pooled.groups, pooled.found, normal, cv["baselines"]["intensity"]
        )
    calibration, type_reporting = type_evidence(
        labels, normal, fitting["val"], predict_logits(net, fitting["val"].x), test, test_logits, cv, pooled
    )
    test_classes = sorted({labels[i] for i in test.y})
    metadata: ClsMetadata = {
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
                "extra_normals": extra_info["extra_normals"],
                "train": extra_info["train"],
                "val": extra_info["val"],
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
