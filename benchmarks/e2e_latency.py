"""End-to-end latency and sustained throughput: storescu -> fetalnode -> SR queryable in Orthanc.

Latency: N images sent one at a time; for each, the time from storescu's completion to the SR
(its deterministic UID) answering an Orthanc /tools/find. Throughput: M images in one association,
images per second from the start of sending to the last SR in Orthanc.

    .venv/bin/python benchmarks/e2e_latency.py [--latency-n 50] [--throughput-n 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
from pydicom import dcmread

from benchmarks.common import Stack, make_images, percentile, storescu
from fetalnode.inference.bundle import read_metadata
from fetalnode.outputs.uids import object_uids

ROOT = Path(__file__).resolve().parents[1]


def expected_sr(path: Path, version: str) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    return object_uids("sr", str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), version).instance


def sr_present(stack: Stack, uid: str) -> bool:
    r = httpx.post(
        f"{stack.orthanc.url}/tools/find",
        auth=(stack.orthanc.username, stack.orthanc.password),
        json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}},
        timeout=10,
    )
    return r.status_code == 200 and bool(r.json())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-n", type=int, default=50)
    ap.add_argument("--throughput-n", type=int, default=200)
    args = ap.parse_args()
    version = "+".join(read_metadata(ROOT / "models" / n)["version"] for n in ("hc18-headseg", "fba-classifier"))
    work = Path(tempfile.mkdtemp(prefix="fetalnode-e2e-"))
    images = make_images(args.latency_n + args.throughput_n, work / "images")
    lat_files, thr_files = images[: args.latency_n], images[args.latency_n :]
    latencies = []
    with Stack() as stack:
        for f in lat_files:
            uid = expected_sr(f, version)
            storescu(stack.port, [f])
            t0 = time.perf_counter()
            while not sr_present(stack, uid):
                time.sleep(0.01)
            latencies.append(time.perf_counter() - t0)
        uids = [expected_sr(f, version) for f in thr_files]
        t0 = time.perf_counter()
        send_s = storescu(stack.port, thr_files)
        for uid in uids:
            while not sr_present(stack, uid):
                time.sleep(0.05)
        total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "latency_images": len(latencies),
                "latency_p50_s": round(percentile(latencies, 50), 3),
                "latency_p95_s": round(percentile(latencies, 95), 3),
                "throughput_images": len(thr_files),
                "throughput_send_s": round(send_s, 2),
                "throughput_total_s": round(total, 2),
                "throughput_images_per_s": round(len(thr_files) / total, 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
