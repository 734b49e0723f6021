"""Build + encode time of each enabled output object per image, reference path (the highdicom builders,
pydicom's encoding) beside the fast path (templates, outputs/template.py), in one run.

Images: the five ``samples/*.dcm`` (fetal-head) and five PSFHS images of ``tests/data/psfhs_mini``
(labour-progress), each analysed once by the default node's view router (not timed). The fast path is
timed in its steady state: before timing, every image, a copy of it under another patient and SOP
Instance UID, and the image again go through the writers, so that each template key has been seen,
compiled and checked (what a running node reaches after its first images of each kind). Median over the images of each
application, per output and in total; the fast path's bytes are checked against the reference path's.

    .venv/bin/python -m benchmarks.objects [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fetalnode import dicomio
from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.outputs.template import encode, reference
from fetalnode.runtime import build_runtime
from fetalnode.wrap import wrap_png

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["sr", "sc", "gsps", "seg", "obsr"]


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def another_patient(ds: Dataset, i: int) -> Dataset:
    copy = dicomio.read(_bytes(ds))
    copy.PatientName, copy.PatientID = f"Other^Patient{i}", f"OTHER-{i}"
    copy.StudyInstanceUID, copy.SeriesInstanceUID = generate_uid(), generate_uid()
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the images")
    args = parser.parse_args()
    settings = load_settings(None, env={})
    settings.output.enabled = NAMES
    runtime = build_runtime(settings, destinations=[])
    images = {
        "fetal-head": [dicomio.read(p.read_bytes()) for p in sorted((ROOT / "samples").glob("*.dcm"))],
        "labour-progress": [
            dicomio.read(_bytes(wrap_png(p, pixel_size_mm=None)))
            for p in sorted((ROOT / "tests/data/psfhs_mini/images").glob("*.png"))[:5]
        ],
    }
    jobs: dict[str, list[tuple[Dataset, Analysis]]] = {}
    for application, sources in images.items():
        jobs[application] = [(ds, runtime.application.analyse(ds)) for ds in sources]
        assert all(a.application == application for _, a in jobs[application]), application
    # Warm-up: each image and another patient's copy (two instances of each key).
    for i, (ds, analysis) in enumerate(j for js in jobs.values() for j in js):
        for source in (ds, another_patient(ds, i), ds):
            for writer in runtime.writers:
                writer.encode(source, analysis, runtime.output, "BENCH", "")
    print(f"{'application':<16} {'output':<6} {'reference ms':>13} {'fast ms':>8}  fast/all")
    for application, pairs in jobs.items():
        totals_ref: list[float] = []
        totals_fast: list[float] = []
        for writer in runtime.writers:
            ref_ms: list[float] = []
            fast_ms: list[float] = []
            before = sum(t.rendered for t in writer.templates.values())
            count = 0
            for _ in range(args.rounds):
                for ds, analysis in pairs:
                    now = datetime.now(UTC)
                    t0 = time.perf_counter()
                    built = writer.write(ds, analysis, runtime.output, "BENCH", "")
                    if built is None:
                        continue
                    dicomio.encode(built)
                    t1 = time.perf_counter()
                    encoded = writer.encode(ds, analysis, runtime.output, "BENCH", "", now)
                    t2 = time.perf_counter()
                    assert encoded is not None
                    build = writer.builder_for(analysis.application)
                    assert build is not None
                    ctx = writer.context(ds, analysis, runtime.output, "BENCH", "", now)
                    fast = application in writer.fast or "" in writer.fast
                    expected = encode(reference(ctx, build)) if fast else encoded[0]  # no fast path: itself
                    assert encoded[0] == expected, (writer.name, application)
                    ref_ms.append(1000 * (t1 - t0))
                    fast_ms.append(1000 * (t2 - t1))
                    count += 1
            if not ref_ms:
                continue
            rendered = sum(t.rendered for t in writer.templates.values()) - before
            r, f = statistics.median(ref_ms), statistics.median(fast_ms)
            totals_ref.append(r)
            totals_fast.append(f)
            print(f"{application:<16} {writer.name:<6} {r:>13.1f} {f:>8.1f}  {rendered}/{count}")
        print(f"{application:<16} {'total':<6} {sum(totals_ref):>13.1f} {sum(totals_fast):>8.1f}")


if __name__ == "__main__":
    main()
