"""No value of a job outside its template's slots (outputs/template.py fails closed).

A value a writer writes but does not declare as a slot becomes fixed bytes of its template. Two guards,
tested here:

* every scalar an analysis carries (numbers, text, tuples of them: the result's fields and those of its
  ellipse, biometry, geometry; the decoded frame's; the view's; the models) and the middle element of each
  of its arrays (masks, the fused image, contours), perturbed one at a time:
  the template of the unperturbed job's key renders the perturbed job exactly as the reference path
  builds it, or the perturbed job has another key (then the reference path builds it). A value the
  builder writes but no slot carries fails this, whatever the two jobs a template was checked on;
* at run time, a template that passed its two checks but misses a slot (the confidence of the head SR) is
  caught by the sampled comparison with the reference path: that writer's templates are turned off, the
  ``output-templates-disabled`` audit event is written, the job gets the reference bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fetalnode import dicomio
from fetalnode.applications.base import Analysis
from fetalnode.audit import AuditLog
from fetalnode.outcomes import Received, Verdict
from fetalnode.outputs.registry import OutputContext, OutputWriter
from fetalnode.outputs.template import (
    CLOCK_KEYWORDS,
    Disabled,
    FastPath,
    SlotError,
    Template,
    Templates,
    compile_for,
    encode,
    job_values,
    reference,
    template_key,
    walk,
)
from fetalnode.runner import Runtime, run_job
from fetalnode.vocab import AuditEvent
from tests.head import FixedHead
from tests.output_cases import (
    CLOCK,
    SETTINGS,
    STATION,
    Case,
    all_cases,
    builder,
    builtin_writers,
    context,
    registered_as,
)

pytestmark = pytest.mark.unit

# The jobs perturbed: a calibrated normal head, an uncalibrated abnormal one with its type, a head chosen by
# the view router (its view line), the router's "no application", a labour image analysed (calibrated) and
# one not analysed.
PERTURBED = ["hc18_104_HC", "fba_ventriculomegaly_moderate_fba_01465", "routed", "no-application"]
PERTURBED += ["labour-calibrated", "labour-not-analysed"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return {case.label: case for case in all_cases(tmp_path_factory.mktemp("slots"))}


# --- every scalar of an analysis, perturbed ------------------------------------------------------------


def _nudged(value: Any) -> Any:
    """A value close to ``value`` that no rounding of the writers hides (None: not a scalar)."""
    if isinstance(value, bool | enum.Enum) or value is None:
        return None
    if isinstance(value, float):
        return value * 0.97 + 0.0113
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "~"
    return None


def _nudged_array(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` with its middle element changed (a mask's pixel, an RGB value, a coordinate)."""
    out = array.copy()
    middle = tuple(n // 2 for n in out.shape)
    if out.dtype == bool:
        out[middle] = not out[middle]
    elif np.issubdtype(out.dtype, np.integer):
        out[middle] ^= 1
    else:
        out[middle] = out[middle] * 0.97 + 0.0113
    return out


def perturbations(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, copy of obj with one value changed)`` for every scalar in ``obj`` (dataclass fields and tuple
    items, recursively) and the middle element of every array (dicts, booleans and enums are left alone)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            for sub, changed in perturbations(value, f"{path}.{f.name}"):
                yield sub, dataclasses.replace(obj, **{f.name: changed})
    elif isinstance(obj, tuple):
        for i, item in enumerate(obj):
            for sub, changed in perturbations(item, f"{path}[{i}]"):
                yield sub, (*obj[:i], changed, *obj[i + 1 :])
    elif isinstance(obj, np.ndarray):
        if obj.size:
            yield f"{path}[middle]", _nudged_array(obj)
    else:
        nudged = _nudged(obj)
        if nudged is not None:
            yield path, nudged


def test_perturbations_reach_every_kind_of_scalar(cases: dict[str, Case]) -> None:
    paths = dict(perturbations(cases["hc18_104_HC"].analysis))
    for path in (".result.p_abnormal", ".result.ellipse.cx", ".result.biometry.hc_mm", ".result.cls_model[1]"):
        assert path in paths, sorted(paths)
    assert paths[".result.p_abnormal"].result.p_abnormal != cases["hc18_104_HC"].analysis.result.p_abnormal
    assert ".decoded.spacing_mm[0]" in paths and ".models[0][0]" in paths and ".result.head_mask[middle]" in paths
    labour = dict(perturbations(cases["labour-calibrated"].analysis))
    assert ".result.geometry.aop_deg" in labour and ".result.geometry.vertex[1]" in labour, sorted(labour)


def _compiled(writer: OutputWriter, case: Case) -> tuple[FastPath, Template, OutputContext]:
    fast = writer.fast[registered_as(writer, case.analysis)]
    build = builder(writer, case)
    assert build is not None
    ctx = context(writer, case)

    def context_for(source: Dataset) -> OutputContext:
        return writer.context(source, case.analysis, SETTINGS, STATION, CLOCK)

    return fast, compile_for(fast, ctx, build, context_for), ctx


def test_no_value_of_an_analysis_is_written_outside_the_slots(cases: dict[str, Case]) -> None:
    counted: dict[str, dict[str, int]] = {}
    unslotted: list[str] = []
    for writer in builtin_writers():
        tally = counted.setdefault(writer.name, {"rendered": 0, "changed": 0, "other key": 0, "refused": 0})
        for label in PERTURBED:
            case = cases[label]
            build = builder(writer, case)
            if build is None or registered_as(writer, case.analysis) not in writer.fast:
                continue
            fast, template, ctx = _compiled(writer, case)
            key, before = template_key(fast, ctx), encode(reference(ctx, build))
            for path, analysis in perturbations(case.analysis):
                other = writer.context(case.source, analysis, SETTINGS, STATION, CLOCK)
                try:
                    same_key = template_key(fast, other) == key
                except Exception:  # no key: the reference path builds it
                    same_key = False
                if not same_key:
                    tally["other key"] += 1
                    continue
                try:
                    expected = encode(reference(other, build))
                except Exception:  # the builder refuses the perturbed analysis: so would the node
                    tally["refused"] += 1
                    continue
                try:
                    rendered = template.render(job_values(other, fast.slots(other)))
                except SlotError:  # the slots do not fit: the reference path builds it
                    tally["other key"] += 1
                    continue
                if rendered != expected:
                    unslotted.append(f"output {writer.name!r}, job {label}: {path}")
                    continue
                tally["rendered"] += 1
                tally["changed"] += int(expected != before)  # the value is in the object: a slot carried it
    assert not unslotted, (
        "these values change the object, but no slot of the writer's fast path carries them and the key does not "
        "change (declare each in the writer's slots, or in its key if it shapes the object):\n" + "\n".join(unslotted)
    )
    for name, tally in counted.items():
        assert tally["rendered"] >= 10, (name, tally)  # the perturbations do reach the slots of every writer
        assert tally["changed"] >= 1, (name, tally)


# --- the run-time check --------------------------------------------------------------------------------


def _without_confidence(fast: FastPath) -> FastPath:
    """The head SR's fast path, its confidence forgotten (as a writer could forget a new value)."""
    return FastPath(
        fast.key,
        lambda ctx: {
            k: v for k, v in fast.job_slots(ctx).items() if k not in ("number.confidence", "float.confidence")
        },
    )


def _sr_writer(broken: bool) -> OutputWriter:
    """A writer of its own (not registered) with the head SR's builder, revision and (broken) fast path."""
    sr = next(w for w in builtin_writers() if w.name == "sr")
    fast = sr.fast["fetal-head"]
    return OutputWriter(
        "sr-test",
        builders={"fetal-head": sr.builders["fetal-head"]},
        revisions={"fetal-head": sr.revisions["fetal-head"]},
        fast={"fetal-head": _without_confidence(fast) if broken else fast},
    )


def another_instance(ds: Dataset, i: int) -> Dataset:
    """The image under another patient and SOP instance (the same template key)."""
    copy = dicomio.read(dicomio.encode(ds))
    copy.PatientName, copy.PatientID = f"Someone^Else{i}", f"PID-{i}"
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[str(ds.SOPInstanceUID), str(i)]
    )
    return dicomio.read(dicomio.encode(copy))


