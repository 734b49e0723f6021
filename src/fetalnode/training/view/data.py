"""The view model's dataset folders: their formats and views, their seeded splits, the network inputs."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fetalnode.inference.view import ViewInputSpec
from fetalnode.training.data import Row, case_split, group_split, load_gray, read_labels, subject_split
from fetalnode.vocab import RENAMED_VIEWS, View

log = logging.getLogger(__name__)


CLASSES: list[View] = [v for v in View if v is not View.UNKNOWN]


FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


PYDICOM_TESTDATA = "pydicom-testdata"


BRAIN_PLANE = "Fetal brain"


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


def folder_images(folder: Path, split: str, meta: Mapping[str, Any]) -> tuple[str, list[ViewImage]]:
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


def load_set(images: list[ViewImage], spec: ViewInputSpec, desc: str) -> ViewSet:
    x = np.zeros((len(images), *spec.shape), dtype=np.float32)
    for i, image in enumerate(tqdm(images, desc=desc, leave=False)):
        x[i] = spec(image.gray())
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


def is_left_out(image: ViewImage, origin: str) -> bool:
    """An axial head of ``origin``: what a leave-one-source-out run trains without (the source's images of
    other views, FETAL_PLANES_DB's other planes, stay in training)."""
    return image.origin == origin and image.view is View.AXIAL_FETAL_HEAD
