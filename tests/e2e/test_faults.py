"""Faults during a burst from 4 concurrent senders: SIGKILL of the whole node, Orthanc restarted; a
worker process of ``serve`` killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from harness.node import NodeProcess
from harness.orthanc import OrthancProcess
from harness.processes import wait_for
from harness.scenarios import kill_during_burst, orthanc_restart_during_burst, start_senders
from tests.conftest import MODALITY, RELIABILITY_OUTPUTS, need, sample_copies
from tests.e2e.helpers import find

pytestmark = pytest.mark.e2e


def test_every_acknowledged_instance_delivered_exactly_once_after_sigkill(make_node, orthanc, tmp_path) -> None:
    need("storescu")
    node = make_node()
    files = sample_copies(200, tmp_path / "images")
    report = kill_during_burst(node, orthanc, files, tmp_path, MODALITY)
    print(report)
    assert 0 < report.acked_before_kill < report.sent, "the kill must land mid-burst"
    assert report.acked_without_job == 0, "an acknowledged instance was lost"
    assert report.resent_acked == report.sent
    assert report.not_delivered == []
    assert report.jobs == report.delivered == report.sent, "one job per instance, re-sends recognised"
    assert report.sr_duplicates == 0
    assert report.sr_in_orthanc == report.sent


def test_orthanc_restarted_mid_burst_everything_delivered_once(make_node, tmp_path) -> None:
    target = OrthancProcess(tmp_path / "orthanc-restarted", webviewer=False)
    target.start()
    try:
        node = make_node(target).start()
        files = sample_copies(60, tmp_path / "images")
        report = orthanc_restart_during_burst(node, target, files, tmp_path, MODALITY)
        print(report)
        assert report.retries > 0, "Orthanc must have been down while the node delivered"
        assert report.ok, report
    finally:
        target.stop()


def audit_events(node: NodeProcess) -> list[dict]:
    return [json.loads(line) for line in (node.data_dir / "audit.jsonl").read_text().splitlines()]


def worker_processes(serve_pid: int) -> list[int]:
    """The analysis worker processes ``serve`` started (multiprocessing spawn children), by pid."""
    out = subprocess.run(["ps", "-ww", "--ppid", str(serve_pid), "-o", "pid=,args="], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "spawn_main" in line]


def test_worker_process_killed_is_restarted_and_every_job_delivered_once(make_node, orthanc, tmp_path) -> None:
    need("storescu")
    node = make_node(**RELIABILITY_OUTPUTS).start()
    assert node.proc is not None
    workers = worker_processes(node.proc.pid)
    assert len(workers) == node.settings.worker.processes == 2, "serve runs its analysis in worker processes"
    files = sample_copies(30, tmp_path / "images")
    procs = start_senders(node.port, files, 1, tmp_path / "send", MODALITY, node.ae_title)
    wait_for(lambda: node.jobs.counts()["analysing"] >= 1, 120, "a job being analysed")
    os.kill(workers[0], signal.SIGKILL)
    assert procs[0][0].wait(120) == 0
    node.wait_all(len(files), {"delivered"}, timeout=300)
    restarted = [e for e in audit_events(node) if e["event"] == "worker-restarted"]
    assert [e["pid"] for e in restarted] == [workers[0]]
    now = worker_processes(node.proc.pid)
    assert len(now) == 2 and workers[0] not in now and workers[1] in now
    srs = [j.result["outputs"]["sr"] for j in node.jobs.jobs()]
    assert len(set(srs)) == len(files)
    assert all(len(find(orthanc, SOPInstanceUID=uid)) == 1 for uid in srs), "each SR once in Orthanc"


def test_serve_stops_its_worker_processes(make_node) -> None:
    node = make_node(**RELIABILITY_OUTPUTS).start()
    assert node.proc is not None
    workers = worker_processes(node.proc.pid)
    assert len(workers) == 2
    node.stop()
    for pid in workers:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), 30, f"worker {pid} to exit with serve")
