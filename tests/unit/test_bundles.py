"""The shipped bundles load, reproduce the outputs stored at training time, and explain sensibly."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread

from fetalnode.cli import main
from fetalnode.inference import Analyzer
from fetalnode.inference.analyzer import seg_settings, segment_probability
from fetalnode.inference.bundle import load_bundle, onnx_runner, read_metadata
from fetalnode.inference.ellipse import Ellipse, fit_ellipse
from fetalnode.inference.preprocess import to_unit_range
from fetalnode.intake import decode_for_analysis
from fetalnode.training.classifier import classifier_reference, cls_model_card
from fetalnode.training.labour import labour_model_card
from fetalnode.training.metadata import SCHEMAS, SegMetadata, checked, schema_problems
from fetalnode.training.reference import segmentation_reference
from fetalnode.training.segmentation import seg_model_card
from fetalnode.training.view import view_model_card
from harness.node import MODELS
from tests.conftest import DATA, SAMPLES

pytestmark = pytest.mark.unit
SEG, CLS = MODELS / "hc18-headseg", MODELS / "fba-classifier"
LABOUR = MODELS / "psfhs-seg"
VIEW = MODELS / "fetal-view"


def test_weights_are_small_and_metadata_complete() -> None:
    total = sum(p.stat().st_size for p in MODELS.rglob("models/*") if p.is_file())
    assert total < 30 * 2**20
    for path in (SEG, CLS):
        meta = load_bundle(path).metadata
        assert meta["intended_use"].startswith("RESEARCH USE ONLY")
        assert meta["training_data"] and meta["training_data"][0]["licence"]
        assert "split" in meta["metrics"] and meta["metrics"]["n"] > 0
        assert (path / "docs" / "README.md").is_file()


def test_segmentation_reproduces_stored_reference() -> None:
    seg = load_bundle(SEG)
    stored = seg.metadata["reference_outputs"]
    assert len(stored) >= 3
    for now, then in zip(segmentation_reference(seg, DATA, len(stored)), stored, strict=True):
        assert now["image"] == then["image"]
        assert (now["ellipse"] is None) == (then["ellipse"] is None)
        if then["ellipse"] is not None:
            assert np.allclose(now["ellipse"], then["ellipse"], atol=0.05), (now, then)


def test_classifier_reproduces_stored_reference() -> None:
    seg, cls = load_bundle(SEG), load_bundle(CLS)
    ref = cls.metadata["reference_outputs"]
    assert ref["segmentation_bundle"] == f"{seg.name} {seg.version}", "classifier was trained on another seg bundle"
    params = cls.metadata["input"]
    roi_size, margin = int(params["roi_size"]), float(params["roi_margin"])
    now = classifier_reference(cls.net, seg, DATA, roi_size, margin, len(ref["images"]))
    for a, b in zip(now, ref["images"], strict=True):
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-4), (a, b)


def test_onnx_export_matches_torch() -> None:
    """The shipped ONNX graph equals the torch network within 1e-4, whichever runtime the bundle uses."""
    seg = load_bundle(SEG)
    onnx = onnx_runner(seg.path, seg.metadata)
    x = torch.rand(1, 1, *seg.metadata["input"]["canvas_hw"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float((onnx(x) - seg.net(x)).abs().max()) < 1e-4


def test_gradcam_changes_when_classifier_weights_are_randomised() -> None:
    """Adebayo et al.'s model-randomisation check: a saliency map that survives it explains nothing."""
    seg, cls = load_bundle(SEG), load_bundle(CLS)
    decoded = decode_for_analysis(dcmread(SAMPLES / "hc18_669_HC.dcm"), 10**8, 10)
    image = decoded.gray
    trained = Analyzer(seg, cls).analyze(image, decoded.spacing_mm)
    assert trained.analysed and trained.heatmap is not None
    random_cls = copy.deepcopy(cls)
    torch.manual_seed(0)
    for module in random_cls.net.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    randomised = Analyzer(seg, random_cls).analyze(image, decoded.spacing_mm)
    assert randomised.heatmap is not None
    inside = trained.heatmap > 0
    a, b = trained.heatmap[inside], randomised.heatmap[inside]
    correlation = float(np.corrcoef(a, b)[0, 1])
    assert correlation < 0.5, f"heatmap barely changed (r={correlation:.2f})"


