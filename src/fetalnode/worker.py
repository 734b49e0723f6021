"""The embedded worker (``serve``'s worker processes in role ``all``, and ``fetalnode worker``): claims jobs
from the SQLite store, hands each to :func:`~fetalnode.runner.run_job`, keeps built outputs in the outbox
for a retry and applies the outcome through the job store's journal."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from fetalnode.config import Settings
from fetalnode.files import atomic_write
from fetalnode.jobs import Job, JobStore, worker_identity
from fetalnode.outcomes import Outcome, Received, Verdict
from fetalnode.runner import Runtime, crashed, run_job
from fetalnode.vocab import JobState

log = logging.getLogger(__name__)
CLAIMED = frozenset({JobState.ANALYSING, JobState.DELIVERING})


class WakeEvent(Protocol):
    """``threading.Event`` (a worker thread) or ``multiprocessing.Event`` (worker processes of ``serve``)."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def received_from_job(job: Job, replaced_outputs: Mapping[str, str] | None = None) -> Received:
    """What the runner needs of a claimed job: the spool file, the outbox of an earlier run, and (an object
    that replaces another) the outputs written for the replaced one."""
    return Received(
        job_id=job.id,
        sop_uid=job.sop_uid,
        sha256=job.sha256,
        read=lambda: Path(job.spool_path).read_bytes(),
        station_name=job.station_name or job.calling_ae,
        replaces=job.replaces,
        replaced_outputs=dict(replaced_outputs or {}),
        built=_outbox(job),
        deliveries=job.deliveries,
        action=job.action,
    )


def _outbox(job: Job) -> dict[str, bytes] | None:
    """The outputs an earlier run built (``None``: analyse again, e.g. the outbox was lost)."""
    if job.state != JobState.DELIVERING or not job.outputs:
        return None
    try:
        return {Path(p).stem: Path(p).read_bytes() for p in job.outputs}
    except OSError as exc:
        log.warning("job %d: outbox unreadable (%s); analysing again", job.id, exc)
        return None


def build_worker(settings: Settings, jobs: JobStore, wake: WakeEvent | None = None) -> Worker:
    """Load the application's bundles (raising BundleError if any is unusable) and wire a worker on the
    node's job store (``wake``: the event the SCP sets when it queues a job)."""
    from fetalnode.runtime import ModelWatcher, build_runtime

    runtime = build_runtime(settings, audit=jobs.audit)
    return Worker(
        runtime,
        jobs,
        settings.data_path / "outbox",
        settings.worker.poll_interval,
        settings.worker.lease_seconds,
        reload=ModelWatcher(settings, runtime, jobs.audit),
        wake=wake,
    )


class Worker:
    """Claims jobs from the store and runs them until stopped."""

    def __init__(
        self,
        runtime: Runtime,
        jobs: JobStore,
        outbox: Path,
        poll_interval: float,
        lease_seconds: float,
        reload: Callable[[], None] | None = None,
        wake: WakeEvent | None = None,
        claims: tuple[JobState, ...] = (JobState.QUEUED, JobState.ANALYSING, JobState.DELIVERING),
    ) -> None:
        self.runtime = runtime
        self.jobs = jobs
        self.outbox = outbox
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.reload = reload
        self.claims = claims
        self.owner = worker_identity()
        self._stop = threading.Event()
        self._wake: WakeEvent = wake if wake is not None else threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """A job was queued: stop waiting for the next poll (the SCP of a worker thread in serve)."""
        self._wake.set()

    def run_once(self) -> bool:
        if self.reload is not None:
            self.reload()
        job = self.jobs.claim(self.owner, self.lease_seconds, self.claims)
        if job is None:
            return False
        try:
            replaced = self.jobs.replaced_outputs(job) if job.replaces else None
            outcome = run_job(received_from_job(job, replaced), self.runtime)
            state = self.jobs.apply(job, outcome, frozenset({job.state}), outputs=self._keep(job, outcome))
        except Exception as exc:  # keep the worker alive; the job fails with its reason, audited
            log.exception("job %d crashed", job.id)
            state = self.jobs.apply(job, crashed(exc), CLAIMED)
            return True
        if outcome.verdict in (Verdict.REJECTED, Verdict.FAILED):  # one line with the reason (a bug logged its traceback)
            log.warning("job %d -> %s at %s: %s", job.id, state, outcome.stage, outcome.reason)
        else:
            log.info("job %d -> %s", job.id, state)
        return True

    def _keep(self, job: Job, outcome: Outcome) -> list[str] | None:
        """Write freshly built outputs to ``outbox/<job>/<name>.dcm`` (atomically) when a delivery is still to be
        retried: the retry sends them without analysing again. A job that ended needs no outbox (a resent one
        is analysed again, with the same UIDs), so a delivered job writes nothing here."""
        if not outcome.summary or not outcome.built or outcome.verdict is not Verdict.RETRY:
            return None
        paths = []
        for name, data in outcome.built.items():
            path = self.outbox / str(job.id) / f"{name}.dcm"
            atomic_write(path, data)
            paths.append(str(path))
        return paths

    def run_forever(self) -> None:
        recovered = self.jobs.recover()
        if recovered:
            log.info("recovered %d interrupted job(s)", recovered)
        while not self._stop.is_set():
            if not self.run_once():
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="fetalnode-worker", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Stop after the job in hand (a signal handler may call it)."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
