"""The labour-progress application: the shipped psfhs-seg bundle on bundled PSFHS images wrapped as DICOM,
its gate, and the job runner with the application configured."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis
from fetalnode.applications.registry import build_application
from fetalnode.config import load_settings
from fetalnode.destinations.folder import folder_destination
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.inference.bundle import load_bundle
from fetalnode.inference.labour import LabourResult
from fetalnode.inference.labour_analyzer import (
    FH,
    PS,
    LabourGate,
    gate,
    labour_settings,
    structures_from_probabilities,
)
from fetalnode.outcomes import Received, Verdict
from fetalnode.outputs.registry import OutputContext
from fetalnode.outputs.uids import object_uids
from fetalnode.runner import run_job
from fetalnode.runtime import build_runtime
from fetalnode.training.data import read_labels
from fetalnode.training.evaluate import evaluate_bundle
from fetalnode.training.labour import labour_reference
from fetalnode.wrap import wrap_png
from harness.node import MODELS

pytestmark = pytest.mark.unit
BUNDLE = MODELS / "psfhs-seg"
MINI = Path(__file__).resolve().parents[1] / "data" / "psfhs_mini"


@pytest.fixture(scope="module")
def app():
    settings = load_settings(
        None, env={}, overrides={"models.dir": str(MODELS), "worker.application": "labour-progress"}
    )
    return build_application(settings)


def labour(analysis: Analysis) -> LabourResult:
    assert isinstance(analysis.result, LabourResult), type(analysis.result)
    return analysis.result


def wrapped(name: str, pixel_size_mm: float | None) -> Dataset:
    return wrap_png(MINI / "images" / name, pixel_size_mm=pixel_size_mm)


def reference(name: str) -> dict[str, str]:
    return next(r for r in read_labels(MINI) if r["filename"] == f"images/{name}")


def test_bundle_is_small_complete_and_reproduces_its_stored_outputs() -> None:
    bundle = load_bundle(BUNDLE, "multiclass-segmentation")
    size = sum(p.stat().st_size for p in (BUNDLE / "models").iterdir())
    assert size < 8 * 2**20
    meta = bundle.metadata
    assert meta["intended_use"].startswith("RESEARCH USE ONLY")
    assert meta["labels"] == ["background", "pubic symphysis", "fetal head"]
    assert meta["training_data"][0]["split_by"] == "id_block" and meta["training_data"][0]["licence"] == "CC BY 4.0"
    for key in ("dice_fh_mean", "dice_ps_mean", "aop_abs_diff_deg_mean", "aop_abs_diff_deg_median"):
        assert key in meta["metrics"] and len(meta["metrics"][f"{key}_ci95"]) == 2
    assert (BUNDLE / "docs" / "README.md").read_text().count("RESEARCH USE ONLY") >= 1
    stored = meta["reference_outputs"]
    assert len(stored) >= 3
    for now, then in zip(labour_reference(bundle, MINI.parent, len(stored)), stored, strict=True):
        assert now["image"] == then["image"] and now["reason"] == then["reason"]
        if then["aop_deg"] is not None:
            assert now["aop_deg"] == pytest.approx(then["aop_deg"], abs=0.05)
            assert now["hsd_px"] == pytest.approx(then["hsd_px"], abs=0.05)


def test_calibrated_image_gets_aop_and_hsd_in_mm_with_every_field_filled(app) -> None:
    name = "psfhs_04152.png"
    analysis = app.analyse(wrapped(name, 0.2))
    assert analysis.application == "labour-progress" and analysis.models == (("psfhs-seg", analysis.models[0][1]),)
    result = labour(analysis)
    assert result.analysed and result.reason == "", result.reason
    for field in dataclasses.fields(LabourResult):
        assert getattr(result, field.name) is not None, field.name
    assert result.ps_mask.shape == result.fh_mask.shape == (256, 256)
    assert result.ps_mask.any() and result.fh_mask.any() and not (result.ps_mask & result.fh_mask).any()
    assert result.geometry.ps.contour.shape[1] == 2 and result.geometry.fh.contour.shape[1] == 2
    assert (
        result.geometry.vertex[0] > result.geometry.ps_axis_end[0]
    )  # the vertex is the right-most end of the symphysis axis
    ref = reference(name)
    assert result.geometry.aop_deg == pytest.approx(float(ref["aop_deg"]), abs=10.0)
    assert result.hsd_mm == pytest.approx(0.2 * result.geometry.hsd_px, rel=1e-6)
    assert result.measurement_note == ""
    assert {"segmentation", "measurement"} <= set(result.timings_ms)
    summary = analysis.summary()
    assert summary["application"] == "labour-progress" and summary["aop_deg"] == round(result.geometry.aop_deg, 1)


def test_uncalibrated_image_gets_hsd_in_pixels_only_with_a_note(app) -> None:
    result = labour(app.analyse(wrapped("psfhs_04152.png", None)))
    assert result.analysed and result.geometry.hsd_px is not None and result.hsd_mm is None
    assert "pixels only" in result.measurement_note


def test_an_image_without_the_structures_is_not_analysed(app) -> None:
    ds = wrapped("psfhs_04152.png", 0.2)
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype=np.uint8).tobytes()
    result = labour(app.analyse(ds))
    assert not result.analysed and result.reason.startswith("not analysed: ")
    assert result.geometry.aop_deg is None
    assert result.summary()["analysed"] is False


def probabilities(ps: np.ndarray, fh: np.ndarray, p: float = 0.95) -> np.ndarray:
    probs = np.full((3, *ps.shape), (1 - p) / 2)
    probs[0] = p
    for label, mask in ((PS, ps), (FH, fh)):
        probs[:, mask] = (1 - p) / 2
        probs[label][mask] = p
    return probs


def test_gate_names_the_missing_or_implausible_structure() -> None:
    shape = (100, 100)
    yy, xx = np.mgrid[0:100, 0:100]
    head = (xx - 60) ** 2 + (yy - 60) ** 2 <= 25**2
    ps = (np.abs(xx - 25) < 10) & (np.abs(yy - 20) < 4)
    limits = LabourGate(ps_area=(0.002, 0.12), fh_area=(0.02, 0.7), min_confidence=0.6)
    assert gate(structures_from_probabilities(probabilities(ps, head)), limits) == ""
    assert gate(structures_from_probabilities(probabilities(np.zeros(shape, bool), head)), limits) == (
        "pubic symphysis not found"
    )
    assert gate(structures_from_probabilities(probabilities(ps, np.zeros(shape, bool))), limits) == (
        "fetal head not found"
    )
    huge = (np.abs(xx - 30) < 30) & (yy < 30)
    assert gate(structures_from_probabilities(probabilities(huge, head)), limits).startswith(
        "pubic symphysis implausible"
    )
    unsure = gate(structures_from_probabilities(probabilities(ps, head, p=0.5)), limits)
    assert unsure.startswith("pubic symphysis segmented with low confidence")
    # A speck beside the symphysis is dropped: only the largest region of each structure is kept.
    speck = ps.copy()
    speck[90:92, 5:7] = True
    assert not structures_from_probabilities(probabilities(speck, head)).ps_mask[90:92, 5:7].any()


def test_shipped_gate_passes_the_bundled_images(app) -> None:
    settings = labour_settings(load_bundle(BUNDLE, "multiclass-segmentation"))
    assert settings.gate.ps_area[0] < settings.gate.ps_area[1] and 0.5 <= settings.gate.min_confidence < 1
    analysed = [app.analyse(wrapped(Path(r["filename"]).name, None)).result.analysed for r in read_labels(MINI)]
    assert sum(analysed) >= 10, analysed


def test_a_head_writer_refuses_a_labour_analysis(app) -> None:
    ds = wrapped("psfhs_04152.png", None)
    analysis: Analysis = app.analyse(ds)
    settings = load_settings(None, env={})
    uids = object_uids("sr", str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), analysis.model_version, "")
    ctx = OutputContext(ds, analysis, uids, settings.output, "T")
    assert ctx.result_as(LabourResult) is analysis.result
    with pytest.raises(EncodingError, match="not a AnalysisResult"):
        ctx.result_as(AnalysisResult)


def test_runner_delivers_a_labour_job(tmp_path: Path) -> None:
    """The one runner with the labour application and a writer that takes any application (a site plugin)."""
    settings = load_settings(
        None,
        env={},
        overrides={
            "models.dir": str(MODELS),
            "worker.application": "labour-progress",
            "node.plugins": ["tests.plugins.key_object"],
            "output.enabled": ["ko"],
        },
    )
    runtime = build_runtime(settings, destinations=[folder_destination(tmp_path, ["ko"])])
    ds = wrapped("psfhs_04152.png", 0.2)
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    outcome = run_job(
        Received(job_id=1, sop_uid="", sha256=hashlib.sha256(data).hexdigest(), read=lambda: data, station_name="T"),
        runtime,
    )
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    assert outcome.summary["application"] == "labour-progress" and outcome.summary["aop_deg"] > 0
    assert outcome.summary["hsd_mm"] is not None


def test_evaluate_reports_every_metric_with_a_ci_by_block(tmp_path: Path) -> None:
    report = evaluate_bundle(BUNDLE, MINI, tmp_path / "report.json")
    assert report["n"] == 12 and report["n_groups"] == 10 and report["split"] == "all"
    for key in (
        "dice_fh_mean",
        "dice_ps_mean",
        "aop_abs_diff_deg_mean",
        "aop_abs_diff_deg_median",
        "hsd_abs_diff_px_mean",
        "analysed_rate",
    ):
        lo, hi = report[f"{key}_ci95"]
        assert lo <= report[key] <= hi, key
    assert report["dice_fh_mean"] > 0.8 and report["aop_abs_diff_deg_mean"] < 20
    assert json.loads((tmp_path / "report.json").read_text())["n"] == 12
    lines = (tmp_path / "report_images.csv").read_text().splitlines()
    assert len(lines) == 13 and lines[0].startswith("filename,group,dice_ps,dice_fh")
