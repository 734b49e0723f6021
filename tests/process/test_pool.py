"""WorkerPool supervision with stand-in worker processes (real spawned processes, no models).

The stand-ins are module functions so that the spawned interpreter can import them.
"""

from __future__ import annotations

import itertools
import multiprocessing.connection
import os
import signal
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from fetalnode import pool as pool_module
from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.errors import NodeError
from fetalnode.pool import WorkerPool

pytestmark = pytest.mark.process


def slow_worker(
    settings: Settings, wake: Event, parent_pid: int, log_level: str, ready: multiprocessing.connection.Connection
) -> None:
    """Takes 1.5 s to "load its models" (the first start answers at once), then idles."""
    marker = settings.data_path / "started"
    if marker.exists():
        time.sleep(1.5)
    marker.touch()
    ready.send("")
    ready.close()
    time.sleep(600)


def worker_that_breaks(
    settings: Settings, wake: Event, parent_pid: int, log_level: str, ready: multiprocessing.connection.Connection
) -> None:
    """Starts once; every later start fails as a worker with a bundle that does not load."""
    marker = settings.data_path / "started"
    if marker.exists():
        ready.send("BundleError: model.pt does not match its checksum")
        sys.exit(2)
    marker.touch()
    ready.send("")
    ready.close()
    time.sleep(600)


class SlowPool(WorkerPool):
    target = staticmethod(slow_worker)


class BreakingPool(WorkerPool):
    target = staticmethod(worker_that_breaks)


def _settings(tmp_path: Path) -> Settings:
    settings = Settings()
    settings.node.data_dir = str(tmp_path / "data")
    (tmp_path / "data").mkdir()
    return settings


def _kill_worker(pool: WorkerPool) -> int:
    pid = pool.pids()[0]
    os.kill(pid, signal.SIGKILL)
    proc = pool._procs[0]
    assert proc is not None
    proc.join(10)
    return pid


def test_restart_does_not_wait_for_the_new_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "RESTART_DELAY", 0.0)
    audit = AuditLog(tmp_path / "audit.jsonl")
    pool = SlowPool(_settings(tmp_path), 1, audit)
    pool.start(timeout=60)
    try:
        dead = _kill_worker(pool)
        t0 = time.monotonic()
        pool.supervise()
        assert time.monotonic() - t0 < 0.5  # the new worker needs 1.5 s before it is ready
        assert '"event": "worker-restarted"' in (tmp_path / "audit.jsonl").read_text()
        assert pool.pids() and pool.pids()[0] != dead
        deadline = time.monotonic() + 60
        while pool._pending and time.monotonic() < deadline:
            pool.supervise()
            time.sleep(0.1)
        assert not pool._pending and pool._failed_starts == [0]
    finally:
        pool.stop(timeout=5)


def test_a_worker_that_keeps_failing_is_retried_ever_more_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "RESTART_DELAY", 0.3)
    monkeypatch.setattr(pool_module, "MAX_RESTART_DELAY", 1.2)
    pool = BreakingPool(_settings(tmp_path), 1, AuditLog(tmp_path / "audit.jsonl"))
    pool.start(timeout=60)
    spawns: list[float] = []
    spawn = pool._spawn

    def timed_spawn(slot: int) -> multiprocessing.connection.Connection:
        spawns.append(time.monotonic())
        return spawn(slot)

    monkeypatch.setattr(pool, "_spawn", timed_spawn)
    try:
        _kill_worker(pool)
        deadline = time.monotonic() + 30
        while len(spawns) < 4 and time.monotonic() < deadline:
            pool.supervise()
            time.sleep(0.02)
        assert len(spawns) == 4 and pool._failed_starts[0] >= 3
        gaps = [b - a for a, b in itertools.pairwise(spawns)]
        # after n failed starts in a row the next one waits 0.3 x 2^n s from the last start, at most 1.2 s
        for n, gap in enumerate(gaps, start=1):
            assert gap >= min(1.2, 0.3 * 2**n) - 0.05, gaps
        pool._failed_starts[0] = 5000  # weeks of failed starts: still the longest wait, no overflow
        assert pool._delay(0) == 1.2
    finally:
        pool.stop(timeout=5)


def test_a_worker_that_cannot_start_stops_the_pool(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (settings.data_path / "started").touch()
    with pytest.raises(NodeError, match="does not match its checksum"):
        BreakingPool(settings, 1, AuditLog(tmp_path / "audit.jsonl")).start(timeout=60)
