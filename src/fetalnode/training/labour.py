"""Train the labour-progress segmentation bundle (pubic symphysis + fetal head) on a PSFHS-format folder.

A PSFHS-format folder: ``labels.csv`` with ``filename``, ``mask_filename`` and ``id_block`` columns, 8-bit
images and label maps (0 background, 1 pubic symphysis, 2 fetal head). Splits are by ``id_block``.
The reference AoP and HSD of an image are computed from its reference mask with the same geometry
(:mod:`fetalnode.inference.aop`) the node applies to its predicted masks, as the FH-PS-AOP 2023
evaluation does.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from fetalnode.inference.aop import measure, measure_label_map
from fetalnode.inference.bundle import (
    ONNX,
    export_onnx,
    history_section,
    load_bundle,
    save_bundle,
    sha256_file,
    write_metadata,
)
from fetalnode.inference.labour_analyzer import (
    FH,
    PS,
    TASK,
    LabourGate,
    LabourSettings,
    gate,
    labour_settings,
    segment_structures,
)
from fetalnode.inference.networks import build_segmentation_net
from fetalnode.inference.preprocess import letterbox, resize, to_unit_range
from fetalnode.training.data import Row, block_split, bootstrap_ci, load_gray, read_labels
from fetalnode.training.early_stopping import EarlyStopping
from fetalnode.training.metadata import LabourMetadata, LabourMetrics, LabourReference, checked
from fetalnode.training.reference import LABOUR_FOLDER, no_reference_line, reference_name, require_reference_data
from fetalnode.training.segmentation import UNetRecipe

log = logging.getLogger(__name__)

LABELS = ["background", "pubic symphysis", "fetal head"]


@dataclass
class LabourRecipe(UNetRecipe):
    canvas_hw: tuple[int, int] = (256, 256)
    # Five levels (bottom at 1/16 of the canvas) with a 128-channel bottom: 0.93 M parameters, ~30 s per
    # epoch of 780 images on 2 cores, as fast as four levels (16..128) and a wider view; 16..256 costs 20% more.
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    epochs: int = 75
    # No flips: the AoP convention reads the image's orientation (the vertex is the right-most end of
    # the symphysis) and every PSFHS image has the symphysis upper left of the head.
    scale_jitter: float = 0.1


def load_label_map(path: Path) -> np.ndarray:
    """A label-map PNG as int64 (0 background, 1 pubic symphysis, 2 fetal head)."""
    labels = np.rint(load_gray(path)).astype(np.int64)
    if labels.max() > FH or labels.min() < 0:
        raise ValueError(f"{path}: label values {sorted(set(np.unique(labels).tolist()))}, expected 0, 1, 2")
    return labels


def load_split(folder: Path, rows: list[Row], canvas_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) in [0, 1] and label maps (N, 1, H, W) letterboxed to the canvas."""
    imgs, labels = [], []
    for row in rows:
        img, _ = letterbox(to_unit_range(load_gray(folder / row["filename"])), canvas_hw)
        lab = load_label_map(folder / row["mask_filename"]).astype(np.float32)
        h, w = lab.shape
        scale = min(canvas_hw[0] / h, canvas_hw[1] / w)
        ch, cw = min(canvas_hw[0], round(h * scale)), min(canvas_hw[1], round(w * scale))
        canvas = np.zeros(canvas_hw, dtype=np.float32)
        canvas[:ch, :cw] = resize(lab, (ch, cw), mode="nearest")
        imgs.append(img)
        labels.append(canvas)
    return torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(labels))[:, None]


