"""The only orchestrator: intake -> infer -> encode -> deliver.

Stages do not call each other; this module knows the order. Every job ends in exactly one of
``delivered``, ``failed`` (with stage and reason, replayable by ``fetalnode resend``) or
``rejected`` (the input cannot be analysed; the reason is recorded).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.errors import DeliveryError, EncodingError, InferenceError, IntakeRejected
from fetalnode.inference import AnalysisResult, Analyzer
from fetalnode.intake import DecodedImage, decode_for_analysis
from fetalnode.jobs import Job, JobStore, worker_identity
from fetalnode.orthanc.client import OrthancClient
from fetalnode.outputs.capture import build_heatmap_capture
from fetalnode.outputs.report import build_report
from fetalnode.outputs.uids import output_uids
from fetalnode.scp.spool import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """The encoded objects of one analysed instance, and the result they report."""

    datasets: dict[str, Dataset]
    result: AnalysisResult
    decoded: DecodedImage


def read_source(path: str | Path) -> Dataset:
    """Read a spooled instance; a file that is no longer valid DICOM is rejected."""
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise IntakeRejected(f"cannot read {Path(path).name}: {exc}") from exc


def analyse_dataset(
    ds: Dataset, analyzer: Analyzer, settings: Settings, station_name: str, variant: str = ""
) -> Outputs:
    """intake -> infer -> encode for one dataset, in memory (used by the worker and ``analyze``)."""
    decoded = decode_for_analysis(ds, settings.worker.max_pixels, settings.worker.max_frames)
    try:
        result = analyzer.analyze(decoded.gray, decoded.spacing_mm, decoded.display_rgb, decoded.spacing_note)
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(f"{type(exc).__name__}: {exc}") from exc
    with warnings.catch_warnings():
        # highdicom's person-name warnings quote the patient's name: keep it out of the logs.
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        return _encode_outputs(ds, analyzer, settings, station_name, variant, decoded, result)


def _encode_outputs(
    ds: Dataset,
    analyzer: Analyzer,
    settings: Settings,
    station_name: str,
    variant: str,
    decoded: DecodedImage,
    result: AnalysisResult,
) -> Outputs:
    uids = output_uids(
        str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), f"{analyzer.seg.version}+{analyzer.cls.version}", variant
    )
    sr = build_report(
        ds,
        result,
        uids,
        frame_number=decoded.frame_number,
        n_frames=decoded.n_frames,
        spacing_source=decoded.spacing_source,
        manufacturer=settings.output.manufacturer,
        station_name=station_name,
        institution_name=settings.output.institution_name,
    )
    sc = build_heatmap_capture(ds, result, uids, manufacturer=settings.output.manufacturer, station_name=station_name)
    return Outputs(datasets={"sr": sr, "sc": sc}, result=result, decoded=decoded)


def job_summary(outputs: Outputs) -> dict[str, Any]:
    summary = outputs.result.summary()
    summary["frame_number"] = outputs.decoded.frame_number
    summary["n_frames"] = outputs.decoded.n_frames
    summary["spacing_source"] = outputs.decoded.spacing_source
    summary["sr_sop_uid"] = str(outputs.datasets["sr"].SOPInstanceUID)
    summary["sc_sop_uid"] = str(outputs.datasets["sc"].SOPInstanceUID)
    return summary


class Pipeline:
    """Runs one claimed job through the remaining stages."""

    def __init__(
        self, settings: Settings, analyzer: Analyzer, orthanc: OrthancClient, jobs: JobStore, audit: AuditLog
    ) -> None:
        self.settings = settings
        self.analyzer = analyzer
        self.orthanc = orthanc
        self.jobs = jobs
        self.audit = audit
        self.outbox = settings.data_path / "outbox"

    def run(self, job: Job) -> str:
        """Advance ``job``; returns its new state."""
        if job.state == "analysing":
            try:
                self._analyse(job)
            except IntakeRejected as exc:
                self.jobs.mark_rejected(job.id, str(exc))
                self.audit.event("rejected", job=job.id, sop_uid=job.sop_uid, stage="intake", reason=str(exc))
                return "rejected"
            except (InferenceError, EncodingError, OSError) as exc:
                stage = "encode" if isinstance(exc, EncodingError) else "infer"
                self.jobs.mark_failed(job.id, stage, str(exc))
                self.audit.event("failed", job=job.id, sop_uid=job.sop_uid, stage=stage, reason=str(exc))
                return "failed"
            job = self.jobs.get(job.id) or job
        return self._deliver(job)

    def _analyse(self, job: Job) -> Outputs:
        started = time.perf_counter()
        ds = read_source(job.spool_path)
        variant = job.sha256[:16] if "uid_conflict" in job.extra else ""
        outputs = analyse_dataset(ds, self.analyzer, self.settings, job.station_name or job.calling_ae, variant)
        folder = self.outbox / str(job.id)
        paths = []
        for name, out in outputs.datasets.items():
            path = folder / f"{name}.dcm"
            buffer = encode_dataset(out)
            atomic_write(path, buffer)
            paths.append(str(path))
        summary = job_summary(outputs)
        self.jobs.set_delivering(job.id, paths, summary)
        self.audit.event(
            "analysed",
            job=job.id,
            sop_uid=job.sop_uid,
            analysed=outputs.result.analysed,
            finding=outputs.result.finding or None,
            models=summary["models"],
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return outputs

    def _deliver(self, job: Job) -> str:
        ids: list[str] = []
        try:
            for path in job.outputs:
                answer = self.orthanc.store(Path(path).read_bytes())
                ids.append(str(answer["ID"]))
        except DeliveryError as exc:
            limit = self.settings.orthanc.max_attempts
            if exc.transient and (limit <= 0 or job.attempts + 1 < limit):
                delay = min(self.settings.orthanc.retry_max, self.settings.orthanc.retry_initial * 2**job.attempts)
                self.jobs.retry_later(job.id, "deliver", str(exc), delay)
                self.audit.event("delivery-retry", job=job.id, attempt=job.attempts + 1, delay_s=delay, reason=str(exc))
                return "delivering"
            self.jobs.mark_failed(job.id, "deliver", str(exc))
            self.audit.event(
                "failed", job=job.id, sop_uid=job.sop_uid, stage="deliver", reason=str(exc), permanent=not exc.transient
            )
            return "failed"
        except OSError as exc:
            self.jobs.mark_failed(job.id, "deliver", f"output file missing: {exc}")
            self.audit.event("failed", job=job.id, stage="deliver", reason=str(exc))
            return "failed"
        self.jobs.mark_delivered(job.id, ids)
        self.audit.event("delivered", job=job.id, sop_uid=job.sop_uid, orthanc_ids=ids)
        return "delivered"


def encode_dataset(ds: Dataset) -> bytes:
    """A dataset as DICOM Part 10 bytes (what the outbox holds and Orthanc receives)."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Worker:
    """Claims jobs from the store and runs them until stopped."""

    def __init__(
        self,
        pipeline: Pipeline,
        jobs: JobStore,
        poll_interval: float,
        lease_seconds: float,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self.reload = reload
        self.pipeline = pipeline
        self.jobs = jobs
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.owner = worker_identity()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """A job was queued: stop waiting for the next poll (in-process SCP)."""
        self._wake.set()

    def run_once(self) -> bool:
        if self.reload is not None:
            self.reload()
        job = self.jobs.claim(self.owner, self.lease_seconds)
        if job is None:
            return False
        try:
            state = self.pipeline.run(job)
        except Exception as exc:  # keep the worker alive; the job is failed with its reason
            log.exception("job %d crashed", job.id)
            self.jobs.mark_failed(job.id, "worker", f"{type(exc).__name__}: {exc}")
            state = "failed"
        log.info("job %d -> %s", job.id, state)
        return True

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

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
