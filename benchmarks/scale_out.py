"""Scale-out throughput and broker overhead, side by side in one run on this machine.

- Delivered images/s for 200 images from 4 concurrent senders: embedded mode (one ``serve``, SQLite
  queue, one in-process worker) and terminal + 1, 2, 4 Celery workers on a private RabbitMQ.
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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import make_images, node_config
from benchmarks.scenarios import start_senders, wait_jobs_terminal
from fetalnode.demo import MODALITY_AET, wait_echo
from fetalnode.jobs import JobStore
from fetalnode.orthanc.server import OrthancProcess
from fetalnode.rabbitmq import RabbitMQProcess

ROOT = Path(__file__).resolve().parents[1]


class Setup:
    """A node configuration (fresh data folder) and its processes."""

    def __init__(
        self, work: Path, name: str, orthanc: OrthancProcess, broker: RabbitMQProcess | None, torch_threads: int = 2
    ) -> None:
        self.dir = work / name
        self.port, self.config, self.data = node_config(self.dir, orthanc)
        self.env = {**os.environ, "FETALNODE__WORKER__TORCH_THREADS": str(torch_threads)}
        if broker is not None:
            self.env["FETALNODE__BROKER__URL"] = broker.url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int) -> None:
        role = ["--role", "terminal"] if workers else []
        log = open(self.dir / "node.log", "ab")
        cmd = [sys.executable, "-m", "fetalnode.cli", "serve", "--config", str(self.config)]
        self.procs.append(subprocess.Popen(cmd + role, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        for _ in range(workers):
            self.procs.append(
                subprocess.Popen([*cmd, "--role", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
            )
        log.close()
        wait_echo(self.port, 120, self.procs[0])
        if workers:
            time.sleep(15)  # let the workers load torch and the models before timing

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.data / "jobs.sqlite")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=60)


def throughput(setup: Setup, files: list[Path]) -> float:
    t0 = time.monotonic()
    for p, _ in start_senders(setup.port, files, 4, setup.dir / "senders", MODALITY_AET):
        p.wait(timeout=600)
    wait_jobs_terminal(setup.jobs, len(files), 1800)
    assert setup.jobs.counts()["delivered"] == len(files), setup.jobs.counts()
    return len(files) / (time.monotonic() - t0)


def latency(setup: Setup, files: list[Path]) -> float:
    before = len(setup.jobs.jobs())
    for i, f in enumerate(files, 1):
        start_senders(setup.port, [f], 1, setup.dir / "one", MODALITY_AET)[0][0].wait(timeout=60)
        wait_jobs_terminal(setup.jobs, before + i, 120)
    values = [j.latency_s for j in setup.jobs.jobs()[before:] if j.latency_s is not None]
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
    orthanc = OrthancProcess(work / "orthanc", webviewer=False)
    broker = RabbitMQProcess(work / "rabbitmq")
    orthanc.start()
    broker.start()
    out: dict[str, object] = {
        "cpu_cores": os.cpu_count(),
        "images": args.n,
        "senders": 4,
        "torch_threads": args.threads,
    }
    try:
        setup = Setup(work, "embedded", orthanc, None, args.threads)
        setup.start(0)
        try:
            out["embedded_images_per_s"] = round(throughput(setup, chunks[0]), 2)
            lat_emb = latency(setup, lat_embedded)
            out["embedded_latency_median_s"] = round(lat_emb, 3)
        finally:
            setup.stop()
        per = {}
        for k, n_workers in enumerate(args.workers, 1):
            setup = Setup(work, f"broker{n_workers}", orthanc, broker, args.threads)
            setup.start(n_workers)
            try:
                rate = throughput(setup, chunks[k])
                per[n_workers] = {"images_per_s": round(rate, 2), "per_worker": round(rate / n_workers, 2)}
                if n_workers == 1:
                    lat_brk = latency(setup, lat_broker)
                    out["broker_1_worker_latency_median_s"] = round(lat_brk, 3)
                    out["broker_overhead_per_job_s"] = round(lat_brk - lat_emb, 3)
            finally:
                setup.stop()
        out["broker"] = per
    finally:
        broker.stop()
        orthanc.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
