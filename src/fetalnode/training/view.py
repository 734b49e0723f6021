"""Train the view classifier (``fetalnode train view``) on the dataset folders as they are.

Each folder's format tells the view of its images (:func:`folder_rows`): HC18 and
fetal_brain_abnormalities are axial fetal heads (HC18: about 12 to 40 weeks), PSFHS intrapartum transperineal,
first_trimester_sagittal first-trimester mid-sagittal, FETAL_PLANES_DB its brain planes heads and every
other plane "other fetal plane", a folder of DICOM files (no ``labels.csv``) ultrasound that is not
fetal. Every folder is split by its grouping column (never by image), HC18 and the brain abnormalities
exactly as the head bundles split them (same seed), so their test heads stay unseen by every model.
Classes are balanced by sampling; the abstain threshold is chosen on the validation split.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fetalnode.config import ModelSettings
from fetalnode.inference.analyzer import AnalysisResult
from fetalnode.inference.bundle import (
    ONNX,
    export_onnx,
    load_bundle,
    read_metadata,
    save_bundle,
    sha256_file,
    write_metadata,
)
from fetalnode.inference.networks import build_view_net
from fetalnode.inference.view import ViewModel, view_input
from fetalnode.training.data import Row, bootstrap_ci, case_split, group_split, load_gray, read_labels, subject_split
from fetalnode.training.early_stopping import EarlyStopping
from fetalnode.training.metrics import balanced_accuracy, confusion, per_class
from fetalnode.training.reference import SEG_FOLDER, VIEW_FOLDER, no_reference_line, reference_name, reference_path
from fetalnode.training.scanner import OverlayBank, ScannerAugment, draw_callipers_and_text, jpeg_round_trip
from fetalnode.training.segmentation import runtime_line
from fetalnode.vocab import RENAMED_VIEWS, View

log = logging.getLogger(__name__)

CLASSES: list[View] = [v for v in View if v is not View.UNKNOWN]
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
PYDICOM_TESTDATA = "pydicom-testdata"
BRAIN_PLANE = "Fetal brain"
OVERLAYS = 400  # text and calliper overlays drawn for a training run

# Dataset formats, told by the columns of labels.csv (a folder without one holds DICOM files).
FORMATS: dict[str, dict[str, Any]] = {
    "hc18": {
        "columns": {"subject_group", "hc_mm"},
        "group": "subject_group",
        "name": "HC18 (van den Heuvel et al., PLoS ONE 2018, doi:10.5281/zenodo.1327317)",
        "licence": "CC BY 4.0",
    },
    "fetal_brain_abnormalities": {
        "columns": {"case_group", "label"},
        "group": "case_group",
        "name": "Fetal Brain Abnormalities Ultrasound v1 (Roboflow Universe; normals from FETAL_PLANES_DB)",
        "licence": "CC BY 4.0 (as stated by the Roboflow export)",
    },
    "psfhs": {
        "columns": {"id_block", "aop_deg"},
        "group": "id_block",
        "name": "PSFHS (Chen et al., Sci Data 11:436 (2024), doi:10.5281/zenodo.10969427)",
        "licence": "CC BY 4.0",
    },
    "first_trimester_sagittal": {
        "columns": {"image_id", "view", "nt_box"},
        "group": "image_block",
        "name": "Dataset for Fetus Framework (Mendeley Data, doi:10.17632/n2rbrb9t4f.1)",
        "licence": "CC BY 4.0",
    },
    "fetal_planes_db": {
        "columns": {"plane", "brain_plane", "patient_id"},
        "group": "patient_id",
        "name": "FETAL_PLANES_DB (Burgos-Artizzu et al., Sci Rep 10:10200 (2020), Zenodo 3904280)",
        "licence": "CC BY 4.0",
    },
    "dicom": {
        "columns": set(),
        "group": "device_group",
        "name": "real ultrasound DICOM files without a fetus (pydicom-data / the pydicom wheel's test files)",
        "licence": "MIT (pydicom-data); pydicom's own licence for its wheel's files",
    },
}
# first_trimester_sagittal has no patient ids: neighbouring image numbers may be one fetus.
IMAGE_BLOCK = 20

# Where the images of a folder were acquired (hospital, scanners, export): the unit of the source confound.
# fetal_brain_abnormalities mixes two: its normal images are FETAL_PLANES_DB brain planes (Barcelona), its
# abnormal ones come from an undocumented source (the Roboflow upload).
ORIGINS = {
    "hc18": "HC18 (Radboud UMC, Nijmegen; Voluson E8 / 730)",
    "fba_roboflow": "fetal_brain_abnormalities, abnormal images (Roboflow upload, source undocumented)",
    "fetal_planes_db": "FETAL_PLANES_DB (BCNatal, Barcelona; Voluson E6 / S10, Aloka): fetal_planes_db_sample "
    "and the normal images of fetal_brain_abnormalities",
    "psfhs": "PSFHS (two hospitals in Guangzhou)",
    "first_trimester_sagittal": "Dataset for Fetus Framework (Shenzhen People's Hospital)",
    "dicom": "ultrasound DICOM files of a few devices (pydicom-data)",
}


def image_origin(fmt: str, row: Row) -> str:
    """The acquisition source (:data:`ORIGINS`) of one row of a folder of format ``fmt``."""
    if fmt == "fetal_brain_abnormalities":
        return "fetal_planes_db" if row.get("label") == "normal" else "fba_roboflow"
    return fmt


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


def detect_format(folder: Path) -> str:
    """The dataset format of a folder, from its labels.csv columns (none: a folder of DICOM files)."""
    if str(folder) == PYDICOM_TESTDATA or not (folder / "labels.csv").is_file():
        return "dicom"
    columns = set(read_labels(folder)[0]) if read_labels(folder) else set()
    for name, spec in FORMATS.items():
        if spec["columns"] and spec["columns"] <= columns:
            return name
    raise ValueError(f"{folder}: labels.csv has columns {sorted(columns)}, which match no known dataset format")


def pydicom_testdata_dirs() -> list[Path]:
    """The local folders of pydicom's test data: the wheel's ``test_files`` and pydicom-data's store."""
    import pydicom.data

    dirs = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        dirs.append(Path(pydicom.data.get_testdata_file("US1_UNCR.dcm") or "").parent)
    except Exception:  # pydicom-data not installed: only the wheel's files
        log.warning("pydicom-data is not installed: only the pydicom wheel's test files are used")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def dicom_rows(folder: Path) -> list[Row]:
    """Ultrasound DICOM files of a folder (``pydicom-testdata``: pydicom's local test data) as rows.

    Every file whose Modality is US and whose SOP class the node analyses is one image of view
    ``not_fetal``; its group is the device and the body part of its Image Type, so that copies of one
    picture (the same file in several transfer syntaxes) never end up in two splits.
    """
    from pydicom import dcmread

    from fetalnode.intake import ANALYSABLE_SOP_CLASSES

    dirs = pydicom_testdata_dirs() if str(folder) == PYDICOM_TESTDATA else [folder]
    rows: list[Row] = []
    for path in sorted(p for d in dirs for p in d.glob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("Modality", "")) != "US" or ds.get("SOPClassUID") not in ANALYSABLE_SOP_CLASSES:
            continue
        image_type = [*ds.get("ImageType", []), "", "", ""]
        device = f"{ds.get('Manufacturer', '')}/{image_type[2]}".strip()
        rows.append({"filename": str(path), "device_group": device})
    if not rows:
        raise ValueError(f"{folder}: no labels.csv and no ultrasound DICOM files")
    return rows


