"""The cloud path against the embedded mode, side by side in one run on this machine.

Every process (broker, Orthancs, terminals, workers, the embedded node) shares this machine's cores, so the
figures are those of one small machine, not of a site plus a cloud. One run:

1. Store -> every enabled output (and the source) in the site's Orthanc, one image at a time (no queue),
   p50/p95: the embedded node (``serve``, its worker processes) and a site terminal with one cloud worker,
   the same images alternately.
2. The same images' findings and head circumference both ways: the largest |delta HC|, and how many
   findings differ (the cloud sees pseudonymised pixels: what lies outside the ultrasound region is blank).
3. Throughput: delivered images/s for ``--n`` images from two sites (half each, two senders per site), with
   1 and 2 cloud workers; the embedded node on the same images for reference.
4. In this process, per image: pseudonymisation (the image) and re-identification (its five outputs), ms.
5. A capacity sketch from the measured per-worker rate.

    .venv/bin/python -m benchmarks.cloud [--latency-n 30] [--n 120]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from benchmarks.common import make_images, percentile, scratch, storescu
from fetalnode.config import load_settings
from harness.cloud import prepare_terminal, prepare_worker
from harness.config import MODALITY_AET
from harness.node import FINAL, MODELS, NodeProcess, prepare_node
from harness.orthanc import OrthancProcess
from harness.rabbitmq import RabbitMQProcess
from harness.scenarios import start_senders

SITES = ("site-a", "site-b")


def one_at_a_time(node: NodeProcess, path: Path) -> float:
    """Seconds from storescu's completion to the image's job ending (every object at the destination)."""
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    storescu(node.port, [path])
    t0 = time.perf_counter()
    while not any(j.sop_uid == uid and j.state.final for j in node.jobs.jobs()):
        time.sleep(0.01)
    return time.perf_counter() - t0


def fresh(images: list[Path], folder: Path) -> list[Path]:
    """Copies of ``images`` with new SOP Instance UIDs (a run never meets the previous run's objects)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in images:
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(folder / path.name)
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def throughput(terminals: list[NodeProcess], files: list[Path], work: Path) -> float:
    """Delivered images/s, ``files`` split between ``terminals``, two storescu senders each."""
    t0 = time.monotonic()
    share = len(files) // len(terminals)
    parts = [files[i * share : (i + 1) * share] for i in range(len(terminals))]
    senders = [
        s
        for node, part in zip(terminals, parts, strict=True)
        for s in start_senders(node.port, part, 2, work / f"senders-{node.port}-{time.monotonic_ns()}", MODALITY_AET)
    ]
    for proc, _ in senders:
        proc.wait(timeout=1800)
    before = {node.port: len(node.jobs.jobs()) - len(part) for node, part in zip(terminals, parts, strict=True)}
    for node, part in zip(terminals, parts, strict=True):
        node.wait_all(before[node.port] + len(part), FINAL, 3600)
    return sum(len(p) for p in parts) / (time.monotonic() - t0)


def privacy_costs(images: list[Path], rounds: int) -> dict[str, float]:
    """Pseudonymisation of each image and re-identification of its five outputs, in this process."""
    from fetalnode.outcomes import Received
    from fetalnode.outputs.uids import output_uid_map
    from fetalnode.privacy import Pseudonymiser, reidentify_all
    from fetalnode.runner import run_job
    from fetalnode.runtime import build_runtime

    runtime = build_runtime(load_settings(None, env={}, overrides={"models.dir": str(MODELS)}), destinations=[])
    pseudonymiser = Pseudonymiser(b"benchmark secret, 32 bytes or more, not a real one")
    pseudo_ms, reid_ms = [], []
    for path in images[:rounds]:
        data = path.read_bytes()
        t0 = time.perf_counter()
        result = pseudonymiser.pseudonymise_bytes(data)
        pseudo_ms.append((time.perf_counter() - t0) * 1000)
        sent = result.data
        outcome = run_job(Received(0, "", hashlib.sha256(sent).hexdigest(), lambda sent=sent: sent, ""), runtime)
        source = dcmread(BytesIO(data))
        sop, series = str(source.SOPInstanceUID), str(source.SeriesInstanceUID)
        t0 = time.perf_counter()
        _, derived = output_uid_map(
            outcome.built,
            (pseudonymiser.pseudonym(sop), sop),
            (pseudonymiser.pseudonym(series), series),
            outcome.derivation,
        )
        reidentify_all(outcome.built, source, {**result.uid_map, **derived})
        reid_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "pseudonymise_ms_p50": round(statistics.median(pseudo_ms), 1),
        "pseudonymise_ms_p95": round(percentile(pseudo_ms, 95), 1),
        "reidentify_5_outputs_ms_p50": round(statistics.median(reid_ms), 1),
        "reidentify_5_outputs_ms_p95": round(percentile(reid_ms, 95), 1),
        "images": len(pseudo_ms),
    }


