"""Output writers by name: the seam where a new output object (GSPS, SEG, an OB-GYN SR...) plugs in.

A writer builds one DICOM dataset from an :class:`OutputContext`. Its UIDs come from
:func:`~fetalnode.outputs.uids.object_uids` under the writer's name, so a retry rebuilds the same object.
``output.enabled`` chooses which registered writers a node runs; a module named in ``node.plugins``
can register more with :func:`register_output`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from pydicom.dataset import Dataset

from fetalnode.errors import ConfigError, EncodingError
from fetalnode.outputs.uids import ObjectUids, object_uids
from fetalnode.registry import Registry, builtin_modules

if TYPE_CHECKING:
    from fetalnode.applications.base import Analysis
    from fetalnode.config import OutputSettings
    from fetalnode.outputs.template import FastPath, Observer, Templates

R = TypeVar("R")


@dataclass(frozen=True)
class OutputContext:
    """Everything a writer may use: the source dataset, the analysis and the node's output settings."""

    source: Dataset
    analysis: Analysis
    uids: ObjectUids
    settings: OutputSettings
    station_name: str
    now: datetime = field(default_factory=lambda: datetime.now(UTC))  # the object's clock (dates, times)

    def result_as(self, kind: type[R]) -> R:
        """The analysis result as the type a builder reads (``AnalysisResult`` of ``fetal-head``,
        ``LabourResult`` of ``labour-progress``); another type is an :class:`EncodingError`."""
        result = self.analysis.result
        if not isinstance(result, kind):
            raise EncodingError(
                f"{self.analysis.application} analysis carries a {type(result).__name__}, not a {kind.__name__}"
            )
        return result

    def with_context_lines(self, lines: list[str]) -> list[str]:
        """``lines``, then what the intake had to assume about the header (an unknown character set) and the
        view router's line ("Recognised view: ...", "View uncertain: ...") when a router chose the
        application: the reports' comments and the captures' banners end with them."""
        view = [self.analysis.view.line()] if self.analysis.view else []
        return [*lines, *self.analysis.decoded.notes, *view]


Build = Callable[[OutputContext], Dataset]


@dataclass(frozen=True)
class OutputWriter:
    """One kind of output object, with one builder per application whose analysis it understands.

    ``builders`` maps an application name to its builder; the key ``""`` builds for any application.
    A writer with no builder for an analysis's application writes nothing for that image (a SEG of the
    head for a labour-progress image, say): :meth:`write` returns ``None``. A builder with a fast path
    (``fast``, :mod:`fetalnode.outputs.template`) is encoded by :meth:`encode` from a template of its
    object once the reference path (the builder) has checked it, and checked again by sample while it
    serves (``templates``: per application, turned off on the first difference).
    """

    name: str
    builders: dict[str, Build] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    fast: dict[str, FastPath] = field(default_factory=dict)
    templates: dict[str, Templates] = field(default_factory=dict)

    def builder_for(self, application: str) -> Build | None:
        return self.builders.get(application) or self.builders.get(ANY_APPLICATION)

    def _registered_as(self, analysis: Analysis) -> str:
        """The key its builder, revision and fast path are registered under for this analysis."""
        return analysis.application if analysis.application in self.builders else ANY_APPLICATION

    def revision_for(self, analysis: Analysis) -> int:
        """The content revision of the object it writes for this analysis (part of its UIDs)."""
        return self.revisions.get(self._registered_as(analysis), 0)

    def context(
        self,
        source: Dataset,
        analysis: Analysis,
        settings: OutputSettings,
        station_name: str,
        now: datetime | None = None,
    ) -> OutputContext:
        """The context of one job (the clock ``now`` when given, e.g. by a test)."""
        uids = object_uids(
            self.name,
            str(source.SOPInstanceUID),
            str(source.SeriesInstanceUID),
            analysis.model_version,
            self.revision_for(analysis),
        )
        ctx = OutputContext(source, analysis, uids, settings, station_name)
        return ctx if now is None else replace(ctx, now=now)

    def write(
        self, source: Dataset, analysis: Analysis, settings: OutputSettings, station_name: str
    ) -> Dataset | None:
        """The reference path: the builder's dataset (its clock stamped to the context's)."""
        build = self.builder_for(analysis.application)
        if build is None:
            return None
        from fetalnode.outputs.template import reference

        return reference(self.context(source, analysis, settings, station_name), build)

    def encode(
        self,
        source: Dataset,
        analysis: Analysis,
        settings: OutputSettings,
        station_name: str,
        now: datetime | None = None,
        observer: Observer | None = None,
        instance_uid: str | None = None,
    ) -> tuple[bytes, str] | None:
        """The object as Part 10 bytes with its SOP Instance UID (``None``: nothing for this application).
        ``observer`` is told when a run-time check of the fast path turns this writer's templates off.
        ``instance_uid``: the SOP Instance UID to write instead of the derived one (the output of an object
        this source replaces, ``scp.uid_conflict = "replace"``)."""
        build = self.builder_for(analysis.application)
        if build is None:
            return None
        from fetalnode.outputs.template import Templates, encode_reference

        ctx = self.context(source, analysis, settings, station_name, now)
        if instance_uid:
            ctx = replace(ctx, uids=ObjectUids(ctx.uids.series, instance_uid))
        application = self._registered_as(analysis)
        fast = self.fast.get(application)
        if fast is None:
            return encode_reference(ctx, build)
        templates = self.templates.get(application)
        if templates is None:
            templates = self.templates.setdefault(application, Templates(fast, self.name, application))

        def context_for(other: Dataset) -> OutputContext:
            return replace(self.context(other, analysis, settings, station_name), now=ctx.now)

        return templates.write(ctx, build, context_for, observer)


