"""Time from the print N-ACTION to every SR of the film being queryable in Orthanc (1-up and 3x2).

A pynetdicom print SCU (Basic Grayscale Print Management) prints HC18 sample images to a node
(SCP + worker) delivering to a loopback Orthanc; p50 over ``--runs`` films of each layout.

    .venv/bin/python -m benchmarks.print_latency [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from benchmarks.common import Stack, percentile
from fetalnode.scp.contexts import FILM_BOX, FILM_SESSION, GRAYSCALE_IMAGE_BOX, META_GRAYSCALE

ROOT = Path(__file__).resolve().parents[1]


def print_film(port: int, images: list[np.ndarray], columns: int, rows: int) -> float:
    """Print one film; returns the perf_counter time at which N-ACTION was sent."""
    ae = AE(ae_title="PRINTSCU")
    ae.add_requested_context(META_GRAYSCALE)
    assoc = ae.associate("127.0.0.1", port, ae_title="FETALNODE")
    assert assoc.is_established
    try:
        session, film = generate_uid(), generate_uid()
        attrs = Dataset()
        attrs.FilmSessionLabel = "bench"
        assert assoc.send_n_create(attrs, FILM_SESSION, session, meta_uid=META_GRAYSCALE)[0].Status == 0
        box = Dataset()
        box.ImageDisplayFormat = f"STANDARD\\{columns},{rows}"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = FILM_SESSION, session
        box.ReferencedFilmSessionSequence = [ref]
        status, reply = assoc.send_n_create(box, FILM_BOX, film, meta_uid=META_GRAYSCALE)
        assert status.Status == 0
        for i, item_ref in enumerate(reply.ReferencedImageBoxSequence):
            img = images[i % len(images)]
            item = Dataset()
            item.Rows, item.Columns = img.shape
            item.SamplesPerPixel = 1
            item.PhotometricInterpretation = "MONOCHROME2"
            item.BitsAllocated = item.BitsStored = 8
            item.HighBit = 7
            item.PixelRepresentation = 0
            item.PixelData = img.tobytes()
            mods = Dataset()
            mods.ImageBoxPosition = i + 1
            mods.BasicGrayscaleImageSequence = [item]
            status, _ = assoc.send_n_set(
                mods, GRAYSCALE_IMAGE_BOX, item_ref.ReferencedSOPInstanceUID, meta_uid=META_GRAYSCALE
            )
            assert status.Status == 0
        sent = time.perf_counter()
        assert assoc.send_n_action(None, 1, FILM_BOX, film, meta_uid=META_GRAYSCALE)[0].Status == 0
        assoc.send_n_delete(FILM_SESSION, session, meta_uid=META_GRAYSCALE)
        return sent
    finally:
        assoc.release()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    images = [dcmread(p).pixel_array.astype(np.uint8) for p in sorted((ROOT / "samples").glob("hc18_*.dcm"))]
    # Each run prints different pixels (a shifted copy) so no capture is a duplicate of an earlier one.
    results: dict[str, list[float]] = {}
    with Stack() as stack:
        jobs = stack.node.jobs
        auth = (stack.orthanc.username, stack.orthanc.password)
        for columns, rows in ((1, 1), (3, 2)):
            key = f"{columns}x{rows}"
            results[key] = []
            for run in range(args.runs):
                shifted = [np.roll(img, run + 1, axis=1) for img in images]
                before = len(jobs.jobs())
                sent = print_film(stack.port, shifted, columns, rows)
                expected = before + columns * rows
                while True:
                    current = jobs.jobs()
                    if len(current) >= expected and all(j.state in {"delivered", "failed"} for j in current):
                        break
                    time.sleep(0.005)
                uids = [j.result["outputs"]["sr"] for j in current[before:]]
                for uid in uids:
                    r = httpx.post(
                        f"{stack.orthanc.url}/tools/find",
                        auth=auth,
                        timeout=10,
                        json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}},
                    )
                    assert r.json(), "SR not in Orthanc"
                results[key].append(time.perf_counter() - sent)
    print(
        json.dumps(
            {
                k: {"runs": len(v), "p50_s": round(percentile(v, 50), 3), "p95_s": round(percentile(v, 95), 3)}
                for k, v in results.items()
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
