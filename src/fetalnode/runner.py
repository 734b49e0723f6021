"""The one job runner: a received instance in, one :class:`Outcome` out.

Every role calls :func:`run_job`: the embedded worker (``worker.py``), the Celery worker
(``distributed.py``) and ``fetalnode analyze`` (``cli.py``). The roles only move bytes and apply the
outcome (the job store's :meth:`~fetalnode.jobs.JobStore.apply`). This module is the only place that
maps an exception to a stage and the only retry policy.

It imports neither the inference package nor the output writers: it runs what the :class:`Runtime`
holds (an application, writers, destinations), which ``runtime.py`` builds from the settings.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fetalnode.destinations.base import Item
from fetalnode.errors import DeliveryError, EncodingError, InferenceError, IntakeRejected, TransferError
from fetalnode.vocab import Stage

if TYPE_CHECKING:
    from fetalnode.applications.base import Analysis, Application
    from fetalnode.config import OrthancSettings, OutputSettings
    from fetalnode.destinations.base import Destination
    from fetalnode.outputs.registry import OutputWriter

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    """What became of a job on this run."""

    DELIVERED = "delivered"  # every output reached every destination
    RETRY = "retry"  # a destination failed transiently: run again after ``retry_in`` seconds
    FAILED = "failed"  # failed at ``stage``; ``fetalnode resend`` replays it
    REJECTED = "rejected"  # the input cannot be analysed (permanent)


# The one exception -> stage map. An exception not listed (a bug) belongs to the stage that was running.
_STAGE_OF: tuple[tuple[type[Exception], Stage], ...] = (
    (TransferError, Stage.TRANSFER),
    (IntakeRejected, Stage.INTAKE),
    (InferenceError, Stage.INFER),
    (EncodingError, Stage.ENCODE),
    (DeliveryError, Stage.DELIVER),
)


def stage_of(exc: BaseException, running: Stage) -> Stage:
    for kind, stage in _STAGE_OF:
        if isinstance(exc, kind):
            return stage
    return running


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient delivery failures: ``min(maximum, initial * 2**attempts)``.

    ``max_attempts`` 0 retries until the destination takes the objects.
    """

    initial: float = 1.0
    maximum: float = 60.0
    max_attempts: int = 0

    @classmethod
    def from_settings(cls, s: OrthancSettings) -> RetryPolicy:
        return cls(s.retry_initial, s.retry_max, s.max_attempts)

    def delay(self, attempts: int) -> float | None:
        """Seconds before the next attempt after ``attempts`` failed ones, or ``None``: give up."""
        if self.max_attempts > 0 and attempts + 1 >= self.max_attempts:
            return None
        return float(min(self.maximum, self.initial * 2 ** min(attempts, 30)))


@dataclass(frozen=True)
class Received:
    """A received instance as a role hands it to the runner.

    ``read`` returns the instance's bytes (the spool file, the broker message, the file given to
    ``analyze``); it is called only when the instance must be analysed. ``built`` holds the outputs of
    an earlier run (then nothing is analysed again) and ``receipts`` the deliveries already done.
    """

    job_id: int
    sop_uid: str
    sha256: str
    read: Callable[[], bytes]
    station_name: str
    variant: str = ""
    attempts: int = 0
    built: Mapping[str, bytes] | None = None
    receipts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The one result of :func:`run_job`.

    ``summary`` is set when the instance was analysed on this run; ``built`` holds the encoded outputs
    (a role may keep them for the retry); ``receipts`` maps destination -> output -> the destination's
    reference, for everything delivered so far.
    """

    verdict: Verdict
    stage: Stage
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    built: dict[str, bytes] = field(default_factory=dict)
    receipts: dict[str, dict[str, str]] = field(default_factory=dict)
    retry_in: float = 0.0
    analysed_ms: float | None = None

    def to_message(self) -> dict[str, Any]:
        """JSON for the broker's results queue (without the encoded bytes)."""
        return {
            "verdict": str(self.verdict),
            "stage": str(self.stage),
            "reason": self.reason,
            "summary": self.summary,
            "receipts": self.receipts,
            "retry_in": self.retry_in,
            "analysed_ms": self.analysed_ms,
        }

    @classmethod
    def from_message(cls, body: Mapping[str, Any]) -> Outcome:
        return cls(
            verdict=Verdict(body["verdict"]),
            stage=Stage(body["stage"]),
            reason=str(body.get("reason", "")),
            summary=dict(body.get("summary") or {}),
            receipts={k: dict(v) for k, v in (body.get("receipts") or {}).items()},
            retry_in=float(body.get("retry_in", 0.0)),
            analysed_ms=body.get("analysed_ms"),
        )


@dataclass
class Runtime:
    """What a worker holds between jobs: the application, the enabled writers, the destinations."""

    application: Application
    writers: list[OutputWriter]
    destinations: list[Destination]
    retry: RetryPolicy
    output: OutputSettings


