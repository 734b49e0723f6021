"""Fault and load scenarios against a real node, real DCMTK senders and a real Orthanc.

Shared by the tests (which assert on the outcome) and the benchmarks (which print the figures).
``kill_during_burst`` starts the node itself so that it can SIGKILL it; the others take a running node.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydicom import dcmread

from fetalnode.jobs import Job
from harness.config import NODE_AET
from harness.node import FINAL, NodeProcess
from harness.orthanc import OrthancProcess


def start_senders(
    port: int, files: list[Path], senders: int, folder: Path, aet: str, called: str = NODE_AET
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """``senders`` concurrent storescu processes, each sending its share of ``files`` in one association."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(senders):
        log = folder / f"storescu{i}-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            procs.append(
                (
                    subprocess.Popen(
                        ["storescu", "-v", "-aet", aet, "-aec", called, "127.0.0.1", str(port)]
                        + [str(f) for f in files[i::senders]],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "TCP_NODELAY": "1"},
                    ),
                    log,
                )
            )
    return procs


def acknowledged(log: Path) -> list[str]:
    """Files storescu -v reports as stored with status Success."""
    done, current = [], None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            done.append(current)
            current = None
    return done


def orthanc_sr_uids(orthanc: OrthancProcess) -> list[str]:
    """SOP Instance UIDs of every SR Orthanc holds."""
    r = httpx.post(
        f"{orthanc.url}/tools/find",
        auth=(orthanc.username, orthanc.password),
        json={"Level": "Instance", "Query": {"Modality": "SR"}, "Expand": True},
        timeout=60,
    )
    r.raise_for_status()
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in r.json()]


def sr_tally(orthanc: OrthancProcess, jobs: list[Job]) -> tuple[int, int]:
    """(SRs in Orthanc that are the reports of these delivered jobs, extra copies of any SR UID in Orthanc)."""
    srs = Counter(orthanc_sr_uids(orthanc))
    expected = {j.result.get("outputs", {}).get("sr") for j in jobs if j.state == "delivered"}
    return sum(1 for uid in srs if uid in expected), sum(n - 1 for n in srs.values())


@dataclass
class KillReport:
    sent: int
    kill_at_s: float
    kill_after_jobs: int
    acked_before_kill: int
    jobs_before_kill: int
    resent_acked: int
    jobs: int
    delivered: int
    not_delivered: list[str]
    acked_without_job: int
    sr_in_orthanc: int
    sr_duplicates: int
    recovery_s: float
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.not_delivered
            and self.acked_without_job == 0
            and self.sr_duplicates == 0
            and self.delivered == self.jobs == self.sent
            and self.sr_in_orthanc == self.sent
        )


