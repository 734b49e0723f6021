"""The view model's recipe, augmentation and fitting (class-balanced draws, early stopping)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fetalnode.inference.bundle import load_bundle, read_metadata
from fetalnode.inference.networks import EncoderViewNet, build_view_net, load_unet_encoder
from fetalnode.inference.view import ViewInputSpec
from fetalnode.training.early_stopping import EarlyStopping
from fetalnode.training.metrics import balanced_accuracy
from fetalnode.training.scanner import OverlayBank, ScannerAugment, draw_callipers_and_text
from fetalnode.training.view.data import CLASSES, ViewSet, sampling_weights

log = logging.getLogger(__name__)


OVERLAYS = 400  # text and calliper overlays drawn for a training run


@dataclass
class ViewRecipe:
    size: int = 112
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    dropout: float = 0.1
    epochs: int = 50
    # A median filter of this size on the network input (0: none): a scanner's text and calliper dots out. Tried
    # at 3: no better on validation (NLL 0.080 against 0.061 without), so off.
    median: int = 0
    # Class-balanced sampling: this many draws of each class per epoch (within a class, each source
    # folder weighs the same, and within a folder each group).
    per_class_per_epoch: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    label_smoothing: float = 0.05
    patience: int = 12
    max_minutes: float = 40.0
    seed: int = 20261124
    limit: int = 0
    # What scanners add to a frame, drawn at random (training.scanner), and stronger geometry (zoom into the
    # content, rotation, aspect, shift); False: fetal-view 0.1.0's augmentation.
    scanner_augment: bool = True
    # With the scanner augmentation: "strong" geometry (rotation ±20°, zoom into the content...) or "mild"
    # (fetal-view 0.1.0's rotation, zoom, aspect and shift). Without it, always mild.
    geometry: str = "strong"
    # Consistency with burned-in overlays (as AugMix's Jensen-Shannon term, Hendrycks et al., ICLR 2020): each
    # training image also goes through the network with text and callipers burned in; the loss is the mean
    # cross-entropy of both plus this weight x the Jensen-Shannon divergence of their predictions (0: off).
    consistency: float = 0.0
    # Within a class, each "origin" (acquisition source, ORIGINS) weighs the same, or each "folder" (0.1.0).
    balance: str = "origin"
    # Train without the axial heads of this origin and report how its images are routed (leave-one-source-out).
    leave_out: str = ""
    # The abstain threshold minimises, on validation, wrong routings + this x abstentions on images the
    # model had right (a wrong application is worse than none); never below min_threshold.
    abstain_cost: float = 0.2
    min_threshold: float = 0.5
    # How validation images weigh in that rule: "image" (each the same) or "class" (1 / images of its class:
    # fetal-view 0.1.0; a class of three validation images then outweighs hundreds of heads).
    threshold_weighting: str = "image"
    # A segmentation bundle (its folder) whose frozen encoder the model stands on (EncoderViewNet): the frame
    # letterboxed as that segmentation sees it, pooled features of each encoder level, one linear layer fitted
    # by L-BFGS with each weight decay of ``weight_decays`` (the lowest validation NLL kept). "": the
    # Classifier above, trained end to end with the augmentation.
    encoder: str = ""
    # Encoder models: training copies of each image with a scanner's callipers and banner text burned in
    # (training.scanner.draw_callipers_and_text, at the image's own resolution).
    overlay_copies: int = 1
    # Half decades from 1e-7 to 1e-4, then decades (encoder models; the lowest validation NLL is kept).
    weight_decays: tuple[float, ...] = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 1e-3, 1e-2)
    # Encoder models: the letterbox canvas (height, width); empty: the segmentation's own.
    encoder_canvas: tuple[int, ...] = ()
    # Encoder models: the first levels of the encoder whose features are pooled (0: all).
    encoder_levels: int = 0


def augment(x: torch.Tensor, gen: torch.Generator, strong: bool = False) -> torch.Tensor:
    """Random rotation (±15°), zoom (0.8–1.25), aspect (±20%), shift (±10%), mirror; gamma, contrast,
    brightness and noise: no view should be told by a scanner's framing or grey levels.

    ``strong``: rotation ±20°, zoom 0.75–1.4 and, for one image in seven, 1.4–1.8 (into the content, as a
    cropped export shows it, most of the sector edge gone), aspect ±25%, shift ±12%, gamma ±0.5 (log)."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(n).uniform_(lo, hi, generator=gen)

    turn, shift = (20.0, 0.12) if strong else (15.0, 0.1)
    angle = torch.deg2rad(uniform(-turn, turn))
    if strong:
        zoom = torch.exp(uniform(math.log(0.75), math.log(1.4)))
        zoom = torch.where(torch.rand(n, generator=gen) < 0.15, uniform(1.4, 1.8), zoom)
        aspect = torch.exp(uniform(-0.25, 0.25))
    else:
        zoom = torch.exp(uniform(math.log(0.8), math.log(1.25)))
        aspect = torch.exp(uniform(-0.2, 0.2))
    mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    sx, sy = mirror * aspect / zoom, 1 / (aspect * zoom)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, uniform(-shift, shift)], 1),
            torch.stack([sin * sx, cos * sy, uniform(-shift, shift)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = out > 0
    gamma = torch.exp(uniform(-0.5, 0.5) if strong else uniform(-0.4, 0.4)).view(n, 1, 1, 1)
    out = out.clamp(0, 1) ** gamma
    out = out * uniform(0.75, 1.25).view(n, 1, 1, 1) + uniform(-0.1, 0.1).view(n, 1, 1, 1) * inside
    noise = torch.randn(out.shape, generator=gen) * uniform(0, 0.04).view(n, 1, 1, 1)
    return (out + noise * inside).clamp(0, 1)


def input_spec(recipe: ViewRecipe) -> ViewInputSpec:
    """The network input of a recipe: the encoder's segmentation canvas, or a square of ``size``."""
    if recipe.encoder and recipe.encoder_canvas:
        return ViewInputSpec(canvas_hw=(int(recipe.encoder_canvas[0]), int(recipe.encoder_canvas[1])))
    if recipe.encoder:
        return ViewInputSpec.of(read_metadata(Path(recipe.encoder))["input"])
    return ViewInputSpec(size=recipe.size)


def view_params(recipe: ViewRecipe) -> dict[str, Any]:
    if recipe.encoder:
        seg = read_metadata(Path(recipe.encoder))
        params = seg["network"]["params"]
        return {
            "encoder": f"{seg['name']} {seg['version']}",
            "encoder_weights_sha256": seg["weights_sha256"],
            "channels": list(params["channels"]),
            "strides": list(params["strides"]),
            "num_res_units": int(params.get("num_res_units", 2)),
            "norm": str(params.get("norm", "BATCH")),
            "n_classes": len(CLASSES),
            **({"levels": recipe.encoder_levels} if recipe.encoder_levels else {}),
        }
    return {
        "size": recipe.size,
        "channels": list(recipe.channels),
        "strides": list(recipe.strides),
        "num_res_units": recipe.num_res_units,
        "dropout": recipe.dropout,
        "n_classes": len(CLASSES),
        **({"median": recipe.median} if recipe.median > 1 else {}),
    }


def encoder_features(net: EncoderViewNet, x: np.ndarray, desc: str = "") -> np.ndarray:
    """:meth:`EncoderViewNet.features` of a batch of network inputs (N, H, W), 32 at a time."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), 32), desc=desc or "encoder features", leave=False):
            out.append(net.features(torch.from_numpy(np.ascontiguousarray(x[i : i + 32]))[:, None]).numpy())
    return np.concatenate(out)


def overlaid_features(net: EncoderViewNet, data: ViewSet, spec: ViewInputSpec, rng: np.random.Generator) -> np.ndarray:
    """Encoder features of each image of ``data`` with callipers and banner text burned in."""
    out = []
    for i in tqdm(range(0, len(data.images), 32), desc="overlaid copies", leave=False):
        x = np.stack([spec(draw_callipers_and_text(im.gray(), rng)) for im in data.images[i : i + 32]])
        out.append(encoder_features(net, x, "overlaid copies"))
    return np.concatenate(out)


def fit_encoder(train: ViewSet, val: ViewSet, recipe: ViewRecipe) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """An :class:`EncoderViewNet` on ``recipe.encoder``'s frozen encoder: features of the training images and
    of ``overlay_copies`` copies of each with callipers and text, standardised; a linear layer fitted by L-BFGS
    (each class weighs the same) for each weight decay, the one with the lowest validation NLL kept."""
    start = time.monotonic()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    seg = load_bundle(Path(recipe.encoder), "segmentation")
    net = build_view_net(view_params(recipe))
    assert isinstance(net, EncoderViewNet)
    load_unet_encoder(net, seg.net.state_dict())
    spec = input_spec(recipe)
    feats, labels = [encoder_features(net, train.x, "training images")], [train.y]
    for _ in range(recipe.overlay_copies):
        feats.append(overlaid_features(net, train, spec, rng))
        labels.append(train.y)
    f, y = np.concatenate(feats), np.concatenate(labels)
    mean, scale = f.mean(0), f.std(0) + 1e-6
    net.mean.copy_(torch.from_numpy(mean))
    net.scale.copy_(torch.from_numpy(scale))
    z = torch.from_numpy((f - mean) / scale).float()
    zv = torch.from_numpy((encoder_features(net, val.x, "validation images") - mean) / scale).float()
    target = torch.from_numpy(y)
    weight = torch.from_numpy(1.0 / np.bincount(y, minlength=len(CLASSES))[y]).float()
    weight = weight / weight.sum()
    history: list[dict[str, float]] = []
    best: tuple[int, dict[str, torch.Tensor]] | None = None  # index in history, the linear layer's weights

    def data_loss(linear: torch.nn.Linear) -> torch.Tensor:
        """The class-balanced cross-entropy of the training features."""
        return (F.cross_entropy(linear(z), target, reduction="none") * weight).sum()

    for decay in recipe.weight_decays:
        torch.manual_seed(recipe.seed)
        linear = torch.nn.Linear(z.shape[1], len(CLASSES))
        opt = torch.optim.LBFGS(linear.parameters(), max_iter=500)

        def closure(linear: torch.nn.Linear = linear, opt: torch.optim.LBFGS = opt, decay: float = decay) -> torch.Tensor:
            opt.zero_grad()
            loss = data_loss(linear) + decay * (linear.weight**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss = float(data_loss(linear))
            pv = torch.softmax(linear(zv), dim=1).numpy()
        record = {
            "weight_decay": decay,
            "loss": loss,
            **validation_record(pv, val.y),
            "minutes": round((time.monotonic() - start) / 60, 2),
        }
        history.append(record)
        log.info("linear head %s", {k: round(v, 5) for k, v in record.items()})
        if best is None or record["val_nll"] < history[best[0]]["val_nll"]:  # ties: the weaker decay, tried first
            best = (len(history) - 1, {k: v.clone() for k, v in linear.state_dict().items()})
    assert best is not None
    for i, record in enumerate(history):
        record["kept"] = float(i == best[0])
    net.linear.load_state_dict(best[1])
    net.eval()
    return net, history


def predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            out.append(torch.softmax(net(torch.from_numpy(x[i : i + 64])[:, None]), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), dtype=np.float32)


def jensen_shannon(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between the softmax predictions of two logit batches."""
    pa, pb = torch.softmax(a, dim=1), torch.softmax(b, dim=1)
    log_m = torch.log((0.5 * (pa + pb)).clamp(1e-7, 1.0))
    kl = F.kl_div(log_m, pa, reduction="batchmean") + F.kl_div(log_m, pb, reduction="batchmean")
    return 0.5 * kl


def balanced_nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over the classes present of the mean negative log-likelihood of the true class."""
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
    return float(np.mean([nll[y == c].mean() for c in np.unique(y)]))


def validation_record(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """A fit's validation figures: NLL over images (what model selection uses), class-balanced NLL and
    balanced accuracy."""
    return {
        "val_nll": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean()),
        "val_balanced_nll": balanced_nll(probs, y),
        "val_balanced_accuracy": balanced_accuracy(y, probs.argmax(1), len(CLASSES)),
    }


def fit(train: ViewSet, val: ViewSet, recipe: ViewRecipe) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Class-balanced draws each epoch; early stopping on the validation NLL over images.

    Not on the class-balanced NLL: two of its classes have 1-5 validation images, and it jumped by a
    factor of 3 between neighbouring epochs (the first run stopped at epoch 12 with its best at 4).
    """
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    net = build_view_net(view_params(recipe))
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    weights = sampling_weights(train, recipe.balance)
    scanner = ScannerAugment(OverlayBank.draw(OVERLAYS, recipe.size, recipe.seed)) if recipe.scanner_augment else None
    xtr, ytr = torch.from_numpy(train.x)[:, None], torch.from_numpy(train.y)
    stopping, history = EarlyStopping(recipe.patience, recipe.max_minutes), []
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        draws = []
        for c in np.unique(train.y):
            idx = np.nonzero(train.y == c)[0]
            p = weights[idx] / weights[idx].sum()
            draws.append(rng.choice(idx, size=recipe.per_class_per_epoch, replace=True, p=p))
        order = rng.permutation(np.concatenate(draws))
        losses = []
        for i in tqdm(range(0, len(order), recipe.batch_size), desc=f"view epoch {epoch}", leave=False):
            idx_t = torch.from_numpy(order[i : i + recipe.batch_size])
            if len(idx_t) < 2:
                continue
            opt.zero_grad()
            batch = augment(xtr[idx_t], gen, strong=recipe.scanner_augment and recipe.geometry == "strong")
            if scanner is not None:
                batch = scanner(batch, gen)
            if scanner is not None and recipe.consistency > 0:
                n = len(idx_t)
                logits = net(torch.cat([batch, scanner.overlaid(batch, gen)]))
                y = ytr[idx_t]
                loss = 0.5 * (loss_fn(logits[:n], y) + loss_fn(logits[n:], y))
                loss = loss + recipe.consistency * jensen_shannon(logits[:n], logits[n:])
            else:
                loss = loss_fn(net(batch), ytr[idx_t])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        pv = predict(net, val.x)
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            **validation_record(pv, val.y),
            "minutes": round((time.monotonic() - stopping.start) / 60, 2),
        }
        stopping.update(record["val_nll"], epoch, net)
        history.append(record)
        log.info("epoch %s", {k: round(v, 4) for k, v in record.items()})
        if stopping.stop():
            break
    stopping.restore(net)
    return net, history
