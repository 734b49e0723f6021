"""Scale-out on a real RabbitMQ (Debian package) with Celery workers: at-least-once, idempotent outputs."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from harness.node import cli
from harness.orthanc import OrthancProcess
from harness.ports import free_port
from harness.processes import wait_for
from harness.scenarios import acknowledged, orthanc_sr_uids, start_senders
from tests.conftest import MODALITY, RELIABILITY_OUTPUTS, need, sample_copies

pytestmark = pytest.mark.e2e


def terminal_and_workers(make_node, orthanc, broker, n_workers: int, **fields: object):
    metrics = free_port()
    node = make_node(
        orthanc,
        node__role="terminal",
        **broker.node_fields(),
        node__metrics_port=metrics,
        **{**RELIABILITY_OUTPUTS, **fields},
    ).start()
    workers = [node.start_broker_worker() for _ in range(n_workers)]
    return node, workers, metrics


def assert_exactly_once(node, orthanc: OrthancProcess, n: int) -> None:
    jobs = node.jobs.jobs()
    assert len(jobs) == n
    assert [j for j in jobs if j.state != "delivered"] == []
    expected = {j.result["outputs"]["sr"] for j in jobs}
    in_orthanc = orthanc_sr_uids(orthanc)
    assert len(in_orthanc) == len(set(in_orthanc)) == n, "one SR per instance, no duplicate"
    assert set(in_orthanc) == expected


def test_three_workers_one_killed_all_300_delivered_exactly_once(make_node, own_orthanc, broker, tmp_path) -> None:
    need("storescu")
    node, workers, metrics = terminal_and_workers(make_node, own_orthanc, broker, 3)
    files = sample_copies(300, tmp_path / "images")
    senders = start_senders(node.port, files, 3, tmp_path / "senders", MODALITY)
    wait_for(lambda: node.jobs.counts()["delivered"] >= 30, 240, "30 deliveries")
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
    assert 'fetalnode_jobs{state="delivered"}' in text and "fetalnode_queue_depth" in text
    for proc, _ in senders:
        assert proc.wait(timeout=300) == 0
    assert sum(len(acknowledged(log)) for _, log in senders) == 300
    node.wait_all(300, {"delivered", "failed", "rejected"}, timeout=600)
    assert_exactly_once(node, own_orthanc, 300)


def test_broker_down_20s_terminal_keeps_accepting_nothing_lost(make_node, own_orthanc, broker, tmp_path) -> None:
    need("storescu")
    node, _, _ = terminal_and_workers(make_node, own_orthanc, broker, 2)
    files = sample_copies(80, tmp_path / "images")
    first, during = files[:40], files[40:]
    for proc, _ in start_senders(node.port, first, 2, tmp_path / "s1", MODALITY):
        assert proc.wait(timeout=120) == 0
    wait_for(lambda: node.jobs.counts()["delivered"] >= 10, 240, "10 deliveries")
    broker.stop()
    down = time.monotonic()
    # The terminal keeps receiving while the broker is down: stored, acknowledged, queued in the spool.
    senders = start_senders(node.port, during, 2, tmp_path / "s2", MODALITY)
    for proc, _ in senders:
        assert proc.wait(timeout=120) == 0
    assert sum(len(acknowledged(log)) for _, log in senders) == len(during)
    assert node.jobs.counts()["queued"] > 0
    status = json.loads(cli("status", "--config", str(node.config), env=node.env, check=True).stdout)
    assert status["broker"]["queue_depth"] is None, "the broker is down"
    assert status["counts"]["queued"] > 0 and status["oldest_pending_s"] > 0
    time.sleep(max(0.0, 20 - (time.monotonic() - down)))
    broker.start()
    node.wait_all(80, {"delivered", "failed", "rejected"}, timeout=600)
    assert_exactly_once(node, own_orthanc, 80)
    status = json.loads(cli("status", "--config", str(node.config), env=node.env, check=True).stdout)
    assert status["broker"]["queue_depth"] == 0 and status["broker"]["published_unanswered"] == 0
    events = (node.data_dir / "audit.jsonl").read_text()
    assert '"broker-down"' in events and '"broker-up"' in events
