"""Build + encode time of each enabled output object per image: the reference path (the highdicom
builders, pydicom's encoding) beside the fast path (templates, outputs/template.py), without and with its
run-time checks, in one run.

Images: the five ``samples/*.dcm`` (fetal-head) and five PSFHS images of ``tests/data/psfhs_mini``
(labour-progress), each analysed once by the default node's view router (not timed). The fast path is
timed in its steady state: before timing, every image, a copy of it under another patient and SOP
Instance UID, and the image again go through the writers, so that each template key has been seen,
compiled and checked (what a running node reaches after its first images of each kind). Columns, per
output:

* ``reference``: the builder and pydicom's encoding (median over the images and rounds);
* ``fast``: a render from the template, no run-time check (median);
* ``checked``: a render checked against the reference path, as each of the first ``VERIFY_FIRST`` renders
  of a key and then one in ``VERIFY_EVERY`` are (median);
* the long run, past the first ``VERIFY_FIRST`` renders of every key: the mean per job of blocks of
  ``VERIFY_EVERY`` passes over the images without checks (``no checks``) and with them (``N/M``: what a
  node pays per job), the blocks alternating.

The fast path's bytes are checked against the reference path's.

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
from fetalnode.config import OutputSettings, load_settings
from fetalnode.outputs.registry import OutputWriter
from fetalnode.outputs.template import VERIFY_EVERY, VERIFY_FIRST, encode, reference
from fetalnode.runtime import build_runtime
from fetalnode.wrap import wrap_png

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["sr", "sc", "gsps", "seg", "obsr"]
LONG_RUNS = 2  # blocks of VERIFY_EVERY passes over the images, without and with the checks


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
                writer.encode(source, analysis, runtime.output, "BENCH")
    print(f"run-time checks: the first {VERIFY_FIRST} renders of each key, then one in {VERIFY_EVERY}")
    print(f"{'':<23} {'median per job':>31} {'mean per job, long run':>24}")
    head = f"{'reference ms':>13} {'fast ms':>8} {'checked ms':>11} {'no checks':>10} {'N/M':>7}"
    print(f"{'application':<16} {'output':<6} {head}  fast/all")
    for application, pairs in jobs.items():
        totals: list[list[float]] = []
        for writer in runtime.writers:
            if not any(writer.builder_for(a.application) for _, a in pairs):
                continue
            row = _times(writer, pairs, runtime.output, args.rounds)
            totals.append(list(row[:5]))
            r, f, none, nm, c, rendered, count = row
            line = f"{r:>13.1f} {f:>8.1f} {c:>11.1f} {none:>10.1f} {nm:>7.1f}"
            print(f"{application:<16} {writer.name:<6} {line}  {rendered}/{count}")
        r, f, none, nm, c = (sum(column) for column in zip(*totals, strict=True))
        print(f"{application:<16} {'total':<6} {r:>13.1f} {f:>8.1f} {c:>11.1f} {none:>10.1f} {nm:>7.1f}")


def _checks(writer: OutputWriter, first: int, every: int) -> None:
    for templates in writer.templates.values():
        templates.verify_first, templates.verify_every = first, every


def _times(
    writer: OutputWriter, pairs: list[tuple[Dataset, Analysis]], output: OutputSettings, rounds: int
) -> tuple[float, float, float, float, float, int, int]:
    """Median ms of the reference path and of a render without checks; mean ms per job of the long run
    (past VERIFY_FIRST renders of each key) without and with the checks; median ms of a checked render;
    jobs rendered of those timed without checks."""
    ref_ms: list[float] = []
    fast_ms: list[float] = []
    checked_ms: list[float] = []
    count = rendered = 0
    for _ in range(rounds):
        for ds, analysis in pairs:
            build = writer.builder_for(analysis.application)
            if build is None:
                continue
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            built = writer.write(ds, analysis, output, "BENCH")
            assert built is not None
            dicomio.encode(built)
            ref_ms.append(1000 * (time.perf_counter() - t0))
            for first, every, times in ((0, 0, fast_ms), (0, 1, checked_ms)):
                _checks(writer, first, every)
                before = sum(t.rendered for t in writer.templates.values())
                t0 = time.perf_counter()
                encoded = writer.encode(ds, analysis, output, "BENCH", now)
                times.append(1000 * (time.perf_counter() - t0))
                assert encoded is not None
                if every == 0:
                    count += 1
                    rendered += sum(t.rendered for t in writer.templates.values()) - before
            ctx = writer.context(ds, analysis, output, "BENCH", now)
            fast = analysis.application in writer.fast or "" in writer.fast
            expected = encode(reference(ctx, build)) if fast else encoded[0]  # no fast path: itself
            assert encoded[0] == expected, (writer.name, analysis.application)
    assert not any(t.disabled for t in writer.templates.values()), writer.name
    # The long run: past the first VERIFY_FIRST renders of each key, VERIFY_EVERY renders of each (one checked).
    _checks(writer, VERIFY_FIRST, VERIFY_EVERY)
    mine = {a.application if a.application in writer.builders else "" for _, a in pairs}
    states = [s for name, t in writer.templates.items() if name in mine for s in t.states.values() if s.active]
    while any(s.renders < VERIFY_FIRST for s in states):
        for ds, analysis in pairs:
            writer.encode(ds, analysis, output, "BENCH")
    checked = sum(t.verified for t in writer.templates.values())
    spent = {False: 0.0, True: 0.0}  # blocks of VERIFY_EVERY passes without and with the checks, alternating
    for _ in range(LONG_RUNS):
        for checks in (False, True):
            _checks(writer, VERIFY_FIRST, VERIFY_EVERY if checks else 0)
            t0 = time.perf_counter()
            for _ in range(VERIFY_EVERY):
                for ds, analysis in pairs:
                    writer.encode(ds, analysis, output, "BENCH")
            spent[checks] += time.perf_counter() - t0
    _checks(writer, VERIFY_FIRST, VERIFY_EVERY)
    jobs = LONG_RUNS * VERIFY_EVERY * len(pairs)
    done = sum(t.verified for t in writer.templates.values()) - checked
    assert done == LONG_RUNS * len(pairs) or rendered < count, (writer.name, done)  # past N, 1 in M of each key
    return (
        statistics.median(ref_ms),
        statistics.median(fast_ms),
        1000 * spent[False] / jobs,
        1000 * spent[True] / jobs,
        statistics.median(checked_ms),
        rendered,
        count,
    )


if __name__ == "__main__":
    main()
