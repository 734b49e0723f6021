"""Scale-out on Celery + RabbitMQ: terminal role (SCP, spool, publish) and worker role (analyse, deliver).

- The terminal keeps the SQLite job store and the spool exactly as in the embedded mode. A
  publisher thread sends each ``queued`` job to the broker (Celery task ``fetalnode.analyse``) with
  the image bytes *in the message* (base64 in JSON), then marks it ``published``. The bytes travel
  with the job so that a worker needs nothing but the broker URL, the models and Orthanc's address:
  no shared file system between hospitals' terminals and the regional workers. When the broker is
  down, jobs stay ``queued`` in the spool and are published when it returns (store and forward).
- Workers are Celery workers (threads pool of one, prefetch 1, late acknowledgement,
  ``task_reject_on_worker_lost``): a killed worker's unacknowledged task is redelivered to another.
  The solo pool was measured to stall 3-10 s between tasks here (the next message sat in py-amqp's
  buffer until a timer tick): 2.1 images/s against 8.5 with the threads pool.
  They check the image against the announced SHA-256 (the pre-notification), analyse, deliver SR +
  SC to Orthanc (deterministic UIDs: a redelivered job overwrites nothing and adds nothing), then
  publish the outcome on a durable results queue before acknowledging the task.
- A collector thread on the terminal consumes the results queue and records each outcome in SQLite
  (``delivered``/``failed``/``rejected``). ``published`` jobs without an answer are the ones "sent but
  never acknowledged"; a worker-side result for a job the terminal never recorded is reported as
  "announced but unknown".
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.errors import DeliveryError, EncodingError, InferenceError, IntakeRejected, NodeError
from fetalnode.jobs import JobStore

log = logging.getLogger(__name__)
TASK = "fetalnode.analyse"


def make_app(settings: Settings) -> Celery:
    """The Celery application of a node: at-least-once delivery of jobs, JSON only, no result backend."""
    b = settings.broker
    if not b.url:
        raise NodeError("broker.url is empty: roles terminal and worker need a broker (e.g. amqp://…)")
    app = Celery("fetalnode", broker=b.url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=b.queue,
        task_queues=[Queue(b.queue, Exchange(b.queue), routing_key=b.queue, durable=True)],
        task_default_delivery_mode="persistent",
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the jobs queue (None when the broker cannot be reached)."""
    try:
        with Connection(settings.broker.url, connect_timeout=3) as conn:
            _, count, _ = conn.default_channel.queue_declare(settings.broker.queue, durable=True, passive=True)
            return int(count)
    except Exception:
        return None


# -- terminal side ------------------------------------------------------------------------------


@dataclass
class Publisher:
    """Publishes queued jobs to the broker; leaves them queued (in the spool) while it is down."""

    settings: Settings
    jobs: JobStore
    audit: AuditLog
    app: Celery
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)

    def wake(self) -> None:
        self._wake.set()

    def publish_once(self) -> int:
        n = 0
        for job in self.jobs.jobs_in_state("queued", self.settings.broker.publish_batch):
            data = Path(job.spool_path).read_bytes()
            payload = {
                "job": job.id,
                "terminal": self.settings.node.ae_title,
                "sop_uid": job.sop_uid,
                "sha256": job.sha256,
                "station_name": job.station_name,
                "calling_ae": job.calling_ae,
                "received_at": job.received_at,
                "variant": job.sha256[:16] if "uid_conflict" in job.extra else "",
                "data": base64.b64encode(data).decode("ascii"),
            }
            self.app.send_task(TASK, args=[payload], queue=self.settings.broker.queue, retry=False)
            self.jobs.mark_published(job.id)
            n += 1
        return n

    def run(self) -> None:
        backoff = self.settings.broker.retry_seconds
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                n = self.publish_once()
                if down_since is not None:
                    log.info(
                        "broker reachable again after %.0f s; publishing the backlog", time.monotonic() - down_since
                    )
                    self.audit.event("broker-up", down_s=round(time.monotonic() - down_since, 1))
                    down_since = None
                if n:
                    log.info("published %d job(s)", n)
                    continue
                self._wake.wait(0.5)
                self._wake.clear()
            except Exception as exc:  # broker down: keep the jobs queued, try again later
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("broker unreachable (%s); jobs stay queued in the spool", exc)
                    self.audit.event("broker-down", reason=f"{type(exc).__name__}: {exc}")
                self._stop.wait(backoff)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


