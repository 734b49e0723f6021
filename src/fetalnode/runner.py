"""The one job runner: a received instance in, one :class:`Outcome` out.

Every role calls :func:`run_job`: the embedded worker (``worker.py``), the cloud worker
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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from pydicom.dataset import Dataset

from fetalnode import dicomio
from fetalnode.destinations.base import ALL_OUTPUTS, SOURCE, Item
from fetalnode.errors import DeliveryError, EncodingError, InferenceError, IntakeRejected, PrivacyError, TransferError
from fetalnode.outcomes import Delivery, Outcome, Received, Verdict
from fetalnode.vocab import AuditEvent, DeliveryStatus, RouteAction, Stage

if TYPE_CHECKING:
    from fetalnode.applications.base import Analysis, Application
    from fetalnode.audit import AuditLog
    from fetalnode.config import DestinationSettings, OutputSettings
    from fetalnode.destinations.base import Destination
    from fetalnode.outputs.registry import OutputWriter
    from fetalnode.outputs.template import Disabled

log = logging.getLogger(__name__)


# The one exception -> stage map. An exception not listed (a bug) belongs to the stage that was running.
_STAGE_OF: tuple[tuple[type[Exception], Stage], ...] = (
    (TransferError, Stage.TRANSFER),
    (IntakeRejected, Stage.INTAKE),
    (InferenceError, Stage.INFER),
    (EncodingError, Stage.ENCODE),
    (DeliveryError, Stage.DELIVER),
    (PrivacyError, Stage.PRIVACY),
)


def _mapped_stage(exc: BaseException) -> Stage | None:
    """The stage of one of the node's typed errors; ``None`` for any other exception (a bug)."""
    return next((stage for kind, stage in _STAGE_OF if isinstance(exc, kind)), None)


def stage_of(exc: BaseException, running: Stage) -> Stage:
    return _mapped_stage(exc) or running