def kill_during_burst(
    node: NodeProcess,
    orthanc: OrthancProcess,
    files: list[Path],
    folder: Path,
    aet: str,
    senders: int = 4,
    seed: int = 20261124,
) -> KillReport:
    """SIGKILL the whole node (SCP + worker) at a random point of a burst, restart it, then let the
    modalities re-send everything (as they do after a failed association). Every instance must end
    delivered exactly once: one job and one SR per SOP Instance UID. ``node`` is started here and
    stopped at the end.
    """
    node.start()
    jobs = node.jobs
    # A random point of the burst, by progress (not by time, which depends on the machine).
    kill_after = random.Random(seed).randint(len(files) // 4, 3 * len(files) // 4)
    t0 = time.monotonic()
    procs = start_senders(node.port, files, senders, folder / "burst", aet, node.ae_title)
    deadline = t0 + 120
    while len(jobs.jobs()) < kill_after and time.monotonic() < deadline:
        time.sleep(0.01)
    kill_at = time.monotonic() - t0
    node.kill()
    for p, _ in procs:
        p.wait(timeout=120)
    acked = {a for _, lg in procs for a in acknowledged(lg)}
    jobs_before = len(jobs.jobs())
    # Restart and re-send the whole batch (duplicates must be recognised, not analysed twice).
    t1 = time.monotonic()
    try:
        node.start()
        procs = start_senders(node.port, files, senders, folder / "resend", aet, node.ae_title)
        for p, _ in procs:
            p.wait(timeout=300)
        resent = {a for _, lg in procs for a in acknowledged(lg)}
        node.wait_all(len(files), FINAL, 300)
        recovery = time.monotonic() - t1
    finally:
        node.stop()
    all_jobs = jobs.jobs()
    uid_of = {str(f): str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    job_uids = Counter(j.sop_uid for j in all_jobs)
    sr_in_orthanc, sr_copies = sr_tally(orthanc, all_jobs)
    return KillReport(
        sent=len(files),
        kill_at_s=round(kill_at, 2),
        kill_after_jobs=kill_after,
        acked_before_kill=len(acked),
        jobs_before_kill=jobs_before,
        resent_acked=len(resent),
        jobs=len(all_jobs),
        delivered=sum(j.state == "delivered" for j in all_jobs),
        not_delivered=[f"{j.id} {j.state} {j.error}" for j in all_jobs if j.state != "delivered"],
        acked_without_job=sum(1 for a in acked if job_uids[uid_of[a]] == 0),
        sr_in_orthanc=sr_in_orthanc,
        sr_duplicates=sr_copies + sum(n - 1 for n in job_uids.values()),
        recovery_s=round(recovery, 1),
    )


@dataclass
class LoadReport:
    images: int
    senders: int
    receive_s: float
    received_per_s: float
    delivered_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    echo_max_s: float
    echo_p95_s: float
    echo_over_1s: int
    peak_rss_mb: float


def load(node: NodeProcess, files: list[Path], folder: Path, aet: str, senders: int = 4) -> LoadReport:
    """``senders`` concurrent storescu over ``files`` to the running ``node``; C-ECHO every 0.25 s
    meanwhile; latency from the job store.
    """
    if node.proc is None or not node.running:
        raise ValueError("load() needs a running node")
    node_pid = node.proc.pid
    echoes: list[float] = []
    stop = threading.Event()

    def prober() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            subprocess.run(
                ["echoscu", "-aet", aet, "-aec", node.ae_title, "-to", "10", "127.0.0.1", str(node.port)],
                capture_output=True,
            )
            echoes.append(time.perf_counter() - t)
            stop.wait(0.25)

    rss_peak = [0.0]

    def rss() -> None:
        while not stop.is_set():
            try:
                for line in Path(f"/proc/{node_pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        rss_peak[0] = max(rss_peak[0], int(line.split()[1]) / 1024)
            except OSError:
                pass
            stop.wait(0.5)

    threads = [threading.Thread(target=prober, daemon=True), threading.Thread(target=rss, daemon=True)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    procs = start_senders(node.port, files, senders, folder / "load", aet, node.ae_title)
    for p, _ in procs:
        p.wait(timeout=1800)
    receive_s = time.monotonic() - t0
    node.wait_all(len(files), FINAL, 3600)
    total_s = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join()
    latencies = sorted(j.latency_s for j in node.jobs.jobs() if j.latency_s is not None)
    ordered = sorted(echoes)
    return LoadReport(
        images=len(files),
        senders=senders,
        receive_s=round(receive_s, 1),
        received_per_s=round(len(files) / receive_s, 2),
        delivered_per_s=round(len(files) / total_s, 2),
        latency_p50_s=round(latencies[len(latencies) // 2], 2),
        latency_p95_s=round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        echo_max_s=round(ordered[-1], 3),
        echo_p95_s=round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        echo_over_1s=sum(e > 1.0 for e in echoes),
        peak_rss_mb=round(rss_peak[0], 1),
    )


@dataclass
class OrthancRestartReport:
    sent: int
    acked: int
    down_s: float
    delivered: int
    retries: int
    sr_in_orthanc: int
    sr_duplicates: int
    total_s: float

    @property
    def ok(self) -> bool:
        return self.acked == self.sent == self.delivered == self.sr_in_orthanc and self.sr_duplicates == 0


def orthanc_restart_during_burst(
    node: NodeProcess,
    orthanc: OrthancProcess,
    files: list[Path],
    folder: Path,
    aet: str,
    senders: int = 4,
    down_s: float = 5.0,
) -> OrthancRestartReport:
    """Stop Orthanc one second into a burst to the running ``node``, start it again ``down_s`` later;
    all must arrive once.
    """
    t0 = time.monotonic()
    procs = start_senders(node.port, files, senders, folder / "orthanc-restart", aet, node.ae_title)
    time.sleep(1.0)
    orthanc.stop()
    time.sleep(down_s)
    orthanc.start()
    for p, _ in procs:
        p.wait(timeout=300)
    acked = {a for _, lg in procs for a in acknowledged(lg)}
    node.wait_all(len(files), FINAL, 300)
    all_jobs = node.jobs.jobs()
    sr_in_orthanc, sr_copies = sr_tally(orthanc, all_jobs)
    audit = (node.data_dir / "audit.jsonl").read_text()
    return OrthancRestartReport(
        sent=len(files),
        acked=len(acked),
        down_s=down_s,
        delivered=sum(j.state == "delivered" for j in all_jobs),
        retries=audit.count('"event": "delivery-retry"'),
        sr_in_orthanc=sr_in_orthanc,
        sr_duplicates=sr_copies,
        total_s=round(time.monotonic() - t0, 1),
    )