@dataclass
class Collector:
    """Records the workers' outcomes (durable results queue) in the terminal's job store."""

    settings: Settings
    jobs: JobStore
    audit: AuditLog
    _stop: threading.Event = field(default_factory=threading.Event)

    def handle(self, body: dict[str, Any]) -> None:
        job = self.jobs.get(int(body["job"]))
        if job is None or job.sop_uid != body.get("sop_uid"):
            log.warning("result for a job this terminal never announced: %s", body.get("job"))
            self.audit.event("result-unknown-job", job=body.get("job"), sop_uid=body.get("sop_uid"))
            return
        state = body["state"]
        if state == "delivered":
            self.jobs.mark_remote_delivered(job.id, body.get("result", {}), body.get("orthanc_ids", []))
            ids, worker = body.get("orthanc_ids"), body.get("worker")
            self.audit.event("delivered", job=job.id, sop_uid=job.sop_uid, orthanc_ids=ids, worker=worker)
        elif state == "rejected":
            self.jobs.mark_rejected(job.id, body.get("error", ""))
            self.audit.event(
                "rejected", job=job.id, stage="intake", reason=body.get("error"), worker=body.get("worker")
            )
        else:
            self.jobs.mark_failed(job.id, body.get("stage", "worker"), body.get("error", ""))
            self.audit.event("failed", job=job.id, stage=body.get("stage"), reason=body.get("error"))

    def run(self) -> None:
        b = self.settings.broker
        while not self._stop.is_set():
            try:
                with Connection(b.url, connect_timeout=5, heartbeat=10) as conn:
                    queue = conn.SimpleQueue(b.results_queue, queue_opts={"durable": True})
                    while not self._stop.is_set():
                        try:
                            message = queue.get(block=True, timeout=1)
                        except queue.Empty:
                            continue
                        self.handle(message.payload)
                        message.ack()
            except Exception as exc:
                log.warning("results queue unreachable (%s); retrying", exc)
                self._stop.wait(b.retry_seconds)

    def stop(self) -> None:
        self._stop.set()


# -- worker side --------------------------------------------------------------------------------


class WorkerContext:
    """What a worker process holds between tasks: settings, models, Orthanc client."""

    settings: Settings
    analyzer: Any
    orthanc: Any
    identity: str


_context: WorkerContext | None = None


def analyse_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one published job: check, analyse, deliver. Returns the outcome for the results queue.

    A transient delivery failure raises :class:`DeliveryError` (the task is retried later).
    """
    from pydicom import dcmread

    from fetalnode.pipeline import analyse_dataset, encode_dataset, job_summary

    assert _context is not None, "worker context not initialised"
    ctx = _context
    base = {"job": payload["job"], "sop_uid": payload["sop_uid"], "worker": ctx.identity}
    data = base64.b64decode(payload["data"])
    if hashlib.sha256(data).hexdigest() != payload["sha256"]:
        return {
            **base,
            "state": "failed",
            "stage": "transfer",
            "error": "image bytes differ from the announced SHA-256",
        }
    try:
        ds = dcmread(BytesIO(data))
        outputs = analyse_dataset(ds, ctx.analyzer, ctx.settings, payload["station_name"], payload["variant"])
    except IntakeRejected as exc:
        return {**base, "state": "rejected", "error": str(exc)}
    except (InferenceError, EncodingError) as exc:
        return {**base, "state": "failed", "stage": "infer", "error": str(exc)}
    ids = []
    for name in ("sr", "sc"):
        answer = ctx.orthanc.store(encode_dataset(outputs.datasets[name]))  # DeliveryError propagates
        ids.append(str(answer["ID"]))
    return {**base, "state": "delivered", "result": job_summary(outputs), "orthanc_ids": ids}


def register_tasks(app: Celery, settings: Settings) -> None:
    b = settings.broker

    @app.task(name=TASK, bind=True, max_retries=None, acks_late=True)  # type: ignore[untyped-decorator]
    def analyse(self: Any, payload: dict[str, Any]) -> None:
        try:
            outcome = analyse_payload(payload)
        except DeliveryError as exc:
            if exc.transient:
                delay = min(
                    settings.orthanc.retry_max, settings.orthanc.retry_initial * 2 ** min(self.request.retries, 10)
                )
                log.warning("job %s: Orthanc not reachable (%s); retry in %.1f s", payload["job"], exc, delay)
                raise self.retry(exc=exc, countdown=delay) from exc
            outcome = {"job": payload["job"], "sop_uid": payload["sop_uid"], "state": "failed"}
            outcome.update(stage="deliver", error=str(exc))
        with app.producer_or_acquire() as producer:
            producer.publish(
                outcome,
                serializer="json",
                routing_key=b.results_queue,
                exchange="",
                declare=[Queue(b.results_queue, durable=True)],
                delivery_mode=2,
                retry=True,
            )
        log.info("job %s -> %s", payload["job"], outcome["state"])


def run_worker(settings: Settings) -> int:
    """``fetalnode serve --role worker``: load the models, then consume jobs until stopped."""
    import torch

    from fetalnode.inference import Analyzer
    from fetalnode.jobs import worker_identity
    from fetalnode.orthanc.client import OrthancClient

    global _context
    torch.set_num_threads(max(1, settings.worker.torch_threads))
    ctx = WorkerContext()
    ctx.settings = settings
    ctx.analyzer = Analyzer.from_dir(
        settings.models.dir, settings.models.segmentation, settings.models.classifier, settings.output.heatmap_alpha
    )
    ctx.orthanc = OrthancClient(settings.orthanc)
    ctx.identity = worker_identity()
    _context = ctx
    app = make_app(settings)
    register_tasks(app, settings)
    log.info("worker %s consuming %s on the broker", ctx.identity, settings.broker.queue)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
            "-Q",
            settings.broker.queue,
            "-n",
            f"{ctx.identity}@fetalnode",
        ]
    )
    return 0


# -- metrics ------------------------------------------------------------------------------------


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
            "# HELP fetalnode_queue_depth Messages waiting in the broker's jobs queue (-1: broker unreachable).",
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