def dicom_gray(path: Path) -> np.ndarray:
    """The analysis frame of a DICOM file, decoded exactly as the node decodes a received image."""
    from pydicom import dcmread

    from fetalnode.intake import decode_for_analysis

    return decode_for_analysis(dcmread(path), 10**9, 10**6).gray


@dataclass(frozen=True)
class ViewImage:
    """One image of a dataset folder with its view and its group (``<format>:<group>``)."""

    path: Path
    view: View
    group: str
    source: str
    detail: str = ""
    pixel_size_mm: float | None = None
    dicom: bool = False
    origin: str = ""

    def gray(self) -> np.ndarray:
        return dicom_gray(self.path) if self.dicom else load_gray(self.path)


def folder_rows(folder: Path) -> tuple[str, list[Row]]:
    """The format of a folder and its usable rows, each with ``_view`` and ``_group`` added."""
    fmt = detect_format(folder)
    rows = dicom_rows(folder) if fmt == "dicom" else read_labels(folder)
    if fmt == "fetal_brain_abnormalities":
        rows = [r for r in rows if r.get("label_conflict", "0") != "1"]  # as the classifier's split
    for row in rows:
        if fmt == "fetal_planes_db":
            row["_view"] = View.AXIAL_FETAL_HEAD if row["plane"] == BRAIN_PLANE else View.OTHER_FETAL_PLANE
        elif fmt == "first_trimester_sagittal":
            row["_view"] = View.named(row["view"])
            row["image_block"] = f"ft_b{int(row['image_id']) // IMAGE_BLOCK:03d}"
        elif fmt == "psfhs":
            row["_view"] = View.INTRAPARTUM_TRANSPERINEAL
        elif fmt == "dicom":
            row["_view"] = View.NOT_FETAL
        else:
            row["_view"] = View.AXIAL_FETAL_HEAD
        row["_group"] = f"{fmt}:{row[FORMATS[fmt]['group']]}"
        row["_stratum"] = stratum(View(row["_view"]))
    return fmt, rows


def stratum(view: View) -> str:
    """The stratum of a view in the seeded split: its name before any rename, so that a folder's split (the
    order in which its strata are dealt) stays what it was and earlier bundles' held-out images stay held out."""
    return next((old for old, new in RENAMED_VIEWS.items() if new is view), str(view))


def split_rows(fmt: str, rows: list[Row], seed: int) -> dict[str, list[Row]]:
    """Train/val/test by the folder's grouping column; HC18 and the brain abnormalities as the head
    bundles split them (same function, same seed)."""
    if fmt == "hc18":
        return subject_split(rows, seed)
    if fmt == "fetal_brain_abnormalities":
        return case_split(rows, seed)
    return group_split(rows, FORMATS[fmt]["group"], FRACTIONS, seed, "_stratum")


def pooled_dicom_split(folders: list[tuple[Path, list[Row]]], seed: int) -> dict[str, str]:
    """Device groups of all DICOM folders -> split, drawn once over their union (a file present in two
    folders, as pydicom-data's and dicom_samples' copies are, is one image of one group). Duplicate
    files (same bytes) are removed from all but the first folder's rows."""
    import hashlib

    seen: set[str] = set()
    pooled: list[Row] = []
    for _, rows in folders:
        keep = []
        for row in rows:
            digest = hashlib.sha256(Path(row["filename"]).read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                keep.append(row)
        rows[:] = keep
        pooled += keep
    split = group_split(pooled, "_group", FRACTIONS, seed) if pooled else {}
    return {row["_group"]: name for name, part in split.items() for row in part}


def to_image(folder: Path, fmt: str, row: Row) -> ViewImage:
    path = Path(row["filename"]) if fmt == "dicom" else folder / row["filename"]
    detail = row.get("plane") or row.get("label") or ""
    size = row.get("pixel_size_mm")
    return ViewImage(
        path=path,
        view=View(row["_view"]),
        group=row["_group"],
        source=fmt,
        detail=detail,
        pixel_size_mm=float(size) if size else None,
        dicom=fmt == "dicom",
        origin=image_origin(fmt, row),
    )


def folder_images(folder: Path, split: str, meta: dict[str, Any]) -> tuple[str, list[ViewImage]]:
    """The images of one folder: all of them, or one part of the split the bundle ``meta`` was trained
    with (its seed; for DICOM folders its stored device-group splits, a group it never saw is test)."""
    fmt, rows = folder_rows(folder)
    if split != "all":
        if fmt == "dicom":
            known = meta.get("dicom_group_splits", {})
            rows = [r for r in rows if known.get(r["_group"], "test") == split]
        else:
            rows = split_rows(fmt, rows, int(meta["training_data"][0]["seed"]))[split]
    return fmt, [to_image(folder, fmt, r) for r in rows]


@dataclass
class ViewSet:
    """Network inputs of some images, their class indices, groups and source folders."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    sources: np.ndarray
    images: list[ViewImage] = field(default_factory=list)

    @property
    def origins(self) -> np.ndarray:
        return np.array([im.origin or im.source for im in self.images]) if self.images else self.sources

    def __len__(self) -> int:
        return len(self.y)


def load_set(images: list[ViewImage], size: int, desc: str) -> ViewSet:
    x = np.zeros((len(images), size, size), dtype=np.float32)
    for i, image in enumerate(tqdm(images, desc=desc, leave=False)):
        x[i] = view_input(image.gray(), size)
    return ViewSet(
        x,
        np.array([CLASSES.index(im.view) for im in images], dtype=np.int64),
        np.array([im.group for im in images]),
        np.array([im.source for im in images]),
        images,
    )


def sampling_weights(data: ViewSet, balance: str = "origin") -> np.ndarray:
    """Per-image draw probability within its class: each source of the class (its ``origin``, or its
    ``folder``) weighs the same, within a source each group, within a group each image."""
    sources_of = data.origins if balance == "origin" else data.sources
    w = np.zeros(len(data), dtype=np.float64)
    for c in np.unique(data.y):
        idx = np.nonzero(data.y == c)[0]
        sources = Counter(sources_of[idx].tolist())
        groups = Counter(data.groups[idx].tolist())
        for i in idx:
            w[i] = 1.0 / len(sources) / _groups_in(data.groups, sources_of, idx, sources_of[i]) / groups[data.groups[i]]
    return w


def _groups_in(groups: np.ndarray, sources: np.ndarray, idx: np.ndarray, source: str) -> int:
    return len(set(groups[idx][sources[idx] == source].tolist()))


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


def view_params(recipe: ViewRecipe) -> dict[str, Any]:
    return {
        "size": recipe.size,
        "channels": list(recipe.channels),
        "strides": list(recipe.strides),
        "num_res_units": recipe.num_res_units,
        "dropout": recipe.dropout,
        "n_classes": len(CLASSES),
        **({"median": recipe.median} if recipe.median > 1 else {}),
    }


def predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            out.append(torch.softmax(net(torch.from_numpy(x[i : i + 64])[:, None]), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), dtype=np.float32)


def balanced_nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over the classes present of the mean negative log-likelihood of the true class."""
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
    return float(np.mean([nll[y == c].mean() for c in np.unique(y)]))


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
            batch = augment(xtr[idx_t], gen, strong=recipe.scanner_augment)
            if scanner is not None:
                batch = scanner(batch, gen)
            loss = loss_fn(net(batch), ytr[idx_t])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        pv = predict(net, val.x)
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "val_nll": float(-np.log(np.clip(pv[np.arange(len(val.y)), val.y], 1e-7, 1.0)).mean()),
            "val_balanced_nll": balanced_nll(pv, val.y),
            "val_balanced_accuracy": balanced_accuracy(val.y, pv.argmax(1), len(CLASSES)),
            "minutes": round((time.monotonic() - stopping.start) / 60, 2),
        }
        stopping.update(record["val_nll"], epoch, net)
        history.append(record)
        log.info("epoch %s", {k: round(v, 4) for k, v in record.items()})
        if stopping.stop():
            break
    stopping.restore(net)
    return net, history


