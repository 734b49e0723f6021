"""How the applicability gate ("not analysed: no fetal head found") behaves on the images we have.

Heads that should pass: HC18 test split (never trained on) and FETAL_PLANES brain planes.
Non-heads that should be refused: FETAL_PLANES non-brain planes and the real US DICOM files.

    .venv/bin/python -m benchmarks.gate [--model BUNDLE ...]

Several --model bundles are measured one after the other in the same run (default: the shipped
models/hc18-headseg).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from pydicom import dcmread

from fetalnode.inference.analyzer import locate_head, seg_settings
from fetalnode.inference.bundle import load_bundle
from fetalnode.inference.preprocess import to_unit_range
from fetalnode.intake import decode_for_analysis
from fetalnode.training.data import load_gray, read_labels, subject_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="segmentation bundle (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    reports = [measure(Path(m)) for m in (args.model or [ROOT / "models" / "hc18-headseg"])]
    print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    return 0


def measure(bundle: Path) -> dict[str, Any]:
    seg = load_bundle(bundle)
    settings = seg_settings(seg)
    seed = int(seg.metadata["training_data"][0]["seed"])

    def passes(img) -> bool:
        return locate_head(seg.infer, settings, to_unit_range(img))[0] is not None

    report: dict[str, Any] = {"model": f"{seg.name} {seg.version}", "gate": seg.metadata["postprocess"]["gate"]}
    hc = read_labels(SHARED / "hc18")
    test = subject_split(hc, seed)["test"]
    ok = sum(passes(load_gray(SHARED / "hc18" / r["filename"])) for r in test)
    report["hc18_test_heads_accepted"] = f"{ok}/{len(test)}"
    fp = read_labels(SHARED / "fetal_planes_db_sample")
    brain = [r for r in fp if r["plane"] == "Fetal brain"]
    other = [r for r in fp if r["plane"] != "Fetal brain"]
    tt = [r for r in brain if r["brain_plane"] == "Trans-thalamic"]
    root = SHARED / "fetal_planes_db_sample"
    report["fetal_planes_brain_accepted"] = (
        f"{sum(passes(load_gray(root / r['filename'])) for r in brain)}/{len(brain)}"
    )
    report["fetal_planes_transthalamic_accepted"] = (
        f"{sum(passes(load_gray(root / r['filename'])) for r in tt)}/{len(tt)}"
    )
    report["fetal_planes_non_brain_refused"] = (
        f"{sum(not passes(load_gray(root / r['filename'])) for r in other)}/{len(other)}"
    )
    dicoms = sorted((SHARED / "dicom_samples").glob("*.dcm"))
    refused = [d.name for d in dicoms if not passes(decode_for_analysis(dcmread(d), 10**8, 10**4).gray)]
    report["dicom_samples_refused"] = f"{len(refused)}/{len(dicoms)}"
    return report


if __name__ == "__main__":
    raise SystemExit(main())
