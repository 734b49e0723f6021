"""p50 latency of segmentation + classification + Grad-CAM on one 640x480 image, CPU, 2 threads.

.venv/bin/python -m benchmarks.inference_latency [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from pydicom import dcmread

from benchmarks.common import percentile
from fetalnode.inference import Analyzer
from fetalnode.intake import decode_for_analysis

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    analyzer = Analyzer.from_dir(ROOT / "models", "hc18-headseg", "fba-classifier")
    decoded = decode_for_analysis(dcmread(ROOT / "samples" / "hc18_316_HC.dcm"), 10**8, 10)
    gray = np.zeros((480, 640), np.float32)
    gray[: decoded.gray.shape[0], : decoded.gray.shape[1]] = decoded.gray  # 640x432 padded to 640x480
    for _ in range(3):
        analyzer.analyze(gray, decoded.spacing_mm)
    totals, parts = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = analyzer.analyze(gray, decoded.spacing_mm)
        totals.append((time.perf_counter() - t0) * 1000)
        parts.append(result.timings_ms)
    assert result.analysed, "the benchmark image must be analysed end to end"
    print(
        json.dumps(
            {
                "image": "samples/hc18_316_HC.dcm padded to 640x480",
                "threads": args.threads,
                "runs": args.runs,
                "segmentation_runtime": analyzer.seg.metadata.get("runtime", "torch"),
                "total_ms_p50": round(percentile(totals, 50), 1),
                "total_ms_p95": round(percentile(totals, 95), 1),
                "stage_ms_p50": {k: round(percentile([p[k] for p in parts], 50), 1) for k in parts[0]},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