def class_thresholds(threshold: float, strict: dict[str, float] | None = None) -> np.ndarray:
    """The probability each class needs to be routed: ``threshold``, or a stricter one of ``strict``."""
    return np.array([max(threshold, (strict or {}).get(str(c), 0.0)) for c in CLASSES])


def routed(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class index of each image, or -1 (unknown) where the top probability is below its class's threshold."""
    top = probs.argmax(1)
    return np.where(probs.max(1) >= thresholds[top], top, -1)


def correct_route(route: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Routed to its own view; for an image that is not fetal, "unknown" is right too (no application
    either way)."""
    return (route == y) | ((route == -1) & (y == CLASSES.index(View.NOT_FETAL)))


# Views whose application has no check of its own for the view: no validation image of another view may reach
# them. The head application measures any skull; labour-progress has its own view check (a pubic symphysis and
# a head passing its gate). A strict intrapartum threshold (tried) left 36 of 180 validation images unrouted.
STRICT_VIEWS = (View.AXIAL_FETAL_HEAD,)


def choose_threshold(probs: np.ndarray, y: np.ndarray, recipe: ViewRecipe) -> dict[str, Any]:
    """The abstain threshold minimising, on validation, wrong routings + ``abstain_cost`` x abstentions on
    images the model had right (each image weighing the same, or 1 / (images of its class) with
    ``threshold_weighting = "class"``), ties to the lowest; then each view of :data:`STRICT_VIEWS` (the head)
    needs more than the highest probability of that view on any validation image of another view."""
    if recipe.threshold_weighting == "class":
        weight = 1.0 / np.bincount(y, minlength=len(CLASSES))[y]
    else:
        weight = np.full(len(y), 1.0 / max(len(y), 1))
    best: tuple[float, float] | None = None
    not_fetal = CLASSES.index(View.NOT_FETAL)
    for t in np.round(np.arange(recipe.min_threshold, 0.991, 0.01), 2):
        route = routed(probs, class_thresholds(float(t)))
        wrong = (route != -1) & (route != y)
        lost = (route == -1) & (probs.argmax(1) == y) & (y != not_fetal)
        cost = float((weight * (wrong + recipe.abstain_cost * lost)).sum())
        if best is None or cost < best[1] - 1e-12:
            best = (float(t), cost)
    assert best is not None
    t = best[0]
    # An application measures: no validation image of another view may reach it.
    strict: dict[str, float] = {}
    worst: dict[str, float] = {}
    for view in STRICT_VIEWS:
        c = CLASSES.index(view)
        others = probs[y != c, c]
        worst[str(view)] = round(float(others.max()) if len(others) else 0.0, 4)
        t_view = min(0.99, max(t, math.floor(worst[str(view)] * 100 + 1) / 100))
        if t_view > t:
            strict[str(view)] = t_view
    route = routed(probs, class_thresholds(t, strict))
    weighting = "each image the same" if recipe.threshold_weighting == "image" else "class-balanced"
    return {
        "abstain_threshold": t,
        "class_thresholds": strict,
        "rule": f"minimises wrong routings + {recipe.abstain_cost} x abstentions on images the model had right "
        f"({weighting}), on the validation split, searched {recipe.min_threshold}-0.99; "
        f"{' and '.join(v.words for v in STRICT_VIEWS)} needs more than the highest probability of that view on "
        "any validation image of another view",
        "val_highest_head_probability_of_other_views": worst[str(View.AXIAL_FETAL_HEAD)],
        "val_highest_probability_of_other_views": worst,
        "val_cost": round(best[1], 4),
        "val_coverage": float((route != -1).mean()),
        "val_routed_accuracy": float(correct_route(route, y).mean()),
    }


def view_metrics(
    probs: np.ndarray, y: np.ndarray, groups: np.ndarray, sources: np.ndarray, thresholds: np.ndarray
) -> dict[str, Any]:
    """Accuracy (argmax), routed accuracy (with the abstention), coverage, per class and per source,
    each headline with a 95% CI from a bootstrap of whole groups."""
    k = len(CLASSES)
    pred = probs.argmax(1)
    route = routed(probs, thresholds)
    ok = correct_route(route, y)
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    cm = confusion(y, pred, k)
    routed_cm = np.zeros((k, k + 1), dtype=np.int64)
    np.add.at(routed_cm, (y, np.where(route == -1, k, route)), 1)
    precision, recall, _ = per_class(cm)
    present = np.unique(y)
    out: dict[str, Any] = {
        "n": len(y),
        "n_groups": len(np.unique(groups)),
        "accuracy": float((pred == y).mean()),
        "accuracy_ci95": bootstrap_ci(pred == y, groups, lambda i: (pred[i] == y[i]).mean()),
        "routed_accuracy": float(ok.mean()),
        "routed_accuracy_ci95": bootstrap_ci(ok, groups, lambda i: ok[i].mean()),
        "coverage": float((route != -1).mean()),
        "abstained": int((route == -1).sum()),
        "other_views_routed_to_head": int(((route == head) & (y != head)).sum()),
        "per_class": {
            str(CLASSES[c]): {
                "support": int(cm[c].sum()),
                "groups": len(np.unique(groups[y == c])),
                "recall": _num(recall[c]),
                "precision": _num(precision[c]),
                "routed_correct": int(ok[y == c].sum()),
                "abstained": int((route[y == c] == -1).sum()),
            }
            for c in range(k)
            if cm[c].sum() or cm[:, c].sum()
        },
        "per_source": {
            str(s): {
                "n": int((sources == s).sum()),
                "accuracy": float((pred == y)[sources == s].mean()),
                "routed_accuracy": float(ok[sources == s].mean()),
            }
            for s in np.unique(sources)
        },
        "confusion_matrix": cm.tolist(),
        "confusion_labels": [str(c) for c in CLASSES],
        "routed_confusion_matrix": routed_cm.tolist(),
        "routed_confusion_columns": [*(str(c) for c in CLASSES), str(View.UNKNOWN)],
    }
    if len(present) > 1:
        out["balanced_accuracy"] = balanced_accuracy(y, pred, k)
        out["balanced_accuracy_ci95"] = bootstrap_ci(y, groups, lambda i: balanced_accuracy(y[i], pred[i], k))
    return out


# What the robustness check does to each held-out image (training.scanner; in fonts training never drew).
PERTURBATIONS = ("callipers_and_text", "jpeg_q75", "jpeg_q40", "callipers_text_jpeg_q75")


def perturbed(gray: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "callipers_and_text":
        return draw_callipers_and_text(gray, rng)
    if kind.startswith("jpeg_q"):
        return jpeg_round_trip(gray, int(kind[len("jpeg_q") :]))
    return jpeg_round_trip(draw_callipers_and_text(gray, rng), 75)


def robustness(
    probabilities: Callable[[np.ndarray], np.ndarray],
    images: list[ViewImage],
    size: int,
    thresholds: np.ndarray,
    seed: int = 20261207,
    claim: tuple[dict[str, Any], Path] | None = None,
) -> dict[str, Any]:
    """How often the routed view of an image stays the same when a scanner's callipers and banner text are
    drawn on it at its own resolution, or it goes through a JPEG round trip (quality 75 or 40), or both;
    each as a fraction with a 95% CI by group, and the changes by true view. ``claim``: (the head claim rule,
    the folder of the head segmentation bundle): routing as the router does it, the claim included."""
    rng = np.random.default_rng(seed)
    grays = [im.gray() for im in tqdm(images, desc="robustness", leave=False)]
    groups = np.array([im.group for im in images])

    def route(frames: list[np.ndarray]) -> np.ndarray:
        probs = probabilities(np.stack([view_input(g, size) for g in frames]))
        out = routed(probs, thresholds)
        if claim is not None:
            rule, models_dir = claim
            which = claimable(probs, thresholds) & (
                probs[:, CLASSES.index(View.AXIAL_FETAL_HEAD)] >= rule["min_probability"]
            )
            scores = gate_scores(frames, models_dir, which)
            take = claimed(probs, scores, thresholds, rule["min_probability"], rule["min_score"])
            out = np.where(take, CLASSES.index(View.AXIAL_FETAL_HEAD), out)
        return out

    base = route(grays)
    out: dict[str, Any] = {
        "n": len(images),
        "n_groups": len(np.unique(groups)),
        "seed": seed,
        "with_claims": bool(claim),
    }
    for kind in PERTURBATIONS:
        same = route([perturbed(g, kind, rng) for g in grays]) == base
        changed = Counter(str(im.view) for im, s in zip(images, same, strict=True) if not s)
        out[kind] = {
            "unchanged": float(same.mean()),
            "unchanged_ci95": bootstrap_ci(same, groups, lambda i, same=same: same[i].mean()),
            "changed": int((~same).sum()),
            "changed_by_true_view": dict(changed),
        }
    return out


# The claim rule's grid (training: the head application may claim a frame the view model abstained on).
CLAIM_PROBABILITIES = tuple(round(v, 2) for v in np.arange(0.0, 0.51, 0.05))
CLAIM_SCORES = tuple(round(v, 2) for v in np.arange(0.70, 0.991, 0.01))


def head_claim_scores(images: list[ViewImage], models_dir: Path, which: np.ndarray) -> np.ndarray:
    """The head application's claim score (its gate's plausibility of the fitted skull, 0 when refused) of the
    images where ``which`` is true (0 elsewhere): the segmentation bundle of ``models_dir``, as the node runs it."""
    return gate_scores([im.gray() if w else None for im, w in zip(images, which, strict=True)], models_dir, which)


def gate_scores(grays: Sequence[np.ndarray | None], models_dir: Path, which: np.ndarray) -> np.ndarray:
    """:func:`head_claim_scores` of frames (those where ``which`` is false are not looked at)."""
    from fetalnode.inference.analyzer import find_head, seg_settings
    from fetalnode.inference.preprocess import to_unit_range

    seg = load_bundle(models_dir / ModelSettings().segmentation, "segmentation")
    settings = seg_settings(seg)
    out = np.zeros(len(grays), dtype=np.float64)
    for i in tqdm(np.nonzero(which)[0], desc="head claims", leave=False):
        gray = grays[i]
        assert gray is not None
        head = find_head(seg.infer, settings, to_unit_range(gray))
        out[i] = 0.0 if head.reason else head.score
    return out


def claimable(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Images the view model abstained on with no view at its routing threshold (a claim may take them)."""
    return (routed(probs, thresholds) == -1) & ~(probs >= thresholds[None]).any(1)


def claimed(probs: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, p_min: float, s_min: float) -> np.ndarray:
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    return claimable(probs, thresholds) & (probs[:, head] >= p_min) & (scores >= s_min)


def choose_claim(probs: np.ndarray, y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """The head application's claim rule, on validation: among the (head probability, skull score) pairs that
    let no validation image of another view be claimed, the one routing the most validation heads; ties to the
    stricter pair. The curve: head coverage and off-view claims against the score, at the chosen probability."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    is_head = y == head
    routed_heads = routed(probs, thresholds) == head
    coverage = float(routed_heads[is_head].mean())  # no claim at all (the strictest pair claims nothing)
    for p_min in CLAIM_PROBABILITIES:
        for s_min in CLAIM_SCORES:
            take = claimed(probs, scores, thresholds, p_min, s_min)
            if not (take & ~is_head).any():
                coverage = max(coverage, float((routed_heads | take)[is_head].mean()))
    p_min, s_min = _strictest(probs, y, scores, thresholds, coverage)
    curve = []
    for s in sorted({0.5, *CLAIM_SCORES[::2], s_min}):
        take = claimed(probs, scores, thresholds, p_min, s)
        curve.append(
            {
                "min_score": s,
                "head_coverage": float((routed_heads | take)[is_head].mean()),
                "heads_claimed": int((take & is_head).sum()),
                "other_views_claimed": int((take & ~is_head).sum()),
            }
        )
    return {
        "min_probability": p_min,
        "min_score": s_min,
        "val_heads": int(is_head.sum()),
        "val_head_coverage_without": float(routed_heads[is_head].mean()),
        "val_head_coverage": coverage,
        "val_claimable": int(claimable(probs, thresholds).sum()),
        "rule": "on the validation split: the (head probability, skull fit) pair that claims no image of another "
        "view and routes the most heads, the strictest such pair on ties",
        "curve": curve,
    }


def _strictest(
    probs: np.ndarray, y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, coverage: float
) -> tuple[float, float]:
    """The pair reaching ``coverage`` with no off-view claim that is strictest (highest score, then probability)."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    is_head, routed_heads = y == head, routed(probs, thresholds) == head
    for s_min in reversed(CLAIM_SCORES):
        for p_min in reversed(CLAIM_PROBABILITIES):
            take = claimed(probs, scores, thresholds, p_min, s_min)
            if not (take & ~is_head).any() and float((routed_heads | take)[is_head].mean()) >= coverage - 1e-12:
                return p_min, s_min
    return CLAIM_PROBABILITIES[-1], CLAIM_SCORES[-1]


def segmentation_version(models_dir: Path | None) -> str:
    """``name version`` of the head segmentation bundle the claim rule was chosen with."""
    assert models_dir is not None
    meta = read_metadata(models_dir / ModelSettings().segmentation)
    return f"{meta['name']} {meta['version']}"


def claim_metrics(
    probs: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    rule: dict[str, Any],
) -> dict[str, Any]:
    """Heads routed to the head application by the view model alone and with the claim rule (95% CI by group),
    and the images of other views the rule claims."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    is_head = y == head
    alone = routed(probs, thresholds) == head
    take = claimed(probs, scores, thresholds, rule["min_probability"], rule["min_score"])
    both = (alone | take)[is_head]
    hg = groups[is_head]
    return {
        "heads": int(is_head.sum()),
        "head_groups": len(np.unique(hg)),
        "heads_routed_by_view_model": int(alone[is_head].sum()),
        "heads_claimed": int((take & is_head).sum()),
        "head_routing": float(both.mean()) if len(both) else float("nan"),
        "head_routing_ci95": bootstrap_ci(both, hg, lambda i: both[i].mean()),
        "other_views_claimed": int((take & ~is_head).sum()),
        "other_views": int((~is_head).sum()),
    }


def heads_by_origin(probs: np.ndarray, data: ViewSet, thresholds: np.ndarray) -> dict[str, Any]:
    """The axial heads of ``data`` by acquisition source: routed to the head application (95% CI by group),
    abstained on, routed elsewhere (the view model alone)."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    route = routed(probs, thresholds)
    out: dict[str, Any] = {}
    origins = data.origins
    for origin in sorted(set(origins[data.y == head].tolist())):
        idx = np.nonzero((data.y == head) & (origins == origin))[0]
        ok = route[idx] == head
        groups = data.groups[idx]
        out[origin] = {
            "n": len(idx),
            "n_groups": len(np.unique(groups)),
            "routed_to_head": float(ok.mean()),
            "routed_to_head_ci95": bootstrap_ci(ok, groups, lambda i, ok=ok: ok[i].mean()),
            "abstained": int((route[idx] == -1).sum()),
            "elsewhere": int(((route[idx] != -1) & ~ok).sum()),
        }
    return out


def is_left_out(image: ViewImage, origin: str) -> bool:
    """An axial head of ``origin``: what a leave-one-source-out run trains without (the source's images of
    other views, FETAL_PLANES_DB's other planes, stay in training)."""
    return image.origin == origin and image.view is View.AXIAL_FETAL_HEAD


def left_out_metrics(probs: np.ndarray, data: ViewSet, thresholds: np.ndarray, origin: str) -> dict[str, Any]:
    """How the axial heads of a source the model never saw are routed: to the head application, elsewhere,
    or ``unknown``, with a 95% CI by group of the head routing rate."""
    head = CLASSES.index(View.AXIAL_FETAL_HEAD)
    route = routed(probs, thresholds)
    to_head = route == head
    answers = Counter(str(CLASSES[r]) if r >= 0 else str(View.UNKNOWN) for r in route.tolist())
    return {
        "origin": origin,
        "source": ORIGINS[origin],
        "n": len(route),
        "n_groups": len(np.unique(data.groups)),
        "routed_to_head": float(to_head.mean()),
        "routed_to_head_ci95": bootstrap_ci(to_head, data.groups, lambda i: to_head[i].mean()),
        "top_class_head": float((probs.argmax(1) == head).mean()),
        "routed": dict(answers),
    }


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


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
    from fetalnode.inference.labour import LabourResult
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
        result = analysis.result
        hc = False
        if analysis.application == HEAD:
            assert isinstance(result, AnalysisResult)
            hc = result.analysed and result.biometry is not None
            c["head_finding"] += int(result.analysed)
            c["hc_reported"] += int(hc)
            c["head_gate_refused"] += int(not result.analysed)
            if result.analysed and image.view is not View.AXIAL_FETAL_HEAD:
                head_examples.append(example)
        elif analysis.application == LABOUR:
            assert isinstance(result, LabourResult)
            c["aop_reported"] += int(result.analysed)
            if result.analysed and image.view is not View.INTRAPARTUM_TRANSPERINEAL:
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
    meta = read_metadata(bundle)
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


def view_reference(net: torch.nn.Module, size: int, root: Path) -> list[dict[str, Any]]:
    """Class probabilities of the reference images of ``root`` (the first two of ``hc18_mini`` and every one of
    ``view_mini``; :mod:`fetalnode.training.reference`), stored in the bundle at training time.

    ``load_bundle`` does not re-check them; the unit tests do (``tests/unit/test_router.py``), and
    ``finalize_view_bundle`` takes onnxruntime only if it reproduces them.
    """
    paths = sorted((root / SEG_FOLDER / "images").glob("*.png"))[:2]
    if (root / VIEW_FOLDER).is_dir():
        paths += sorted((root / VIEW_FOLDER).glob("*/images/*.png"))
    x = np.stack([view_input(load_gray(p), size) for p in paths]) if paths else np.zeros((0, size, size), np.float32)
    probs = predict(net, x)
    return [
        {"image": reference_name(root, p), "probabilities": [round(float(v), 6) for v in q]}
        for p, q in zip(paths, probs, strict=True)
    ]


def finalize_view_bundle(path: Path, reference_data: Path | None = None) -> dict[str, Any]:
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
    if bundle.metadata.get("reference_outputs") and reference_data is None:
        raise ValueError(f"{path} stores reference outputs: give the folder of their images (--reference-data)")
    size = int(bundle.metadata["input"]["size"])
    comparison = export_onnx(bundle.net, (1, 1, size, size), path / ONNX, batch_axis=True)
    metadata = dict(bundle.metadata, runtime=comparison["runtime"], runtime_comparison=comparison)
    metadata["onnx_sha256"] = sha256_file(path / ONNX)
    if comparison["runtime"] == "onnxruntime":
        write_metadata(path, metadata)
        stored = metadata.get("reference_outputs") or []
        if stored:
            model = ViewModel(load_bundle(path, "view"))
            assert reference_data is not None
            x = np.stack([view_input(load_gray(reference_path(reference_data, r["image"])), size) for r in stored])
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
) -> dict[str, Any]:
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
    sets = {split: load_set(images, recipe.size, f"images ({split})") for split, images in parts.items()}
    fit_start = time.monotonic()
    net, history = fit(sets["train"], sets["val"], recipe)
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
        recipe.size,
        thresholds,
        claim=(claim, models_dir) if claim and models_dir is not None else None,
    )
    if left_out:
        held = load_set(left_out, recipe.size, f"images ({recipe.leave_out}, left out)")
        held_probs = predict(net, held.x)
        metrics["left_out_source"] = left_out_metrics(held_probs, held, thresholds, recipe.leave_out)
        if claim:
            assert models_dir is not None
            held_scores = head_claim_scores(held.images, models_dir, claimable(held_probs, thresholds))
            metrics["left_out_source"]["with_claims"] = claim_metrics(
                held_probs, held.y, held.groups, held_scores, thresholds, claim
            )
    metadata: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": "view",
        "description": "Which kind of ultrasound image this is: the view router's classifier.",
        "intended_use": "RESEARCH USE ONLY, NOT FOR DIAGNOSIS",
        "network": {"class": "monai.networks.nets.Classifier", "params": view_params(recipe)},
        "input": {
            "size": recipe.size,
            "preprocess": "whole frame, 0.5-99.5 percentile scaling, centred on a zero square, resized",
        },
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
            "command": command,
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()},
            "history": history,
            "images": {k: len(v) for k, v in sets.items()},
        },
        "metrics": metrics,
    }
    if reference_data is None:
        log.warning("%s: no --reference-data, so no reference outputs are stored", out)
    else:
        metadata["reference_outputs"] = view_reference(net, recipe.size, reference_data)
    metadata = save_bundle(out, net, metadata, view_model_card)
    if with_heads:
        assert models_dir is not None
        checked = [im for im in test.images if im.view is not View.AXIAL_FETAL_HEAD or im.pixel_size_mm]
        metadata["metrics"]["node_check"] = node_check(out, checked, models_dir)
        metadata["metrics"]["node_check"]["split"] = "test, images of every view but the head, and calibrated heads"
    metadata["training"]["recipe_minutes"] = round((time.monotonic() - recipe_start) / 60, 1)
    write_metadata(out, metadata, view_model_card)
    return finalize_view_bundle(out, reference_data)


