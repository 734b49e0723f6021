"""Train the head segmentation bundle on an HC18-format folder (images, masks, labels.csv)."""

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
from monai.losses import DiceCELoss
from tqdm import tqdm

from fetalnode.inference.analyzer import (
    MIN_SEMI_AXIS_PX,
    SegSettings,
    ellipse_agreement,
    locate_head,
    seg_settings,
    segment_probability,
)
from fetalnode.inference.bundle import (
    ONNX,
    export_onnx,
    history_section,
    load_bundle,
    save_bundle,
    sha256_file,
    write_metadata,
)
from fetalnode.inference.ellipse import fit_ellipse, ramanujan_perimeter
from fetalnode.inference.networks import build_segmentation_net
from fetalnode.inference.preprocess import letterbox, to_unit_range
from fetalnode.training.data import Row, bootstrap_ci, load_gray, read_labels, subject_split
from fetalnode.training.early_stopping import EarlyStopping
from fetalnode.training.metadata import Common, SegMetadata, SegMetrics, checked
from fetalnode.training.reference import no_reference_line, require_reference_data, segmentation_reference

log = logging.getLogger(__name__)


@dataclass
class UNetRecipe:
    """What every segmentation recipe sets (MONAI UNet on a letterboxed canvas, rotation/scale augmentation,
    early stopping, a time cap); :class:`SegRecipe` and the labour recipe set their own values."""

    canvas_hw: tuple[int, int] = (256, 256)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    epochs: int = 60
    batch_size: int = 16
    lr: float = 2e-3
    patience: int = 15
    max_minutes: float = 50.0
    rotate_deg: float = 10.0
    scale_jitter: float = 0.15
    seed: int = 20261124
    limit: int = 0


@dataclass
class SegRecipe(UNetRecipe):
    # The shipped hc18-headseg 0.3.0 recipe (docs/models.md): a five-level UNet at 256x384 with
    # rotation/scale augmentation, cosine over 60 epochs (then `fetalnode models finalize --gate
    # 0.896,0.943`: the learnt gate refused real heads for no validation gain). 0.2.0 was the same
    # network without rotation/scale, 80 epochs (validation HC 2.31 vs 2.09 mm).
    # Tried and not shipped (validation worse): 0.1.0's four levels at 224x320; four levels at
    # 256x384 with lr 1e-3, rotate_deg 15, scale_jitter 0.1; 0.2.0 fine-tuned at 352x512
    # (init_from, 10 epochs, lr 5e-4): validation HC within 0.02 mm, Dice lower; scale_jitter 0.25;
    # large_head_weight 2.5 (HC 2.04 mm under 0.3.0's gate but only 97.5% of the heads accepted);
    # epochs 80 (HC 2.003 mm on 98.4% under 0.3.0's gate, but that gate then accepted a non-brain plane:
    # benchmarks.gate 21/22 refused).
    canvas_hw: tuple[int, int] = (256, 384)
    # >1: draw training heads whose reference HC is at least large_head_mm this many times as often
    # (weighted sampling with replacement, same number of draws per epoch); 1: plain permutation.
    large_head_weight: float = 1.0
    large_head_mm: float = 200.0
    # A segmentation bundle to start from (its architecture replaces channels/strides/num_res_units):
    # a second, fine-tuning stage at another canvas. Its training minutes count towards this recipe's.
    init_from: str = ""
    # >0: also average the weights of every epoch from this one on (stochastic weight averaging,
    # batch-norm statistics recomputed); the average replaces the best epoch if validation prefers it.
    swa_from: int = 0