def read_dataset(data: bytes) -> Dataset:
    """Parse received bytes; bytes that are not (or no longer) DICOM are rejected."""
    try:
        return dcmread(BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise IntakeRejected(f"cannot read the received object: {exc}") from exc


def encode_dataset(ds: Dataset) -> bytes:
    """A dataset as DICOM Part 10 bytes (what the outbox holds and destinations receive)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def run_job(received: Received, runtime: Runtime) -> Outcome:
    """Analyse (unless ``received.built``), encode every enabled output, deliver to every destination.

    Never raises: every failure is an outcome with its stage and reason.
    """
    stage = Stage.TRANSFER
    summary: dict[str, Any] = {}
    analysed_ms: float | None = None
    receipts: dict[str, dict[str, str]] = {k: dict(v) for k, v in received.receipts.items()}
    try:
        built = dict(received.built) if received.built is not None else None
        if built is None:
            try:
                data = received.read()
            except OSError as exc:  # the spool file is gone or unreadable: the image is lost to this job
                raise TransferError(f"cannot read the received object: {exc}") from exc
            if hashlib.sha256(data).hexdigest() != received.sha256:
                raise TransferError("image bytes differ from the announced SHA-256")
            started = time.perf_counter()
            stage = Stage.INTAKE
            source = read_dataset(data)
            stage = Stage.INFER
            analysis = runtime.application.analyse(source)
            stage = Stage.ENCODE
            built, summary = _build(source, analysis, runtime, received)
            analysed_ms = round((time.perf_counter() - started) * 1000, 1)
        stage = Stage.DELIVER
        transient, permanent = _deliver(built, receipts, runtime.destinations)
    except Exception as exc:
        failed_at = stage_of(exc, stage)
        known = any(isinstance(exc, kind) for kind, _ in _STAGE_OF)
        if not known:  # a bug, not a property of the input: keep the traceback in the log
            log.exception("job %s: unexpected error during %s", received.job_id, stage)
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        verdict = Verdict.REJECTED if isinstance(exc, IntakeRejected) else Verdict.FAILED
        return Outcome(verdict, failed_at, reason, summary, receipts=receipts, analysed_ms=analysed_ms)
    common: dict[str, Any] = {"summary": summary, "built": built, "receipts": receipts, "analysed_ms": analysed_ms}
    if permanent:
        return Outcome(Verdict.FAILED, Stage.DELIVER, "; ".join(permanent), **common)
    if transient:
        reason = "; ".join(transient)
        delay = runtime.retry.delay(received.attempts)
        if delay is None:
            return Outcome(
                Verdict.FAILED, Stage.DELIVER, f"gave up after {received.attempts + 1} attempts: {reason}", **common
            )
        return Outcome(Verdict.RETRY, Stage.DELIVER, reason, retry_in=delay, **common)
    return Outcome(Verdict.DELIVERED, Stage.DELIVER, **common)


def crashed(exc: BaseException) -> Outcome:
    """The outcome of a job whose role failed outside :func:`run_job` (applying its outcome, say)."""
    return Outcome(Verdict.FAILED, Stage.WORKER, f"{type(exc).__name__}: {exc}")


def _build(
    source: Dataset, analysis: Analysis, runtime: Runtime, received: Received
) -> tuple[dict[str, bytes], dict[str, Any]]:
    built: dict[str, bytes] = {}
    uids: dict[str, str] = {}
    with warnings.catch_warnings():
        # highdicom's person-name warnings quote the patient's name: keep it out of the logs.
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        for writer in runtime.writers:
            try:
                ds = writer.write(source, analysis, runtime.output, received.station_name, received.variant)
                built[writer.name] = encode_dataset(ds)
            except EncodingError:
                raise
            except Exception as exc:
                raise EncodingError(f"output {writer.name!r} could not be built: {type(exc).__name__}: {exc}") from exc
            uids[writer.name] = str(ds.SOPInstanceUID)
    summary = analysis.summary()
    summary["outputs"] = uids
    return built, summary


def _deliver(
    built: Mapping[str, bytes], receipts: dict[str, dict[str, str]], destinations: list[Destination]
) -> tuple[list[str], list[str]]:
    """Deliver what each destination does not hold yet; one destination failing does not stop the others.

    Fills ``receipts``; returns (transient, permanent) failure reasons.
    """
    transient: list[str] = []
    permanent: list[str] = []
    for destination in destinations:
        done = receipts.setdefault(destination.name, {})
        for name, data in built.items():
            if name in done:
                continue
            try:
                done[name] = destination.store(Item(name, data)).reference
            except DeliveryError as exc:
                (transient if exc.transient else permanent).append(f"{destination.name}: {exc}")
                break  # the next object to this destination would meet the same fault
    return transient, permanent
