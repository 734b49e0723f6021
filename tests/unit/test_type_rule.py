"""Honest malformation types: calibrated probabilities, the bundle's reporting rule applied by the analyzer
and followed by every output, and the Secondary Capture banner on small images."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.config import load_settings
from fetalnode.inference import Analyzer
from fetalnode.inference.bundle import Bundle, load_bundle
from fetalnode.inference.calibration import Calibration, TypeRule, abnormal_logit, calibrated, sigmoid, softmax
from fetalnode.intake import decode_for_analysis
from fetalnode.outcomes import Received
from fetalnode.outputs import codes as fc
from fetalnode.outputs.capture import banner_font, banner_layout, burn_banner
from fetalnode.outputs.findings import read_finding
from fetalnode.outputs.registry import enabled_writers
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from fetalnode.training.calibration import (
    MIN_CORRECT_GROUPS,
    calibration_errors,
    choose_type_threshold,
    ece,
    fit_temperature,
    reportable,
    type_precision,
)
from fetalnode.vocab import TypeNote
from harness.node import MODELS
from tests.conftest import SAMPLES

pytestmark = pytest.mark.unit
ABNORMAL = SAMPLES / "fba_ventriculomegaly_moderate_fba_01465.dcm"  # called abnormal by the shipped models
NOT_DETERMINED = TypeNote.NOT_DETERMINED.value


# --- calibration and the rule, on synthetic numbers -------------------------------------------------


def test_abnormal_logit_is_the_log_odds_of_the_softmax() -> None:
    logits = np.random.default_rng(0).normal(size=(50, 5)) * 3
    p = softmax(logits)
    for normal in (0, 2, 4):
        z = abnormal_logit(logits, normal)
        assert np.allclose(sigmoid(z), 1 - p[:, normal])
        p_abn, types = calibrated(logits, normal, Calibration())
        assert np.allclose(p_abn, 1 - p[:, normal])
        assert np.allclose(types, np.delete(p, normal, axis=1) / (1 - p[:, normal : normal + 1]))


def test_temperature_fit_recovers_the_temperature_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20000, 4)) * 4
    for true_t in (0.5, 2.5):
        p = softmax(logits / true_t)
        y = (rng.random((len(p), 1)) > p.cumsum(axis=1)).sum(axis=1)
        assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.05)


def test_ece_by_hand_and_temperature_scaling_lowers_it() -> None:
    # Two bins: 0.95 confident and right 1 of 2 (gap 0.45), 0.55 confident and right 1 of 2 (gap 0.05).
    assert ece(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1, 0, 1, 0])) == pytest.approx((0.45 + 0.05) / 2)
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3000, 3)) * 2
    p = softmax(logits)
    y = (rng.random((len(p), 1)) > p.cumsum(axis=1)).sum(axis=1)  # calibrated at T = 1
    groups = np.arange(len(y)) % 60
    overconfident = logits * 4  # what an over-fitted network gives: T = 4 undoes it
    t = fit_temperature(np.stack([0 * y, abnormal_logit(overconfident, 0)], 1), (y != 0).astype(int))
    assert t == pytest.approx(4, rel=0.15)
    report = calibration_errors(
        overconfident,
        y,
        groups,
        0,
        {
            "before": Calibration(),
            "after": Calibration(t, fit_temperature(overconfident[y != 0][:, 1:], y[y != 0] - 1)),
        },
    )
    for kind in ("abnormal", "type"):
        before, after = report[kind]["before"]["ece"], report[kind]["after"]["ece"]
        assert after < 0.03 < 0.1 < before, (kind, before, after)
        lo, hi = report[kind]["after"]["ece_ci95"]
        assert lo <= after <= hi


def _naming(per_group: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(named label, true label, group) for each image from (named, truth, images) per group."""
    named, y, groups = [], [], []
    for g, (n, t, k) in enumerate(per_group):
        named += [n] * k
        y += [t] * k
        groups += [g] * k
    return np.array(named), np.array(y), np.array(groups)


