"""Reliability, bad input and load, measured in one run against a real Orthanc and DCMTK senders.

1. Faults: SIGKILL of the whole node during a 4-sender burst (then restart and re-send); Orthanc
   stopped and restarted mid-burst; spool "disk full" (the node's own free-space check against a
   file that takes the space) and recovery; a corrupt model bundle at start-up.
2. Bad input: every case of ``harness/corpus.py`` (status answered, or final state and report note).
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
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association

from benchmarks.common import make_images, scratch
from harness.config import MODALITY_AET, NODE_AET
from harness.corpus import ACCEPTED, REFUSED, corpus_contexts
from harness.node import FINAL, ROOT, cli, prepare_node
from harness.orthanc import OrthancProcess
from harness.scenarios import kill_during_burst, load, orthanc_restart_during_burst


def associate(port: int) -> Association:
    contexts = corpus_contexts()
    ae = AE(ae_title=MODALITY_AET)
    ae.dimse_timeout = 120
    return ae.associate("127.0.0.1", port, contexts=contexts, ae_title=NODE_AET)


def disk_full(work: Path, orthanc: OrthancProcess) -> dict[str, object]:
    margin = 200_000_000
    node = prepare_node(work / "diskfull", orthanc, scp__min_free_bytes=shutil.disk_usage(work).free - margin)
    node.start()
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
        node.wait_all(1, FINAL, 120)
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
    node = prepare_node(work / "corrupt", orthanc, models_dir=models)
    r = cli("serve", "--config", str(node.config))
    return {"exit_code": r.returncode, "message": r.stderr.strip().splitlines()[-1][:200]}


def bad_input(work: Path, orthanc: OrthancProcess) -> dict[str, object]:
    node = prepare_node(work / "badinput", orthanc).start()
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
        node.wait_all(len(ACCEPTED), FINAL, 300)
        for job in node.jobs.jobs():
            case = sent[job.sop_uid]
            table[case.name] = {
                "expected": case.expected,
                "state": job.state,
                "finding": job.result.get("finding") or job.result.get("reason"),
                "measurement_note": job.result.get("measurement_note", ""),
                "frames": job.result.get("n_frames"),
            }
        table["node_still_running"] = node.running
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
    work = scratch("fetalnode-reliability-")
    n_load = args.load_per_sender * args.senders
    images = make_images(args.kill_n + args.restart_n + n_load, work / "images")
    kill_files = images[: args.kill_n]
    restart_files = images[args.kill_n : args.kill_n + args.restart_n]
    load_files = images[args.kill_n + args.restart_n :]
    orthanc = OrthancProcess(work / "orthanc", webviewer=False).start()
    out: dict[str, object] = {"machine": f"{os.cpu_count()} CPU cores"}
    try:
        node = prepare_node(work / "kill", orthanc)
        report = kill_during_burst(node, orthanc, kill_files, node.folder, MODALITY_AET)
        out["sigkill_during_burst"] = {**dataclasses.asdict(report), "ok": report.ok}
        node = prepare_node(work / "restart", orthanc).start()
        try:
            restart = orthanc_restart_during_burst(node, orthanc, restart_files, node.folder, MODALITY_AET)
        finally:
            node.stop()
        out["orthanc_restart_mid_burst"] = {**dataclasses.asdict(restart), "ok": restart.ok}
        out["disk_full"] = disk_full(work, orthanc)
        out["corrupt_bundle_at_start"] = corrupt_bundle(work, orthanc)
        out["bad_input"] = bad_input(work, orthanc)
        node = prepare_node(work / "load", orthanc).start()
        try:
            lr = load(node, load_files, node.folder, MODALITY_AET, args.senders)
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
