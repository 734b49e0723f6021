"""Output writers by name: the seam where a new output object (GSPS, SEG, an OB-GYN SR...) plugs in.

A writer builds one DICOM dataset from an :class:`OutputContext`. Its UIDs come from
:func:`~fetalnode.outputs.uids.object_uids` under the writer's name, so a retry rebuilds the same object.
``output.enabled`` chooses which registered writers a node runs; a module named in ``node.plugins``
can register more with :func:`register_output`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from fetalnode.errors import ConfigError
from fetalnode.outputs.uids import ObjectUids, object_uids
from fetalnode.registry import Registry

if TYPE_CHECKING:
    from fetalnode.applications.base import Analysis
    from fetalnode.config import OutputSettings


@dataclass(frozen=True)
class OutputContext:
    """Everything a writer may use: the source dataset, the analysis and the node's output settings."""

    source: Dataset
    analysis: Analysis
    uids: ObjectUids
    settings: OutputSettings
    station_name: str


@dataclass(frozen=True)
class OutputWriter:
    """One kind of output object.

    ``applications``: the applications whose analysis this writer understands (empty: any).
    """

    name: str
    build: Callable[[OutputContext], Dataset]
    applications: frozenset[str] = frozenset()

    def write(
        self, source: Dataset, analysis: Analysis, settings: OutputSettings, station_name: str, variant: str
    ) -> Dataset:
        uids = object_uids(
            self.name, str(source.SOPInstanceUID), str(source.SeriesInstanceUID), analysis.model_version, variant
        )
        return self.build(OutputContext(source, analysis, uids, settings, station_name))


OUTPUTS: Registry[OutputWriter] = Registry("output")


def register_output(
    name: str, *, applications: Sequence[str] = ()
) -> Callable[[Callable[[OutputContext], Dataset]], Callable[[OutputContext], Dataset]]:
    """Decorator registering ``build(ctx) -> Dataset`` as the output ``name``."""

    def add(build: Callable[[OutputContext], Dataset]) -> Callable[[OutputContext], Dataset]:
        OUTPUTS.add(name, OutputWriter(name, build, frozenset(applications)))
        return build

    return add


def enabled_writers(names: Sequence[str], application: str) -> list[OutputWriter]:
    """The writers of ``output.enabled``, in that order; an unknown name or one the application cannot
    feed is a configuration error (found at start-up, not at the first image)."""
    _load_builtin()
    writers = []
    for name in names:
        writer = OUTPUTS.get(name, "output.enabled")
        if writer.applications and application not in writer.applications:
            raise ConfigError(f"output {name!r} cannot be written for application {application!r}")
        writers.append(writer)
    if not writers:
        raise ConfigError("output.enabled is empty: a job would have nothing to deliver")
    return writers


def _load_builtin() -> Any:
    # The built-in writers register themselves on import (highdicom is imported only here).
    from fetalnode.outputs import capture, obgyn, presentation, report, segmentation

    return capture, obgyn, presentation, report, segmentation
