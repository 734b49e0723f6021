"""A fixed set of jobs for the output tests whose objects must not depend on the models or the clock.

Every source is a file of the repository (``samples/*.dcm``, PSFHS images of ``tests/data/psfhs_mini``
wrapped as ``fetalnode wrap`` does, with fixed dates), every analysis a stand-in with fixed values
(:class:`tests.head.FixedHead`, :class:`tests.labour.GroundTruthLabour`, the view router's "no application"
answer), so that every (writer, application) pair of the built-in writers has at least one job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fetalnode import dicomio
from fetalnode.applications.base import Analysis
from fetalnode.config import OutputSettings
from fetalnode.outputs.registry import ANY_APPLICATION, OUTPUTS, Build, OutputContext, OutputWriter, enabled_writers
from tests.conftest import SAMPLES
from tests.head import FixedHead, no_application
from tests.labour import HIGH_AOP, LOW_AOP, GroundTruthLabour, wrapped

CLOCK = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
STATION = "GOLDEN"
SETTINGS = OutputSettings(
    enabled=["sr", "sc", "gsps", "seg", "obsr"],
    heatmap_alpha=0.6,
    manufacturer="fetalnode project",
    institution_name="Test Hospital",
)
APPLICATIONS = ["fetal-head", "view-router", "labour-progress"]


@dataclass(frozen=True)
class Case:
    label: str
    source: Dataset
    analysis: Analysis


def _fixed_dates(ds: Dataset) -> Dataset:
    """``fetalnode wrap`` stamps today's date and time: a fixed one instead."""
    for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
        setattr(ds, keyword, "20250607")
    for keyword in ("StudyTime", "SeriesTime", "ContentTime"):
        setattr(ds, keyword, "080910")
    return ds


def colour_copy(ds: Dataset) -> Dataset:
    """The image as RGB, another instance (a colour source gets a Color Softcopy Presentation State)."""
    copy = dicomio.read(dicomio.encode(ds))
    gray = np.asarray(copy.pixel_array, dtype=np.uint8)
    copy.PixelData = np.repeat(gray[..., None], 3, axis=2).tobytes()
    copy.PhotometricInterpretation, copy.SamplesPerPixel, copy.PlanarConfiguration = "RGB", 3, 0
    copy.BitsAllocated, copy.BitsStored, copy.HighBit = 8, 8, 7
    copy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[str(ds.SOPInstanceUID), "rgb"]
    )
    return dicomio.read(dicomio.encode(copy))


def head_cases() -> list[Case]:
    """The five samples (normal; the ventriculomegaly one abnormal with its type), and on single samples:
    abnormal without a type, no head found, chosen by the view router, an RGB copy, and the router's "no
    application"."""
    sources = {p.stem: dicomio.read(p.read_bytes()) for p in sorted(SAMPLES.glob("*.dcm"))}
    abnormal = next(name for name in sources if "ventriculomegaly" in name)
    cases = []
    for name, ds in sources.items():
        if name == abnormal:
            head = FixedHead("abnormal", 0.91, "ventriculomegaly_moderate", 0.64)
        else:
            head = FixedHead(p_abnormal=0.08 if name.startswith("hc18") else 0.21)
        cases.append(Case(name, ds, head.analyse(ds)))
    hc18 = [name for name in sources if name.startswith("hc18")]
    extra = {
        "abnormal-type-not-determined": (abnormal, FixedHead("abnormal", 0.77)),
        "no-head": (hc18[0], FixedHead(found=False)),
        "routed": (hc18[1], FixedHead(p_abnormal=0.03, routed=True)),
    }
    for label, (name, head) in extra.items():
        cases.append(Case(label, sources[name], head.analyse(sources[name])))
    colour = colour_copy(sources[hc18[0]])
    cases.append(Case("colour", colour, FixedHead(p_abnormal=0.12).analyse(colour)))
    cases.append(Case("no-application", sources[hc18[2]], no_application(sources[hc18[2]])))
    return cases


def labour_cases(folder: Path) -> list[Case]:
    """A PSFHS image analysed (uncalibrated, and a calibrated copy) and one not analysed."""
    cases = []
    for label, image_id, size, analysed in (
        ("labour", HIGH_AOP, None, True),
        ("labour-calibrated", HIGH_AOP, 0.1, True),
        ("labour-not-analysed", LOW_AOP, None, False),
    ):
        ds = _fixed_dates(dicomio.read(wrapped(image_id, folder, size).read_bytes()))
        ds = dicomio.read(dicomio.encode(ds))
        cases.append(Case(label, ds, GroundTruthLabour(image_id, analysed).analyse(ds)))
    return cases


def all_cases(folder: Path) -> list[Case]:
    return [*head_cases(), *labour_cases(folder)]


def builtin_writers() -> list[OutputWriter]:
    """The writers fetalnode itself registers (not a test's or a plugin's), by name."""
    enabled_writers(SETTINGS.enabled, APPLICATIONS)  # imports every built-in writer's module
    return sorted(
        (w for w in (OUTPUTS.find(n) for n in OUTPUTS.names()) if w is not None and _builtin(w)),
        key=lambda w: w.name,
    )


def _builtin(writer: OutputWriter) -> bool:
    return all(build.__module__.startswith("fetalnode.") for build in writer.builders.values())


def registered_as(writer: OutputWriter, analysis: Analysis) -> str:
    """The application key the writer's builder (revision, fast path) is registered under for ``analysis``."""
    return analysis.application if analysis.application in writer.builders else ANY_APPLICATION


def context(writer: OutputWriter, case: Case, now: datetime = CLOCK) -> OutputContext:
    return writer.context(case.source, case.analysis, SETTINGS, STATION, now)


def builder(writer: OutputWriter, case: Case) -> Build | None:
    return writer.builder_for(case.analysis.application)