class WeightAverage:
    """Running mean of a network's parameters over epochs (stochastic weight averaging)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    def add(self, net: torch.nn.Module) -> None:
        self.count += 1
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name not in self.mean:
                    self.mean[name] = p.detach().clone()
                else:
                    self.mean[name] += (p.detach() - self.mean[name]) / self.count

    def apply(self, net: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
        """Load the averaged parameters into ``net`` and recompute its batch-norm statistics on ``x``."""
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(self.mean[name])
            batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
            torch.optim.swa_utils.update_bn(batches, net)
        net.eval()


def load_split(folder: Path, rows: list[Row], canvas_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, masks = [], []
    for row in rows:
        img, _ = letterbox(to_unit_range(load_gray(folder / row["filename"])), canvas_hw)
        mask, _ = letterbox(load_gray(folder / row["mask_filename"]) / 255.0, canvas_hw)
        imgs.append(img)
        masks.append((mask >= 0.5).astype(np.float32))
    return torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(masks))[:, None]


def augment(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, rotate_deg: float = 0.0, scale_jitter: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, small rotation/scale and gamma/contrast jitter (the masks follow the geometry)."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    if rotate_deg or scale_jitter:
        n, _, h, w = x.shape
        t = torch.deg2rad(torch.empty(n).uniform_(-rotate_deg, rotate_deg, generator=gen))
        s = torch.empty(n).uniform_(1 - scale_jitter, 1 + scale_jitter, generator=gen)
        theta = torch.zeros(n, 2, 3)
        # Rotation in pixel space expressed in normalised coordinates (non-square canvas).
        theta[:, 0, 0] = torch.cos(t) / s
        theta[:, 0, 1] = -torch.sin(t) * h / w / s
        theta[:, 1, 0] = torch.sin(t) * w / h / s
        theta[:, 1, 1] = torch.cos(t) / s
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = (torch.nn.functional.grid_sample(y, grid, mode="bilinear", align_corners=False) >= 0.5).float()
    gamma = torch.exp(torch.empty(x.shape[0], 1, 1, 1).uniform_(-0.4, 0.4, generator=gen))
    gain = torch.empty(x.shape[0], 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    return (x.clamp(0, 1) ** gamma * gain).clamp(0, 1), y


def hc_errors(
    net: torch.nn.Module, folder: Path, rows: list[Row], settings: SegSettings
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Predicted and reference HC (mm) through the inference path; NaN where no head was found."""
    net.eval()
    pred, ref, groups = [], [], []
    for row in rows:
        img01 = to_unit_range(load_gray(folder / row["filename"]))
        ellipse, _, _ = locate_head(net, settings, img01)
        px = float(row["pixel_size_mm"])
        pred.append(ramanujan_perimeter(ellipse.a, ellipse.b) * px if ellipse else math.nan)
        ref.append(float(row["hc_mm"]))
        groups.append(row["subject_group"])
    return np.array(pred), np.array(ref), groups


def sampling_weights(rows: list[Row], recipe: SegRecipe) -> torch.Tensor | None:
    """Per-image draw weights favouring large heads (reference HC >= large_head_mm); None: uniform."""
    if recipe.large_head_weight == 1.0:
        return None
    large = torch.tensor([float(r["hc_mm"]) >= recipe.large_head_mm for r in rows])
    return torch.where(large, recipe.large_head_weight, 1.0).double()


def dice(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            p = (torch.sigmoid(net(x[i : i + 32])) >= 0.5).float()
            t = y[i : i + 32]
            inter = (p * t).sum(dim=(1, 2, 3))
            out.append((2 * inter / (p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))).clamp_min(1e-6)).numpy())
    return np.concatenate(out)


