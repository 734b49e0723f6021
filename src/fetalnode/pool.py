"""The analysis worker processes of ``serve`` (role ``all``).

The SCP keeps its process, and Python's GIL, to itself: a worker building DICOM objects (pure Python)
in the SCP's process would hold the GIL while a modality waits for its C-STORE or C-ECHO answer.
``worker.processes`` workers each claim jobs from the same SQLite store (leases keep a job in one
worker) and run them with :func:`~fetalnode.runner.run_job`.

- Start-up: every worker loads the application's bundles and says so; a bundle that does not load
  stops ``serve`` with the worker's error, as the in-process worker did.
- The SCP wakes the workers when it queues a job (a shared event); they also poll the store.
- A worker that dies is started again (audited). The restart never blocks ``serve``'s loop: the new
  worker's ready message is read on a later :meth:`WorkerPool.supervise`. A worker that keeps failing
  (say a pushed bundle that does not load) is retried ever more slowly: ``RESTART_DELAY`` seconds after
  it started, doubled for each start in a row that failed, at most ``MAX_RESTART_DELAY``.
- The workers die with ``serve`` (Linux ``PR_SET_PDEATHSIG``): a SIGKILL of the node stops the
  analysis as a power cut would, and the restarted node takes over their leases (dead owners).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.errors import NodeError
from fetalnode.vocab import AuditEvent

log = logging.getLogger(__name__)

RESTART_DELAY = 5.0
MAX_RESTART_DELAY = 300.0
RESTART_READY_TIMEOUT = 600.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_process(
    settings: Settings, wake: Event, parent_pid: int, log_level: str, ready: multiprocessing.connection.Connection
) -> None:
    """One worker process: load the bundles, report ready (or the error), run until SIGTERM."""
    _die_with_parent(parent_pid)
    if settings.worker.nice:
        os.nice(settings.worker.nice)  # analysis yields the CPU to the SCP: a modality waits on the SCP's answers
    from fetalnode.logs import setup_logging
    from fetalnode.node import build_worker, open_store

    setup_logging(log_level, settings.logging.third_party)
    try:
        worker = build_worker(settings, open_store(settings), wake=wake)
    except NodeError as exc:
        ready.send(f"{type(exc).__name__}: {exc}")
        sys.exit(2)
    ready.send("")
    ready.close()
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: serve stops its workers
    worker.run_forever()


class WorkerPool:
    """``processes`` worker processes on this node's job store, restarted when they die."""

    def __init__(self, settings: Settings, processes: int, audit: AuditLog, log_level: str = "INFO") -> None:
        self.settings = settings
        self.audit = audit
        self.log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited threads or locks
        self._wake = self._ctx.Event()
        self._procs: list[BaseProcess | None] = [None] * max(1, processes)
        self._started_at = [0.0] * len(self._procs)
        # A restarted worker's ready pipe and the time by which it must answer, per slot.
        self._pending: dict[int, tuple[multiprocessing.connection.Connection, float]] = {}
        self._failed_starts = [0] * len(self._procs)

    target = staticmethod(worker_process)

    def _spawn(self, slot: int) -> multiprocessing.connection.Connection:
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=self.target,
            args=(self.settings, self._wake, os.getpid(), self.log_level, send),
            name=f"fetalnode-worker-{slot}",
        )
        proc.start()
        send.close()
        self._procs[slot], self._started_at[slot] = proc, time.monotonic()
        return receive

    def start(self, timeout: float = 600.0) -> None:
        """Start every worker and wait until each has loaded its bundles; a load error stops them all."""
        threads, cores = len(self._procs) * self.settings.worker.torch_threads, os.cpu_count() or 1
        if threads > cores:
            log.warning(
                "worker.processes x worker.torch_threads = %d threads for %d CPU cores: inference threads will "
                "thrash (measured 8x slower at 4 threads on 2 cores); lower worker.torch_threads",
                threads,
                cores,
            )
        pipes = [self._spawn(slot) for slot in range(len(self._procs))]
        errors = []
        for slot, pipe in enumerate(pipes):
            message = self._ready(slot, pipe, timeout)
            if message:
                errors.append(message)
        if errors:
            self.stop()
            raise NodeError(f"analysis worker failed to start: {errors[0]}")
        log.info("%d analysis worker process(es) ready", len(self._procs))

    def _ready(self, slot: int, pipe: multiprocessing.connection.Connection, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for a starting worker's answer ("" ready, else why not)."""
        try:
            answer = self._answer(slot, pipe, timeout)
        finally:
            pipe.close()
        return f"worker {slot} did not load its models within {timeout:.0f} s" if answer is None else answer

    def _answer(self, slot: int, pipe: multiprocessing.connection.Connection, wait: float) -> str | None:
        """A starting worker's ready message ("" ready, else its error), why it died before sending one, or
        ``None`` while it has said nothing within ``wait`` seconds."""
        try:
            return str(pipe.recv()) if pipe.poll(wait) else None
        except EOFError:  # it died before saying anything
            proc = self._procs[slot]
            if proc is not None:
                proc.join(5)
            return f"worker {slot} exited with {proc.exitcode if proc else '?'} while starting"

    def wake(self) -> None:
        """A job was queued: the waiting workers look for it now rather than at their next poll."""
        self._wake.set()

    def supervise(self) -> None:
        """Start again any worker that has died (a crash, the OOM killer, a SIGKILL); read the ready
        message of one started earlier. Returns at once: nothing here waits for a worker."""
        now = time.monotonic()
        for slot, proc in enumerate(self._procs):
            if slot in self._pending:
                self._check_restarted(slot, now)
                continue
            if proc is None or proc.is_alive():
                continue
            if now - self._started_at[slot] < self._delay(slot):
                continue
            log.error("analysis worker %d (pid %s) exited with %s; starting it again", slot, proc.pid, proc.exitcode)
            self.audit.event(AuditEvent.WORKER_RESTARTED, slot=slot, pid=proc.pid, exit_code=proc.exitcode)
            self._pending[slot] = (self._spawn(slot), now + RESTART_READY_TIMEOUT)

    def _delay(self, slot: int) -> float:
        """Seconds from a worker's last start (or failed start) to the next: RESTART_DELAY doubled per
        failed start in a row, at most MAX_RESTART_DELAY."""
        return min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** min(self._failed_starts[slot], 16))

    def _check_restarted(self, slot: int, now: float) -> None:
        pipe, deadline = self._pending[slot]
        message = self._answer(slot, pipe, 0)
        if message is None:
            if now < deadline:
                return
            message = f"worker {slot} did not load its models within {RESTART_READY_TIMEOUT:.0f} s"
            proc = self._procs[slot]
            if proc is not None:
                proc.kill()
        del self._pending[slot]
        pipe.close()
        if message:
            self._failed_starts[slot] += 1
            self._started_at[slot] = now  # the wait counts from the failure (a start may hang for minutes)
            log.error(
                "analysis worker %d failed to start again (%s); next try in %.0f s", slot, message, self._delay(slot)
            )
        else:
            self._failed_starts[slot] = 0
            log.info("analysis worker %d started again and ready", slot)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (each finishes its job first), SIGKILL after ``timeout`` seconds."""
        alive = [p for p in self._procs if p is not None and p.is_alive()]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in alive:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("analysis worker pid %s did not stop within %.0f s: killed", proc.pid, timeout)
                proc.kill()
                proc.join(5)
        for pipe, _ in self._pending.values():
            pipe.close()
        self._pending.clear()
        self._procs = [None] * len(self._procs)
