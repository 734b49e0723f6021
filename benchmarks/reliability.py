"""Reliability, bad input and load, measured in one run against a real Orthanc and DCMTK senders.

1. Faults: SIGKILL of the whole node during a 4-sender burst (then restart and re-send); Orthanc
   stopped and restarted mid-burst; spool "disk full" (the node's own free-space check against a
   file that takes the space) and recovery; a corrupt model bundle at start-up.
2. Bad input: every case of ``tests/corpus.py`` (status answered, or final state and report note).
3. Load: 4 concurrent senders x 250 images; received/s, delivered/s, receipt-to-delivery latency,
   peak RSS of the node, C-ECHO round trips every 0.25 s while the worker is saturated.

    .venv/bin/python -m benchmarks.reliability [--kill-n 200] [--restart-n 100] [--load-per-sender 250]

Prints one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association

from benchmarks.common import make_images, node_config
from benchmarks.scenarios import (
    kill_during_burst,
    load,
    orthanc_restart_during_burst,
    wait_jobs_terminal,
)
from fetalnode.demo import MODALITY_AET, NODE_AET, start_node, wait_echo
from fetalnode.jobs import JobStore
from fetalnode.orthanc.server import OrthancProcess
from tests.corpus import ACCEPTED, REFUSED, corpus_contexts

ROOT = Path(__file__).resolve().parents[1]


class Node:
    """A node configuration of its own (port, data folder) delivering to ``orthanc``."""

    def __init__(self, work: Path, name: str, orthanc: OrthancProcess, **scp: str) -> None:
        self.dir = work / name
        self.port, self.config, self.data = node_config(self.dir, orthanc, **scp)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        self.proc = start_node(self.config, self.dir / "node.log")
        wait_echo(self.port, 120, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.data / "jobs.sqlite")


def associate(port: int) -> Association:
    contexts = corpus_contexts()
    ae = AE(ae_title=MODALITY_AET)
    ae.dimse_timeout = 120
    return ae.associate("127.0.0.1", port, contexts=contexts, ae_title=NODE_AET)


def disk_full(work: Path, orthanc: OrthancProcess) -> dict[str, object]:
    margin = 200_000_000
    node = Node(work, "diskfull", orthanc, min_free_bytes=str(shutil.disk_usage(work).free - margin)).start()
    sample = ROOT / "samples" / "hc18_104_HC.dcm"
    filler = work / "filler"
    try:
        assoc = associate(node.port)
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 2 * margin)
        full = assoc.send_c_store(dcmread(sample))
        echo = assoc.send_c_echo()
        filler.unlink()
        after = assoc.send_c_store(dcmread(sample))
        assoc.release()
        wait_jobs_terminal(node.jobs, 1, 120)
        return {
            "status_while_full": f"0x{full.Status:04X}",
            "error_comment": str(full.get("ErrorComment", "")),
            "echo_while_full": f"0x{echo.Status:04X}",
            "status_after_space_returns": f"0x{after.Status:04X}",
            "final_state": node.jobs.jobs()[0].state,
        }
    finally:
        filler.unlink(missing_ok=True)
        node.stop()


def corrupt_bundle(work: Path, orthanc: OrthancProcess) -> dict[str, object]:
    models = work / "corrupt-models"
    for name in ("hc18-headseg", "fba-classifier"):
        shutil.copytree(ROOT / "models" / name, models / name)
    weights = models / "fba-classifier" / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    node = Node(work, "corrupt", orthanc)
    r = subprocess.run(
        [sys.executable, "-m", "fetalnode.cli", "serve", "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FETALNODE__MODELS__DIR": str(models)},
    )
    return {"exit_code": r.returncode, "message": r.stderr.strip().splitlines()[-1][:200]}


def bad_input(work: Path, orthanc: OrthancProcess) -> dict[str, object]:
    node = Node(work, "badinput", orthanc).start()
    cases = work / "corpus"
    cases.mkdir()
    table: dict[str, object] = {}
    try:
        assoc = associate(node.port)
        for case in REFUSED:
            rsp = assoc.send_c_store(case.make(cases))
            table[case.name] = {
                "expected": case.expected,
                "status": f"0x{rsp.Status:04X}",
                "error_comment": str(rsp.get("ErrorComment", "")),
            }
        sent = {}
        for case in ACCEPTED:
            path = case.make(cases)
            sent[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = case
            rsp = assoc.send_c_store(path)
        assoc.release()
        wait_jobs_terminal(node.jobs, len(ACCEPTED), 300)
        for job in node.jobs.jobs():
            case = sent[job.sop_uid]
            table[case.name] = {
                "expected": case.expected,
                "state": job.state,
                "finding": job.result.get("finding") or job.result.get("reason"),
                "measurement_note": job.result.get("measurement_note", ""),
                "frames": job.result.get("n_frames"),
            }
        table["node_still_running"] = node.proc is not None and node.proc.poll() is None
    finally:
        node.stop()
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kill-n", type=int, default=200)
    ap.add_argument("--restart-n", type=int, default=100)
    ap.add_argument("--load-per-sender", type=int, default=250)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--out", default="reliability.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fetalnode-reliability-"))
    n_load = args.load_per_sender * args.senders
    images = make_images(args.kill_n + args.restart_n + n_load, work / "images")
    kill_files = images[: args.kill_n]
    restart_files = images[args.kill_n : args.kill_n + args.restart_n]
    load_files = images[args.kill_n + args.restart_n :]
    orthanc = OrthancProcess(work / "orthanc", webviewer=False)
    orthanc.start()
    out: dict[str, object] = {"machine": f"{os.cpu_count()} CPU cores"}
    try:
        node = Node(work, "kill", orthanc)
        report = kill_during_burst(node.config, node.port, node.data, orthanc, kill_files, node.dir, MODALITY_AET)
        out["sigkill_during_burst"] = {**dataclasses.asdict(report), "ok": report.ok}
        node = Node(work, "restart", orthanc).start()
        try:
            restart = orthanc_restart_during_burst(node.port, node.data, orthanc, restart_files, node.dir, MODALITY_AET)
        finally:
            node.stop()
        out["orthanc_restart_mid_burst"] = {**dataclasses.asdict(restart), "ok": restart.ok}
        out["disk_full"] = disk_full(work, orthanc)
        out["corrupt_bundle_at_start"] = corrupt_bundle(work, orthanc)
        out["bad_input"] = bad_input(work, orthanc)
        node = Node(work, "load", orthanc).start()
        try:
            assert node.proc is not None
            lr = load(node.port, node.proc.pid, node.jobs, load_files, node.dir, MODALITY_AET, args.senders)
        finally:
            node.stop()
        out["load"] = dataclasses.asdict(lr)
    finally:
        orthanc.stop()
    text = json.dumps(out, indent=2, default=str)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