def _run(runtime: Runtime, ds: Dataset, job_id: int) -> bytes:
    data = dicomio.encode(ds)
    received = Received(job_id, str(ds.SOPInstanceUID), hashlib.sha256(data).hexdigest(), lambda: data, STATION)
    outcome = run_job(received, runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return outcome.built["sr-test"]


def _expected(writer: OutputWriter, ds: Dataset, analysis: Analysis) -> bytes:
    """The reference path's object of the job (at the test's clock)."""
    ctx = writer.context(ds, analysis, SETTINGS, STATION)
    build = writer.builder_for(analysis.application)
    assert build is not None
    return encode(reference(ctx, build))


def _same_but_clock(a: bytes, b: bytes) -> bool:
    """Equal objects up to the clock (the runner stamps "now", not a test's clock), element by element."""
    x, y = (dcmread(BytesIO(data)) for data in (a, b))
    return len(a) == len(b) and all(
        p.tag == q.tag and (p.VR == "SQ" or p.keyword in CLOCK_KEYWORDS or p.value == q.value)
        for p, q in zip(walk(x), walk(y), strict=True)
    )


def test_a_missing_slot_that_passed_both_checks_is_caught_at_run_time(
    cases: dict[str, Case], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = _sr_writer(broken=True)
    head = FixedHead(p_abnormal=0.08)
    audit = AuditLog(tmp_path / "audit.jsonl")
    runtime = Runtime(head, [writer], [], SETTINGS, audit=audit)
    hc18, fba = cases["hc18_104_HC"].source, cases["fba_normal_fba_00786"].source
    # Two keys (a calibrated and an uncalibrated image), each seen, compiled and checked on jobs with the same
    # confidence: the forgotten slot goes unnoticed, both templates are active.
    for i in range(3):
        for ds in (hc18, fba):
            _run(runtime, another_instance(ds, i), job_id=i)
    templates = writer.templates["fetal-head"]
    assert sum(s.active for s in templates.states.values()) == 2
    rendered = _run(runtime, another_instance(hc18, 10), job_id=10)  # the same confidence: rendered, checked
    assert (templates.rendered, templates.verified, templates.disabled) == (1, 1, False)
    # Another confidence: the template would write the first jobs' 92%; the check finds it.
    head.p_abnormal = 0.31
    job = another_instance(hc18, 11)
    with caplog.at_level(logging.ERROR, logger="fetalnode.outputs.template"):
        data = _run(runtime, job, job_id=11)
    assert templates.disabled and templates.rendered == 1
    assert data != rendered and _same_but_clock(data, _expected(writer, job, head.answers[-1]))
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == [str(AuditEvent.OUTPUT_TEMPLATES_DISABLED)]
    event = events[0]
    assert (event["job"], event["sop_uid"], event["output"], event["application"]) == (
        11,
        str(job.SOPInstanceUID),
        "sr-test",
        "fetal-head",
    )
    assert event["element"] in ("FloatingPointValue", "NumericValue") and event["renders"] == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "sr-test" in errors[0].getMessage()
    for text in (json.dumps(event), errors[0].getMessage()):  # no patient data
        assert "Someone" not in text and "PID-" not in text
    # Every key of the writer and application is off: the other key's job is the reference path's too.
    head.p_abnormal = 0.08
    for i, ds in enumerate((hc18, fba)):
        other = another_instance(ds, 20 + i)
        assert _same_but_clock(_run(runtime, other, job_id=20 + i), _expected(writer, other, head.answers[-1]))
    assert templates.rendered == 1
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 1  # told once


def test_the_first_renders_of_a_key_then_one_in_m_are_checked(cases: dict[str, Case]) -> None:
    writer = _sr_writer(broken=False)
    fast, build = writer.fast["fetal-head"], writer.builders["fetal-head"]
    templates = Templates(fast, "sr-test", "fetal-head", verify_first=2, verify_every=3)
    told: list[Disabled] = []
    source = cases["hc18_104_HC"].source
    for i in range(3 + 11):  # seen, compiled, checked; then 11 renders
        ds = another_instance(source, i)
        analysis = FixedHead(p_abnormal=0.01 * i).analyse(ds)
        ctx = writer.context(ds, analysis, SETTINGS, STATION, CLOCK + timedelta(seconds=i))

        def context_for(other: Dataset, analysis: Analysis = analysis, i: int = i) -> OutputContext:
            return writer.context(other, analysis, SETTINGS, STATION, CLOCK + timedelta(seconds=i))

        data, uid = templates.write(ctx, build, context_for, told.append)
        assert data == encode(reference(ctx, build)) and uid == ctx.uids.instance
    # renders 1 and 2, then 5, 8 and 11 (one in 3 after the first 2)
    assert (templates.rendered, templates.verified, told) == (11, 5, [])
    assert [n for n in range(1, 12) if templates.due(n)] == [1, 2, 5, 8, 11]
