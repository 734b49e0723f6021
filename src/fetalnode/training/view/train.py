"""``fetalnode train view`` and the steps that finish or extend a view bundle (``models finalize``)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fetalnode.config import ModelSettings
from fetalnode.inference.bundle import (
    ONNX,
    export_onnx,
    load_bundle,
    read_metadata,
    save_bundle,
    sha256_file,
    write_metadata,
)
from fetalnode.inference.view import ViewInputSpec, ViewModel
from fetalnode.training.data import load_gray
from fetalnode.training.metadata import ViewMetadata, checked
from fetalnode.training.reference import SEG_FOLDER, VIEW_FOLDER, reference_name, reference_path, require_reference_data
from fetalnode.training.view.card import command_of, recipe_words, view_model_card, write_claim_curve
from fetalnode.training.view.check import node_check
from fetalnode.training.view.data import (
    CLASSES,
    FORMATS,
    FRACTIONS,
    ORIGINS,
    ViewImage,
    folder_rows,
    is_left_out,
    load_set,
    pooled_dicom_split,
    split_rows,
    to_image,
)
from fetalnode.training.view.fitting import ViewRecipe, fit, fit_encoder, input_spec, predict, view_params
from fetalnode.training.view.measure import (
    choose_claim,
    choose_threshold,
    claim_metrics,
    claimable,
    class_thresholds,
    head_claim_scores,
    heads_by_origin,
    left_out_metrics,
    robustness,
    segmentation_version,
    view_metrics,
)
from fetalnode.vocab import View

log = logging.getLogger(__name__)


def view_reference(net: torch.nn.Module, spec: ViewInputSpec, root: Path) -> list[dict[str, Any]]:
    """Class probabilities of the reference images of ``root`` (the first two of ``hc18_mini`` and every one of
    ``view_mini``; :mod:`fetalnode.training.reference`), stored in the bundle at training time.

    ``load_bundle`` does not re-check them; the unit tests do (``tests/unit/test_router.py``), and
    ``finalize_view_bundle`` takes onnxruntime only if it reproduces them.
    """
    paths = sorted((root / SEG_FOLDER / "images").glob("*.png"))[:2]
    if (root / VIEW_FOLDER).is_dir():
        paths += sorted((root / VIEW_FOLDER).glob("*/images/*.png"))
    x = np.stack([spec(load_gray(p)) for p in paths]) if paths else np.zeros((0, *spec.shape), np.float32)
    probs = predict(net, x)
    return [
        {"image": reference_name(root, p), "probabilities": [round(float(v), 6) for v in q]}
        for p, q in zip(paths, probs, strict=True)
    ]


def finalize_view_bundle(path: Path, reference_data: Path | None = None) -> ViewMetadata:
    """Export ONNX and keep it only where onnxruntime is faster and gives the stored reference outputs.

    The runtime is measured against torch on one image (``export_onnx``); onnxruntime is recorded as the
    bundle's ``runtime`` only when it is faster, equal within 1e-4 on a random input, and, through the
    node's own code path (:class:`ViewModel`), reproduces the bundle's ``reference_outputs`` (made with
    torch at training time, left unchanged) within 1e-4 with the same top class on each image. Otherwise
    the ONNX file is removed (no second copy of the weights). Weights are not touched; the model card is
    rewritten. The last step of ``train view``; also ``fetalnode models finalize`` on a shipped bundle.
    ``reference_data``: the folder of the reference images; a bundle storing reference outputs needs it.
    """
    bundle = load_bundle(path, "view")
    require_reference_data(path, bundle.metadata, reference_data)
    spec = ViewInputSpec.of(bundle.metadata["input"])
    comparison = export_onnx(bundle.net, (1, 1, *spec.shape), path / ONNX, batch_axis=True)
    metadata = checked(
        ViewMetadata, dict(bundle.metadata, runtime=comparison["runtime"], runtime_comparison=comparison)
    )
    metadata["onnx_sha256"] = sha256_file(path / ONNX)
    if comparison["runtime"] == "onnxruntime":
        write_metadata(path, metadata)
        stored = metadata.get("reference_outputs") or []
        if stored:
            model = ViewModel(load_bundle(path, "view"))
            assert reference_data is not None
            x = np.stack([spec(load_gray(reference_path(reference_data, r["image"]))) for r in stored])
            now, then = model.probabilities(x), np.array([r["probabilities"] for r in stored])
            comparison["reference_max_abs_diff"] = float(np.abs(now - then).max())
            if comparison["reference_max_abs_diff"] > 1e-4 or (now.argmax(1) != then.argmax(1)).any():
                comparison["runtime"] = metadata["runtime"] = "torch"
    if metadata["runtime"] != "onnxruntime":
        (path / ONNX).unlink()
        metadata.pop("onnx_sha256")
    write_metadata(path, metadata, view_model_card)
    write_claim_curve(path, metadata)
    return metadata


def train_view(
    folders: list[Path],
    out: Path,
    recipe: ViewRecipe,
    name: str,
    version: str,
    models_dir: Path | None = None,
    command: str = "",
    reference_data: Path | None = None,
) -> ViewMetadata:
    """Train, choose the abstain threshold on validation, measure the test split (and, with the head
    bundles in ``models_dir``, the head claim rule and the whole node on its images of other views and its
    calibrated heads), write the bundle (``command``: the command line, recorded in the model card;
    ``reference_data``: the folder of the reference images, see :mod:`fetalnode.training.reference`)."""
    recipe_start = time.monotonic()
    parts: dict[str, list[ViewImage]] = {"train": [], "val": [], "test": []}
    sources: list[dict[str, Any]] = []
    loaded = [(folder, *folder_rows(folder)) for folder in folders]
    dicom_splits = pooled_dicom_split([(f, r) for f, fmt, r in loaded if fmt == "dicom"], recipe.seed)
    for folder, fmt, rows in loaded:
        if fmt == "dicom":
            splits = {k: [r for r in rows if dicom_splits.get(r["_group"]) == k] for k in FRACTIONS}
        else:
            splits = split_rows(fmt, rows, recipe.seed)
        splits = {k: v[: recipe.limit or None] for k, v in splits.items()}
        for split, part in splits.items():
            parts[split] += [to_image(folder, fmt, r) for r in part]
        counts = {
            split: {
                "images": len(r),
                "groups": len({x["_group"] for x in r}),
                "views": dict(Counter(str(x["_view"]) for x in r)),
            }
            for split, r in splits.items()
        }
        spec = FORMATS[fmt]
        sources.append(
            {"folder": str(folder), "format": fmt, "name": spec["name"], "licence": spec["licence"], "splits": counts}
        )
        log.info("%s (%s): %s", folder, fmt, {k: v["images"] for k, v in counts.items()})
    left_out: list[ViewImage] = []
    if recipe.leave_out:
        if recipe.leave_out not in ORIGINS:
            raise ValueError(f"--leave-out {recipe.leave_out!r}: not a source ({', '.join(ORIGINS)})")
        for split, images in parts.items():
            left_out += [im for im in images if is_left_out(im, recipe.leave_out)]
            parts[split] = [im for im in images if not is_left_out(im, recipe.leave_out)]
        if not left_out:
            raise ValueError(f"--leave-out {recipe.leave_out}: no axial head of that source in these folders")
    missing = [str(c) for c in CLASSES if not any(im.view is c for im in parts["train"])]
    if missing:
        raise ValueError(f"no training images of {', '.join(missing)}: give a folder of each view")
    net_input = input_spec(recipe)
    sets = {split: load_set(images, net_input, f"images ({split})") for split, images in parts.items()}
    fit_start = time.monotonic()
    net, history = (fit_encoder if recipe.encoder else fit)(sets["train"], sets["val"], recipe)
    minutes = (time.monotonic() - fit_start) / 60
    val_probs = predict(net, sets["val"].x)
    threshold = choose_threshold(val_probs, sets["val"].y, recipe)
    thresholds = class_thresholds(threshold["abstain_threshold"], threshold["class_thresholds"])
    test = sets["test"]
    test_probs = predict(net, test.x)
    metrics = view_metrics(test_probs, test.y, test.groups, test.sources, thresholds)
    metrics["split"] = "test (held-out groups of every folder)"
    metrics["heads_by_origin"] = heads_by_origin(test_probs, test, thresholds)
    metrics["validation"] = view_metrics(val_probs, sets["val"].y, sets["val"].groups, sets["val"].sources, thresholds)
    claim: dict[str, Any] = {}
    with_heads = models_dir is not None and (models_dir / ModelSettings().segmentation).is_dir()
    if with_heads:
        assert models_dir is not None
        val = sets["val"]
        val_scores = head_claim_scores(val.images, models_dir, claimable(val_probs, thresholds))
        claim = choose_claim(val_probs, val.y, val_scores, thresholds)
        test_scores = head_claim_scores(test.images, models_dir, claimable(test_probs, thresholds))
        metrics["claims"] = claim_metrics(test_probs, test.y, test.groups, test_scores, thresholds, claim)
    metrics["robustness"] = robustness(
        lambda x: predict(net, x),
        test.images,
        net_input,
        thresholds,
        claim=(claim, models_dir) if claim and models_dir is not None else None,
    )
    if left_out:
        held = load_set(left_out, net_input, f"images ({recipe.leave_out}, left out)")
        held_probs = predict(net, held.x)
        metrics["left_out_source"] = left_out_metrics(held_probs, held, thresholds, recipe.leave_out)
        if claim:
            assert models_dir is not None
            held_scores = head_claim_scores(held.images, models_dir, claimable(held_probs, thresholds))
            metrics["left_out_source"]["with_claims"] = claim_metrics(
                held_probs, held.y, held.groups, held_scores, thresholds, claim
            )
    # Built as a plain dict (the claim keys are there only with a claim rule), checked against the schema when saved.
    draft: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": "view",
        "description": "Which kind of ultrasound image this is: the view router's classifier.",
        "intended_use": "RESEARCH USE ONLY, NOT FOR DIAGNOSIS",
        "network": {
            "class": "fetalnode.inference.networks.EncoderViewNet" if recipe.encoder else "monai.networks.nets.Classifier",
            "params": view_params(recipe),
        },
        "input": (
            {
                "canvas_hw": list(net_input.shape),
                "preprocess": "whole frame, 0.5-99.5 percentile scaling, letterboxed into the head segmentation's "
                "canvas (aspect kept, zero padding bottom and right)",
            }
            if recipe.encoder
            else {
                "size": recipe.size,
                "preprocess": "whole frame, 0.5-99.5 percentile scaling, centred on a zero square, resized",
            }
        ),
        "labels": [str(c) for c in CLASSES],
        "abstain_threshold": threshold["abstain_threshold"],
        "class_thresholds": threshold["class_thresholds"],
        "abstention": threshold,
        **(
            {
                "claims": {
                    str(View.AXIAL_FETAL_HEAD): {
                        "min_probability": claim["min_probability"],
                        "min_score": claim["min_score"],
                        "segmentation": segmentation_version(models_dir),
                    }
                },
                "claim_selection": claim,
            }
            if claim
            else {}
        ),
        "training_data": [{**s, "seed": recipe.seed, "split_by": FORMATS[s["format"]]["group"]} for s in sources],
        # DICOM folders are split together, by device group: the split of each group, for `evaluate --split`.
        "dicom_group_splits": dicom_splits,
        "training": {
            "epochs_run": len(history),
            "minutes": round(minutes, 1),
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "command": portable_command(command),
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()},
            "history": history,
            "images": {k: len(v) for k, v in sets.items()},
        },
        "metrics": metrics,
    }
    if reference_data is None:
        log.warning("%s: no --reference-data, so no reference outputs are stored", out)
    else:
        draft["reference_outputs"] = view_reference(net, net_input, reference_data)
    metadata = save_bundle(out, net, checked(ViewMetadata, draft), view_model_card)
    if with_heads:
        assert models_dir is not None
        node_images = [im for im in test.images if im.view is not View.AXIAL_FETAL_HEAD or im.pixel_size_mm]
        metadata["metrics"]["node_check"] = node_check(out, node_images, models_dir)
        metadata["metrics"]["node_check"]["split"] = "test, images of every view but the head, and calibrated heads"
    metadata["training"]["recipe_minutes"] = round((time.monotonic() - recipe_start) / 60, 1)
    write_metadata(out, metadata, view_model_card)
    return finalize_view_bundle(out, reference_data)


def portable_command(command: str) -> str:
    """A recorded command line as a model card shows it: the run's output folder (a path of the machine it ran
    on, not part of the recipe) as ``OUT``."""
    return re.sub(r"--out(=|\s+)\S+", "--out OUT", command)


def record_source_holdout(bundle: Path, runs: list[Path]) -> list[dict[str, Any]]:
    """Copy the left-out-source figures of leave-one-source-out runs (bundles of ``train view --leave-out``)
    into a bundle's metadata and model card; weights and every other metric untouched."""
    meta = checked(ViewMetadata, read_metadata(bundle))
    out = []
    for run in runs:
        rm = read_metadata(run)
        lo = rm["metrics"].get("left_out_source")
        if not lo:
            raise ValueError(f"{run}: not a leave-one-source-out run (train view --leave-out)")
        recipe = rm["training"]["recipe"]
        out.append(
            {
                "left_out_source": lo,
                "recipe": recipe_words(recipe),
                "command": portable_command(rm["training"].get("command") or command_of(recipe)),
                "version": f"{rm['name']} {rm['version']}",
            }
        )
    if out:
        meta["metrics"]["source_holdout"] = out
        write_metadata(bundle, meta, view_model_card)
        write_claim_curve(bundle, meta)
    return out


def add_history(bundle: Path, lines: list[str]) -> None:
    """Append lines to a view bundle's history (its model card's last section)."""
    if not lines:
        return
    meta = checked(ViewMetadata, read_metadata(bundle))
    meta["history"] = [*meta.get("history", []), *lines]
    write_metadata(bundle, meta, view_model_card)
    write_claim_curve(bundle, meta)
