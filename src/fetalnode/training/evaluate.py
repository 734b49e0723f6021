"""``fetalnode evaluate``: metrics of a bundle on any folder in the training data's format."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from fetalnode.inference import Analyzer
from fetalnode.inference.analyzer import seg_settings
from fetalnode.inference.bundle import load_bundle, read_metadata
from fetalnode.inference.calibration import Calibration
from fetalnode.training.calibration import calibration_errors, named_types, type_precision
from fetalnode.training.classifier import as_deployed, classification_metrics, predict_logits, roi_crops, usable_rows
from fetalnode.training.data import Row, block_split, case_split, load_gray, read_labels, subject_split
from fetalnode.training.metadata import ClsMetadata, checked
from fetalnode.training.segmentation import evaluate_segmentation_net

DEFAULT_SEG = Path("models/hc18-headseg")


def confusion_png(cm: np.ndarray, labels: list[str], path: Path) -> None:
    """A readable confusion matrix: rows = truth, columns = prediction."""
    k = len(labels)
    cell, left, top = 34, 230, 40
    img = Image.new("RGB", (left + k * cell + 10, top + k * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 5), "prediction ->   (rows: truth)", fill="black")
    peak = max(int(cm.max()), 1)
    for i in range(k):
        draw.text((5, top + i * cell + 10), labels[i][:34], fill="black")
        for j in range(k):
            v = int(cm[i, j])
            shade = 255 - int(200 * v / peak)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="grey")
            if v:
                draw.text((x0 + 6, y0 + 10), str(v), fill="black")
    img.save(path)


SPLITS = ("all", "train", "val", "test")


def training_split(meta: Mapping[str, Any], rows: list[Row], split: str) -> list[Row]:
    """The rows of one part of the split the bundle was trained with (its seed, its group column).

    Only meaningful on the folder the bundle was trained on; "all" returns every row.
    """
    if split == "all":
        return rows
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    seed = int(meta["training_data"][0]["seed"])
    split_of = {"segmentation": subject_split, "multiclass-segmentation": block_split}.get(meta["task"], case_split)
    return split_of(rows, seed)[split]


def evaluate_labour(model: Path, data: Path, out: Path, split: str) -> dict[str, Any]:
    """Labour segmentation on a PSFHS-format folder: Dice of both structures, |ΔAoP| and |ΔHSD| against the
    reference masks measured the same way, each with a 95% CI bootstrapped by ``id_block``; per-image CSV
    beside the report."""
    from fetalnode.inference.labour_analyzer import labour_settings, load_labour_bundle
    from fetalnode.training.labour import score_images, summarise, write_scores

    bundle = load_labour_bundle(model)
    rows = training_split(bundle.metadata, read_labels(data), split)
    scores = score_images(bundle.infer, labour_settings(bundle), data, rows)
    per_image = out.with_name(out.stem + "_images.csv")
    write_scores(scores, per_image)
    return {**summarise(scores), "per_image": str(per_image)}


def evaluate_bundle(
    model: Path,
    data: Path,
    out: Path,
    seg_model: Path | None = None,
    split: str = "all",
    models_dir: Path | None = None,
    node_check: bool = True,
) -> dict[str, Any]:
    meta = read_metadata(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "model": f"{meta['name']} {meta['version']}",
        "data": str(data),
        "split": split if split == "all" else f"{split} (the bundle's own seeded split of this folder)",
        "notice": "research use only, not for diagnosis",
    }
    if meta["task"] == "multiclass-segmentation":
        report.update(evaluate_labour(model, data, out, split))
    elif meta["task"] == "view":
        from fetalnode.training.view import evaluate_view

        report["view"] = evaluate_view(model, data, split, models_dir, node_check)
    elif meta["task"] == "segmentation":
        bundle = load_bundle(model, "segmentation")
        rows = training_split(meta, read_labels(data), split)
        report["segmentation"] = evaluate_segmentation_net(bundle.net, data, rows, seg_settings(bundle))
    else:
        bundle = load_bundle(model, "classification")
        cls_meta = checked(ClsMetadata, meta)
        seg = load_bundle(seg_model or DEFAULT_SEG, "segmentation")
        rows, dropped = usable_rows(data)
        rows = training_split(meta, rows, split)
        labels = list(cls_meta["labels"])
        unknown = sorted({r["label"] for r in rows} - set(labels))
        if unknown:
            raise ValueError(f"{data}: labels unknown to the model: {unknown}")
        roi = cls_meta["input"]
        x, found = roi_crops(seg, data, rows, int(roi["roi_size"]), float(roi["roi_margin"]))
        y = np.array([labels.index(r["label"]) for r in rows])
        groups = np.array([r["case_group"] for r in rows])
        logits = predict_logits(bundle.net, x)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        normal = labels.index(cls_meta["normal_label"])
        metrics = classification_metrics(probs, y, labels, groups)
        metrics["head_found_rate"] = float(found.mean())
        metrics["as_deployed"] = as_deployed(probs, y, groups, found, normal)
        # As the node answers (images with a head): ECE with and without the bundle's temperatures, and the
        # precision of each type it would name if its rule allowed every type.
        f = np.nonzero(found)[0]
        cal = Calibration.from_metadata(meta)
        metrics["calibration"] = calibration_errors(
            logits[f], y[f], groups[f], normal, {"before": Calibration(), "after": cal}
        )
        named, _ = named_types(logits[f], normal, cal)
        metrics["type_precision"] = type_precision(named, y[f], groups[f], labels, normal)
        metrics["label_conflict_rows_dropped"] = dropped
        report["classification"] = metrics
        cm_path = out.with_name(out.stem + "_confusion.png")
        confusion_png(np.array(metrics["confusion_matrix"]), labels, cm_path)
        report["figures"] = [str(cm_path)]
        analyzer = Analyzer(seg, bundle)
        for row in rows[:: max(1, len(rows) // 4)][:4]:
            result = analyzer.analyze(load_gray(data / row["filename"]), None)
            if result.fused_rgb is not None:
                fig = out.with_name(f"{out.stem}_heatmap_{Path(row['filename']).stem}.png")
                Image.fromarray(result.fused_rgb).save(fig)
                report["figures"].append(str(fig))
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report