def test_a_type_is_reportable_only_with_precise_namings_from_enough_case_groups() -> None:
    labels = ["a", "b", "c", "normal"]
    normal = 3
    groups_spec = (
        [(0, 0, 4)] * 8  # "a": named in 8 groups, always right
        + [(1, 1, 20)] * (MIN_CORRECT_GROUPS - 1)  # "b": always right, but in too few case groups
        + [(2, 2, 3)] * 5
        + [(2, 0, 3)] * 5  # "c": right half of the time
        + [(-1, 3, 5)] * 10  # normals called normal
    )
    named, y, groups = _naming(groups_spec)
    table = type_precision(named, y, groups, labels, normal)
    assert set(table) == {"a", "b", "c"}
    assert table["a"]["precision"] == 1.0 and table["a"]["correct_case_groups"] == 8
    assert table["c"]["precision"] == pytest.approx(0.5) and table["c"]["recall"] == 1.0
    assert table["a"]["recall"] == pytest.approx(32 / 47)  # "a" images: 32 named right + 15 named "c"
    assert [reportable(table[k])[0] for k in "abc"] == [True, False, False]
    assert "case groups" in reportable(table["b"])[1] and "lower bound" in reportable(table["c"])[1]
    lo, hi = table["c"]["precision_ci95"]
    assert lo < 0.5 < hi


def test_the_threshold_is_the_lowest_probability_from_which_validation_namings_are_right() -> None:
    named = np.array([0, 0, 0, 0, 0, 1, 1])
    y = np.array([1, 1, 1, 0, 0, 1, 0])
    p = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 0.3])
    groups = np.arange(len(y))
    assert choose_type_threshold(named, p, y, groups, {0}) == 0.4  # from 0.3: 2 of 5 right; from 0.4: 2 of 4
    assert choose_type_threshold(named, p, y, groups, {0, 1}) == 0.4  # from 0.4: 3 of 5
    assert choose_type_threshold(named, p, y, groups, {1}) is None  # one correct naming: one case group
    assert choose_type_threshold(named, p, y, groups, set()) is None  # nothing reportable: no threshold


def test_a_bundle_without_the_rule_names_no_type() -> None:
    assert not TypeRule.from_metadata({}).allows("a", 1.0)
    rule = TypeRule.from_metadata({"type_reporting": {"reportable_types": ["a"], "type_probability_threshold": 0.6}})
    assert rule.allows("a", 0.6) and not rule.allows("a", 0.59) and not rule.allows("b", 1.0)
    never = {"type_reporting": {"reportable_types": ["a"], "type_probability_threshold": None}}
    assert not TypeRule.from_metadata(never).allows("a", 1.0)
    assert Calibration.from_metadata({}) == Calibration(1.0, 1.0)
    with pytest.raises(ValueError):
        Calibration.from_metadata({"calibration": {"abnormal_temperature": 0}})


# --- the analyzer applies the bundle's rule and temperatures -------------------------------------


@pytest.fixture(scope="module")
def bundles() -> tuple[Bundle, Bundle]:
    return load_bundle(MODELS / "hc18-headseg"), load_bundle(MODELS / "fba-classifier")


@pytest.fixture(scope="module")
def abnormal_image() -> tuple[np.ndarray, tuple[float, float] | None]:
    decoded = decode_for_analysis(dcmread(ABNORMAL), 10**8, 10)
    return decoded.gray, decoded.spacing_mm


def with_metadata(cls: Bundle, **blocks: object) -> Bundle:
    meta = copy.deepcopy(cls.metadata)
    meta.update(blocks)
    return dataclasses.replace(cls, metadata=meta)


def rule(types: list[str], threshold: float | None) -> dict[str, object]:
    return {"reportable_types": types, "type_probability_threshold": threshold}


def test_the_shipped_bundle_names_no_type(bundles, abnormal_image) -> None:
    seg, cls = bundles
    assert cls.metadata["type_reporting"]["reportable_types"] == []
    result = Analyzer(seg, cls).analyze(*abnormal_image)
    assert result.finding == "abnormal"
    assert (result.malformation_type, result.type_note, result.type_probability) == ("", NOT_DETERMINED, 0.0)
    assert result.type_words() == NOT_DETERMINED
    summary = result.summary()
    assert summary["malformation_type"] == "" and summary["type_note"] == NOT_DETERMINED


