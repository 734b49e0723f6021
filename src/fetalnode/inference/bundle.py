"""Model bundles in MONAI bundle layout.

``models/<name>/configs/metadata.json`` (version, task, network, input spec, labels, training data,
metrics, weights checksum), ``models/<name>/models/model.pt`` (state dict) and
``models/<name>/docs/README.md`` (model card).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from fetalnode.errors import BundleError
from fetalnode.inference.networks import build_classifier_net, build_segmentation_net, build_view_net

WEIGHTS = Path("models") / "model.pt"
ONNX = Path("models") / "model.onnx"
METADATA = Path("configs") / "metadata.json"
# "segmentation": one sigmoid channel (the fetal head); "multiclass-segmentation": softmax over
# metadata["labels"] (background first; labour progress: pubic symphysis, fetal head).
TASKS = {
    "segmentation": build_segmentation_net,
    "multiclass-segmentation": build_segmentation_net,
    "classification": build_classifier_net,
    "view": build_view_net,
}


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
    infer: Callable[[torch.Tensor], torch.Tensor]

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
    infer: Callable[[torch.Tensor], torch.Tensor] = net
    if meta.get("runtime") == "onnxruntime":
        infer = onnx_runner(path, meta)
    return Bundle(name=str(meta["name"]), path=path, metadata=meta, net=net, infer=infer)


def ort_options() -> Any:
    """onnxruntime session options: torch's thread count, no busy-waiting between runs.

    onnxruntime's worker threads spin after each run by default; on a 2-core node that spin steals
    the CPU from the torch classifier and Grad-CAM that run right after the segmentation
    (benchmarks.inference_latency: 87 ms p50 with spinning, 66 ms without).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def verified_onnx(path: Path, meta: Mapping[str, Any]) -> Path:
    """The bundle's ONNX file, checked against the metadata's ``onnx_sha256`` (:class:`BundleError` if it is
    missing or differs)."""
    model = path / ONNX
    if not model.is_file():
        raise BundleError(f"bundle {path}: runtime is onnxruntime but {ONNX} is missing")
    if sha256_file(model) != meta.get("onnx_sha256"):
        raise BundleError(f"bundle {path}: {ONNX} checksum does not match metadata")
    return model


def onnx_runner(path: Path, meta: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    model = verified_onnx(path, meta)
    try:
        session = ort.InferenceSession(str(model), ort_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"bundle {path}: {ONNX} does not load: {exc}") from exc
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])

    return run


def export_onnx(
    net: nn.Module, input_shape: tuple[int, ...], target: Path, repeats: int = 20, batch_axis: bool = False
) -> dict[str, Any]:
    """Export ``net`` to ONNX and measure it against torch eager on the same input (torch's thread count).

    ``batch_axis``: the first dimension is left free (batches of any size); otherwise it is fixed to
    ``input_shape[0]``.

    Returns the largest absolute output difference and the median latencies of both runtimes;
    ``runtime`` is onnxruntime only when it is faster *and* equal within 1e-4.
    """
    import onnxruntime as ort

    net.eval()
    x = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net,
        (x,),
        str(target),
        input_names=["image"],
        output_names=["logits"],
        dynamo=False,
        opset_version=17,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}} if batch_axis else None,
    )
    session = ort.InferenceSession(str(target), ort_options(), providers=["CPUExecutionProvider"])

    def timed(fn: Callable[[], object]) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))

    with torch.no_grad():
        reference = net(x).numpy()
        torch_ms = timed(lambda: net(x))
    feed = {"image": x.numpy()}
    diff = float(np.abs(session.run(None, feed)[0] - reference).max())
    ort_ms = timed(lambda: session.run(None, feed))
    runtime = "onnxruntime" if ort_ms < torch_ms and diff <= 1e-4 else "torch"
    return {
        "runtime": runtime,
        "max_abs_diff": diff,
        "torch_ms_p50": round(torch_ms, 2),
        "onnxruntime_ms_p50": round(ort_ms, 2),
        "threads": torch.get_num_threads(),
        "input_shape": list(input_shape),
    }


