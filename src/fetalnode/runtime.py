"""Builds a :class:`~fetalnode.runner.Runtime` from the settings: the one place the inference package,
the output writers and the destinations are put together (every role and ``analyze`` call it)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from fetalnode.applications.base import Application
from fetalnode.applications.registry import build_application
from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.destinations.base import Destination, build_destinations
from fetalnode.errors import ConfigError, NodeError
from fetalnode.inference.bundle import bundle_fingerprint
from fetalnode.outputs.registry import enabled_writers
from fetalnode.runner import Runtime
from fetalnode.vocab import AuditEvent

log = logging.getLogger(__name__)


def load_plugins(settings: Settings) -> None:
    """Import the modules of ``node.plugins``: they register output writers, destinations or applications."""
    for name in settings.node.plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"node.plugins: cannot import {name!r}: {exc}") from exc


def build_runtime(
    settings: Settings, destinations: list[Destination] | None = None, audit: AuditLog | None = None
) -> Runtime:
    """Load the application's bundles (a broken bundle raises BundleError), the enabled writers and the
    destinations (``destinations`` replaces the configured ones, as ``analyze`` does with a folder);
    ``audit``: where the runner writes what a job notices beyond its outcome (the node's audit log)."""
    import torch

    torch.set_num_threads(max(1, settings.worker.torch_threads))
    load_plugins(settings)
    application = build_application(settings)
    log.info("application %s loaded: %s", application.name, application.describe())
    return Runtime(
        application=application,
        writers=enabled_writers(settings.output.enabled, application.applications),
        destinations=build_destinations(settings) if destinations is None else destinations,
        output=settings.output,
        audit=audit,
    )


class ModelWatcher:
    """Reloads the application between jobs when ``fetalnode models push`` has changed its bundles.

    A bundle that does not load is refused: the node keeps analysing with the models it has.
    """

    def __init__(self, settings: Settings, runtime: Runtime, audit: AuditLog) -> None:
        self.settings = settings
        self.runtime = runtime
        self.audit = audit
        self.seen = self._fingerprints(runtime.application)

    @staticmethod
    def _fingerprints(application: Application) -> tuple[tuple[str, float], ...]:
        return tuple(bundle_fingerprint(Path(p)) for p in application.bundle_paths())

    def __call__(self) -> None:
        now = self._fingerprints(self.runtime.application)
        if now == self.seen:
            return
        self.seen = now
        try:
            application = build_application(self.settings)
        except NodeError as exc:
            log.error("new model bundle refused, keeping the loaded ones: %s", exc)
            self.audit.event(AuditEvent.MODELS_RELOAD_FAILED, reason=str(exc))
            return
        self.runtime.application = application
        log.info("models reloaded: %s", application.describe())
        self.audit.event(AuditEvent.MODELS_RELOADED, application=application.name, **application.describe())
