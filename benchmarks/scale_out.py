"""Scale-out throughput and broker overhead, side by side in one run on this machine.

- Delivered images/s for 200 images from 4 concurrent senders: embedded mode (one ``serve``, SQLite
  queue, its ``worker.processes`` worker processes) and terminal + 1, 2, 4 Celery workers on a private RabbitMQ.
  Per worker = delivered/s divided by workers; with more workers than CPU cores the machine, not
  fetalnode, is the limit, which is what the per-worker figure shows for projecting N machines.
- Broker overhead per job: 30 images sent one at a time (no queueing), receipt-to-delivery latency
  median, embedded vs terminal + 1 worker; the difference is what the broker round trip (publish,
  base64 transfer, result message, collector) adds per job.

    .venv/bin/python -m benchmarks.scale_out [--n 200] [--workers 1 2 4] [--latency-n 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import make_images
from harness.config import MODALITY_AET
from harness.node import FINAL, NodeProcess, prepare_node
from harness.orthanc import OrthancProcess
from harness.rabbitmq import RabbitMQProcess
from harness.scenarios import start_senders


def setup(
    work: Path, name: str, orthanc: OrthancProcess, broker: RabbitMQProcess | None, torch_threads: int = 2
) -> NodeProcess:
    """A node configuration (fresh data folder): embedded queue, or the broker's when ``broker`` is given."""
    fields: dict[str, object] = {"worker__torch_threads": torch_threads}
    if broker is not None:
        fields.update(broker.node_fields())
    return prepare_node(work / name, orthanc, **fields)


def start(node: NodeProcess, workers: int) -> None:
    """``serve`` alone (embedded worker), or ``serve --role terminal`` and ``workers`` Celery workers."""
    node.start(*(["--role", "terminal"] if workers else []))
    for _ in range(workers):
        node.start_broker_worker()
    if workers:
        time.sleep(15)  # let the workers load torch and the models before timing


def throughput(node: NodeProcess, files: list[Path]) -> float:
    t0 = time.monotonic()
    for p, _ in start_senders(node.port, files, 4, node.folder / "senders", MODALITY_AET):
        p.wait(timeout=600)
    node.wait_all(len(files), FINAL, 1800)
    assert node.jobs.counts()["delivered"] == len(files), node.jobs.counts()
    return len(files) / (time.monotonic() - t0)


def latency(node: NodeProcess, files: list[Path]) -> float:
    before = len(node.jobs.jobs())
    for i, f in enumerate(files, 1):
        start_senders(node.port, [f], 1, node.folder / "one", MODALITY_AET)[0][0].wait(timeout=60)
        node.wait_all(before + i, FINAL, 120)
    values = [j.latency_s for j in node.jobs.jobs()[before:] if j.latency_s is not None]
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads per process (worker.torch_threads; 2 = this machine's cores)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fetalnode-scale-"))
    runs = 1 + len(args.workers)
    images = make_images(args.n * runs + 2 * args.latency_n, work / "images")
    chunks = [images[i * args.n : (i + 1) * args.n] for i in range(runs)]
    lat_embedded = images[runs * args.n : runs * args.n + args.latency_n]
    lat_broker = images[runs * args.n + args.latency_n :]
    orthanc = OrthancProcess(work / "orthanc", webviewer=False).start()
    broker = RabbitMQProcess(work / "rabbitmq")
    out: dict[str, object] = {
        "cpu_cores": os.cpu_count(),
        "images": args.n,
        "senders": 4,
        "torch_threads": args.threads,
    }
    try:
        broker.start()
        node = setup(work, "embedded", orthanc, None, args.threads)
        try:
            start(node, 0)
            out["embedded_images_per_s"] = round(throughput(node, chunks[0]), 2)
            lat_emb = latency(node, lat_embedded)
            out["embedded_latency_median_s"] = round(lat_emb, 3)
        finally:
            node.stop()
        per = {}
        for k, n_workers in enumerate(args.workers, 1):
            node = setup(work, f"broker{n_workers}", orthanc, broker, args.threads)
            try:
                start(node, n_workers)
                rate = throughput(node, chunks[k])
                per[n_workers] = {"images_per_s": round(rate, 2), "per_worker": round(rate / n_workers, 2)}
                if n_workers == 1:
                    lat_brk = latency(node, lat_broker)
                    out["broker_1_worker_latency_median_s"] = round(lat_brk, 3)
                    out["broker_overhead_per_job_s"] = round(lat_brk - lat_emb, 3)
            finally:
                node.stop()
        out["broker"] = per
    finally:
        broker.stop()
        orthanc.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