# A bundle's metadata: a plain dict, or a task's typed schema (fetalnode.training.metadata).
MetadataT = TypeVar("MetadataT", bound=Mapping[str, Any])


def write_metadata(path: Path, metadata: MetadataT, model_card: Callable[[MetadataT], str] | None = None) -> None:
    """Write a bundle's metadata and, given its ``model_card`` renderer, the model card made from it."""
    (path / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    if model_card is not None:
        (path / "docs" / "README.md").write_text(model_card(metadata), encoding="utf-8")


def history_section(metadata: Mapping[str, Any]) -> str:
    """The model card's History section: the metadata's ``history`` lines (earlier versions, candidates and
    experiments of the bundle, oldest first), one item each; empty when there are none."""
    lines = metadata.get("history") or []
    if not lines:
        return ""
    items = "\n".join(f"- {line}" for line in lines)
    return (
        "\n## History\n"
        "Earlier versions, candidates not shipped and experiments, oldest first. Model choice is made on the\n"
        "validation split; held-out figures are read afterwards (an entry says where one was seen before a decision).\n\n"
        f"{items}\n"
    )


def append_history(path: Path, lines: list[str], model_card: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Add ``lines`` to a bundle's ``history`` and re-write its model card; weights are not touched."""
    metadata = read_metadata(path)
    metadata["history"] = [*metadata.get("history", []), *lines]
    write_metadata(path, metadata, model_card)
    return metadata


def save_bundle(
    path: Path,
    net: nn.Module,
    metadata: MetadataT,
    model_card: Callable[[MetadataT], str],
    onnx_input: tuple[int, ...] | None = None,
) -> MetadataT:
    """Write weights (and, with ``onnx_input``, an ONNX export with its measured speed), metadata with
    checksums, and the model card; returns the metadata as written (the keys given and the checksums')."""
    (path / "models").mkdir(parents=True, exist_ok=True)
    (path / "configs").mkdir(parents=True, exist_ok=True)
    (path / "docs").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path / WEIGHTS)
    written = dict(metadata, weights_sha256=sha256_file(path / WEIGHTS))
    if onnx_input is not None:
        comparison = export_onnx(net, onnx_input, path / ONNX)
        written.update(
            runtime=comparison["runtime"], runtime_comparison=comparison, onnx_sha256=sha256_file(path / ONNX)
        )
    write_metadata(path, cast(MetadataT, written), model_card)
    return cast(MetadataT, written)


def bundle_fingerprint(path: Path) -> tuple[str, float]:
    """Where a bundle name points and when its metadata changed: cheap to poll between jobs."""
    real = path.resolve()
    try:
        return str(real), (real / METADATA).stat().st_mtime
    except OSError:
        return str(real), -1.0


def install_bundle(source: Path, models_dir: Path, name: str | None = None) -> Path:
    """Install a bundle into a node's models folder without a moment where the name is missing.

    The bundle is verified (it must load), copied to ``<name>@<version>``, and ``<name>`` becomes a
    symbolic link to it, replaced atomically. A plain folder already at ``<name>`` is first moved to
    ``<name>@<its version>``. A running node picks the change up between two jobs.
    """
    import os
    import shutil

    bundle = load_bundle(source)
    name = name or bundle.name
    target = models_dir / f"{name}@{bundle.version}"
    if target.exists():
        raise BundleError(f"{target} already exists: bump the bundle version")
    staging = models_dir / f".{name}@{bundle.version}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, symlinks=False)
    load_bundle(staging)
    os.replace(staging, target)
    link = models_dir / name
    if link.exists() and not link.is_symlink():
        old = read_metadata(link)
        os.replace(link, models_dir / f"{name}@{old['version']}")
        os.symlink(f"{name}@{old['version']}", link)
    tmp_link = models_dir / f".{name}.link"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(target.name, tmp_link)
    os.replace(tmp_link, link)
    return target
