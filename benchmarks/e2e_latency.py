"""End-to-end latency: storescu -> fetalnode -> every output delivered to Orthanc, one image at a time.

N images sent one at a time (no queue); for each, the time from storescu's completion to its job
ending (``delivered``: every enabled output stored in Orthanc). Sustained throughput is in
``benchmarks/throughput.py``.

    .venv/bin/python -m benchmarks.e2e_latency [--latency-n 50]
"""

from __future__ import annotations

import argparse
import json
import time

from pydicom import dcmread

from benchmarks.common import Stack, make_images, percentile, scratch, storescu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-n", type=int, default=50)
    args = ap.parse_args()
    work = scratch("fetalnode-e2e-")
    images = make_images(args.latency_n, work / "images")
    latencies = []
    with Stack() as stack:
        jobs = stack.node.jobs
        for f in images:
            uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            storescu(stack.port, [f])
            t0 = time.perf_counter()
            while not any(j.sop_uid == uid and j.state.final for j in jobs.jobs()):
                time.sleep(0.01)
            latencies.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "latency_images": len(latencies),
                "latency_p50_s": round(percentile(latencies, 50), 3),
                "latency_p95_s": round(percentile(latencies, 95), 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