def augment(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, rotate_deg: float, scale_jitter: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small rotation and zoom (labels resampled nearest), gamma and gain jitter."""
    n, _, h, w = x.shape
    if rotate_deg or scale_jitter:
        t = torch.deg2rad(torch.empty(n).uniform_(-rotate_deg, rotate_deg, generator=gen))
        s = torch.empty(n).uniform_(1 - scale_jitter, 1 + scale_jitter, generator=gen)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.cos(t) / s
        theta[:, 0, 1] = -torch.sin(t) * h / w / s
        theta[:, 1, 0] = torch.sin(t) * w / h / s
        theta[:, 1, 1] = torch.cos(t) / s
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = torch.nn.functional.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.4, 0.4, generator=gen))
    gain = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    return (x.clamp(0, 1) ** gamma * gain).clamp(0, 1), y


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * float((pred & ref).sum()) / total


@dataclass
class ImageScore:
    """One image through the inference path against its reference mask."""

    filename: str
    group: str
    dice_ps: float
    dice_fh: float
    ps_confidence: float
    fh_confidence: float
    reason: str  # why the node would not measure it ("" = analysed)
    aop_pred: float | None  # with the gate (what the node reports)
    aop_ungated: float | None  # the same masks measured whatever the gate says
    aop_ref: float | None
    hsd_pred: float | None
    hsd_ref: float | None


def score_images(net: Any, settings: LabourSettings, data: Path, rows: list[Row]) -> list[ImageScore]:
    """Segment, gate and measure each row's image; measure its reference mask the same way."""
    out = []
    for row in rows:
        img01 = to_unit_range(load_gray(data / row["filename"]))
        ref = load_label_map(data / row["mask_filename"])
        st = segment_structures(net, settings.canvas_hw, img01)
        why = gate(st, settings.gate)
        geo = measure(st.ps_mask, st.fh_mask)
        ref_geo = measure_label_map(ref)
        reason = why or geo.reason
        out.append(
            ImageScore(
                filename=row["filename"],
                group=row["id_block"],
                dice_ps=dice(st.ps_mask, ref == PS),
                dice_fh=dice(st.fh_mask, ref == FH),
                ps_confidence=st.confidence(PS),
                fh_confidence=st.confidence(FH),
                reason=reason,
                aop_pred=geo.aop_deg if not reason else None,
                aop_ungated=geo.aop_deg,
                aop_ref=ref_geo.aop_deg,
                hsd_pred=geo.hsd_px if not reason else None,
                hsd_ref=ref_geo.hsd_px,
            )
        )
    return out


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def summarise(scores: list[ImageScore], ci: bool = True) -> dict[str, Any]:
    """Metrics with 95% CIs (percentile bootstrap resampling whole id blocks).

    Dice over every image. AoP / HSD differences over the images the node measures (gate passed, and the
    reference mask measurable); ``analysed_rate`` says how many that is. ``*_ungated`` measures every image
    whose predicted masks give an angle, whatever the gate says.
    """
    g = np.array([s.group for s in scores])
    d_fh = np.array([s.dice_fh for s in scores])
    d_ps = np.array([s.dice_ps for s in scores])
    analysed = np.array([not s.reason for s in scores], dtype=float)
    aop_pred = np.array([_nan(s.aop_pred) for s in scores])
    aop_ung = np.array([_nan(s.aop_ungated) for s in scores])
    aop_ref = np.array([_nan(s.aop_ref) for s in scores])
    hsd_pred = np.array([_nan(s.hsd_pred) for s in scores])
    hsd_ref = np.array([_nan(s.hsd_ref) for s in scores])
    aop_err = np.abs(aop_pred - aop_ref)
    aop_signed = aop_pred - aop_ref
    aop_err_ung = np.abs(aop_ung - aop_ref)
    hsd_err = np.abs(hsd_pred - hsd_ref)

    def stat(values: np.ndarray, fn: Any = np.mean) -> tuple[float | None, list[float] | None]:
        ok = np.isfinite(values)
        if not ok.any():
            return None, None
        value = float(fn(values[ok]))
        if not ci:
            return value, None
        idx = np.nonzero(ok)[0]
        lo, hi = bootstrap_ci(values[idx], g[idx], lambda i: fn(values[idx][i]))
        return value, [lo, hi]

    out: dict[str, Any] = {"n": len(scores), "n_groups": len(set(g.tolist()))}
    for key, values, fn in (
        ("dice_fh_mean", d_fh, np.mean),
        ("dice_ps_mean", d_ps, np.mean),
        ("analysed_rate", analysed, np.mean),
        ("aop_abs_diff_deg_mean", aop_err, np.mean),
        ("aop_abs_diff_deg_median", aop_err, np.median),
        ("aop_diff_deg_mean_signed", aop_signed, np.mean),
        ("aop_abs_diff_deg_mean_ungated", aop_err_ung, np.mean),
        ("hsd_abs_diff_px_mean", hsd_err, np.mean),
        ("hsd_abs_diff_px_median", hsd_err, np.median),
    ):
        value, interval = stat(values, fn)
        out[key] = value
        if ci:
            out[f"{key}_ci95"] = interval
    out["n_aop_measured"] = int(np.isfinite(aop_err).sum())
    out["n_aop_measured_ungated"] = int(np.isfinite(aop_err_ung).sum())
    out["aop_within_5deg_rate"] = (
        float((aop_err[np.isfinite(aop_err)] <= 5).mean()) if np.isfinite(aop_err).any() else None
    )
    reasons: dict[str, int] = {}
    for s in scores:
        if s.reason:
            kind = s.reason.split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    out["not_analysed_reasons"] = dict(sorted(reasons.items()))
    return out


def write_scores(scores: list[ImageScore], path: Path) -> None:
    """Per-image figures as CSV (one row per image)."""
    fields = list(ImageScore.__dataclass_fields__)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for s in scores:
            writer.writerow({k: ("" if getattr(s, k) is None else getattr(s, k)) for k in fields})


def area_gate(data: Path, rows: list[Row], min_confidence: float) -> LabourGate:
    """Area limits from the training masks: half the smallest to twice the largest area fraction."""
    ps, fh = [], []
    for row in rows:
        lab = load_label_map(data / row["mask_filename"])
        ps.append(float((lab == PS).mean()))
        fh.append(float((lab == FH).mean()))
    return LabourGate(
        ps_area=(round(min(ps) / 2, 5), round(min(1.0, max(ps) * 2), 5)),
        fh_area=(round(min(fh) / 2, 5), round(min(1.0, max(fh) * 2), 5)),
        min_confidence=min_confidence,
    )


def confidence_threshold(scores: list[ImageScore], keep: float = 0.99, floor: float = 0.5) -> float:
    """The structure confidence that keeps ``keep`` of these (validation) structures, never below ``floor``."""
    values = [s.ps_confidence for s in scores] + [s.fh_confidence for s in scores]
    return round(max(floor, float(np.percentile(values, 100 * (1 - keep)))), 3) if values else floor


def early_stopping_score(m: dict[str, Any]) -> float:
    """Lower is better: 100 x (1 - mean Dice of the two structures) + mean |ΔAoP| (degrees, ungated)
    + 50 x the fraction of images with no measurable angle."""
    measured = m["n_aop_measured_ungated"] / max(m["n"], 1)
    aop = m["aop_abs_diff_deg_mean_ungated"] if m["aop_abs_diff_deg_mean_ungated"] is not None else 90.0
    return 100 * (1 - (m["dice_fh_mean"] + m["dice_ps_mean"]) / 2) + aop + 50 * (1 - measured)


def train_labour_segmentation(
    data: Path, out: Path, recipe: LabourRecipe, name: str, version: str, reference_data: Path | None = None
) -> LabourMetadata:
    """Train, early-stop on the validation blocks, set the gate, measure the test blocks, write the bundle
    (``reference_data``: the folder of the reference images, see :mod:`fetalnode.training.reference`)."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.monotonic()
    rows = read_labels(data)
    splits = block_split(rows, recipe.seed)
    if recipe.limit:
        splits = {k: v[: recipe.limit if k == "train" else max(2, recipe.limit // 4)] for k, v in splits.items()}
    log.info(
        "split by id_block: %s",
        {k: f"{len(v)} images, {len({r['id_block'] for r in v})} blocks" for k, v in splits.items()},
    )
    xtr, ytr = load_split(data, splits["train"], recipe.canvas_hw)
    params: dict[str, Any] = {
        "channels": list(recipe.channels),
        "strides": list(recipe.strides),
        "num_res_units": recipe.num_res_units,
        "norm": "BATCH",
        "out_channels": len(LABELS),
    }
    net = build_segmentation_net(params)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    provisional = LabourSettings(recipe.canvas_hw, LabourGate(min_confidence=0.0))
    stopping = EarlyStopping(recipe.patience, recipe.max_minutes, start)
    history: list[dict[str, Any]] = []
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        losses = []
        bar = tqdm(range(0, len(perm), recipe.batch_size), desc=f"labour seg epoch {epoch}", leave=False)
        for i in bar:
            idx = perm[i : i + recipe.batch_size]
            if len(idx) < 2:
                continue  # batch norm needs two samples
            xb, yb = augment(xtr[idx], ytr[idx], gen, recipe.rotate_deg, recipe.scale_jitter)
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        sched.step()
        net.eval()
        val = summarise(score_images(net, provisional, data, splits["val"]), ci=False)
        score = early_stopping_score(val)
        elapsed = time.monotonic() - start
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "val_dice_fh": val["dice_fh_mean"],
                "val_dice_ps": val["dice_ps_mean"],
                "val_aop_abs_diff_deg": val["aop_abs_diff_deg_mean_ungated"],
                "val_score": score,
                "seconds": round(elapsed, 1),
            }
        )
        log.info(
            "epoch %d loss %.4f val Dice FH %.4f PS %.4f |ΔAoP| %.2f° score %.2f (%.0f s)",
            epoch,
            np.mean(losses),
            val["dice_fh_mean"],
            val["dice_ps_mean"],
            _nan(val["aop_abs_diff_deg_mean_ungated"]),
            score,
            elapsed,
        )
        stopping.update(score, epoch, net)
        if stopping.stop():
            break
    assert stopping.seen
    stopping.restore(net)
    train_minutes = (time.monotonic() - start) / 60
    # The gate: area limits from the training masks, the confidence limit from the validation images.
    val_scores = score_images(net, provisional, data, splits["val"])
    limits = area_gate(data, splits["train"], confidence_threshold(val_scores))
    log.info("gate: %s", limits.as_dict())
    settings = LabourSettings(recipe.canvas_hw, limits)
    test_scores = score_images(net, settings, data, splits["test"])
    metrics = checked(LabourMetrics, summarise(test_scores), "metrics")
    metrics["split"] = "test (15% of id blocks, never used for training, early stopping or the gate)"
    metadata: LabourMetadata = {
        "name": name,
        "version": version,
        "task": TASK,
        "labels": LABELS,
        "description": "Pubic symphysis and fetal head segmentation on intrapartum transperineal ultrasound, "
        "for the angle of progression and the head-symphysis distance (FH-PS-AOP 2023 convention).",
        "intended_use": "RESEARCH USE ONLY, NOT FOR DIAGNOSIS",
        "network": {"class": "monai.networks.nets.UNet", "params": params},
        "input": {
            "canvas_hw": list(recipe.canvas_hw),
            "channels": 1,
            "intensity": "0.5-99.5 percentile to [0,1]",
            "resize": "letterbox, aspect kept, zero pad bottom/right",
        },
        "postprocess": {
            "labels": "softmax arg-max on the source grid; each structure its largest 8-connected region, "
            "holes filled (the head wins overlaps)",
            "measurement": "FH-PS-AOP 2023 convention (fetalnode.inference.aop)",
            "gate": limits.as_dict(),
        },
        "training_data": [
            {
                "name": "PSFHS (intrapartum transperineal ultrasound, pubic symphysis + fetal head masks)",
                "citation": "Chen G, Bai J, Ou Z, Lu Y, Wang H. Scientific Data 11, 436 (2024), "
                "doi:10.1038/s41597-024-03266-4; Zenodo doi:10.5281/zenodo.10969427",
                "licence": "CC BY 4.0",
                "splits": {k: {"images": len(v), "groups": len({r["id_block"] for r in v})} for k, v in splits.items()},
                "split_by": "id_block",
                "seed": recipe.seed,
            }
        ],
        "training": {
            "epochs_run": len(history),
            "best_epoch": stopping.epoch,
            "stopped": stopping.reason,
            "minutes": round(train_minutes, 1),
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "early_stopping": "100 x (1 - mean validation Dice of PS and FH) + mean validation |ΔAoP| (deg) "
            "+ 50 x fraction of validation images with no angle",
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()},
            "history": history,
        },
        "metrics": metrics,
    }
    save_bundle(out, net, metadata, labour_model_card)
    write_scores(test_scores, out / "docs" / "test_images.csv")
    return finalize_labour_bundle(out, reference_data)


def finalize_labour_bundle(path: Path, reference_data: Path | None = None) -> LabourMetadata:
    """Export ONNX (the faster runtime by measurement), store reference outputs on the images of
    ``reference_data``'s psfhs_mini (none without it; a bundle that stores some needs it), rewrite the model
    card. Weights are not touched."""
    bundle = load_bundle(path, TASK)
    require_reference_data(path, bundle.metadata, reference_data)
    canvas_hw = tuple(bundle.metadata["input"]["canvas_hw"])
    comparison = export_onnx(bundle.net, (1, 1, *canvas_hw), path / ONNX)
    metadata = checked(
        LabourMetadata,
        dict(
            bundle.metadata,
            runtime=comparison["runtime"],
            runtime_comparison=comparison,
            onnx_sha256=sha256_file(path / ONNX),
        ),
    )
    if comparison["runtime"] != "onnxruntime":
        # Torch is as fast: do not ship a second copy of the weights.
        (path / ONNX).unlink()
        metadata.pop("onnx_sha256")
    write_metadata(path, metadata)
    if reference_data is None:
        log.warning("%s: no --reference-data, so no reference outputs are stored", path)
        metadata.pop("reference_outputs", None)
    else:
        metadata["reference_outputs"] = labour_reference(load_bundle(path, TASK), reference_data)
    write_metadata(path, metadata, labour_model_card)
    return metadata


def labour_reference(bundle: Any, root: Path, n: int = 4) -> list[LabourReference]:
    """AoP / HSD the bundle gives on the first images of ``root/psfhs_mini`` (re-checked by the tests)."""
    folder = root / LABOUR_FOLDER
    if not (folder / "labels.csv").is_file():
        return []
    settings = labour_settings(bundle)
    out: list[LabourReference] = []
    for s in score_images(bundle.infer, settings, folder, read_labels(folder)[:n]):
        out.append(
            {
                "image": reference_name(root, folder / s.filename),
                "reason": s.reason,
                "aop_deg": None if s.aop_pred is None else round(s.aop_pred, 3),
                "hsd_px": None if s.hsd_pred is None else round(s.hsd_pred, 3),
            }
        )
    return out


def _f(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _ci(m: Mapping[str, Any], key: str, spec: str) -> str:
    ci = m.get(f"{key}_ci95")
    return "" if not ci else f"{_f(ci[0], spec)}–{_f(ci[1], spec)}"


def labour_model_card(meta: LabourMetadata) -> str:
    m = meta["metrics"]
    td = meta["training_data"][0]
    t = meta["training"]
    gate_d = meta["postprocess"]["gate"]
    runtime = meta.get("runtime_comparison")
    runtime_line = (
        f"Inference runtime: {meta['runtime']} (measured at export, {runtime['threads']} threads: torch "
        f"{runtime['torch_ms_p50']} ms vs onnxruntime {runtime['onnxruntime_ms_p50']} ms p50)."
        if runtime
        else "Inference runtime: torch."
    )
    rows = [
        ("Dice fetal head", "dice_fh_mean", ".4f"),
        ("Dice pubic symphysis", "dice_ps_mean", ".4f"),
        ("analysed (gate passed, angle measured)", "analysed_rate", ".3f"),
        (r"\|ΔAoP\| mean (deg), analysed images", "aop_abs_diff_deg_mean", ".2f"),
        (r"\|ΔAoP\| median (deg), analysed images", "aop_abs_diff_deg_median", ".2f"),
        ("ΔAoP signed mean (deg), analysed images", "aop_diff_deg_mean_signed", ".2f"),
        (r"\|ΔAoP\| mean (deg), every measurable image, no gate", "aop_abs_diff_deg_mean_ungated", ".2f"),
        (r"\|ΔHSD\| mean (px), analysed images", "hsd_abs_diff_px_mean", ".2f"),
        (r"\|ΔHSD\| median (px), analysed images", "hsd_abs_diff_px_median", ".2f"),
    ]
    stopped = t.get("stopped") or (
        "the time budget"
        if t["epochs_run"] < t["recipe"]["epochs"] and t["epochs_run"] - t["best_epoch"] < t["recipe"]["patience"]
        else "early stopping"
        if t["epochs_run"] < t["recipe"]["epochs"]
        else "the last epoch"
    )
    table = "\n".join(f"| {label} | {_f(m.get(key), spec)} | {_ci(m, key, spec)} |" for label, key, spec in rows)
    return f"""# {meta["name"]} {meta["version"]} — pubic symphysis + fetal head segmentation (labour progress)

**{meta["intended_use"]}.** Trained on one public dataset of two Chinese hospitals; not validated for clinical use.

## What it does
Segments the pubic symphysis (PS) and the fetal head (FH) on a 2D intrapartum transperineal ultrasound
image ({meta["network"]["class"]}, {meta["network"]["params"]}; softmax over background, PS, FH). The node
keeps each structure's largest region and measures the **angle of progression** (AoP) and the
**head-symphysis distance** (HSD) in the FH-PS-AOP 2023 challenge convention (OpenCV ellipse fits; vertex =
right-most end of the symphysis major axis; tangent to the far side of the head; docs/models.md). HSD is in
pixels, and in mm only when the DICOM image is calibrated. A gate answers "not analysed: ..." when a
structure is missing, its area is outside {gate_d["ps_area"]} (PS) / {gate_d["fh_area"]} (FH) of the image
(half the smallest to twice the largest training mask), or its mean probability is below
{gate_d["min_confidence"]} (keeps 99% of the validation structures).

## Training data
{td["name"]} — {td["citation"]}; licence {td["licence"]}. Split by `{td["split_by"]}` (blocks of 20
consecutive image numbers; no patient ID is published), seed {td["seed"]}: {td["splits"]}.

## Metrics ({m["split"]})
n = {m["n"]} images in {m["n_groups"]} id blocks. References: the test masks, measured with the same geometry
(equal to PSFHS's `aop_deg` / `hsd_px` columns). 95% CIs: percentile bootstrap resampling id blocks (1,000).

| metric | value | 95% CI |
|---|---|---|
{table}

Images with |ΔAoP| ≤ 5°: {_f(m.get("aop_within_5deg_rate"), ".3f")}. Reasons for "not analysed" on the test
images (count): {", ".join(f"{k} ({v})" for k, v in (m.get("not_analysed_reasons") or {}).items()) or "none"}.
Per image: `docs/test_images.csv`.

Training: {t["epochs_run"]} epochs, ended by {stopped} (kept epoch {t["best_epoch"]}), {t["minutes"]} minutes on
{t["device"]} ({t["threads"]} threads, max {t["recipe"]["max_minutes"]:g} minutes of training). Recipe: AdamW lr {t["recipe"]["lr"]}, cosine over {t["recipe"]["epochs"]} epochs,
batch {t["recipe"]["batch_size"]}, Dice + cross-entropy; augmentation rotation ±{t["recipe"]["rotate_deg"]}°,
zoom ±{100 * t["recipe"]["scale_jitter"]:g}%, gamma/gain, no flips; early stopping (patience
{t["recipe"]["patience"]}) on {t["early_stopping"]}.
{runtime_line}

## Limits
- The reference AoP is derived from the annotators' masks with the challenge's ellipse construction, not
  a sonographer's caliper reading. The construction is sensitive: fitting the same masks without OpenCV's
  1-pixel polygon step moves the angle by a median 1.1° and up to 19°.
- One dataset (two hospitals, two scanner makes, 256x256 crops); images of other machines, other depths
  or another orientation (symphysis not upper left) are untested; the vertex is the right-most end of
  the symphysis axis, so a mirrored image gives a wrong angle.
- Held-out blocks are not held-out women: a woman's images may span two neighbouring blocks.
- AoP ≥ 120° went with a 90% chance of spontaneous or easy vacuum delivery in one study (Kalache et al.,
  UOG 2009): literature, not a prediction of this model.
{no_reference_line(meta)}{history_section(meta)}"""