def train_segmentation(
    data: Path, out: Path, recipe: SegRecipe, name: str, version: str, reference_data: Path | None = None
) -> SegMetadata:
    """Train, early-stop on the validation split, calibrate on training data, evaluate on the test split
    (``reference_data``: the folder of the reference images, see :mod:`fetalnode.training.reference`)."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    rows = read_labels(data)
    splits = subject_split(rows, recipe.seed)
    if recipe.limit:
        splits = {k: v[: recipe.limit if k == "train" else max(2, recipe.limit // 4)] for k, v in splits.items()}
    log.info("split by subject_group: %s", {k: len(v) for k, v in splits.items()})
    xtr, ytr = load_split(data, splits["train"], recipe.canvas_hw)
    xva, yva = load_split(data, splits["val"], recipe.canvas_hw)
    params: dict[str, Any] = {
        "channels": list(recipe.channels),
        "strides": list(recipe.strides),
        "num_res_units": recipe.num_res_units,
        "norm": "BATCH",
    }
    stages: list[dict[str, Any]] = []
    if recipe.init_from:
        start_bundle = load_bundle(Path(recipe.init_from), "segmentation")
        params = dict(start_bundle.metadata["network"]["params"])
        recipe.channels = tuple(params["channels"])
        recipe.strides = tuple(params["strides"])
        recipe.num_res_units = int(params.get("num_res_units", 2))
        stages = list(start_bundle.metadata["training"].get("stages", [])) or [_stage(start_bundle.metadata)]
        log.info("starting from %s %s", start_bundle.name, start_bundle.version)
    net = build_segmentation_net(params)
    if recipe.init_from:
        net.load_state_dict(start_bundle.net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    loss_fn = DiceCELoss(sigmoid=True)
    stopping = EarlyStopping(recipe.patience, recipe.max_minutes)
    start = stopping.start
    history = []
    swa = WeightAverage()

    def validate() -> tuple[float, float]:
        """Validation Dice and HC MAE (default gate, no calibration): the early-stopping score's parts."""
        pred, ref, _ = hc_errors(net, data, splits["val"], SegSettings(recipe.canvas_hw))
        hc = float(np.nanmean(np.abs(pred - ref))) if np.isfinite(pred).any() else math.inf
        return float(dice(net, xva, yva).mean()), hc

    draw_weights = sampling_weights(splits["train"], recipe)
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        if draw_weights is None:
            perm = torch.randperm(len(xtr), generator=gen)
        else:
            perm = torch.multinomial(draw_weights, len(xtr), replacement=True, generator=gen)
        losses = []
        bar = tqdm(range(0, len(perm), recipe.batch_size), desc=f"seg epoch {epoch}", leave=False)
        for i in bar:
            idx = perm[i : i + recipe.batch_size]
            xb, yb = augment(xtr[idx], ytr[idx], gen, recipe.rotate_deg, recipe.scale_jitter)
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        sched.step()
        val_dice, val_hc = validate()
        elapsed = time.monotonic() - start
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": val_dice, "val_hc_mae_mm": val_hc})
        log.info(
            "epoch %d loss %.4f val dice %.4f val HC MAE %.2f mm (%.0f s)",
            epoch,
            np.mean(losses),
            val_dice,
            val_hc,
            elapsed,
        )
        if recipe.swa_from and epoch >= recipe.swa_from:
            swa.add(net)
        stopping.update(val_hc - 100 * val_dice, epoch, net)
        if stopping.stop():
            break
    assert stopping.seen
    swa_info: dict[str, Any] = {}
    if swa.count:
        # The average of the weights of the epochs from swa_from on, with batch-norm statistics
        # recomputed on the training images; kept only if it scores better on validation than the
        # best single epoch (the same score as early stopping).
        swa.apply(net, xtr, recipe.batch_size)
        swa_dice, swa_hc = validate()
        chosen = "weight average" if swa_hc - 100 * swa_dice < stopping.score else "best epoch"
        best_epoch = min(history, key=lambda h: h["val_hc_mae_mm"] - 100 * h["val_dice"])
        swa_info = {
            "epochs_averaged": swa.count,
            "from_epoch": recipe.swa_from,
            "val_dice": swa_dice,
            "val_hc_mae_mm": swa_hc,
            "best_epoch": best_epoch,
            "chosen": chosen,
        }
        log.info("weight average of %d epochs: val dice %.4f HC MAE %.2f mm -> %s", swa.count, swa_dice, swa_hc, chosen)
    if swa_info.get("chosen") != "weight average":
        stopping.restore(net)
    train_minutes = (time.monotonic() - start) / 60
    stages.append(
        {
            "canvas_hw": list(recipe.canvas_hw),
            "epochs_run": len(history),
            "minutes": round(train_minutes, 1),
            "init_from": recipe.init_from or "random",
        }
    )
    gate, axis_scale, metrics = calibrate_and_test(net, data, splits, recipe.canvas_hw)
    metadata: SegMetadata = {
        "name": name,
        "version": version,
        "task": "segmentation",
        "description": "Fetal head (skull ellipse) segmentation on trans-thalamic ultrasound.",
        "intended_use": "RESEARCH USE ONLY, NOT FOR DIAGNOSIS",
        "network": {"class": "monai.networks.nets.UNet", "params": params},
        "input": {
            "canvas_hw": list(recipe.canvas_hw),
            "channels": 1,
            "intensity": "0.5-99.5 percentile to [0,1]",
            "resize": "letterbox, aspect kept, zero pad bottom/right",
        },
        "postprocess": {
            "threshold": 0.5,
            "ellipse_fit": "weighted second moments of largest region",
            "axis_scale": axis_scale,
            "gate": gate,
        },
        "training_data": [
            {
                "name": "HC18 grand challenge training set (shared part)",
                "citation": "van den Heuvel et al., PLoS ONE 13(8): e0200412 (2018), doi:10.5281/zenodo.1327317",
                "licence": "CC BY 4.0",
                "splits": {
                    k: {"images": len(v), "groups": len({r["subject_group"] for r in v})} for k, v in splits.items()
                },
                "split_by": "subject_group",
                "seed": recipe.seed,
            }
        ],
        "training": {
            "epochs_run": len(history),
            "minutes": round(sum(st["minutes"] for st in stages), 1),
            "stages": stages,
            "weight_average": swa_info,
            "device": "cpu",
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()},
            "history": history,
        },
        "metrics": metrics,
    }
    save_bundle(out, net, metadata, seg_model_card)
    return finalize_segmentation_bundle(out, reference_data)


