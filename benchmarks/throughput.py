"""The receive, end-to-end and responsiveness targets, measured side by side in one run.

- Receive only: the same calibrated US files sent by DCMTK ``storescu`` (TCP_NODELAY=1) to
  ``fetalnode serve --no-worker`` (fsync of each object and its job record before the answer) and to
  Orthanc (its defaults, started by the harness), one sender with every file in one association and
  4 concurrent senders sharing them; best of ``--rounds``.
- End to end: ``fetalnode serve`` with every default output enabled, delivering to Orthanc; ``--n``
  images in one association right after start (cold: the output templates are learning their keys and
  checking each key's first renders against the reference path), then ``--n`` other images on the same
  node (warm); images/s from the first byte sent to the last job ``delivered``, for each.
- Responsiveness: while 4 senders push ``--load-n`` images into the same full node, a C-ECHO (a new
  association each: associate, echo, release) every 50 ms; the p50/p95/max of their round trips, and the
  p50 of 20 on the idle node first (the probe is pynetdicom with its idle sleep at 0.1 ms, as the node's).

    .venv/bin/python -m benchmarks.throughput [--n 200] [--rounds 3] [--load-n 1000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from benchmarks.common import make_images, percentile, scratch, storescu
from harness.config import MODALITY_AET, NODE_AET
from harness.node import NodeProcess, prepare_node
from harness.orthanc import OrthancProcess
from harness.scenarios import start_senders

TARGETS = {
    "end_to_end_images_per_s": ">= 15",
    "receive_ratio_to_orthanc_1_sender": ">= 1.0",
    "receive_ratio_to_orthanc_4_senders": ">= 1.0",
    "echo_p95_ms_under_load": "<= 100",
}


def send_concurrently(port: int, files: list[Path], senders: int, folder: Path, called: str) -> float:
    """Wall time of ``senders`` storescu processes sharing ``files``; every one must succeed."""
    t0 = time.perf_counter()
    procs = start_senders(port, files, senders, folder, MODALITY_AET, called)
    for proc, log in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def receive(work: Path, files: list[Path], rounds: int) -> dict[str, float]:
    """Best images/s of fetalnode (--no-worker) and Orthanc, 1 and 4 senders."""
    best: dict[str, float] = {}

    def keep(key: str, seconds: float) -> None:
        best[key] = max(best.get(key, 0.0), len(files) / seconds)

    for r in range(rounds):
        orthanc = OrthancProcess(work / f"recv-orthanc{r}", webviewer=False)
        orthanc.modalities = {"modality": (MODALITY_AET, "127.0.0.1", 104)}
        with orthanc:
            keep("orthanc_1", storescu(orthanc.dicom_port, files, called=orthanc.aet))
            keep("orthanc_4", send_concurrently(orthanc.dicom_port, files, 4, work / "logs", orthanc.aet))
        for senders in (1, 4):
            sink = OrthancProcess(work / f"recv-sink{r}-{senders}", webviewer=False).start()
            node = prepare_node(work / f"recv-node{r}-{senders}", sink).start("--no-worker")
            try:
                if senders == 1:
                    keep("fetalnode_1", storescu(node.port, files))
                else:
                    keep("fetalnode_4", send_concurrently(node.port, files, 4, work / "logs", NODE_AET))
                received = len(node.jobs.jobs())
                if received != len(files):
                    raise RuntimeError(f"fetalnode recorded {received} jobs for {len(files)} files")
            finally:
                node.stop()
                sink.stop()
    return best


def end_to_end(work: Path, files: list[Path], second: list[Path]) -> dict[str, dict[str, float | int]]:
    """Images/s of ``fetalnode serve`` delivering to Orthanc: ``files`` sent right after start (cold: the
    output templates still learning and checking the first renders of each key), then ``second`` (as
    many again) on the same node (warm: it has analysed ``files``)."""
    with OrthancProcess(work / "e2e-orthanc", webviewer=False) as orthanc:
        node = prepare_node(work / "e2e-node", orthanc).start()
        try:
            out = {}
            for name, batch, before in (("cold", files, 0), ("warm", second, len(files))):
                t0 = time.perf_counter()
                send_s = storescu(node.port, batch)
                node.wait_all(before + len(batch), timeout=max(600, 3 * len(batch)))
                total = time.perf_counter() - t0
                out[name] = {
                    "images": len(batch),
                    "send_s": round(send_s, 2),
                    "total_s": round(total, 2),
                    "images_per_s": round(len(batch) / total, 2),
                }
            delivered = sum(j.state == "delivered" for j in node.jobs.jobs())
            if delivered != len(files) + len(second):
                raise RuntimeError(f"{delivered} of {len(files) + len(second)} jobs delivered")
        finally:
            node.stop()
    return out


def _fast_probe(event: evt.Event) -> None:
    event.assoc.dul._run_loop_delay = 0.0001  # the probe's own polling (pynetdicom's 1 ms) is not the node's latency


def echo_once(port: int) -> float:
    """One verification as a monitoring system does it: associate, C-ECHO, release; milliseconds."""
    ae = AE(ae_title=MODALITY_AET)
    ae.add_requested_context(Verification)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET, evt_handlers=[(evt.EVT_CONN_OPEN, _fast_probe)])
    try:
        if not assoc.is_established:
            raise RuntimeError("C-ECHO association refused")
        status = assoc.send_c_echo()
        if getattr(status, "Status", None) != 0:
            raise RuntimeError(f"C-ECHO status {status}")
    finally:
        if assoc.is_established:
            assoc.release()
    return (time.perf_counter() - t0) * 1000


def echo_under_load(work: Path, files: list[Path]) -> dict[str, float | int]:
    """C-ECHO round trips while 4 senders push ``files`` into a full node (analysis running)."""
    with OrthancProcess(work / "load-orthanc", webviewer=False) as orthanc:
        node: NodeProcess = prepare_node(work / "load-node", orthanc).start()
        try:
            idle = [echo_once(node.port) for _ in range(20)]
            times: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                while not stop.is_set():
                    times.append(echo_once(node.port))
                    stop.wait(0.05)

            thread = threading.Thread(target=probe, daemon=True)
            thread.start()
            send_s = send_concurrently(node.port, files, 4, work / "logs", NODE_AET)
            stop.set()
            thread.join()
        finally:
            node.stop()
    return {
        "images": len(files),
        "send_s": round(send_s, 2),
        "echo_idle_p50_ms": round(percentile(idle, 50), 1),
        "echoes": len(times),
        "echo_p50_ms": round(percentile(times, 50), 1),
        "echo_p95_ms": round(percentile(times, 95), 1),
        "echo_max_ms": round(max(times), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load-n", type=int, default=1000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["receive", "e2e", "echo"])
    args = ap.parse_args()
    work = scratch("fetalnode-throughput-")
    files = make_images(max(2 * args.n, args.load_n), work / "images")
    out: dict[str, object] = {"files": args.n, "targets": TARGETS}
    try:
        if "receive" not in args.skip:
            rates = receive(work, files[: args.n], args.rounds)
            out["receive_images_per_s"] = {k: round(v, 1) for k, v in sorted(rates.items())}
            out["receive_ratio_to_orthanc_1_sender"] = round(rates["fetalnode_1"] / rates["orthanc_1"], 2)
            out["receive_ratio_to_orthanc_4_senders"] = round(rates["fetalnode_4"] / rates["orthanc_4"], 2)
        if "e2e" not in args.skip:
            out["end_to_end"] = end_to_end(work, files[: args.n], files[args.n : 2 * args.n])
        if "echo" not in args.skip:
            out["echo_under_load"] = echo_under_load(work, files[: args.load_n])
    finally:  # what was measured before a failure is still printed
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
