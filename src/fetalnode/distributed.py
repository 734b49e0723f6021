"""The cloud path: a site's terminal keeps the patient, a cloud worker sees pseudonymised pixels only.

Role ``terminal`` (the hospital's data terminal) keeps everything that identifies a patient: the SCP,
the spool, the job store, the destinations and the pseudonym map. One outbound connection to the
broker (``fetalnode.broker``, AMQPS, its site's queues only) carries both ways:

- out: each queued job's image, pseudonymised (``fetalnode.privacy``: the PS3.15 Basic Application
  Confidentiality Profile, keyed UID pseudonyms, burned-in text blanked outside the ultrasound regions),
  as the Part 10 bytes of the message with the job's number and pseudonymous SOP Instance UID in its
  headers. The pseudonym map is written to the job store first; nothing else of the job leaves the site.
  An image whose burned-in text cannot be removed is not sent: the terminal answers "not analysed:
  burned-in text could not be removed" itself (``applications.withheld``) and delivers that. A
  forwarded image (a routing rule's ``forward``) never goes to the cloud.
- in: each job's result: the worker's outcome and the objects it built. The terminal re-identifies the
  objects (the real patient and study modules and UIDs, every reference, and the output UIDs the embedded
  mode derives from the real source, so switching a site between the two never duplicates an object),
  keeps them in ``outbox/<job>/`` and hands the job to its own delivery worker, which delivers to the
  site's ``[[destinations]]`` with the same retries and dead letters as the embedded mode.

Role ``worker`` (the cloud): takes jobs from every site of ``broker.sites`` one at a time, analyses and
builds every enabled output with the one job runner (no destination: it delivers nothing), and
publishes the objects to the job's site; the job is acknowledged only then, so a worker killed mid-job
leaves it to another. Workers keep nothing on disk. A result is applied once: a second one for the
same job (a redelivered job analysed twice) finds it moved on and is dropped.

The broker down: jobs stay ``queued`` in the spool and go when it is back (store and forward).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

from kombu import Connection
from pydicom import dcmread

from fetalnode.audit import AuditLog
from fetalnode.broker import Delivery, Drop, Reply, SiteTopology, connect, consume_jobs, consume_results, publish_job
from fetalnode.broker import run_connected as run_link
from fetalnode.config import Settings
from fetalnode.errors import BrokerError, BurnedInTextNotRemoved, NodeError
from fetalnode.jobs import Job, JobStore, worker_identity
from fetalnode.outputs.uids import DEVICE_UID, output_uid_map
from fetalnode.runner import Outcome, Received, Runtime, Verdict, at_terminal, crashed, run_job
from fetalnode.scp.spool import atomic_write
from fetalnode.vocab import AuditEvent, JobState, RouteAction
from fetalnode.worker import received_from_job

log = logging.getLogger(__name__)
WAITING_FOR_CLOUD = frozenset({JobState.QUEUED, JobState.PUBLISHED})
PROCESSING_EQUIPMENT = ("109105", "DCM")  # CID 7005: this software's item in Contributing Equipment


# -- terminal -----------------------------------------------------------------------------------


@dataclass
class CloudTerminal:
    """A site terminal's link to the cloud: publishes queued jobs, applies the workers' results.

    ``pseudonymise``: the site's :class:`~fetalnode.privacy.Pseudonymiser` (``None``: images leave
    identified, same site only); ``withheld``: the runtime that answers "not analysed: burned-in text
    could not be removed" here; ``wake``: the event of the terminal's delivery worker.
    """

    settings: Settings
    jobs: JobStore
    audit: AuditLog
    pseudonymise: Any
    withheld: Runtime
    outbox: Path
    wake: Callable[[], None]
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        b = self.settings.broker

        def down(reason: str) -> None:
            log.warning("broker unreachable (%s); jobs stay queued in the spool", reason)
            self.audit.event(AuditEvent.BROKER_DOWN, reason=reason)

        def up(seconds: float) -> None:
            self.audit.event(AuditEvent.BROKER_UP, down_s=round(seconds, 1))

        run_link(b, self._link, self._stop, retry_seconds=b.retry_seconds, on_down=down, on_up=up)

    def _link(self, conn: Connection) -> None:
        consume_results(conn, self.apply_result, stop=self._stop, idle=lambda: self.publish_queued(conn))

    def stop(self) -> None:
        self._stop.set()

    # -- out --------------------------------------------------------------------------------------
    def publish_queued(self, conn: Connection) -> None:
        """Hand every queued job over: to the cloud, or to the terminal's own delivery."""
        jobs = self.jobs.jobs_in_state(JobState.QUEUED, self.settings.broker.publish_batch)
        for job in jobs:
            self.hand_off(conn, job)
        if jobs:
            self.wake()

    def hand_off(self, conn: Connection, job: Job) -> None:
        """One queued job: forwarded (the terminal's own delivery), answered here (burned-in text that cannot
        be removed), or pseudonymised and published, its pseudonym map kept first."""
        received = received_from_job(job)
        if received.action is RouteAction.FORWARD:
            self.jobs.hand_over(job, frozenset({JobState.QUEUED}), outputs=[])  # the source only, from here
            return
        prepared = at_terminal(received, self._pseudonymised)
        if isinstance(prepared, Outcome):
            self.jobs.apply(job, prepared, WAITING_FOR_CLOUD)
            return
        if prepared is None:
            self._answer_here(job, received)
            return
        sent, uid_map, pixels = prepared
        pseudo_sop = self._pseudonym(job.sop_uid)
        self.jobs.record_pseudonyms(job.id, uid_map)  # before the image leaves: a result can come back at once
        sha256 = hashlib.sha256(sent).hexdigest()
        outputs = ",".join(self.settings.output.enabled)  # the site chooses its objects
        headers = {"job": job.id, "sop_uid": pseudo_sop, "sha256": sha256, "outputs": outputs}
        publish_job(conn, sent, headers=headers, message_id=f"{job.id}-{sha256[:16]}")
        self.jobs.mark_published(job.id, bytes=len(sent), pixels=pixels)

    def _pseudonym(self, uid: str) -> str:
        return uid if self.pseudonymise is None else str(self.pseudonymise.pseudonym(uid))

    def _pseudonymised(self, data: bytes) -> tuple[bytes, dict[str, str], str] | None:
        """What leaves the site (bytes, pseudonym map, how the pixels were cleaned); ``None``: nothing may."""
        if self.pseudonymise is None:
            return data, {}, "not pseudonymised (privacy.pseudonymise = false: same site only)"
        try:
            p = self.pseudonymise.pseudonymise_bytes(data)
        except BurnedInTextNotRemoved:
            return None
        return p.data, p.uid_map, p.pixels.describe()

    def _answer_here(self, job: Job, received: Received) -> None:
        """Build the "not analysed: burned-in text could not be removed" objects here and deliver them."""
        outcome = run_job(received, self.withheld)
        if outcome.verdict is not Verdict.DELIVERED:
            self.jobs.apply(job, outcome, WAITING_FOR_CLOUD)
            return
        self.jobs.hand_over(job, WAITING_FOR_CLOUD, self._keep(job, outcome.built), outcome.summary)

    def _keep(self, job: Job, built: Mapping[str, bytes]) -> list[str]:
        paths = []
        for name, data in built.items():
            path = self.outbox / str(job.id) / f"{name}.dcm"
            atomic_write(path, data)
            paths.append(str(path))
        return paths

    # -- in ---------------------------------------------------------------------------------------
    def apply_result(self, delivery: Delivery) -> None:
        """Apply one worker's result: re-identify and keep its objects, hand the job to the delivery worker.
        A result for a job this terminal did not publish is dropped and audited; a second result for a job
        that has moved on is acknowledged and ignored."""
        try:
            body = delivery.json()
            job_id, outcome = int(body["job"]), Outcome.from_message(body["outcome"])
            objects = {str(n): base64.b64decode(d) for n, d in dict(body.get("objects") or {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            log.error("unreadable result message dropped (%s: %s)", type(exc).__name__, exc)
            self.audit.event(AuditEvent.RESULT_UNKNOWN_JOB, job=None, reason=f"unreadable: {type(exc).__name__}: {exc}")
            raise Drop(str(exc)) from exc
        job = self.jobs.get(job_id)
        if job is not None and job.state not in WAITING_FOR_CLOUD:
            log.info("job %d: another result for a job already %s (a job analysed twice)", job.id, job.state)
            return
        if job is None or body.get("sop_uid") != self._pseudonym(job.sop_uid):
            log.warning("result for a job this terminal did not publish: %s", body.get("job"))
            reason = "no such job" if job is None else "the SOP Instance UID is not the job's pseudonym"
            self.audit.event(AuditEvent.RESULT_UNKNOWN_JOB, job=body.get("job"), worker=body.get("worker"), reason=reason)
            raise Drop("unknown job")
        uid_map = self.jobs.pseudonyms(job.id)
        worker = body.get("worker")
        if outcome.verdict is not Verdict.DELIVERED:
            self.jobs.apply(job, outcome, WAITING_FOR_CLOUD, worker=worker)
            return
        restored = at_terminal(received_from_job(job), lambda data: self._reidentified(job, data, uid_map, objects, outcome))
        if isinstance(restored, Outcome):
            self.jobs.apply(job, restored, WAITING_FOR_CLOUD, worker=worker)
            return
        kept, summary = restored
        self.jobs.hand_over(job, WAITING_FOR_CLOUD, kept, summary, worker=worker, duration_ms=outcome.analysed_ms)
        self.wake()

    def _reidentified(
        self, job: Job, data: bytes, uid_map: dict[str, str], objects: Mapping[str, bytes], outcome: Outcome
    ) -> tuple[list[str], dict[str, Any]]:
        """The worker's objects with the real patient, study and UIDs (``data``: the source), kept in the outbox;
        the job's summary. A pseudonym left in an object is a PrivacyError."""
        source = dcmread(BytesIO(data))
        sop, series = str(source.SOPInstanceUID), str(source.SeriesInstanceUID)
        real_outputs, derived = output_uid_map(
            objects, (self._pseudonym(sop), sop), (self._pseudonym(series), series), outcome.derivation
        )
        full_map = {**uid_map, **derived}
        if self.pseudonymise is None:
            restored = dict(objects)
        else:
            from fetalnode.privacy import reidentify_all

            restored = reidentify_all(objects, source, full_map)
        station, institution = job.station_name or job.calling_ae, self.settings.output.institution_name
        kept = self._keep(job, {name: of_this_site(data, station, institution) for name, data in restored.items()})
        summary = {**outcome.summary, "outputs": real_outputs}
        return kept, summary


def of_this_site(data: bytes, station: str, institution: str) -> bytes:
    """The object with this site's names, which no worker knows (they say where the patient was): the
    station in fetalnode's own Contributing Equipment item, and ``output.institution_name`` when set."""
    ds = dcmread(BytesIO(data))
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("DeviceUID") == DEVICE_UID:
            item.StationName = station[:16]
    if institution:
        ds.InstitutionName = institution[:64]
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- worker -------------------------------------------------------------------------------------


def wanted(runtime: Runtime, delivery: Delivery) -> Runtime:
    """The worker's runtime with the writers of the objects the job's site asks for (its terminal's
    ``output.enabled``; the worker's own when the job does not say). A name this worker does not register
    (a site's plugin it lacks) is left out, with a warning."""
    from fetalnode.outputs.registry import OUTPUTS

    names = [n for n in str(delivery.headers.get("outputs", "")).split(",") if n]
    if not names:
        return runtime
    writers = [w for w in (OUTPUTS.find(n) for n in names) if w is not None]
    if len(writers) < len(names):
        missing = sorted(set(names) - {w.name for w in writers})
        log.warning("site %s asks for outputs this worker does not have: %s", delivery.site, ", ".join(missing))
    return replace(runtime, writers=writers)


def received_from_delivery(delivery: Delivery) -> Received:
    """The runner's view of a job message: the pseudonymised image, checked against its announced SHA-256."""
    headers = delivery.headers
    try:
        job_id, sop_uid, sha256 = int(headers["job"]), str(headers["sop_uid"]), str(headers["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Drop(f"a job message without its job, SOP Instance UID and SHA-256 headers: {exc}") from exc
    data = delivery.body
    # No station name travels: the terminal writes its own into the objects.
    return Received(job_id=job_id, sop_uid=sop_uid, sha256=sha256, read=lambda: data, station_name="")


def analyse(runtime: Runtime, identity: str, delivery: Delivery) -> Iterable[Reply]:
    """One job: analysed and built by the runner (no destination), the objects returned to its site."""
    received = received_from_delivery(delivery)
    try:
        outcome = run_job(received, wanted(runtime, delivery))
    except Exception as exc:  # the runner never raises; a broken runtime still answers the terminal
        log.exception("job %s of %s: cannot run", received.job_id, delivery.site)
        outcome = crashed(exc)
    built = outcome.built if outcome.verdict is Verdict.DELIVERED else {}
    message = {
        "job": received.job_id,
        "sop_uid": received.sop_uid,
        "worker": identity,
        "outcome": replace(outcome, built={}).to_message(),
        "objects": {name: base64.b64encode(data).decode("ascii") for name, data in built.items()},
    }
    log.info("job %s of %s -> %s", received.job_id, delivery.site, outcome.verdict)
    return [Reply(message, message_id=f"{received.job_id}-{received.sha256[:16]}")]


def run_worker(settings: Settings, runtime: Runtime, stop: threading.Event) -> int:
    """``fetalnode serve --role worker``: analyse the jobs of ``broker.sites`` until ``stop`` is set."""
    if runtime.destinations:
        raise NodeError("a cloud worker delivers nothing: its results go back to each site's terminal")
    identity = worker_identity()
    sites = settings.broker.sites
    log.info("worker %s analysing the jobs of %s", identity, ", ".join(sites))

    def work(conn: Connection) -> None:
        consume_jobs(conn, sites, lambda delivery: analyse(runtime, identity, delivery), stop=stop)

    run_link(settings.broker, work, stop, retry_seconds=settings.broker.retry_seconds)
    return 0


# -- metrics ------------------------------------------------------------------------------------


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in this site's jobs queue (None when the broker cannot be reached)."""
    from fetalnode.broker import site_of

    try:
        with connect(settings.broker) as conn:
            queue = SiteTopology(site_of(settings.broker)).jobs_queue
            _, count, _ = conn.default_channel.queue_declare(queue, durable=True, passive=True)
            return int(count)
    except (BrokerError, OSError, Exception):
        return None


def metrics_text(settings: Settings, jobs: JobStore) -> str:
    """Prometheus text exposition: jobs by state, broker queue depth, age of the oldest unfinished job."""
    lines = ["# HELP fetalnode_jobs Jobs in the terminal's store by state.", "# TYPE fetalnode_jobs gauge"]
    for state, n in sorted(jobs.counts().items()):
        lines.append(f'fetalnode_jobs{{state="{state}"}} {n}')
    age = jobs.oldest_pending_age()
    lines += [
        "# HELP fetalnode_oldest_pending_seconds Age of the oldest job not yet delivered, failed or rejected.",
        "# TYPE fetalnode_oldest_pending_seconds gauge",
        f"fetalnode_oldest_pending_seconds {age if age is not None else 0:.3f}",
    ]
    if settings.broker.url:
        depth = queue_depth(settings)
        lines += [
            "# HELP fetalnode_queue_depth Messages waiting in this site's jobs queue (-1: broker unreachable).",
            "# TYPE fetalnode_queue_depth gauge",
            f"fetalnode_queue_depth {depth if depth is not None else -1}",
        ]
    return "\n".join(lines) + "\n"


def start_metrics_server(settings: Settings, jobs: JobStore) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = metrics_text(settings, jobs).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((settings.node.host, settings.node.metrics_port), Handler)
    threading.Thread(target=server.serve_forever, name="fetalnode-metrics", daemon=True).start()
    log.info("Prometheus metrics on http://%s:%d/metrics", settings.node.host, settings.node.metrics_port)
    return server

