"""Model bundles in MONAI bundle layout.

``models/<name>/configs/metadata.json`` (version, task, network, input spec, labels, training data,
metrics, weights checksum), ``models/<name>/models/model.pt`` (state dict) and
``models/<name>/docs/README.md`` (model card).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fetalnode.errors import BundleError
from fetalnode.inference.networks import build_classifier_net, build_segmentation_net

WEIGHTS = Path("models") / "model.pt"
METADATA = Path("configs") / "metadata.json"
TASKS = {"segmentation": build_segmentation_net, "classification": build_classifier_net}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded model: its network in eval mode and its metadata."""

    name: str
    path: Path
    metadata: dict[str, Any]
    net: nn.Module

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def task(self) -> str:
        return str(self.metadata["task"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.metadata["network"]["params"])


def read_metadata(path: Path) -> dict[str, Any]:
    meta_path = path / METADATA
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path}: {METADATA} is missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {path}: {METADATA} is unreadable: {exc}") from exc
    for key in ("name", "version", "task", "network", "weights_sha256"):
        if key not in meta:
            raise BundleError(f"bundle {path}: metadata has no {key!r}")
    if meta["task"] not in TASKS:
        raise BundleError(f"bundle {path}: unknown task {meta['task']!r}")
    return dict(meta)


def load_bundle(path: str | Path, expected_task: str | None = None) -> Bundle:
    """Load and verify a bundle; raise :class:`BundleError` with the reason if anything is wrong."""
    path = Path(path)
    meta = read_metadata(path)
    if expected_task is not None and meta["task"] != expected_task:
        raise BundleError(f"bundle {path}: task is {meta['task']!r}, expected {expected_task!r}")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"bundle {path}: weights {WEIGHTS} are missing")
    digest = sha256_file(weights)
    if digest != meta["weights_sha256"]:
        raise BundleError(f"bundle {path}: weights checksum {digest[:12]} does not match metadata")
    net = TASKS[meta["task"]](meta["network"]["params"])
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise BundleError(f"bundle {path}: weights do not load into the network: {exc}") from exc
    net.eval()
    return Bundle(name=str(meta["name"]), path=path, metadata=meta, net=net)


def save_bundle(path: Path, net: nn.Module, metadata: dict[str, Any], model_card: str) -> None:
    """Write weights, metadata (with the weights' checksum) and the model card."""
    (path / "models").mkdir(parents=True, exist_ok=True)
    (path / "configs").mkdir(parents=True, exist_ok=True)
    (path / "docs").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path / WEIGHTS)
    metadata = dict(metadata, weights_sha256=sha256_file(path / WEIGHTS))
    (path / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    (path / "docs" / "README.md").write_text(model_card, encoding="utf-8")