def test_head_mask_is_the_region_the_ellipse_is_fitted_to() -> None:
    """The analysis keeps the head mask (source pixels) the SEG writes; the ellipse is fitted to it."""
    seg, cls = load_bundle(SEG), load_bundle(CLS)
    decoded = decode_for_analysis(dcmread(SAMPLES / "hc18_104_HC.dcm"), 10**8, 10)
    result = Analyzer(seg, cls).analyze(decoded.gray, decoded.spacing_mm)
    mask, ellipse = result.head_mask, result.ellipse
    assert mask is not None and ellipse is not None
    assert mask.dtype == bool and mask.shape == decoded.gray.shape
    settings = seg_settings(seg)
    prob = segment_probability(seg.infer, settings.canvas_hw, to_unit_range(decoded.gray))
    assert (mask & (prob < 0.5)).sum() <= 0.01 * mask.sum()  # only filled holes are below the threshold
    fit = fit_ellipse(prob, mask=mask)
    assert fit is not None
    k = settings.axis_scale
    assert Ellipse(fit.cx, fit.cy, fit.a * k, fit.b * k, fit.angle_deg) == ellipse


@pytest.mark.parametrize(
    ("path", "card"),
    [(SEG, seg_model_card), (CLS, cls_model_card), (LABOUR, labour_model_card), (VIEW, view_model_card)],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_model_card_is_what_its_metadata_renders(path: Path, card) -> None:
    """A card is never edited by hand: its History too comes from the metadata, so re-rendering keeps it."""
    meta = read_metadata(path)
    written = (path / "docs" / "README.md").read_text(encoding="utf-8")
    assert written == card(meta)
    history = written.split("\n## History\n", 1)[1].splitlines()
    assert meta["history"] and sum(line.startswith("- ") for line in history) == len(meta["history"])


@pytest.mark.parametrize("path", sorted(p for p in MODELS.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_shipped_metadata_fits_its_task_schema(path: Path) -> None:
    """Every key of a shipped bundle's metadata is in its task's schema, every required one is there."""
    meta = read_metadata(path)
    assert schema_problems(SCHEMAS[meta["task"]], meta, unknown=True) == []
    assert checked(SCHEMAS[meta["task"]], meta) is meta


def test_metadata_missing_a_required_key_is_refused() -> None:
    meta = read_metadata(SEG)
    del meta["metrics"]["dice_mean"]
    with pytest.raises(ValueError, match=r"metadata\.metrics: no 'dice_mean'"):
        checked(SegMetadata, meta)


def test_finalize_without_the_reference_folder_leaves_a_bundle_with_reference_outputs_alone(
    tmp_path: Path, caplog
) -> None:
    bundle = shutil.copytree(SEG, tmp_path / "hc18-headseg")
    before = (bundle / "configs" / "metadata.json").read_bytes()
    assert main(["models", "finalize", str(bundle), "--gate", "0.9,0.9", "--data", str(DATA / "hc18_mini")]) == 2
    assert "--reference-data" in caplog.text
    assert (bundle / "configs" / "metadata.json").read_bytes() == before


def test_finalize_history_adds_lines_to_the_card_and_leaves_the_weights(tmp_path: Path, capsys) -> None:
    bundle = shutil.copytree(LABOUR, tmp_path / "psfhs-seg")
    before = read_metadata(bundle)
    lines = ["2099-01-01, a line about what changed and why", "2099-01-02, a second line"]
    assert main(["models", "finalize", str(bundle), "--history", lines[0], "--history", lines[1]]) == 0
    after = read_metadata(bundle)
    assert after["history"] == [*before["history"], *lines]
    assert json.loads(capsys.readouterr().out)["history"] == after["history"]
    assert {k: v for k, v in after.items() if k != "history"} == {k: v for k, v in before.items() if k != "history"}
    card = (bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert card == labour_model_card(after) and card.rstrip().endswith(f"- {lines[1]}")
    assert load_bundle(bundle).version == before["version"]
