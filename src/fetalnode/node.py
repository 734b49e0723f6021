"""Assembles a running node from settings: job store, audit, spool, SCP and worker."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.errors import NodeError
from fetalnode.inference import Analyzer
from fetalnode.inference.bundle import bundle_fingerprint
from fetalnode.jobs import JobStore
from fetalnode.orthanc.client import OrthancClient
from fetalnode.pipeline import Pipeline, Worker
from fetalnode.scp.server import Terminal, start_scp
from fetalnode.scp.spool import Spool

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> JobStore:
    return JobStore(settings.data_path / "jobs.sqlite")


def open_audit(settings: Settings) -> AuditLog:
    return AuditLog(settings.data_path / "audit.jsonl")


def build_worker(settings: Settings, jobs: JobStore, audit: AuditLog) -> Worker:
    """Load the model bundles (raising BundleError if any is unusable) and wire the pipeline."""
    torch.set_num_threads(max(1, settings.worker.torch_threads))
    analyzer = Analyzer.from_dir(
        settings.models.dir, settings.models.segmentation, settings.models.classifier, settings.output.heatmap_alpha
    )
    log.info(
        "models loaded: %s %s, %s %s", analyzer.seg.name, analyzer.seg.version, analyzer.cls.name, analyzer.cls.version
    )
    pipeline = Pipeline(settings, analyzer, OrthancClient(settings.orthanc), jobs, audit)
    return Worker(
        pipeline,
        jobs,
        settings.worker.poll_interval,
        settings.worker.lease_seconds,
        reload=ModelWatcher(settings, pipeline, audit),
    )


class ModelWatcher:
    """Reloads the bundles between jobs when ``fetalnode models push`` has changed them.

    A bundle that does not load is refused: the node keeps analysing with the models it has.
    """

    def __init__(self, settings: Settings, pipeline: Pipeline, audit: AuditLog) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.audit = audit
        self.seen = self._fingerprints()

    def _fingerprints(self) -> tuple[tuple[str, float], ...]:
        root = Path(self.settings.models.dir)
        return tuple(
            bundle_fingerprint(root / n) for n in (self.settings.models.segmentation, self.settings.models.classifier)
        )

    def __call__(self) -> None:
        now = self._fingerprints()
        if now == self.seen:
            return
        self.seen = now
        try:
            analyzer = Analyzer.from_dir(
                self.settings.models.dir,
                self.settings.models.segmentation,
                self.settings.models.classifier,
                self.settings.output.heatmap_alpha,
            )
        except NodeError as exc:
            log.error("new model bundle refused, keeping the loaded ones: %s", exc)
            self.audit.event("models-reload-failed", reason=str(exc))
            return
        self.pipeline.analyzer = analyzer
        log.info(
            "models reloaded: %s %s, %s %s",
            analyzer.seg.name,
            analyzer.seg.version,
            analyzer.cls.name,
            analyzer.cls.version,
        )
        self.audit.event(
            "models-reloaded",
            segmentation=f"{analyzer.seg.name} {analyzer.seg.version}",
            classifier=f"{analyzer.cls.name} {analyzer.cls.version}",
        )


@dataclass
class Node:
    """SCP plus (optionally) an in-process worker."""

    settings: Settings
    with_worker: bool = True
    _stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Role ``all``: SCP + in-process worker on the SQLite queue. Role ``terminal``: SCP + publisher
        to the broker + collector of the workers' results (``fetalnode.distributed``)."""
        jobs = open_store(self.settings)
        audit = open_audit(self.settings)
        terminal_role = self.settings.node.role == "terminal"
        worker = build_worker(self.settings, jobs, audit) if self.with_worker and not terminal_role else None
        spool = Spool(self.settings.data_path / "spool", self.settings.scp.min_free_bytes)
        recovered = jobs.recover()
        if recovered:
            log.info("recovered %d job(s) interrupted by a previous stop", recovered)
        threads: list[Any] = []
        on_queued = worker.wake if worker else None
        if terminal_role:
            from fetalnode.distributed import Collector, Publisher, make_app

            publisher = Publisher(self.settings, jobs, audit, make_app(self.settings))
            collector = Collector(self.settings, jobs, audit)
            for name, part in (("publisher", publisher), ("collector", collector)):
                threading.Thread(target=part.run, name=f"fetalnode-{name}", daemon=True).start()
                threads.append(part)
            on_queued = publisher.wake
        metrics = None
        if self.settings.node.metrics_port:
            from fetalnode.distributed import start_metrics_server

            metrics = start_metrics_server(self.settings, jobs)
        terminal = Terminal(self.settings, spool, jobs, audit, on_queued=on_queued)
        servers = start_scp(self.settings, terminal)
        audit.event(
            "node-started",
            ae_title=self.settings.node.ae_title,
            port=self.settings.node.port,
            role=self.settings.node.role,
            worker=worker is not None,
        )
        if worker is not None:
            worker.start()
        try:
            self._stopped.wait()
        finally:
            for server in servers:
                server.shutdown()
            for part in threads:
                part.stop()
            if metrics is not None:
                metrics.shutdown()
            if worker is not None:
                worker.stop()
            audit.event("node-stopped")

    def stop(self) -> None:
        self._stopped.set()
