"""Regenerate the bundled sample DICOM files from ../shared/datasets (run from the repo root).

Picks images from the *test* splits of the shipped bundles (never trained or tuned on) and wraps
them as Ultrasound Image Storage instances; HC18 images carry their pixel size as an ultrasound
region calibration, the Roboflow images (no physical size) carry none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fetalnode.training.data import group_split, read_labels
from fetalnode.wrap import wrap_png

SEED = 20261124
SHARED = Path("../shared/datasets")
OUT = Path("samples")


def main() -> int:
    hc18 = read_labels(SHARED / "hc18")
    test = group_split(hc18, "subject_group", {"train": 0.7, "val": 0.15, "test": 0.15}, SEED)["test"]
    test.sort(key=lambda r: float(r["hc_mm"]))
    picks = [test[len(test) // 5], test[len(test) // 2], test[4 * len(test) // 5]]
    index = {}
    for i, row in enumerate(picks):
        ds = wrap_png(
            SHARED / "hc18" / row["filename"],
            pixel_size_mm=float(row["pixel_size_mm"]),
            patient_name=f"Demo^Sample{i + 1}",
            patient_id=f"DEMO-{i + 1}",
            compress_rle=(i == 1),
        )
        name = f"hc18_{Path(row['filename']).stem}.dcm"
        ds.save_as(OUT / name, enforce_file_format=True)
        index[name] = {
            "dataset": "hc18",
            "source": row["filename"],
            "label": "normal",
            "hc_mm": float(row["hc_mm"]),
            "pixel_size_mm": float(row["pixel_size_mm"]),
            "sop_instance_uid": str(ds.SOPInstanceUID),
        }
    fba = [r for r in read_labels(SHARED / "fetal_brain_abnormalities") if r["label_conflict"] != "1"]
    ftest = group_split(fba, "case_group", {"train": 0.7, "val": 0.15, "test": 0.15}, SEED, "label")["test"]
    for k, label in enumerate(("normal", "ventriculomegaly_moderate"), start=len(picks) + 1):
        row = next(r for r in ftest if r["label"] == label and not r["augmentation_index"])
        ds = wrap_png(
            SHARED / "fetal_brain_abnormalities" / row["filename"],
            pixel_size_mm=None,
            patient_name=f"Demo^Sample{k}",
            patient_id=f"DEMO-{k}",
        )
        name = f"fba_{label}_{Path(row['filename']).stem}.dcm"
        ds.save_as(OUT / name, enforce_file_format=True)
        index[name] = {
            "dataset": "fetal_brain_abnormalities",
            "source": row["filename"],
            "label": label,
            "hc_mm": None,
            "pixel_size_mm": None,
            "sop_instance_uid": str(ds.SOPInstanceUID),
        }
    (OUT / "samples.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