def test_a_type_is_named_only_when_the_metadata_allows_it(bundles, abnormal_image) -> None:
    seg, cls = bundles
    probe = Analyzer(seg, with_metadata(cls, type_reporting=rule([], None))).analyze(*abnormal_image)
    types = {k: v for k, v in probe.class_probabilities.items() if k != "normal"}
    top = max(types, key=types.__getitem__)
    other = next(k for k in types if k != top)
    p_top = types[top] / probe.p_abnormal
    cases = [
        (rule([top], 0.0), top),
        (rule([top], p_top - 1e-6), top),
        (rule([top], p_top + 1e-3), ""),  # allowed type, probability below the threshold
        (rule([other], 0.0), ""),  # another type allowed: the most probable one is still not named
        (rule([top], None), ""),  # no threshold: never
        (rule([], 0.0), ""),
    ]
    for block, expected in cases:
        result = Analyzer(seg, with_metadata(cls, type_reporting=block)).analyze(*abnormal_image)
        assert result.finding == "abnormal"
        assert result.malformation_type == expected, block
        assert result.type_note == ("" if expected else NOT_DETERMINED)
        assert result.type_probability == (pytest.approx(p_top) if expected else 0.0)
        assert result.type_words() == (f"suspected {top.replace('_', ' ')}" if expected else NOT_DETERMINED)


def test_the_temperatures_are_applied(bundles, abnormal_image) -> None:
    seg, cls = bundles
    allow_all = rule(sorted(set(cls.metadata["labels"]) - {"normal"}), 0.0)

    def run(t_abn: float, t_type: float):
        calibration = {"abnormal_temperature": t_abn, "type_temperature": t_type}
        return Analyzer(seg, with_metadata(cls, calibration=calibration, type_reporting=allow_all)).analyze(
            *abnormal_image
        )

    raw, hot = run(1.0, 1.0), run(3.0, 2.0)
    z = np.log(raw.p_abnormal / (1 - raw.p_abnormal))
    assert hot.p_abnormal == pytest.approx(float(sigmoid(z / 3.0)), rel=1e-6)
    assert hot.p_abnormal < raw.p_abnormal and hot.confidence == pytest.approx(hot.p_abnormal)
    # P(type | abnormal) at T = 2 from the raw type probabilities (log-probabilities are logits + a constant).
    names = [k for k in raw.class_probabilities if k != "normal"]
    log_types = np.log([raw.class_probabilities[k] for k in names])
    expected = softmax(log_types / 2.0)
    assert hot.malformation_type == raw.malformation_type == names[int(expected.argmax())]
    assert hot.type_probability == pytest.approx(float(expected.max()), rel=1e-5)
    assert hot.finding == raw.finding  # a temperature changes no decision
    shipped = Analyzer(seg, cls).analyze(*abnormal_image)
    t_shipped = cls.metadata["calibration"]["abnormal_temperature"]
    assert shipped.p_abnormal == pytest.approx(float(sigmoid(z / t_shipped)), rel=1e-6)


# --- every output follows the rule ------------------------------------------------------------------

OUTPUTS = ["sr", "sc", "gsps", "obsr"]


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    # The head application itself (behind the view router in the default configuration).
    settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS), "worker.application": "fetal-head"})
    rt = build_runtime(settings, destinations=[])
    return dataclasses.replace(rt, writers=enabled_writers(OUTPUTS, rt.application.applications))


def outputs_of(runtime: Runtime, path: Path) -> tuple[dict, dict[str, Dataset]]:
    data = path.read_bytes()
    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), runtime)
    assert outcome.built, outcome.reason
    return outcome.summary, {name: dcmread(BytesIO(outcome.built[name])) for name in OUTPUTS}


def texts(objects: dict[str, Dataset]) -> dict[str, str]:
    """What a person reads in each object: SR and OB-GYN SR text items, the SC banner, the GSPS text."""

    def walk(items) -> list[str]:
        out = []
        for item in items or []:
            if item.get("ValueType") == "TEXT":
                out.append(str(item.TextValue))
            out += walk(item.get("ContentSequence"))
        return out

    gsps = objects["gsps"].GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    return {
        "sr": " ".join(walk(objects["sr"].ContentSequence)),
        "obsr": " ".join(walk(objects["obsr"].ContentSequence)),
        "sc": str(objects["sc"].ImageComments),
        "gsps": str(gsps),
    }


