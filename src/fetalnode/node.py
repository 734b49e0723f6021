"""Assembles a running node from settings: job store (with its audit journal), spool, SCP, and either
the analysis workers (role ``all``: worker processes, ``fetalnode.pool``) or, role ``terminal``, the
link to the cloud (``fetalnode.distributed``) and a delivery worker for the site's destinations."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fetalnode.config import Settings
from fetalnode.jobs import JobStore, open_store
from fetalnode.scp.server import start_scp
from fetalnode.scp.spool import Spool
from fetalnode.scp.terminal import Terminal
from fetalnode.vocab import AuditEvent, JobState, Role
from fetalnode.worker import Worker, build_worker

log = logging.getLogger(__name__)


def build_terminal(settings: Settings, jobs: JobStore) -> tuple[Worker, Any]:
    """A site terminal's delivery worker (it delivers, never analyses) and its link to the cloud. The site's
    secret is read here: a terminal that pseudonymises does not start without it (ConfigError)."""
    from fetalnode.applications.base import Setup
    from fetalnode.applications.view_router import NAME as ROUTER
    from fetalnode.applications.withheld import DeliveryOnly, Withheld
    from fetalnode.destinations.base import build_destinations
    from fetalnode.distributed import CloudTerminal
    from fetalnode.errors import BurnedInTextNotRemoved
    from fetalnode.outputs.registry import writers_for
    from fetalnode.runner import Runtime
    from fetalnode.runtime import load_plugins

    pseudonymiser = None
    if settings.privacy.enabled_for(settings.node.role):
        from fetalnode.privacy import Pseudonymiser

        pseudonymiser = Pseudonymiser.from_settings(settings.privacy)
    else:
        log.warning("privacy.pseudonymise is false: images leave this terminal identified (same site only)")
    load_plugins(settings)
    outbox = settings.data_path / "outbox"
    delivery = Runtime(DeliveryOnly(), [], build_destinations(settings), settings.output)
    worker = Worker(
        delivery,
        jobs,
        outbox,
        settings.worker.poll_interval,
        settings.worker.lease_seconds,
        claims=(JobState.DELIVERING,),
    )
    withheld = Runtime(
        Withheld(BurnedInTextNotRemoved.OUTCOME, Setup.of(settings)),
        writers_for(settings.output.enabled, ROUTER),
        [],
        settings.output,
        audit=jobs.audit,
    )
    cloud = CloudTerminal(settings, jobs, jobs.audit, pseudonymiser, withheld, outbox, wake=worker.wake)
    return worker, cloud


@dataclass
class Node:
    """SCP plus (optionally) the analysis worker: ``worker.processes`` worker processes, or with 0 one
    worker thread in the SCP's process."""

    settings: Settings
    with_worker: bool = True
    log_level: str = "INFO"
    _stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Role ``all``: SCP + analysis workers on the SQLite queue. Role ``terminal``: SCP + publisher
        to the broker + collector of the workers' results (``fetalnode.distributed``)."""
        from fetalnode.pool import WorkerPool

        jobs = open_store(self.settings)
        audit = jobs.audit
        spool = Spool(self.settings.data_path / "spool", self.settings.scp.min_free_bytes)
        recovered = jobs.recover()
        if recovered:
            log.info("recovered %d job(s) interrupted by a previous stop", recovered)
        analyse_here = self.with_worker and self.settings.node.role == Role.ALL
        pool = worker = None
        if analyse_here and self.settings.worker.processes > 0:
            pool = WorkerPool(self.settings, self.settings.worker.processes, audit, self.log_level)
            pool.start()  # raises (and stops them) if a worker cannot load its bundles
        elif analyse_here:
            worker = build_worker(self.settings, jobs)
        threads: list[Any] = []
        on_queued = pool.wake if pool else worker.wake if worker else None
        if self.settings.node.role == Role.TERMINAL:
            worker, cloud = build_terminal(self.settings, jobs)
            threading.Thread(target=cloud.run, name="fetalnode-cloud-link", daemon=True).start()
            threads.append(cloud)
        metrics = None
        if self.settings.node.metrics_port:
            from fetalnode.distributed import start_metrics_server

            metrics = start_metrics_server(self.settings, jobs)
        terminal = Terminal(self.settings, spool, jobs, audit, on_queued=on_queued)
        try:
            servers = start_scp(self.settings, terminal)
        except BaseException:
            if pool is not None:
                pool.stop()
            raise
        audit.event(
            AuditEvent.NODE_STARTED,
            ae_title=self.settings.node.ae_title,
            port=self.settings.node.port,
            role=self.settings.node.role,
            worker=analyse_here,
            worker_processes=len(pool.pids()) if pool else 0,
        )
        if worker is not None:
            worker.start()
        try:
            while not self._stopped.wait(1.0):
                if pool is not None:
                    pool.supervise()
        finally:
            for server in servers:
                server.shutdown()
            for part in threads:
                part.stop()
            if metrics is not None:
                metrics.shutdown()
            if pool is not None:
                pool.stop()
            if worker is not None:
                worker.stop()
            audit.event(AuditEvent.NODE_STOPPED)

    def stop(self) -> None:
        self._stopped.set()