ANY_APPLICATION = ""
OUTPUTS: Registry[OutputWriter] = Registry("output", builtins=builtin_modules("writers"))


def register_output(
    name: str, *, applications: Sequence[str] = (), revision: int = 0, fast: FastPath | None = None
) -> Callable[[Build], Build]:
    """Decorator registering ``build(ctx) -> Dataset`` as the output ``name`` for ``applications`` (none
    named: any). Several builders may share one output name, one per application.

    ``revision``: raise it whenever the builder's object changes for the same input and models (a code
    corrected, an item added): it is part of the SOP Instance UID, so the changed object is a new instance
    and never hides behind the UID of the old one (:func:`~fetalnode.outputs.uids.object_uids`).
    ``fast``: the builder's fast path (:class:`~fetalnode.outputs.template.FastPath`), checked against it.
    """

    def add(build: Build) -> Build:
        writer = OUTPUTS.add(name, OUTPUTS.registered(name) or OutputWriter(name))
        for application in applications or [ANY_APPLICATION]:
            taken = writer.builders.get(application)
            if taken is not None and taken is not build:
                raise ConfigError(f"output {name!r} is registered twice for application {application or 'any'!r}")
            writer.builders[application] = build
            writer.revisions[application] = revision
            if fast is not None:
                writer.fast[application] = fast
        return build

    return add


def enabled_writers(names: Sequence[str], applications: Sequence[str]) -> list[OutputWriter]:
    """The writers of ``output.enabled``, in that order. An unknown name, or one that none of the
    ``applications`` the node may answer with can feed, is a configuration error (found at start-up,
    not at the first image); a writer that feeds only some of them writes for those."""
    if isinstance(applications, str):  # a str is a Sequence[str] of letters
        raise TypeError("applications must be a sequence of application names, not one string")
    writers = []
    for name in names:
        writer = OUTPUTS.get(name, "output.enabled")
        if not any(writer.builder_for(a) for a in applications):
            raise ConfigError(f"output {name!r} cannot be written for application {', '.join(map(repr, applications))}")
        writers.append(writer)
    if not writers:
        raise ConfigError("output.enabled is empty: a job would have nothing to deliver")
    return writers


def writers_for(names: Sequence[str], application: str) -> list[OutputWriter]:
    """The writers of ``output.enabled`` that have a builder for ``application``, in that order."""
    return [w for w in (OUTPUTS.get(n, "output.enabled") for n in names) if w.builder_for(application)]