def compare_findings(embedded: NodeProcess, cloud: NodeProcess) -> dict[str, object]:
    """The same images' results both ways, matched by SOP Instance UID."""
    ours = {j.sop_uid: j.result for j in embedded.jobs.jobs() if j.state == "delivered"}
    theirs = {j.sop_uid: j.result for j in cloud.jobs.jobs() if j.state == "delivered"}
    both = sorted(set(ours) & set(theirs))
    deltas = [
        abs(float(ours[u]["hc_mm"]) - float(theirs[u]["hc_mm"]))
        for u in both
        if ours[u].get("hc_mm") is not None and theirs[u].get("hc_mm") is not None
    ]
    return {
        "images": len(both),
        "findings_differ": sum(ours[u].get("finding") != theirs[u].get("finding") for u in both),
        "hc_measured_both": len(deltas),
        "hc_measured_one_way_only": sum((ours[u].get("hc_mm") is None) != (theirs[u].get("hc_mm") is None) for u in both),
        "hc_abs_delta_mm_max": round(max(deltas), 2) if deltas else None,
        "hc_abs_delta_mm_median": round(statistics.median(deltas), 2) if deltas else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--n", type=int, default=120, help="images of each throughput run (split between the sites)")
    ap.add_argument("--privacy-n", type=int, default=20)
    args = ap.parse_args()
    work = scratch("fetalnode-cloud-")
    images = make_images(max(args.latency_n, args.n), work / "images")
    report: dict[str, object] = {"machine": "this machine: every process on the same cores"}
    report["privacy_in_process"] = privacy_costs(images, args.privacy_n)
    broker = RabbitMQProcess(work / "rabbitmq", tls=True, sites=SITES).start()
    orthancs = {name: OrthancProcess(work / f"orthanc-{name}", webviewer=False).start() for name in ("embedded", *SITES)}
    nodes: list[NodeProcess] = []
    try:
        embedded = prepare_node(work / "embedded", orthancs["embedded"], source_to_orthanc=True).start()
        terminals = [prepare_terminal(work / s, orthancs[s], broker, s).start() for s in SITES]
        workers = [prepare_worker(work / f"worker{i}", broker) for i in range(2)]
        nodes += [embedded, *terminals, *workers]
        workers[0].start_broker_worker()
        time.sleep(10)  # the worker loads torch and the bundles before anything is timed
        latency: dict[str, list[float]] = {"embedded": [], "cloud": []}
        for path in images[: args.latency_n]:
            latency["embedded"].append(one_at_a_time(embedded, path))
            latency["cloud"].append(one_at_a_time(terminals[0], path))
        report["store_to_outputs_in_orthanc_s"] = {
            mode: {"p50": round(statistics.median(v), 3), "p95": round(percentile(v, 95), 3), "n": len(v)}
            for mode, v in latency.items()
        }
        report["cloud_vs_embedded_same_images"] = compare_findings(embedded, terminals[0])
        runs: dict[str, float] = {}
        runs["cloud_1_worker_2_sites"] = throughput(terminals, fresh(images[: args.n], work / "t1"), work)
        workers[1].start_broker_worker()
        time.sleep(10)
        runs["cloud_2_workers_2_sites"] = throughput(terminals, fresh(images[: args.n], work / "t2"), work)
        runs["embedded_reference"] = throughput([embedded], fresh(images[: args.n], work / "t3"), work)
        report["throughput_images_per_s"] = {k: round(v, 2) for k, v in runs.items()}
        per_worker = runs["cloud_1_worker_2_sites"]
        per_day = per_worker * 86400
        report["capacity_sketch"] = {
            "per_worker_images_per_s_measured": round(per_worker, 2),
            "per_worker_images_per_day_at_50_percent_load": round(per_day * 0.5),
            "note": "one worker process with one torch thread on a shared 2-core machine; a site sending 2,000 "
            "images a day needs 2000 / that of a worker",
            "workers_for_100_sites_at_2000_images_per_day": max(1, round(100 * 2000 / (per_day * 0.5) + 0.4999)),
        }
    finally:
        for node in nodes:
            node.stop()
        for orthanc in orthancs.values():
            orthanc.stop()
        broker.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
