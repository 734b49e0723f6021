"""Applications by name (``worker.application``); a module in ``node.plugins`` may register more."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fetalnode.errors import ConfigError

if TYPE_CHECKING:
    from fetalnode.applications.base import Application
    from fetalnode.config import Settings

Factory = Callable[["Settings"], "Application"]
_FACTORIES: dict[str, Factory] = {}


def register_application(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(settings) -> Application`` under ``name``."""

    def add(factory: Factory) -> Factory:
        _FACTORIES[name] = factory
        return factory

    return add


def build_application(settings: Settings) -> Application:
    """Load the configured application (its bundles load here: a broken bundle fails start-up)."""
    from fetalnode.applications import fetal_head  # noqa: F401  (registers the built-in application)

    name = settings.worker.application
    if name not in _FACTORIES:
        raise ConfigError(f"worker.application: unknown application {name!r} (known: {', '.join(sorted(_FACTORIES))})")
    return _FACTORIES[name](settings)