def sr_codes(sr: Dataset) -> list[tuple[str, str]]:
    out = []

    def walk(items) -> None:
        for item in items or []:
            for code in [*item.get("ConceptCodeSequence", []), *item.get("ConceptNameCodeSequence", [])]:
                out.append((str(code.CodeValue), str(code.CodingSchemeDesignator)))
            walk(item.get("ContentSequence"))

    walk(sr.ContentSequence)
    return out


def type_names(runtime: Runtime) -> list[str]:
    labels = runtime.application.analyzer.labels  # type: ignore[attr-defined]
    return [label.replace("_", " ") for label in labels if label != "normal"]


def test_every_output_says_type_not_determined(runtime) -> None:
    summary, objects = outputs_of(runtime, ABNORMAL)
    assert summary["finding"] == "abnormal" and summary["type_note"] == NOT_DETERMINED
    shown = texts(objects)
    for name, text in shown.items():
        assert NOT_DETERMINED in text.lower(), (name, text)
        assert not [t for t in type_names(runtime) if t in text.lower()], (name, text)
    codes = sr_codes(objects["sr"])
    assert (fhc.TYPE_NOT_DETERMINED.value, "SCT") in codes
    assert not [c for c, scheme in codes if scheme == fc.SCHEME and c.startswith("FNT")]  # no type, no type confidence
    assert (fhc.UNTYPED_ABNORMAL_CONFIDENCE.value, fc.SCHEME) in codes  # the confidence names the finding
    found = read_finding(objects["sr"])
    assert found["readable"] and found["abnormal"]
    assert (found["malformation_type"], found["type_note"]) == ("", NOT_DETERMINED)


def test_every_output_names_the_type_the_rule_allows(runtime) -> None:
    app = runtime.application
    seg, cls = app.analyzer.seg, app.analyzer.cls  # type: ignore[attr-defined]
    allow_all = rule(sorted(set(cls.metadata["labels"]) - {"normal"}), 0.0)
    permissive = dataclasses.replace(app, analyzer=Analyzer(seg, with_metadata(cls, type_reporting=allow_all)))
    summary, objects = outputs_of(dataclasses.replace(runtime, application=permissive), ABNORMAL)
    named = summary["malformation_type"]
    assert named and summary["type_note"] == ""
    for name, text in texts(objects).items():
        assert named.replace("_", " ") in text.lower() and NOT_DETERMINED not in text.lower(), (name, text)
    codes = sr_codes(objects["sr"])
    code = fhc.malformation_code(named)
    assert (str(code.value), str(code.scheme_designator)) in codes
    # each confidence under a concept that names what it is the confidence of ("Abnormal (AI)", "<type> (AI)")
    assert (fhc.ABNORMAL_CONFIDENCE.value, fc.SCHEME) in codes
    assert (fhc.type_confidence_code(named).value, fc.SCHEME) in codes
    found = read_finding(objects["sr"])
    assert found["malformation_type"] == code.meaning and found["type_note"] == ""


# --- the banner on a small image -----------------------------------------------------------------


def test_the_banner_wraps_on_a_320_pixel_wide_image() -> None:
    lines = [
        "AI FINDING: ABNORMAL (99%) - suspected mega cisterna magna  HC 170.2 mm",
        "RESEARCH USE ONLY - NOT FOR DIAGNOSIS - fetalnode fba-classifier 0.9.0",
    ]
    width = 320
    layout = banner_layout(lines, width)
    font = banner_font(layout.size)
    assert len(layout.lines) > len(lines), "the first line does not fit in 320 pixels: it must wrap"
    for _, line in layout.lines:
        assert font.getlength(line) <= width - 2 * layout.pad, line
    for i, line in enumerate(lines):  # every word kept, none cut
        assert [w for j, part in layout.lines if j == i for w in part.split()] == line.split()
    image = np.full((240, width, 3), 40, np.uint8)
    out = burn_banner(image, lines)
    banner = out[: out.shape[0] - 240]
    ink = np.nonzero(banner.max(axis=(0, 2)) > 0)[0]
    assert ink.min() >= layout.pad // 2 and ink.max() < width - layout.pad // 2, "text reaches the image edge"
    assert (out[-240:] == image).all(), "image pixels untouched"
    # The yellow first line's words come before the white second line's.
    rows = [i for i, _ in layout.lines]
    assert rows == sorted(rows) and rows[0] == 0 and rows[-1] == 1
