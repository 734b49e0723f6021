"""Helpers shared by the benchmark scripts: test images, timing, and an Orthanc + node stack from the harness."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from fetalnode.training.data import read_labels
from fetalnode.wrap import wrap_png
from harness.config import MODALITY_AET, NODE_AET
from harness.node import ROOT, NodeProcess, prepare_node
from harness.orthanc import OrthancProcess

HC18 = ROOT.parent / "shared" / "datasets" / "hc18"


def make_images(n: int, folder: Path) -> list[Path]:
    """``n`` distinct US instances: HC18 images wrapped with their calibration (or re-UIDed samples)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    if HC18.is_dir():
        rows = read_labels(HC18)
        for i in range(n):
            row = rows[i % len(rows)]
            ds = wrap_png(HC18 / row["filename"], pixel_size_mm=float(row["pixel_size_mm"]))
            if i >= len(rows):
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            path = folder / f"img{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
        return out
    samples = sorted((ROOT / "samples").glob("*.dcm"))
    for i in range(n):
        ds = dcmread(samples[i % len(samples)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def scratch(prefix: str) -> Path:
    """A work folder for one benchmark run (images, Orthanc storage, node data, logs: up to about 1 GB), removed
    when the process exits, unless it ends on an uncaught exception (its logs are then still there) or
    ``FETALNODE_BENCH_KEEP=1``; a kept folder is named on stderr."""
    work = Path(tempfile.mkdtemp(prefix=prefix))

    def remove() -> None:
        if os.environ.get("FETALNODE_BENCH_KEEP") == "1" or getattr(sys, "last_value", None) is not None:
            print(f"benchmark work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(remove)
    return work


class Stack:
    """Orthanc + ``fetalnode serve SERVE_ARGS`` on loopback, in a temp folder."""

    node: NodeProcess

    def __init__(self, *serve_args: str) -> None:
        self.dir = scratch("fetalnode-bench-")
        self.orthanc = OrthancProcess(self.dir / "orthanc", webviewer=False)
        self.serve_args = serve_args

    @property
    def port(self) -> int:
        return self.node.port

    def __enter__(self) -> Stack:
        self.orthanc.start()
        try:
            self.node = prepare_node(self.dir / "node", self.orthanc).start(*self.serve_args)
        except BaseException:
            self.orthanc.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.node.stop()
        self.orthanc.stop()


def storescu(port: int, files: list[Path], aet: str = MODALITY_AET, called: str = NODE_AET) -> float:
    """Send files in one association; returns the wall time in seconds.

    ``TCP_NODELAY=1`` turns off Nagle's algorithm in DCMTK: without it every C-STORE on loopback
    waits ~45 ms for a delayed ACK, which would measure the TCP stack instead of the receiver.
    """
    t0 = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
