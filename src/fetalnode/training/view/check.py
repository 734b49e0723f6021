"""The whole node on a view bundle's images (the node check), and ``fetalnode evaluate`` of a view bundle."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fetalnode.config import ModelSettings
from fetalnode.inference.bundle import load_bundle, read_metadata, write_metadata
from fetalnode.inference.view import ViewModel
from fetalnode.training.data import bootstrap_ci
from fetalnode.training.metadata import ViewMetadata, ViewMetrics, checked
from fetalnode.training.view.card import view_model_card
from fetalnode.training.view.data import CLASSES, ViewImage, folder_images, load_set
from fetalnode.training.view.measure import robustness, view_metrics
from fetalnode.vocab import View


def node_check(view_bundle: Path, images: list[ViewImage], models_dir: Path) -> dict[str, Any]:
    """The whole node analysis (the default view router -> routed application) on each image wrapped as a
    US DICOM instance, as a scanner would send it: how many images of another view get a head finding or an
    HC, how many images not of the transperineal view get an AoP, and what the router's cross-check vetoed.

    ``models_dir`` holds the applications' bundles (``hc18-headseg``, ``fba-classifier``, ``psfhs-seg`` when
    there); the view model is ``view_bundle``. HC18 images carry their pixel size, so a head finding on them
    has an HC.
    """
    from pydicom import dcmread

    from fetalnode.applications.fetal_head import NAME as HEAD
    from fetalnode.applications.labour_progress import NAME as LABOUR
    from fetalnode.applications.view_router.application import ViewRouter
    from fetalnode.applications.view_router.application import load as load_router
    from fetalnode.config import Settings
    from fetalnode.wrap import wrap_png

    settings = Settings()
    settings.models.dir = str(models_dir)
    settings.models.view = str(view_bundle.resolve())
    if not (models_dir / settings.models.labour_segmentation).is_dir():
        settings.router.applications.pop(str(View.INTRAPARTUM_TRANSPERINEAL), None)
    router = load_router(settings)
    assert isinstance(router, ViewRouter)
    counts: dict[str, Counter[str]] = {}
    head_examples: list[dict[str, Any]] = []
    aop_examples: list[dict[str, Any]] = []
    calibrated_hc: list[tuple[str, bool]] = []  # (group, HC reported) of each calibrated axial head
    for image in tqdm(images, desc="node check", leave=False):
        ds = dcmread(image.path) if image.dicom else wrap_png(image.path, pixel_size_mm=image.pixel_size_mm)
        analysis = router.analyse(ds)
        example = {"image": str(image.path), "view": str(image.view), "detail": image.detail}
        c = counts.setdefault(str(image.view), Counter())
        c["images"] += 1
        c[f"routed_to_{analysis.application}"] += 1
        if analysis.view is not None and analysis.view.conflict:
            c["cross_check_view_uncertain"] += 1
        # Read through the Result protocol (analysed, summary()): no application's own result type.
        analysed = analysis.result.analysed
        hc = False
        if analysis.application == HEAD:
            hc = analysed and analysis.result.summary().get("hc_mm") is not None
            c["head_finding"] += int(analysed)
            c["hc_reported"] += int(hc)
            c["head_gate_refused"] += int(not analysed)
            if analysed and image.view is not View.AXIAL_FETAL_HEAD:
                head_examples.append(example)
        elif analysis.application == LABOUR:
            c["aop_reported"] += int(analysed)
            if analysed and image.view is not View.INTRAPARTUM_TRANSPERINEAL:
                aop_examples.append(example)
        if image.view is View.AXIAL_FETAL_HEAD and image.pixel_size_mm:
            calibrated_hc.append((image.group, hc))
    others = [v for v in counts if v != View.AXIAL_FETAL_HEAD]
    not_labour = [v for v in counts if v != View.INTRAPARTUM_TRANSPERINEAL]
    heads: dict[str, Any] = {}
    if calibrated_hc:
        hc_groups = np.array([g for g, _ in calibrated_hc])
        with_hc = np.array([h for _, h in calibrated_hc])
        heads = {
            "calibrated_heads": len(with_hc),
            "calibrated_heads_hc": int(with_hc.sum()),
            "calibrated_heads_hc_rate": float(with_hc.mean()),
            "calibrated_heads_hc_rate_ci95": bootstrap_ci(with_hc, hc_groups, lambda i: with_hc[i].mean()),
        }
    return {
        **heads,
        "models": router.describe(),
        "cross_check_probability": router.cross_check_probability,
        "by_true_view": {v: dict(c) for v, c in counts.items()},
        "other_view_images": sum(counts[v]["images"] for v in others),
        "other_views_head_findings": sum(counts[v]["head_finding"] for v in others),
        "other_views_hc_reported": sum(counts[v]["hc_reported"] for v in others),
        "non_transperineal_aop_reported": sum(counts[v]["aop_reported"] for v in not_labour),
        "other_views_with_head_finding": head_examples,
        "non_transperineal_with_aop": aop_examples,
    }


def remeasure_node_check(bundle: Path, folders: list[Path], models_dir: Path) -> dict[str, Any]:
    """The whole-node check of a view bundle on its test images of views other than the head (and its calibrated
    test heads), measured again with this build's router and the bundles in ``models_dir`` (``fetalnode models
    finalize BUNDLE --data ...``).

    The test images are those of the bundle's own split (its seed, its DICOM device groups); the weights and
    every other metric are untouched; the previous figure is kept in ``metrics.node_check_history``.
    """
    meta = checked(ViewMetadata, read_metadata(bundle))
    limit = int(meta.get("training", {}).get("recipe", {}).get("limit", 0))  # as train_view took them
    others: list[ViewImage] = []
    for folder in folders:
        _, images = folder_images(folder, "test", meta)
        others += [im for im in images[: limit or None] if im.view is not View.AXIAL_FETAL_HEAD or im.pixel_size_mm]
    if not any(im.view is not View.AXIAL_FETAL_HEAD for im in others):
        raise ValueError("no test images of views other than the head in these folders")
    check = node_check(bundle, others, models_dir)
    check["split"] = "test, images of every view but the head, and calibrated heads"
    check["remeasured"] = time.strftime("%Y-%m-%d")
    metrics = meta["metrics"]
    if metrics.get("node_check"):
        metrics.setdefault("node_check_history", []).append(metrics["node_check"])
    metrics["node_check"] = check
    write_metadata(bundle, meta, view_model_card)
    return check


def evaluate_view(
    model: Path, data: Path, split: str = "all", models_dir: Path | None = None, node: bool = True
) -> ViewMetrics:
    """``fetalnode evaluate`` of a view bundle on one dataset folder: its format tells the true view.

    Accuracy, routed accuracy and coverage with group-bootstrap 95% CIs, the confusion, and (``node``,
    with the head bundles in ``models_dir``) the whole node analysis on the folder's images: how many
    images of another view get a head finding or an HC, and how many heads are analysed.
    """
    view_model = ViewModel(load_bundle(model, "view"))
    fmt, images = folder_images(data, split, view_model.bundle.metadata)
    if not images:
        raise ValueError(f"{data}: no images in split {split!r}")
    x = load_set(images, view_model.input, "images")
    probs = view_model.probabilities(x.x)
    thresholds = np.array([view_model.threshold_of(c) for c in CLASSES])
    metrics = view_metrics(probs, x.y, x.groups, x.sources, thresholds)
    metrics["format"] = fmt
    metrics["abstain_threshold"] = view_model.threshold
    metrics["class_thresholds"] = {str(k): v for k, v in view_model.class_thresholds.items()}
    metrics["true_views"] = dict(Counter(str(im.view) for im in images))
    rule = view_model.bundle.metadata.get("claim_selection")
    seg_dir = models_dir or Path("models")
    with_claims = rule is not None and (seg_dir / ModelSettings().segmentation).is_dir()
    metrics["robustness"] = robustness(
        view_model.probabilities,
        images,
        view_model.input,
        thresholds,
        claim=(rule, seg_dir) if with_claims and rule is not None else None,
    )
    if node:
        folder = models_dir or Path("models")
        if (folder / "hc18-headseg").is_dir():
            metrics["node_check"] = node_check(model, images, folder)
        else:
            metrics["node_check"] = {"skipped": f"no head bundles in {folder} (give --models-dir)"}
    return metrics