def never_succeeds(exc: BaseException) -> bool:
    """A failure that a replay of the same job on the same software can only repeat: the bytes differ from
    the pre-notification, an output cannot be built from this input, or a bug. (Models can be pushed and
    destinations mended, so those failures stay replayable.)"""
    return _mapped_stage(exc) is None or isinstance(exc, TransferError | EncodingError | PrivacyError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient delivery failures: ``min(maximum, initial * 2**attempts)``.

    ``max_attempts`` 0 retries until the destination takes the objects.
    """

    initial: float = 1.0
    maximum: float = 60.0
    max_attempts: int = 0

    @classmethod
    def of(cls, d: DestinationSettings) -> RetryPolicy:
        return cls(d.retry_initial, d.retry_max, d.max_attempts)

    def delay(self, attempts: int) -> float | None:
        """Seconds before the next attempt after ``attempts`` failed ones, or ``None``: give up."""
        if self.max_attempts > 0 and attempts + 1 >= self.max_attempts:
            return None
        return float(min(self.maximum, self.initial * 2 ** min(attempts, 30)))


@dataclass
class Runtime:
    """What a worker holds between jobs: the application, the enabled writers, the destinations, and the
    audit log of what a job notices beyond its outcome (a writer's templates turned off); ``None`` where
    the role keeps none (a cloud worker, ``fetalnode analyze``): the ERROR in the log stays."""

    application: Application
    writers: list[OutputWriter]
    destinations: list[Destination]
    output: OutputSettings
    audit: AuditLog | None = None


def run_job(received: Received, runtime: Runtime, clock: Callable[[], float] = time.time) -> Outcome:
    """Analyse (unless ``received.built`` or a forward), encode every enabled output, deliver to every
    destination what its ``send`` names and it does not hold yet.

    Never raises: every failure is an outcome with its stage and reason.
    """
    stage = Stage.TRANSFER
    summary: dict[str, Any] = {}
    derivation: dict[str, Any] = {}
    analysed_ms: float | None = None
    deliveries = {name: replace(d, receipts=dict(d.receipts)) for name, d in received.deliveries.items()}
    source = _checked_source(received)

    try:
        built = dict(received.built) if received.built is not None else None
        if built is None and received.action is RouteAction.FORWARD:
            source()
            built = {}
        elif built is None:
            data = source()
            started = time.perf_counter()
            stage = Stage.INTAKE
            ds = dicomio.read(data)
            stage = Stage.INFER
            analysis = runtime.application.analyse(ds)
            stage = Stage.ENCODE
            built, summary = _build(ds, analysis, runtime, received)
            derivation = {
                "model_version": analysis.model_version,
                "revisions": {w.name: w.revision_for(analysis) for w in runtime.writers if w.name in built},
            }
            analysed_ms = round((time.perf_counter() - started) * 1000, 1)
        stage = Stage.DELIVER
        _deliver(built, source, deliveries, runtime.destinations, clock, received.replaces)
    except Exception as exc:
        return _failure(received, exc, stage, summary=summary, deliveries=deliveries, analysed_ms=analysed_ms)
    common: dict[str, Any] = {
        "summary": summary,
        "built": built,
        "deliveries": deliveries,
        "analysed_ms": analysed_ms,
        "derivation": derivation,
    }
    pending = {n: d for n, d in deliveries.items() if d.status is DeliveryStatus.PENDING}
    dead = {n: d for n, d in deliveries.items() if d.status is DeliveryStatus.DEAD}
    if pending:
        reason = "; ".join(f"{n}: {d.error}" for n, d in pending.items() if d.error)
        return Outcome(
            Verdict.RETRY,
            Stage.DELIVER,
            reason,
            retry_in=max(0.0, min(d.next_at for d in pending.values()) - clock()),
            **common,
        )
    if dead:
        return Outcome(Verdict.FAILED, Stage.DELIVER, "; ".join(f"{n}: {d.error}" for n, d in dead.items()), **common)
    return Outcome(Verdict.DELIVERED, Stage.DELIVER, **common)


def _checked_source(received: Received) -> Callable[[], bytes]:
    """The received bytes, read once (at the first call) and checked against the pre-notification."""
    source_bytes: list[bytes] = []

    def source() -> bytes:
        if not source_bytes:
            try:
                data = received.read()
            except OSError as exc:  # the spool file is gone or unreadable: the image is lost to this job
                raise TransferError(f"cannot read the received object: {exc}") from exc
            if hashlib.sha256(data).hexdigest() != received.sha256:
                raise TransferError("image bytes differ from the announced SHA-256")
            source_bytes.append(data)
        return source_bytes[0]

    return source


def _failure(received: Received, exc: Exception, running: Stage, **fields: Any) -> Outcome:
    """The outcome of a job that failed with ``exc`` while ``running``."""
    mapped = _mapped_stage(exc)
    if mapped is None:  # a bug, not a property of the input: keep the traceback in the log
        log.exception("job %s: unexpected error during %s", received.job_id, running)
    reason = str(exc) if mapped else f"{type(exc).__name__}: {exc}"
    verdict = Verdict.REJECTED if isinstance(exc, IntakeRejected) else Verdict.FAILED
    permanent = verdict is Verdict.FAILED and never_succeeds(exc)
    return Outcome(verdict, mapped or running, reason, permanent=permanent, **fields)


R = TypeVar("R")


def at_terminal(received: Received, step: Callable[[bytes], R]) -> R | Outcome:
    """A site terminal's own step of a job (pseudonymising its image before the cloud, re-identifying what
    came back): ``step`` on the received bytes, checked against the pre-notification. A failure is the
    job's outcome, mapped as :func:`run_job` maps one (the privacy layer's errors: stage ``privacy``,
    permanent)."""
    try:
        return step(_checked_source(received)())
    except Exception as exc:
        return _failure(received, exc, Stage.PRIVACY)


def crashed(exc: BaseException) -> Outcome:
    """The outcome of a job whose role failed outside :func:`run_job` (applying its outcome, say): replayable,
    since the role, not the job, failed."""
    return Outcome(Verdict.FAILED, Stage.WORKER, f"{type(exc).__name__}: {exc}")


def _build(
    source: Dataset, analysis: Analysis, runtime: Runtime, received: Received
) -> tuple[dict[str, bytes], dict[str, Any]]:
    built: dict[str, bytes] = {}
    uids: dict[str, str] = {}

    def disabled(notice: Disabled) -> None:
        """A writer's run-time check found a rendered object unlike its reference: audited with this job."""
        if runtime.audit is not None:
            runtime.audit.event(
                AuditEvent.OUTPUT_TEMPLATES_DISABLED,
                job=received.job_id,
                sop_uid=received.sop_uid,
                output=notice.output,
                application=notice.application,
                element=notice.element,
                renders=notice.renders,
            )

    with warnings.catch_warnings():
        # highdicom's person-name warnings quote the patient's name: keep it out of the logs.
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        for writer in runtime.writers:
            try:
                encoded = writer.encode(
                    source,
                    analysis,
                    runtime.output,
                    received.station_name,
                    observer=disabled,
                    instance_uid=received.replaced_outputs.get(writer.name),
                )
                if encoded is None:  # the writer has nothing for this application (a head SEG of a labour image)
                    continue
                built[writer.name], uids[writer.name] = encoded
            except EncodingError:
                raise
            except Exception as exc:
                raise EncodingError(f"output {writer.name!r} could not be built: {type(exc).__name__}: {exc}") from exc
    summary = analysis.summary()
    summary["outputs"] = uids
    return built, summary