def _ci(v: Any) -> str:
    return "n/a" if not v or any(math.isnan(x) for x in v) else f"{v[0]:.3f}–{v[1]:.3f}"


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def confusion_table(m: dict[str, Any]) -> str:
    cols = m["routed_confusion_columns"]
    lines = ["| truth \\ routed | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, row in zip(m["confusion_labels"], m["routed_confusion_matrix"], strict=True):
        if sum(row):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def node_check_lines(m: dict[str, Any]) -> str:
    nc = m.get("node_check")
    if not nc:
        return "Not measured (the head bundles were not in the models folder at training time)."
    by = ", ".join(
        f"{v}: {c.get('images', 0)} images, {c.get('routed_to_fetal-head', 0)} routed to fetal-head, "
        f"{c.get('head_finding', 0)} head findings, {c.get('aop_reported', 0)} AoP, "
        f"{c.get('cross_check_view_uncertain', 0)} made uncertain by the cross-check"
        for v, c in nc["by_true_view"].items()
    )
    cross = nc.get("cross_check_probability")
    router = (
        f"the default view router (cross-check at probability {cross}) -> its applications"
        if cross is not None
        else "view router -> fetal-head with its plausibility gate"
    )
    aop = nc.get("non_transperineal_aop_reported")
    aop_words = f"; images of views other than the transperineal one with an AoP: **{aop}**" if aop is not None else ""
    when = f" (re-measured {nc['remeasured']} with this build's router)" if nc.get("remeasured") else ""
    earlier = "".join(
        f" Earlier{' (' + old['remeasured'] + ')' if old.get('remeasured') else ' (at training)'}: "
        f"{old['other_views_head_findings']} head findings, {old['other_views_hc_reported']} HC."
        for old in m.get("node_check_history", [])
    )
    if earlier:
        earlier += (
            " A re-measured figure comes after the earlier one on the same test images was seen (and, here, acted"
            " on): it is not a blind held-out measurement."
        )
    heads = ""
    if nc.get("calibrated_heads"):
        heads = (
            f" On the {nc['calibrated_heads']} calibrated test heads (HC18, wrapped with their pixel size): "
            f"**{nc['calibrated_heads_hc']} with an HC ({nc['calibrated_heads_hc_rate']:.3f}, 95% CI "
            f"{_ci(nc['calibrated_heads_hc_rate_ci95'])})**."
        )
    return (
        f"The whole node analysis ({router}){when} on the {nc['other_view_images']} test images of views other "
        f"than the head, each wrapped as US DICOM: **{nc['other_views_head_findings']} head findings, "
        f"{nc['other_views_hc_reported']} HC**{aop_words} ({by}).{heads}{earlier}"
    )


def robustness_lines(m: dict[str, Any]) -> str:
    rb = m.get("robustness")
    if not rb:
        return "Not measured."
    words = {
        "callipers_and_text": "callipers (crosses, dotted lines, traced ellipses, numbered) and banner text drawn",
        "jpeg_q75": "JPEG round trip, quality 75",
        "jpeg_q40": "JPEG round trip, quality 40",
        "callipers_text_jpeg_q75": "callipers and text, then JPEG quality 75",
    }
    rows = "\n".join(
        f"| {words[k]} | {rb[k]['unchanged']:.3f} ({_ci(rb[k]['unchanged_ci95'])}) | {rb[k]['changed']} "
        f"| {', '.join(f'{v}: {n}' for v, n in rb[k]['changed_by_true_view'].items()) or '-'} |"
        for k in PERTURBATIONS
        if k in rb
    )
    how = (
        " as the router routes it (the view model, then the head application's claim)" if rb.get("with_claims") else ""
    )
    return (
        f"Each of the {rb['n']} test images ({rb['n_groups']} groups) routed{how} as it is and again after (drawn at its own "
        "resolution, by the same drawing code as the training augmentation but in fonts it never used, seed "
        f"{rb['seed']}):\n\n| perturbation | routing unchanged (95% CI by group) | changed | by true view |\n"
        f"|---|---|---|---|\n{rows}"
    )


def claim_lines(meta: dict[str, Any]) -> str:
    sel = meta.get("claim_selection")
    if not sel:
        return "No claim rule (the head bundles were not in the models folder at training time)."
    rule = meta["claims"][str(View.AXIAL_FETAL_HEAD)]
    curve = "\n".join(
        f"| {c['min_score']:.2f} | {c['head_coverage']:.3f} | {c['heads_claimed']} | {c['other_views_claimed']} |"
        for c in sel["curve"]
    )
    test = meta["metrics"].get("claims")
    test_line = ""
    if test:
        test_line = (
            f"\n\nTest split: of {test['heads']} heads ({test['head_groups']} groups) the view model routes "
            f"{test['heads_routed_by_view_model']} to the head application and the claim adds {test['heads_claimed']}: "
            f"**{test['head_routing']:.3f} routed (95% CI {_ci(test['head_routing_ci95'])})**; images of other views "
            f"claimed: **{test['other_views_claimed']} of {test['other_views']}**."
        )
    return (
        f"When the view model abstains, the head application may claim the image if the head probability is at least "
        f"**{rule['min_probability']:.2f}**, no other view reaches its routing threshold, and its gate fits a skull "
        f"with a score of at least **{rule['min_score']:.2f}** (the lowest of ellipse IoU, segmentation confidence "
        f"and the part inside the frame; segmentation {rule['segmentation']}). Rule: {sel['rule']}. On validation "
        f"({sel['val_heads']} heads, {sel['val_claimable']} images abstained on): head coverage "
        f"{sel['val_head_coverage_without']:.3f} without claims, {sel['val_head_coverage']:.3f} with them.\n\n"
        f"Coverage against off-view claims on validation (head probability at least {rule['min_probability']:.2f}; every "
        "claimed image of another view would reach the head application, which finds its skull):\n\n"
        f"| skull score at least | validation heads routed | heads claimed | other views claimed |\n|---|---|---|---|\n"
        f"{curve}\n\n![coverage against off-view claims on validation]({CLAIM_CURVE}){test_line}"
    )


CLAIM_CURVE = "claim_curve.svg"


def claim_curve_svg(sel: dict[str, Any]) -> str:
    """The validation curve of the claim rule as an SVG: head coverage (y) against the images of other views
    claimed (x), one point per skull score, the chosen one ringed."""
    points = [(c["other_views_claimed"], c["head_coverage"], c["min_score"]) for c in sel["curve"]]
    x_max = max(2, *(p[0] for p in points))
    y_lo = min(sel["val_head_coverage_without"], *(p[1] for p in points)) - 0.01
    w, h, left, bottom = 520, 320, 70, 50

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + (w - left - 20) * x / x_max, 20 + (h - bottom - 20) * (1 - (y - y_lo) / (1.0 - y_lo))

    marks = [
        f'<circle cx="{xy(x, y)[0]:.1f}" cy="{xy(x, y)[1]:.1f}" r="3" fill="#1f77b4"><title>skull score ≥ {score:.2f}: '
        f"coverage {y:.3f}, other views claimed {x}</title></circle>"
        for x, y, score in points
    ]
    chosen = xy(0, sel["val_head_coverage"])  # the rule claims no validation image of another view
    marks.append(
        f'<circle cx="{chosen[0]:.1f}" cy="{chosen[1]:.1f}" r="6" fill="none" stroke="#d62728" stroke-width="2"/>'
    )
    base = xy(0, sel["val_head_coverage_without"])
    ticks = "".join(
        f'<text x="{xy(i, y_lo)[0]:.0f}" y="{h - bottom + 18}" font-size="11" text-anchor="middle">{i}</text>'
        for i in range(int(x_max) + 1)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
        f'<rect width="{w}" height="{h}" fill="white"/>'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="black"/>'
        f'<line x1="{left}" y1="15" x2="{left}" y2="{h - bottom}" stroke="black"/>{ticks}'
        f'<text x="{(w + left) / 2:.0f}" y="{h - 12}" font-size="12" text-anchor="middle">images of other views '
        "claimed (validation)</text>"
        f'<text x="16" y="{h / 2:.0f}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {h / 2:.0f})">'
        "validation heads routed</text>"
        f'<text x="{left - 6}" y="{xy(0, 1.0)[1] + 4:.0f}" font-size="11" text-anchor="end">1.00</text>'
        f'<text x="{left - 6}" y="{xy(0, y_lo)[1]:.0f}" font-size="11" text-anchor="end">{y_lo:.2f}</text>'
        f'<line x1="{left}" y1="{base[1]:.1f}" x2="{w - 10}" y2="{base[1]:.1f}" stroke="#999" stroke-dasharray="4 3"/>'
        f'<text x="{w - 12}" y="{base[1] - 4:.1f}" font-size="11" text-anchor="end">without claims '
        f"{sel['val_head_coverage_without']:.3f}</text>"
        f'<text x="{chosen[0] + 10:.1f}" y="{chosen[1] + 18:.1f}" font-size="11">chosen: skull score ≥ '
        f"{sel['min_score']:.2f}, head probability ≥ {sel['min_probability']:.2f}</text>"
        + "".join(marks)
        + f'<text x="{w / 2:.0f}" y="14" font-size="11" text-anchor="middle">research use only, not for diagnosis'
        "</text></svg>\n"
    )


def write_claim_curve(bundle: Path, meta: dict[str, Any]) -> None:
    """The claim curve beside the model card (docs/claim_curve.svg), when the bundle has a claim rule."""
    if meta.get("claim_selection"):
        (bundle / "docs" / CLAIM_CURVE).write_text(claim_curve_svg(meta["claim_selection"]), encoding="utf-8")


def holdout_lines(m: dict[str, Any]) -> str:
    runs = m.get("source_holdout")
    if not runs:
        return "Not measured for this bundle."
    rows = []
    for run in runs:
        lo = run["left_out_source"]
        routed_words = ", ".join(f"{k}: {v}" for k, v in sorted(lo["routed"].items(), key=lambda kv: -kv[1]))
        claims = lo.get("with_claims")
        with_claims = f"{claims['head_routing']:.3f} ({_ci(claims['head_routing_ci95'])})" if claims else "n/a"
        rows.append(
            f"| {lo['origin']} | {run['recipe']} | {lo['n']} / {lo['n_groups']} | **{lo['routed_to_head']:.3f}** "
            f"({_ci(lo['routed_to_head_ci95'])}) | {with_claims} | {lo['top_class_head']:.3f} | {routed_words} |"
        )
    commands = "\n".join(f"    {run['command']}" for run in runs)
    return (
        "Each run trains the same recipe without the axial heads of one source (its images of other views stay), "
        "chooses its thresholds on the remaining validation groups, and routes every image of the left-out source:\n\n"
        "| left-out head source | recipe | images / groups | routed to the head application (95% CI by group) | "
        "with the claim rule | top class head | routed (all answers) |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nCommands:\n\n{commands}"
    )


def record_source_holdout(bundle: Path, runs: list[Path]) -> list[dict[str, Any]]:
    """Copy the left-out-source figures of leave-one-source-out runs (bundles of ``train view --leave-out``)
    into a bundle's metadata and model card; weights and every other metric untouched."""
    meta = read_metadata(bundle)
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
                "command": rm["training"].get("command") or command_of(recipe),
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
    meta = read_metadata(bundle)
    meta["history"] = [*meta.get("history", []), *lines]
    write_metadata(bundle, meta, view_model_card)
    write_claim_curve(bundle, meta)


def recipe_words(recipe: dict[str, Any]) -> str:
    aug = "scanner augmentation" if recipe.get("scanner_augment") else "0.1.0 augmentation"
    return f"{recipe['size']} px, {aug}, by {recipe.get('balance', 'folder')}"


def command_of(recipe: dict[str, Any]) -> str:
    """The ``train view`` command line of a recipe (the dataset folders as the shipped bundles are trained)."""
    defaults = ViewRecipe()
    words = ["fetalnode train view --data-root ../shared/datasets --data pydicom-testdata"]
    if recipe.get("leave_out"):
        words.append(f"--leave-out {recipe['leave_out']}")
    if recipe["size"] != defaults.size:
        words.append(f"--size {recipe['size']}")
    if not recipe.get("scanner_augment", False):
        words.append("--no-scanner-augment")
    if recipe.get("balance", "folder") != defaults.balance:
        words.append(f"--balance {recipe.get('balance', 'folder')}")
    if recipe.get("threshold_weighting", "class") != defaults.threshold_weighting:
        words.append(f"--threshold-weighting {recipe.get('threshold_weighting', 'class')}")
    if recipe.get("median", 0) != defaults.median:
        words.append(f"--median {recipe.get('median', 0)}")
    for key in ("epochs", "patience"):
        if recipe[key] != getattr(defaults, key):
            words.append(f"--{key} {recipe[key]}")
    return " ".join([*words, "--out OUT"])


def head_threshold_line(meta: dict[str, Any]) -> str:
    t = meta.get("class_thresholds", {}).get(str(View.AXIAL_FETAL_HEAD))
    if t is None:
        return ""
    worst = meta["abstention"].get("val_highest_head_probability_of_other_views")
    return (
        f"; an image goes to the head application only with a head probability of at least **{t:.2f}** (the "
        f"highest head probability of a validation image of another view was {worst})"
    )


def view_model_card(meta: dict[str, Any]) -> str:
    m = meta["metrics"]
    p = meta["network"]["params"]
    rows = []
    for s in meta["training_data"]:
        sp = s["splits"]
        views = ", ".join(sorted({v for part in sp.values() for v in part["views"]}))
        rows.append(
            f"| {s['format']} | {views} | "
            + " | ".join(f"{sp[k]['images']} / {sp[k]['groups']}" for k in ("train", "val", "test"))
            + f" | {s['split_by']} | {s['licence']} |"
        )
    per_class = "\n".join(
        f"| {label} | {c['support']} / {c['groups']} | {_f(c['recall'])} | {_f(c['precision'])} | "
        f"{c['routed_correct']} | {c['abstained']} |"
        for label, c in m["per_class"].items()
    )
    ab = meta["abstention"]
    tr = meta["training"]
    recipe = tr["recipe"]
    augmentation = (
        "random rotation (±20°), zoom (0.75–1.4, and 1.4–1.8 into the content for one draw in seven), aspect, "
        "shift, mirroring, gamma, contrast and noise, and what scanners add (training.scanner): burned-in banner "
        "text and numbered callipers with their values, sector masks of other depths and widths, grey maps and "
        "tints, Doppler colour boxes, gain, speckle, blur and JPEG round trips"
        if recipe.get("scanner_augment")
        else "random rotation, zoom, aspect, shift, mirroring, gamma, contrast and noise"
    )
    balance = (
        "each acquisition source weighs the same (FETAL_PLANES_DB images are one source wherever they sit)"
        if recipe.get("balance") == "origin"
        else "each source folder weighs the same"
    )
    command = f"\n\nCommand:\n\n    {tr['command']}\n" if tr.get("command") else ""
    history = "\n".join(f"- {line}" for line in meta.get("history", [])) or "- First version."
    heads = m.get("heads_by_origin")
    heads_table = ""
    if heads:
        heads_table = (
            "\n\nAxial heads of the test split by acquisition source (routed by the view model alone):\n\n"
            + (
                "| source | images / groups | routed to the head application (95% CI by group) | abstained | elsewhere |\n"
                "|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {o} | {h['n']} / {h['n_groups']} | {h['routed_to_head']:.3f} ({_ci(h['routed_to_head_ci95'])}) "
                    f"| {h['abstained']} | {h['elsewhere']} |"
                    for o, h in heads.items()
                )
            )
        )
    median_words = f", a {p['median']}×{p['median']} median filter" if p.get("median") else ""
    return f"""# {meta["name"]} {meta["version"]} — ultrasound view classifier (the view router's model)

**{meta["intended_use"]}.** It decides which application looks at an image; it makes no finding itself.

## What it does
Views are named by anatomy and plane: an axial fetal head at any gestational age (every brain plane at which a
head is measured), the intrapartum transperineal view, the first-trimester mid-sagittal view, other fetal planes,
not fetal. The whole frame (0.5–99.5 percentile scaling, centred on a square, {p["size"]}×{p["size"]}{median_words}) goes through a
MONAI `Classifier` (residual units {p["channels"]}, strides {p["strides"]}, dropout {p["dropout"]}) with
{len(meta["labels"])} classes: {", ".join(meta["labels"])}. When the top probability is below the abstain
threshold **{meta["abstain_threshold"]:.2f}** the router answers `unknown` (no application){head_threshold_line(meta)}.
Threshold rule: {ab["rule"]}; on validation it keeps {ab["val_coverage"]:.3f} of the images routed.
{runtime_line(meta)}

## Training data
Each folder's format tells its view; each is split 70/15/15 by its grouping column (seed
{meta["training_data"][0]["seed"]}), HC18 and the brain-abnormality images exactly as the head bundles split
them, so their test heads are unseen by every model. Images / groups:

| format | views | train | val | test | grouped by | licence |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Classes are balanced by sampling ({recipe["per_class_per_epoch"]} draws of each class per epoch; within
a class {balance}, within a source each group), with {augmentation}. Training: {tr["epochs_run"]} epochs (early
stopping on the validation NLL), {tr["minutes"]} minutes of fitting on {tr["device"]} ({tr["threads"]} threads)
{f"; the whole recipe took {tr['recipe_minutes']} minutes" if tr.get("recipe_minutes") else ""}.{command}

## Metrics ({m["split"]})
| metric | value | 95% CI (bootstrap by group) |
|---|---|---|
| n images / groups | {m["n"]} / {m["n_groups"]} | |
| accuracy (top class, no abstention) | {_f(m["accuracy"])} | {_ci(m["accuracy_ci95"])} |
| routed accuracy (abstention counted wrong, except on not-fetal images) | {_f(m["routed_accuracy"])} | {_ci(m["routed_accuracy_ci95"])} |
| balanced accuracy | {_f(m.get("balanced_accuracy"))} | {_ci(m.get("balanced_accuracy_ci95"))} |
| coverage (routed, not unknown) | {_f(m["coverage"])} | |
| images of another view the view model routes to the head application (before the router's cross-check) | {m["other_views_routed_to_head"]} | |

| class | test images / groups | recall | precision | routed right | abstained |
|---|---|---|---|---|---|
{per_class}

Routed views (rows: truth; columns: what the router answered, the view model alone):

{confusion_table(m)}{heads_table}

## The head application's claim
{claim_lines(meta)}

## The whole node: head findings on other views, HCs on heads
{node_check_lines(m)}

## Robustness: callipers, banner text, JPEG
{robustness_lines(m)}

## Leave one head source out
{holdout_lines(m)}

## What it can and cannot claim
- Each view other than the head still comes from one or two datasets (intrapartum transperineal: PSFHS only;
  first-trimester mid-sagittal: one hospital's set; other fetal planes: a 33-image FETAL_PLANES_DB sample; not
  fetal: a few DICOM files): for those classes the test split measures the same source it trained on. The
  leave-one-source-out runs measure the head class only. A site's scanner is a new source: expect its figures to
  be lower than the test split's until its own images show otherwise.
- `other_fetal_plane` and `not_fetal` test figures are a few images each: anecdotes more than validation.
- The claim rule and the head threshold were chosen with the head segmentation named above; a new segmentation
  bundle needs them chosen again.
- Not covered at all: coronal and sagittal head views beyond the first trimester, cardiac and Doppler fetal
  views beyond the samples, 3D renderings, screens with several images.
{no_reference_line(meta)}
## History
{history}
"""


def evaluate_view(
    model: Path, data: Path, split: str = "all", models_dir: Path | None = None, node: bool = True
) -> dict[str, Any]:
    """``fetalnode evaluate`` of a view bundle on one dataset folder: its format tells the true view.

    Accuracy, routed accuracy and coverage with group-bootstrap 95% CIs, the confusion, and (``node``,
    with the head bundles in ``models_dir``) the whole node analysis on the folder's images: how many
    images of another view get a head finding or an HC, and how many heads are analysed.
    """
    from fetalnode.inference.bundle import load_bundle
    from fetalnode.inference.view import ViewModel

    view_model = ViewModel(load_bundle(model, "view"))
    fmt, images = folder_images(data, split, view_model.bundle.metadata)
    if not images:
        raise ValueError(f"{data}: no images in split {split!r}")
    x = load_set(images, view_model.size, "images")
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
        view_model.size,
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