def _stage(meta: dict[str, Any]) -> dict[str, Any]:
    """A single-stage bundle's training, as one entry of a multi-stage recipe."""
    t = meta["training"]
    return {
        "bundle": f"{meta['name']} {meta['version']}",
        "canvas_hw": list(meta["input"]["canvas_hw"]),
        "epochs_run": t["epochs_run"],
        "minutes": t["minutes"],
        "init_from": "random",
    }


def calibrate_and_test(
    net: torch.nn.Module, data: Path, splits: dict[str, list[Row]], canvas_hw: tuple[int, int]
) -> tuple[dict[str, float], float, SegMetrics]:
    """Post-processing fitted after training, then the test metrics through it.

    Gate thresholds come from the validation heads (accept at least 98% of them, never looser
    than the defaults: a stricter gate refuses round non-head structures such as the fetal
    thorax); the axis correction from training images only.
    """
    gate = gate_thresholds(net, data, splits["val"], canvas_hw)
    log.info("gate thresholds from %d validation heads: %s", len(splits["val"]), gate)
    gated = SegSettings(canvas_hw, 1.0, gate["min_iou"], gate["min_confidence"])
    # Bias calibration on training data only: the ratio that makes predicted HC match reference HC.
    cal_rows = splits["train"][:: max(1, len(splits["train"]) // 200)]
    pred, ref, _ = hc_errors(net, data, cal_rows, gated)
    ok = np.isfinite(pred)
    axis_scale = float(np.median(ref[ok] / pred[ok])) if ok.any() else 1.0
    log.info("axis scale calibrated on %d training images: %.4f", int(ok.sum()), axis_scale)
    metrics = evaluate_segmentation_net(net, data, splits["test"], dataclasses.replace(gated, axis_scale=axis_scale))
    metrics["split"] = "test (15% of subject groups, never used for training or early stopping)"
    return gate, axis_scale, metrics


def set_gate(path: Path, min_iou: float, min_confidence: float, data: Path) -> None:
    """Replace a bundle's gate thresholds and re-measure its test metrics through the new gate.

    The test split is the bundle's own (seeded, by subject group) split of ``data``, the folder it was
    trained on. The thresholds it replaces are kept in ``postprocess.gate.replaces``.
    """
    bundle = load_bundle(path, "segmentation")  # refuses a bundle of another task
    meta = checked(SegMetadata, bundle.metadata)
    old = {k: v for k, v in meta["postprocess"].get("gate", {}).items() if k != "replaces"}
    gate = {"min_iou": round(min_iou, 3), "min_confidence": round(min_confidence, 3)}
    settings = dataclasses.replace(seg_settings(bundle), min_iou=gate["min_iou"], min_confidence=gate["min_confidence"])
    test = subject_split(read_labels(data), int(meta["training_data"][0]["seed"]))["test"]
    metrics = evaluate_segmentation_net(bundle.net, data, test, settings)
    metrics["split"] = (
        "test (15% of subject groups, never used for training or early stopping; gate set after training)"
    )
    meta["postprocess"]["gate"] = {**gate, "set_by": "fetalnode models finalize --gate", "replaces": old}
    meta["metrics"] = metrics
    write_metadata(path, meta)
    log.info("gate %s -> %s; test metrics re-measured on %d images", old, meta["postprocess"]["gate"], len(test))


def finalize_segmentation_bundle(path: Path, reference_data: Path | None = None) -> SegMetadata:
    """Export ONNX (choosing the faster runtime by measurement), store reference outputs on the images of
    ``reference_data`` (none without it; a bundle that stores some needs it), rewrite the card.

    The last step of training; also runs on a bundle trained before these artefacts existed
    (``fetalnode models finalize``). Weights are not touched.
    """
    bundle = load_bundle(path, "segmentation")
    require_reference_data(path, bundle.metadata, reference_data)
    canvas_hw = tuple(bundle.metadata["input"]["canvas_hw"])
    comparison = export_onnx(bundle.net, (1, 1, *canvas_hw), path / ONNX)
    metadata = checked(
        SegMetadata,
        dict(
            bundle.metadata,
            runtime=comparison["runtime"],
            runtime_comparison=comparison,
            onnx_sha256=sha256_file(path / ONNX),
        ),
    )
    write_metadata(path, metadata)
    # Reference outputs through the runtime the node will use (onnxruntime or torch).
    if reference_data is None:
        log.warning("%s: no --reference-data, so no reference outputs are stored", path)
        metadata.pop("reference_outputs", None)
    else:
        metadata["reference_outputs"] = segmentation_reference(load_bundle(path, "segmentation"), reference_data)
    write_metadata(path, metadata, seg_model_card)
    return metadata


def gate_thresholds(
    net: torch.nn.Module, data: Path, rows: list[Row], canvas_hw: tuple[int, int], keep: float = 0.98
) -> dict[str, float]:
    """Ellipse-IoU and confidence thresholds that accept ``keep`` of these (validation) heads."""
    base = SegSettings(canvas_hw)
    ious, confs = [], []
    net.eval()
    for row in rows:
        prob = segment_probability(net, canvas_hw, to_unit_range(load_gray(data / row["filename"])))
        ellipse = fit_ellipse(prob)
        if ellipse is not None and ellipse.a >= MIN_SEMI_AXIS_PX:
            iou, confidence, _ = ellipse_agreement(prob, ellipse)
            ious.append(iou)
            confs.append(confidence)
    if not ious:
        return {"min_iou": base.min_iou, "min_confidence": base.min_confidence, "keep": keep}
    q = 100 * (1 - keep)
    return {
        "min_iou": round(max(base.min_iou, float(np.percentile(ious, q))), 3),
        "min_confidence": round(max(base.min_confidence, float(np.percentile(confs, q))), 3),
        "keep": keep,
    }


def evaluate_segmentation_net(net: torch.nn.Module, data: Path, rows: list[Row], settings: SegSettings) -> SegMetrics:
    """Dice (at the network canvas) and HC error in mm through the full inference path."""
    x, y = load_split(data, rows, settings.canvas_hw)
    d = dice(net, x, y)
    pred, ref, groups = hc_errors(net, data, rows, settings)
    found = np.isfinite(pred)
    err = np.abs(pred - ref)
    g = np.array(groups)
    fidx = np.nonzero(found)[0]
    return {
        "n": len(rows),
        "n_groups": len(set(groups)),
        "dice_mean": float(d.mean()),
        "dice_mean_ci95": bootstrap_ci(d, g, lambda i: d[i].mean()),
        "head_found_rate": float(found.mean()),
        "hc_abs_diff_mm_mean": float(err[found].mean()) if found.any() else None,
        "hc_abs_diff_mm_mean_ci95": bootstrap_ci(err[fidx], g[fidx], lambda i: err[fidx][i].mean()),
        "hc_abs_diff_mm_median": float(np.median(err[found])) if found.any() else None,
        "hc_diff_mm_mean_signed": float((pred - ref)[found].mean()) if found.any() else None,
    }


def seg_model_card(meta: SegMetadata) -> str:
    m = meta["metrics"]
    td = meta["training_data"][0]
    return f"""# {meta["name"]} {meta["version"]} — fetal head segmentation

**{meta["intended_use"]}.** Trained on a small public dataset; not validated for clinical use.

## What it does
Segments the fetal skull ellipse on a 2D trans-thalamic ultrasound image ({meta["network"]["class"]},
{meta["network"]["params"]}). The node fits an ellipse to the mask (weighted second moments),
corrects its axes by a factor calibrated on training data only ({_f(meta["postprocess"]["axis_scale"], ".4f")}),
and derives HC (Ramanujan), BPD and OFD in mm from the DICOM pixel calibration. A plausibility gate
(ellipse fit IoU, axis ratio, size, in-frame, confidence; {gate_line(meta)}) answers "not analysed: no fetal head found".

## Training data
{td["name"]} — {td["citation"]}; licence {td["licence"]}. Split by `{td["split_by"]}` (seed {td["seed"]}):
{td["splits"]}.

## Metrics ({m["split"]})
| metric | value | 95% CI (bootstrap by group) |
|---|---|---|
| n images / groups | {m["n"]} / {m["n_groups"]} | |
| Dice (at the {meta["input"]["canvas_hw"]} canvas) | {_f(m["dice_mean"], ".4f")} | {_f(m["dice_mean_ci95"][0], ".4f")}–{_f(m["dice_mean_ci95"][1], ".4f")} |
| head found | {_f(m["head_found_rate"], ".3f")} | |
| HC absolute error, mean (mm), heads found | {_f(m["hc_abs_diff_mm_mean"], ".2f")} | {_f(m["hc_abs_diff_mm_mean_ci95"][0], ".2f")}–{_f(m["hc_abs_diff_mm_mean_ci95"][1], ".2f")} |
| HC absolute error, median (mm), heads found | {_f(m["hc_abs_diff_mm_median"], ".2f")} | |
| HC signed error, mean (mm), heads found | {_f(m["hc_diff_mm_mean_signed"], ".2f")} | |

{runtime_line(meta)}

Training: {meta["training"]["epochs_run"]} epochs, {meta["training"]["minutes"]} minutes on {meta["training"]["device"]} (2 cores).{stages_line(meta)}
{recipe_line(meta)}

## Limits
Only trans-thalamic planes of (presumed) normal fetuses from one centre; BPD/OFD are outer-to-outer axes
of the fitted ellipse, not sonographer caliper placements. The gate's thresholds come from heads of one
centre, so heads of other centres or of poorer image quality are refused ("not analysed") more often:
see "head found" above and `python -m benchmarks.gate` for images of another centre.
{no_reference_line(meta)}{history_section(meta)}"""


def gate_line(meta: SegMetadata) -> str:
    """Where the gate's thresholds come from: learnt from the validation heads, or set after training."""
    gate = meta["postprocess"].get("gate")
    if not gate:
        return "default thresholds"
    text = f"thresholds IoU {gate['min_iou']} / confidence {gate['min_confidence']}"
    if gate.get("set_by"):
        old = gate.get("replaces", {})
        return (
            f"{text}, set after training by `{gate['set_by']}` in place of the ones learnt from the validation "
            f"heads (IoU {old.get('min_iou')} / confidence {old.get('min_confidence')})"
        )
    return f"{text}, set from the validation heads (accept {gate.get('keep', 0.98):.0%} of them)"


def recipe_line(meta: SegMetadata) -> str:
    """Optimiser, augmentation and the epoch early stopping kept, from the recorded recipe and history."""
    r = meta["training"].get("recipe", {})
    history = meta["training"].get("history", [])
    if not r or not history:
        return ""
    best = min(history, key=lambda h: h["val_hc_mae_mm"] - 100 * h["val_dice"])
    rotate, scale = r.get("rotate_deg", 0), r.get("scale_jitter", 0)
    geometry = f"rotation ±{rotate:g}°, scale ±{100 * scale:g}%, " if rotate or scale else ""
    weight = r.get("large_head_weight", 1.0)
    sampling = (
        f"heads with reference HC ≥ {r.get('large_head_mm', 200.0):g} mm drawn {weight:g}× as often; "
        if weight != 1.0
        else ""
    )
    return (
        f"Recipe: AdamW lr {r['lr']}, cosine over {r['epochs']} epochs, batch {r['batch_size']}; {sampling}"
        "augmentation: "
        f"flips, {geometry}gamma/gain; "
        f"early stopping on validation (patience {r['patience']}), kept epoch {best['epoch']} "
        f"(validation Dice {best['val_dice']:.4f}, HC MAE {best['val_hc_mae_mm']:.2f} mm before calibration and gate)."
    )


def stages_line(meta: SegMetadata) -> str:
    """The stages of a multi-stage recipe (a fine-tuning stage from another bundle), when there are several."""
    stages = meta["training"].get("stages", [])
    if len(stages) < 2:
        return ""
    parts = [
        f"{st['canvas_hw'][0]}x{st['canvas_hw'][1]}, {st['epochs_run']} epochs, {st['minutes']} min" for st in stages
    ]
    return " Stages (the minutes above are their sum): " + "; then ".join(parts) + "."


def runtime_line(meta: Common) -> str:
    """The measured torch-vs-onnxruntime comparison behind the bundle's inference runtime."""
    c = meta.get("runtime_comparison")
    if not c:
        return "Inference runtime: torch."
    return (
        f"Inference runtime: {meta['runtime']} (measured at export, {c['threads']} threads, input "
        f"{c['input_shape']}: torch {c['torch_ms_p50']} ms vs onnxruntime {c['onnxruntime_ms_p50']} ms p50; "
        f"largest output difference {c['max_abs_diff']:.1e})."
    )


def _f(value: Any, spec: str) -> str:
    """Format a metric, or 'n/a' where it could not be measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)
