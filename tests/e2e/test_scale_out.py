"""The cloud path under faults, on a real RabbitMQ (TLS listener only, a user per site): a site terminal
delivering to its own Orthanc, cloud workers. Nothing acknowledged is lost, every object arrives once:

- a worker SIGKILLed mid-job: its job goes to another worker;
- the broker down while the terminal receives: jobs wait in the spool and go when it is back;
- the terminal SIGKILLed after the results came back and before they were delivered: delivered after the
  restart, each object once.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from harness.cloud import prepare_terminal, prepare_worker
from harness.node import NodeProcess, cli
from harness.orthanc import OrthancProcess
from harness.ports import free_port
from harness.processes import wait_for
from harness.rabbitmq import RabbitMQProcess
from harness.scenarios import acknowledged, orthanc_sr_uids, start_senders
from tests.conftest import MODALITY, RELIABILITY_OUTPUTS, need, sample_copies

pytestmark = pytest.mark.e2e
FINAL = {"delivered", "failed", "rejected"}


@pytest.fixture
def site_broker(tmp_path: Path):
    need("rabbitmq-server")
    broker = RabbitMQProcess(tmp_path / "rabbitmq", tls=True, sites=("site-a",)).start()
    yield broker
    broker.stop()


def terminal_and_workers(
    tmp_path: Path, orthanc: OrthancProcess, broker: RabbitMQProcess, n_workers: int, **fields: object
) -> tuple[NodeProcess, list[NodeProcess], int]:
    metrics = free_port()
    terminal = prepare_terminal(
        tmp_path / "site-a",
        orthanc,
        broker,
        "site-a",
        calling_aets=(MODALITY, "ECHOSCU"),
        node__metrics_port=metrics,
        orthanc__retry_initial=0.5,
        orthanc__retry_max=2.0,
        **{**RELIABILITY_OUTPUTS, **fields},
    ).start()
    workers = [prepare_worker(tmp_path / f"worker{i}", broker) for i in range(n_workers)]
    for worker in workers:
        worker.start_broker_worker()
    return terminal, workers, metrics


def assert_exactly_once(node: NodeProcess, orthanc: OrthancProcess, n: int) -> None:
    jobs = node.jobs.jobs()
    assert len(jobs) == n
    assert [(j.id, j.state, j.error) for j in jobs if j.state != "delivered"] == []
    expected = {j.result["outputs"]["sr"] for j in jobs}
    in_orthanc = orthanc_sr_uids(orthanc)
    assert len(in_orthanc) == len(set(in_orthanc)) == n, "one SR per instance, no duplicate"
    assert set(in_orthanc) == expected


def stop_all(terminal: NodeProcess, workers: list[NodeProcess]) -> None:
    for worker in workers:
        worker.stop()
    terminal.stop()


def test_a_worker_killed_mid_job_its_job_goes_to_another_each_object_once(own_orthanc, site_broker, tmp_path) -> None:
    need("storescu")
    terminal, workers, metrics = terminal_and_workers(tmp_path, own_orthanc, site_broker, 2)
    try:
        files = sample_copies(60, tmp_path / "images")
        senders = start_senders(terminal.port, files, 2, tmp_path / "senders", MODALITY)
        wait_for(lambda: terminal.jobs.counts()["delivered"] >= 10, 240, "10 deliveries")
        [victim] = workers[0].broker_workers
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
        assert 'fetalnode_jobs{state="delivered"}' in text and "fetalnode_queue_depth" in text
        for proc, _ in senders:
            assert proc.wait(timeout=300) == 0
        assert sum(len(acknowledged(log)) for _, log in senders) == 60
        terminal.wait_all(60, FINAL, timeout=600)
        assert_exactly_once(terminal, own_orthanc, 60)
    finally:
        stop_all(terminal, workers)


def test_broker_down_while_the_terminal_receives_nothing_lost(own_orthanc, site_broker, tmp_path) -> None:
    need("storescu")
    terminal, workers, _ = terminal_and_workers(tmp_path, own_orthanc, site_broker, 1)
    try:
        files = sample_copies(40, tmp_path / "images")
        first, during = files[:20], files[20:]
        for proc, _ in start_senders(terminal.port, first, 2, tmp_path / "s1", MODALITY):
            assert proc.wait(timeout=120) == 0
        wait_for(lambda: terminal.jobs.counts()["delivered"] >= 5, 240, "5 deliveries")
        site_broker.stop()
        down = time.monotonic()
        # The terminal keeps receiving while the broker is down: stored, acknowledged, queued in the spool.
        senders = start_senders(terminal.port, during, 2, tmp_path / "s2", MODALITY)
        for proc, _ in senders:
            assert proc.wait(timeout=120) == 0
        assert sum(len(acknowledged(log)) for _, log in senders) == len(during)
        assert terminal.jobs.counts()["queued"] > 0
        status = json.loads(cli("status", "--config", str(terminal.config), env=terminal.env, check=True).stdout)
        assert status["broker"]["queue_depth"] is None, "the broker is down"
        assert status["counts"]["queued"] > 0 and status["oldest_pending_s"] > 0
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))  # the outage's length, not a wait for the node
        site_broker.start()
        terminal.wait_all(40, FINAL, timeout=600)
        assert_exactly_once(terminal, own_orthanc, 40)
        events = (terminal.data_dir / "audit.jsonl").read_text()
        assert '"broker-down"' in events and '"broker-up"' in events
    finally:
        stop_all(terminal, workers)


def test_terminal_killed_after_the_results_came_back_delivers_each_object_once(
    own_orthanc, site_broker, tmp_path
) -> None:
    need("storescu")
    terminal, workers, _ = terminal_and_workers(tmp_path, own_orthanc, site_broker, 1)
    try:
        own_orthanc.stop()  # the site's archive is down: the results come back and wait in the outbox
        files = sample_copies(10, tmp_path / "images")
        for proc, _ in start_senders(terminal.port, files, 1, tmp_path / "s", MODALITY):
            assert proc.wait(timeout=120) == 0
        wait_for(lambda: terminal.jobs.counts()["delivering"] == 10, 300, "every result back, none delivered")
        kept = sorted(p.name for p in (terminal.data_dir / "outbox").rglob("*.dcm"))
        assert len(kept) == 10 * len(RELIABILITY_OUTPUTS["output__enabled"])  # type: ignore[arg-type]
        terminal.kill()
        own_orthanc.start()
        terminal.start()
        terminal.wait_all(10, FINAL, timeout=300)
        assert_exactly_once(terminal, own_orthanc, 10)
    finally:
        stop_all(terminal, workers)
