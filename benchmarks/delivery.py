"""Delivery throughput per destination kind, side by side in one run, on the same objects.

Each destination kind stores the same N objects (the bundled samples with new SOP Instance UIDs, sent
as "source"), one ``store()`` after another as the job runner does, to a real peer on loopback:

- dicom -> DCMTK storescp (a plain PACS) and -> Orthanc's DICOM port (C-STORE, one association each)
- dicomweb -> Orthanc with its DICOMweb plugin (STOW-RS, Basic auth)
- orthanc -> Orthanc REST (POST /instances)
- folder -> Part 10 files, written atomically (fsync)

Every DCMTK-based receiver, Orthanc included, runs with TCP_NODELAY=1 (see the field notes).

.venv/bin/python -m benchmarks.delivery [--n 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks.common import make_images, percentile, scratch
from fetalnode.config import DestinationSettings
from fetalnode.destinations.base import Destination, Item
from fetalnode.destinations.dicom import DicomDestination
from fetalnode.destinations.dicomweb import DicomWebDestination
from fetalnode.destinations.folder import folder_destination
from fetalnode.destinations.orthanc_rest import OrthancClient
from harness.orthanc import OrthancProcess
from harness.storescp import StorescpProcess

CALLING = "FETALNODE"


def measure(destination: Destination, payloads: list[bytes]) -> dict[str, float]:
    times = []
    started = time.perf_counter()
    for data in payloads:
        t0 = time.perf_counter()
        destination.store(Item("source", data))
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    megabytes = sum(map(len, payloads)) / 1e6
    return {
        "objects_per_s": round(len(payloads) / wall, 1),
        "mb_per_s": round(megabytes / wall, 1),
        "p50_ms": round(1000 * statistics.median(times), 1),
        "p95_ms": round(1000 * percentile(times, 95), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    work = scratch("fetalnode-delivery-")
    payloads = [p.read_bytes() for p in make_images(args.n, work / "images")]
    results: dict[str, dict[str, float]] = {}
    orthanc = OrthancProcess(work / "orthanc", webviewer=False, dicomweb=True)
    orthanc.modalities = {CALLING: (CALLING, "127.0.0.1", 104)}
    with StorescpProcess(work / "pacs") as pacs, orthanc:
        pw = orthanc.write_password_file(work / "pw")
        web = {"url": orthanc.url, "username": orthanc.username, "password_file": str(pw)}
        kinds: list[tuple[str, Destination]] = [
            (
                "dicom -> storescp",
                DicomDestination(_d("dicom", ae_title=pacs.aet, host="127.0.0.1", port=pacs.port), CALLING),
            ),
            (
                "dicom -> Orthanc DICOM",
                DicomDestination(_d("dicom", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port), CALLING),
            ),
            ("dicomweb -> Orthanc", DicomWebDestination(_d("dicomweb", **{**web, "url": orthanc.dicomweb_url}))),
            ("orthanc REST", OrthancClient(_d("orthanc", **web))),
            ("folder (fsync)", folder_destination(work / "folder", ["source"])),
        ]
        for label, destination in kinds:
            # each kind gets its own copies (new UIDs): Orthanc would answer AlreadyStored to a repeat
            fresh = [p.read_bytes() for p in make_images(args.n, work / f"images-{len(results)}")]
            results[label] = measure(destination, fresh)
    size = statistics.mean(map(len, payloads)) / 1e3
    print(f"delivery of {args.n} objects (mean {size:.0f} kB) per destination kind, one after another:")
    print(f"{'destination':26} {'objects/s':>10} {'MB/s':>7} {'p50 ms':>8} {'p95 ms':>8}")
    for label, r in results.items():
        print(f"{label:26} {r['objects_per_s']:>10} {r['mb_per_s']:>7} {r['p50_ms']:>8} {r['p95_ms']:>8}")
    print(json.dumps({"n": args.n, "mean_kb": round(size), "results": results}))
    return 0


def _d(kind: str, **keys: object) -> DestinationSettings:
    return DestinationSettings(name=kind, kind=kind, send=["source"], timeout=30.0, **keys)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
