"""Scale-out on Celery + RabbitMQ: terminal role (SCP, spool, publish) and worker role (analyse, deliver).

- The terminal keeps the SQLite job store and the spool exactly as in the embedded mode. A
  publisher thread sends each ``queued`` job to the broker (Celery task ``fetalnode.analyse``) with
  the image bytes *in the message* (base64 in JSON), then marks it ``published``. The bytes travel
  with the job so that a worker needs nothing but the broker URL, the models and the destinations:
  no shared file system between hospitals' terminals and the regional workers. When the broker is
  down, jobs stay ``queued`` in the spool and are published when it returns (store and forward).
- Workers are Celery workers (threads pool of one, prefetch 1, late acknowledgement,
  ``task_reject_on_worker_lost``): a killed worker's unacknowledged task is redelivered to another.
  The solo pool was measured to stall 3-10 s between tasks here (the next message sat in py-amqp's
  buffer until a timer tick): 2.1 images/s against 8.5 with the threads pool.
  Each task is one call of :func:`fetalnode.runner.run_job` (the same runner as the embedded worker
  and ``fetalnode analyze``): it checks the image against the announced SHA-256 (the
  pre-notification), analyses, builds every enabled output and delivers to every destination
  (deterministic UIDs: a redelivered job overwrites nothing and adds nothing). A ``retry`` outcome
  is a Celery retry after the runner's delay; any other outcome is published on a durable results
  queue before the task is acknowledged.
- A collector thread on the terminal consumes the results queue and applies each outcome through
  the job store's journal, as the embedded worker does. ``published`` jobs without an answer are
  the ones "sent but never acknowledged"; a worker-side result for a job the terminal never
  recorded is reported as "announced but unknown".

This module moves bytes and outcomes; it imports neither the inference package nor the output
writers (the worker's :class:`~fetalnode.runner.Runtime` is built by the CLI).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from fetalnode.audit import AuditLog
from fetalnode.broker import celery_config, connect
from fetalnode.config import Settings
from fetalnode.jobs import JobStore, TransitionRefused, worker_identity
from fetalnode.runner import (
    Outcome,
    Received,
    Runtime,
    Verdict,
    crashed,
    deliveries_from_json,
    deliveries_to_json,
    run_job,
)
from fetalnode.vocab import AuditEvent, JobState, RouteAction

log = logging.getLogger(__name__)
TASK = "fetalnode.analyse"


def make_app(settings: Settings) -> Celery:
    """The Celery application of a node: at-least-once delivery of jobs, JSON only, no result backend."""
    b = settings.broker
    app = Celery("fetalnode")
    app.conf.update(
        **celery_config(b),  # TLS, password from broker.password_file, heartbeat (fetalnode.broker)
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
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the jobs queue (None when the broker cannot be reached)."""
    try:
        with connect(settings.broker) as conn:
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
        for job in self.jobs.jobs_in_state(JobState.QUEUED, self.settings.broker.publish_batch):
            data = Path(job.spool_path).read_bytes()
            payload = {
                "job": job.id,
                "terminal": self.settings.node.ae_title,
                "sop_uid": job.sop_uid,
                "sha256": job.sha256,
                "station_name": job.station_name,
                "calling_ae": job.calling_ae,
                "received_at": job.received_at,
                "replaces": job.replaces,
                "action": job.extra.get("action", RouteAction.ANALYSE),
                "deliveries": deliveries_to_json(job.deliveries),
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
                    self.audit.event(AuditEvent.BROKER_UP, down_s=round(time.monotonic() - down_since, 1))
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
                    self.audit.event(AuditEvent.BROKER_DOWN, reason=f"{type(exc).__name__}: {exc}")
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
        """Apply one worker result. A message that can never be applied (unreadable, or a change the job
        store refuses) is logged and dropped, not redelivered for ever; a store error propagates."""
        try:
            job_id, outcome = int(body["job"]), Outcome.from_message(body["outcome"])
        except (KeyError, TypeError, ValueError) as exc:
            log.error("unreadable result message dropped (%s: %s): %.300s", type(exc).__name__, exc, body)
            return
        job = self.jobs.get(job_id)
        if job is None or job.sop_uid != body.get("sop_uid"):
            log.warning("result for a job this terminal never announced: %s", body.get("job"))
            self.audit.event(AuditEvent.RESULT_UNKNOWN_JOB, job=body.get("job"), sop_uid=body.get("sop_uid"))
            return
        try:
            state = self.jobs.apply(job, outcome, PUBLISHED, worker=body.get("worker"))
        except TransitionRefused as exc:
            log.error("result from %s dropped: %s", body.get("worker"), exc)
            return
        if state is None:
            log.info("job %d: result from %s for a job already %s (redelivered)", job.id, body.get("worker"), job.state)

    def run(self) -> None:
        b = self.settings.broker
        while not self._stop.is_set():
            try:
                with connect(b) as conn:
                    queue = conn.SimpleQueue(b.results_queue, queue_opts={"durable": True})
                    while not self._stop.is_set():
                        try:
                            message = queue.get(block=True, timeout=1)
                        except queue.Empty:
                            conn.heartbeat_check()
                            continue
                        self.handle(message.payload)
                        message.ack()
            except Exception as exc:
                log.warning("results queue unreachable (%s); retrying", exc)
                self._stop.wait(b.retry_seconds)

    def stop(self) -> None:
        self._stop.set()


PUBLISHED = frozenset({JobState.QUEUED, JobState.PUBLISHED})

# -- worker side --------------------------------------------------------------------------------


def received_from_payload(payload: dict[str, Any]) -> Received:
    data = base64.b64decode(payload["data"])
    return Received(
        job_id=int(payload["job"]),
        sop_uid=payload["sop_uid"],
        sha256=payload["sha256"],
        read=lambda: data,
        station_name=payload["station_name"],
        replaces=bool(payload.get("replaces", False)),
        deliveries=deliveries_from_json(payload.get("deliveries")),
        action=RouteAction(payload.get("action", RouteAction.ANALYSE)),
    )


def register_tasks(app: Celery, settings: Settings, runtime: Runtime) -> None:
    b, identity = settings.broker, worker_identity()

    @app.task(name=TASK, bind=True, max_retries=None, acks_late=True)  # type: ignore[untyped-decorator]
    def analyse(self: Any, payload: dict[str, Any]) -> None:
        try:
            outcome = run_job(received_from_payload(payload), runtime)
        except Exception as exc:  # a malformed message: answer it rather than lose the job
            log.exception("job %s: cannot run", payload.get("job"))
            outcome = crashed(exc)
        if outcome.verdict is Verdict.RETRY:
            log.warning("job %s: %s; retry in %.1f s", payload["job"], outcome.reason, outcome.retry_in)
            # the next run skips what each destination already holds (the deliveries travel in the message)
            again = {**payload, "deliveries": deliveries_to_json(outcome.deliveries)}
            raise self.retry(args=[again], countdown=outcome.retry_in)
        message = {"job": payload["job"], "sop_uid": payload["sop_uid"], "worker": identity}
        message["outcome"] = outcome.to_message()
        with app.producer_or_acquire() as producer:
            producer.publish(
                message,
                serializer="json",
                routing_key=b.results_queue,
                exchange="",
                declare=[Queue(b.results_queue, durable=True)],
                delivery_mode=2,
                retry=True,
            )
        log.info("job %s -> %s", payload["job"], outcome.verdict)


def run_worker(settings: Settings, runtime: Runtime) -> int:
    """``fetalnode serve --role worker``: consume jobs with ``runtime`` until stopped."""
    app = make_app(settings)
    register_tasks(app, settings, runtime)
    identity = worker_identity()
    log.info("worker %s consuming %s on the broker", identity, settings.broker.queue)
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
            f"{identity}@fetalnode",
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