def sendable(send: list[str], built: Mapping[str, bytes], replaces: bool = False) -> list[str]:
    """What a destination's ``send`` names of one job, once each: ``source``, ``outputs`` (every built
    output) and output names (an output not built for this image is skipped). The source comes first, so
    that a destination that refuses it never gets reports on pixels it does not hold; an instance that
    ``replaces`` another goes to every destination that gets its outputs."""
    wanted: list[str] = []
    for name in send:
        for item in built if name == ALL_OUTPUTS else [name]:
            if (item == SOURCE or item in built) and item not in wanted:
                wanted.append(item)
    if replaces and wanted and SOURCE not in wanted:
        wanted.append(SOURCE)
    return sorted(wanted, key=lambda item: item != SOURCE)


def _deliver(
    built: Mapping[str, bytes],
    source: Callable[[], bytes],
    deliveries: dict[str, Delivery],
    destinations: list[Destination],
    clock: Callable[[], float],
    replaces: bool = False,
) -> None:
    """Deliver to each due destination what its ``send`` names and it does not hold yet; one destination
    failing neither stops nor delays the others. Updates ``deliveries`` in place."""
    for destination in destinations:
        d = deliveries.setdefault(destination.name, Delivery())
        if d.status is not DeliveryStatus.PENDING or d.next_at > clock():
            continue
        wanted = sendable(destination.settings.send, built, replaces)
        try:
            for name in wanted:
                if name not in d.receipts:
                    item = Item(SOURCE, source(), replaces) if name == SOURCE else Item(name, built[name])
                    d.receipts[name] = destination.store(item).reference
        except DeliveryError as exc:
            d.attempts += 1
            delay = RetryPolicy.of(destination.settings).delay(d.attempts - 1) if exc.transient else None
            if delay is None:
                d.status = DeliveryStatus.DEAD
                d.error = str(exc) if not exc.transient else f"gave up after {d.attempts} attempts: {exc}"
            else:
                d.next_at, d.error = clock() + delay, str(exc)  # from the failure, not the start of the run
            continue
        d.status, d.error = DeliveryStatus.DELIVERED, ""
