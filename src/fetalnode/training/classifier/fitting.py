"""The classifier network's fitting, its predictions, the trivial baselines and the grouped cross-validation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fetalnode.inference.bundle import Bundle
from fetalnode.inference.networks import build_classifier_net, transfer_unet_encoder
from fetalnode.training.classifier.data import ClsRecipe, CropSet, crop_features, roi_crops, unlabelled_crops
from fetalnode.training.data import read_labels
from fetalnode.training.early_stopping import EarlyStopping
from fetalnode.training.metadata import ProbabilityReference
from fetalnode.training.metrics import balanced_accuracy
from fetalnode.training.pretrain import PretrainRecipe, pretrain_base
from fetalnode.training.reference import CLS_FOLDER, reference_name

log = logging.getLogger(__name__)


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
) -> list[ProbabilityReference]:
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
