"""The writers' fast path (outputs/template.py) against their reference path (the highdicom builders).

For a matrix of jobs (the five samples, an uncalibrated head, abnormal with no type, no head found, the
view router's "no application", labour images analysed, calibrated, not analysed, and the real labour
model) and variants of each (another patient and study, another station, other output settings, another
result): a template compiled from one job renders every other job of the same key byte for byte as the
reference path encodes it (no value of the job it was compiled from survives in another's object). And the
writer itself: reference until a key is checked, then the fast path, always the reference's bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fetalnode.applications.base import Analysis
from fetalnode.config import OutputSettings, load_settings
from fetalnode.inference import AnalysisResult
from fetalnode.outputs.registry import ANY_APPLICATION, OUTPUTS, Build, OutputContext, OutputWriter, enabled_writers
from fetalnode.outputs.template import (
    FastPath,
    Template,
    Templates,
    compile_for,
    encode,
    job_values,
    reference,
    template_key,
)
from fetalnode.runner import read_dataset
from fetalnode.runtime import build_runtime
from fetalnode.wrap import wrap_png
from harness.node import MODELS
from tests.conftest import DATA, SAMPLES
from tests.labour import HIGH_AOP, LOW_AOP, GroundTruthLabour, wrapped

pytestmark = pytest.mark.unit

NAMES = ["sr", "sc", "gsps", "seg", "obsr"]
FEMUR = DATA / "view_mini" / "fetal_planes_db" / "images" / "Patient01672_Plane5_2_of_2.png"
PSFHS = DATA / "view_mini" / "psfhs" / "images" / "psfhs_03920.png"
T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Job:
    label: str
    source: Dataset
    analysis: Analysis
    settings: OutputSettings
    station: str = "TEST"


def _reread(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return read_dataset(buffer.getvalue())


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> list[Job]:
    settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS)})
    settings.output.enabled = NAMES
    runtime = build_runtime(settings, destinations=[])
    out: list[Job] = []

    def add(label: str, ds: Dataset) -> Job:
        out.append(Job(label, ds, runtime.application.analyse(ds), settings.output))
        return out[-1]

    for path in sorted(SAMPLES.glob("*.dcm")):
        add(path.stem, read_dataset(path.read_bytes()))
    hc18 = next(j for j in out if j.label.startswith("hc18"))
    plain = _reread(hc18.source)  # a copy: Dataset.update would share (and setattr change) the elements
    for keyword in ("SequenceOfUltrasoundRegions", "PixelSpacing"):
        if keyword in plain:
            delattr(plain, keyword)
    plain.SOPInstanceUID = plain.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["uncalibrated"])
    uncalibrated = add("uncalibrated", _reread(plain))
    assert isinstance(uncalibrated.analysis.result, AnalysisResult) and uncalibrated.analysis.result.biometry is None
    abnormal = next(j for j in out if "ventriculomegaly" in j.label)
    result = abnormal.analysis.result
    assert isinstance(result, AnalysisResult) and result.finding == "abnormal"
    out.append(
        dataclasses.replace(
            abnormal,
            label="abnormal-type-not-determined",
            analysis=dataclasses.replace(
                abnormal.analysis, result=dataclasses.replace(result, finding="abnormal", malformation_type="")
            ),
        )
    )
    assert isinstance(hc18.analysis.result, AnalysisResult)
    no_head = dataclasses.replace(
        hc18.analysis.result, analysed=False, reason="no fetal head found", ellipse=None, head_mask=None, biometry=None
    )
    out.append(dataclasses.replace(hc18, label="no-head", analysis=dataclasses.replace(hc18.analysis, result=no_head)))
    # A source with a multi-valued text attribute the writers copy (a pseudonymised image's
    # De-identification Method): its value is a slot like a single-valued one.
    deidentified = _reread(hc18.source)
    deidentified.PatientIdentityRemoved = "YES"
    deidentified.DeidentificationMethod = ["DICOM PS3.15 Basic Application Confidentiality Profile", "Clean Pixel Data"]
    out.append(dataclasses.replace(hc18, label="multi-valued-text", source=_reread(deidentified)))
    femur = add("no-application", _reread(wrap_png(FEMUR, pixel_size_mm=None)))
    assert femur.analysis.application == "view-router"
    labour = add("labour-model", _reread(wrap_png(PSFHS, pixel_size_mm=None)))
    assert labour.analysis.application == "labour-progress"
    folder = tmp_path_factory.mktemp("labour")
    for image_id, size in ((HIGH_AOP, None), (LOW_AOP, None), (HIGH_AOP, 0.1)):
        ds = read_dataset(wrapped(image_id, folder, size).read_bytes())
        out.append(Job(f"labour-{image_id}-{size}", ds, GroundTruthLabour(image_id).analyse(ds), settings.output))
    ds = read_dataset(wrapped(LOW_AOP, folder).read_bytes())
    out.append(Job("labour-not-analysed", ds, GroundTruthLabour(LOW_AOP, False).analyse(ds), settings.output))
    return out


def other_patient(job: Job) -> Job:
    ds = _reread(job.source)  # a copy: the job's own source must not change
    ds.PatientName, ds.PatientID = "Other^Patient", "OTHER-1"
    if ds.get("PatientBirthDate"):  # an empty attribute stays empty (whether it is is part of the key)
        ds.PatientBirthDate = "19900102"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[job.source.StudyInstanceUID])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[job.source.SeriesInstanceUID])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[job.source.SOPInstanceUID])
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20250102", "101010", "77"
    ds.StudyDescription, ds.InstanceNumber = "Other study", 7
    return dataclasses.replace(job, label=job.label + "+patient", source=_reread(ds))


def variants(job: Job) -> Iterator[Job]:
    yield other_patient(job)
    yield dataclasses.replace(job, label=job.label + "+station", station="OTHER_STATION")
    settings = dataclasses.replace(job.settings, institution_name="Other Hospital", manufacturer="Other maker")
    yield dataclasses.replace(job, label=job.label + "+settings", settings=settings)
    result = job.analysis.result
    if isinstance(result, AnalysisResult) and result.analysed:
        other = dataclasses.replace(result, p_abnormal=0.123 if result.finding == "normal" else 0.877)
        yield dataclasses.replace(
            job, label=job.label + "+result", analysis=dataclasses.replace(job.analysis, result=other)
        )


def writer_of(name: str) -> OutputWriter:
    enabled_writers([name], ["fetal-head", "labour-progress", "view-router"])
    return OUTPUTS.get(name, "test")


def fast_of(writer: OutputWriter, job: Job) -> tuple[FastPath, Build] | None:
    application = job.analysis.application if job.analysis.application in writer.builders else ANY_APPLICATION
    build = writer.builder_for(job.analysis.application)
    fast = writer.fast.get(application)
    return None if build is None or fast is None else (fast, build)


def context(writer: OutputWriter, job: Job, now: datetime) -> OutputContext:
    return writer.context(job.source, job.analysis, job.settings, job.station, now)


_COMPILED: dict[tuple[str, str], Template] = {}


def check_pair(writer: OutputWriter, a: Job, b: Job) -> bool:
    """If ``a`` and ``b`` share a key: the template compiled from ``a`` renders ``b`` as the reference does."""
    found = fast_of(writer, a)
    if found is None or fast_of(writer, b) != found:  # b: another builder (another application)
        return False
    fast, build = found
    ctx_a, ctx_b = context(writer, a, T0), context(writer, b, T0 + timedelta(seconds=61, microseconds=7))
    if template_key(fast, ctx_a) != template_key(fast, ctx_b):
        return False

    def context_for(source: Dataset) -> OutputContext:
        return writer.context(source, a.analysis, a.settings, a.station, T0)

    cached = (writer.name, a.label)
    if cached not in _COMPILED:
        _COMPILED[cached] = compile_for(fast, ctx_a, build, context_for)
    expected = encode(reference(ctx_b, build))
    rendered = _COMPILED[cached].render(job_values(ctx_b, fast.slots(ctx_b)))
    if rendered != expected:
        _explain(rendered, expected)
    assert rendered == expected, f"{writer.name}: compiled from {a.label}, rendered for {b.label}"
    return True


@pytest.mark.parametrize("name", NAMES)
def test_a_template_renders_every_job_of_its_key_as_the_reference_path(name: str, jobs: list[Job]) -> None:
    writer = writer_of(name)
    checked: list[tuple[str, str]] = []
    for job in jobs:
        for other in [job, *variants(job)]:
            if check_pair(writer, job, other):
                checked.append((job.label, other.label))
    for a, b in itertools.permutations(jobs, 2):  # distinct real jobs sharing a key
        if check_pair(writer, a, b):
            checked.append((a.label, b.label))
    labels = {a for a, _ in checked}
    assert len(labels) >= 6, checked
    # Another patient always shares the key of the job: the no-leak case is covered for every job. (Another
    # station or other settings share it only if the key forgot them: then the bytes would differ.)
    assert all(f"{label}+patient" in {b for _, b in checked} for label in labels), checked


def test_the_writer_takes_the_fast_path_once_a_key_is_checked_and_writes_the_reference_bytes(jobs: list[Job]) -> None:
    hc18 = [j for j in jobs if j.label.startswith("hc18")]
    hc18 += [other_patient(j) for j in hc18]  # one sample is RLE-compressed: a key of its own
    for name in NAMES:
        writer = dataclasses.replace(writer_of(name), templates={})
        for i, job in enumerate(hc18 * 2):
            now = T0 + timedelta(seconds=i)
            encoded = writer.encode(job.source, job.analysis, job.settings, job.station, now)
            assert encoded is not None
            build = writer.builder_for(job.analysis.application)
            assert build is not None
            expected = encode(reference(context(writer, job, now), build))
            assert encoded == (expected, context(writer, job, now).uids.instance), (name, job.label)
        # each key: seen, compiled, checked, then rendered (the later half of the jobs, about)
        assert sum(t.rendered for t in writer.templates.values()) >= len(hc18) // 2, name


def test_a_fast_path_missing_a_slot_never_becomes_active(jobs: list[Job]) -> None:
    writer = writer_of("sr")
    fast = writer.fast["fetal-head"]
    broken = FastPath(fast.key, lambda ctx: {k: v for k, v in fast.job_slots(ctx).items() if k != "number.hc"})
    hc18 = [j for j in jobs if j.label.startswith("hc18")]
    ctx = context(writer, hc18[0], T0)
    build = writer.builders["fetal-head"]
    # The perturbed source does not reveal it (the number is the analysis's, not the source's) ...
    template = compile_for(
        broken, ctx, build, lambda source: writer.context(source, ctx.analysis, ctx.settings, "TEST", T0)
    )
    # ... another job of the key does: its HC would be the first job's.
    other = context(writer, hc18[1], T0)
    assert template.render(job_values(other, broken.slots(other))) != encode(reference(other, build))
    templates = Templates(broken)
    for i, job in enumerate(hc18 * 2):
        now = T0 + timedelta(seconds=i)
        ctx = context(writer, job, now)
        data, _ = templates.write(ctx, build, functools.partial(_context_for, writer, job, now))
        assert data == encode(reference(ctx, build))
    assert templates.rendered == 0


def test_a_job_whose_slots_do_not_fit_its_template_takes_the_reference_path(jobs: list[Job]) -> None:
    writer = dataclasses.replace(writer_of("sr"), templates={})
    hc18 = [j for j in jobs if j.label.startswith("hc18")]
    hc18 += [other_patient(j) for j in hc18]
    for i, job in enumerate(hc18):
        writer.encode(job.source, job.analysis, job.settings, job.station, T0 + timedelta(seconds=i))
    templates = writer.templates["fetal-head"]
    assert any(s.active for s in templates.states.values())
    fast = templates.fast
    templates.fast = FastPath(fast.key, lambda ctx: {**fast.job_slots(ctx), "extra": ("TextValue", "x")})
    before = templates.rendered
    job = hc18[0]
    encoded = writer.encode(job.source, job.analysis, job.settings, job.station, T0)
    assert encoded is not None and encoded[0] == encode(
        reference(context(writer, job, T0), writer.builders["fetal-head"])
    )
    assert templates.rendered == before


def _context_for(writer: OutputWriter, job: Job, now: datetime, source: Dataset) -> OutputContext:
    return writer.context(source, job.analysis, job.settings, job.station, now)


def _explain(rendered: bytes, expected: bytes) -> None:
    """Print the elements that differ (shown with a failing assertion)."""
    got, want = dcmread(BytesIO(rendered)), dcmread(BytesIO(expected))
    from fetalnode.outputs.template import walk

    for x, y in zip(walk(got), walk(want), strict=False):
        if x.tag != y.tag or (x.VR != "SQ" and x.value != y.value):
            print("differs:", x.keyword, repr(x.value)[:80], "!=", repr(y.value)[:80])
