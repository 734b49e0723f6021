"""Self-supervised (contrastive, SimCLR-style) pretraining of the classifier's base network.

Unlabelled ultrasound ROI crops are augmented twice; the base network plus a small projection head
learn to match the two views of one image against the other images of the batch (NT-Xent loss,
Chen et al. 2020). Only the base's weights are kept: they initialise the classifier when
``ClsRecipe.base_init == "contrastive"``. No labels are read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fetalnode.inference.networks import HeadClassifier

log = logging.getLogger(__name__)


@dataclass
class PretrainRecipe:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 0.2
    max_minutes: float = 12.0
    seed: int = 20261124


def two_views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view per image: resized crop (50-100% of the side), flips, gamma, gain and noise."""
    n = x.shape[0]
    s = torch.empty(n).uniform_(0.5, 1.0, generator=gen)
    tx = torch.empty(n).uniform_(-1, 1, generator=gen) * (1 - s)
    ty = torch.empty(n).uniform_(-1, 1, generator=gen) * (1 - s)
    flip_x = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = s * flip_x, tx
    theta[:, 1, 1], theta[:, 1, 2] = s * flip_y, ty
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    v = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.5, 0.5, generator=gen))
    gain = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=gen)
    noise = torch.randn(v.shape, generator=gen) * torch.empty(n, 1, 1, 1).uniform_(0, 0.08, generator=gen)
    return (v.clamp(0, 1) ** gamma * gain + noise).clamp(0, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy: each view must pick its partner among 2N-1 others."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return nn.functional.cross_entropy(sim, target)


def pretrain_base(net: HeadClassifier, crops: np.ndarray, recipe: PretrainRecipe) -> dict[str, object]:
    """Train ``net.base`` contrastively on ``crops`` (N, H, W) in [0, 1], in place; returns a summary."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    width = int(net.head[0].in_features)  # type: ignore[arg-type]
    projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, 64))
    params = list(net.base.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    x = torch.from_numpy(crops.astype(np.float32))[:, None]

    def embed(v: torch.Tensor) -> torch.Tensor:
        return projector(torch.flatten(net.pool(net.base(v)), 1))

    start = time.monotonic()
    history = []
    net.train()
    for epoch in range(1, recipe.epochs + 1):
        perm = torch.randperm(len(x), generator=gen)
        losses = []
        for i in tqdm(range(0, len(perm), recipe.batch_size), desc=f"pretrain epoch {epoch}", leave=False):
            idx = perm[i : i + recipe.batch_size]
            if len(idx) < 8:
                continue
            xb = x[idx]
            loss = nt_xent(embed(two_views(xb, gen)), embed(two_views(xb, gen)), recipe.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        history.append(float(np.mean(losses)))
        log.info("pretrain epoch %d contrastive loss %.4f", epoch, history[-1])
        if time.monotonic() - start > recipe.max_minutes * 60:
            log.info("pretraining: time budget of %.0f minutes reached", recipe.max_minutes)
            break
    net.eval()
    return {
        "images": len(x),
        "epochs_run": len(history),
        "minutes": round((time.monotonic() - start) / 60, 1),
        "loss_first_last": [round(history[0], 4), round(history[-1], 4)] if history else [],
        "recipe": recipe.__dict__,
    }
