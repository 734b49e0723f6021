"""Applications by name (``worker.application``); a module in ``node.plugins`` may register more."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fetalnode.registry import Registry, builtin_modules

if TYPE_CHECKING:
    from fetalnode.applications.base import Application
    from fetalnode.config import Settings

Factory = Callable[["Settings"], "Application"]
APPLICATIONS: Registry[Factory] = Registry("application", builtins=builtin_modules("application"))
register_application = APPLICATIONS.register  # @register_application("name") on factory(settings) -> Application


def build_application(settings: Settings) -> Application:
    """Load the configured application (its bundles load here: a broken bundle fails start-up)."""
    return APPLICATIONS.get(settings.worker.application, "worker.application")(settings)
