"""The model creation end runs: a tiny train -> bundle -> load -> analyse -> evaluate, on shipped data."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fetalnode.errors import BundleError
from fetalnode.inference import Analyzer
from fetalnode.inference.analyzer import seg_settings
from fetalnode.inference.bundle import load_bundle
from fetalnode.inference.networks import (
    build_classifier_net,
    build_segmentation_net,
    transfer_unet_encoder,
    unet_encoder_prefix,
)
from fetalnode.training.classifier import (
    ClsRecipe,
    CropSet,
    abnormal_nll,
    classifier_params,
    fit,
    initial_base,
    predict,
    roi_crops,
    train_classifier,
    usable_rows,
)
from fetalnode.training.data import block_split, case_split, group_split, load_gray, read_labels, subject_split
from fetalnode.training.evaluate import evaluate_bundle
from fetalnode.training.pretrain import nt_xent
from fetalnode.training.reference import segmentation_reference
from fetalnode.training.segmentation import SegRecipe, WeightAverage, train_segmentation
from harness.node import MODELS, cli
from tests.conftest import DATA, SHARED

pytestmark = [pytest.mark.unit, pytest.mark.training]


def test_group_split_never_splits_a_group() -> None:
    rows = read_labels(DATA / "fba_mini")
    splits = group_split(rows, "case_group", {"train": 0.6, "val": 0.2, "test": 0.2}, 1, "label")
    seen = {name: {r["case_group"] for r in part} for name, part in splits.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sum(len(p) for p in splits.values()) == len(rows)


@pytest.mark.parametrize("seg_channels", [[16, 32, 64, 128], [16, 32, 64, 128, 256]])
def test_classifier_base_takes_the_segmentation_encoder(seg_channels: list[int]) -> None:
    unet = build_segmentation_net({"channels": seg_channels, "strides": [2] * (len(seg_channels) - 1)})
    cls = build_classifier_net({"channels": [16, 32, 64, 128], "fc": [32, 16], "n_classes": 3})
    before = {k: v.clone() for k, v in cls.state_dict().items()}
    copied = transfer_unet_encoder(cls, unet.state_dict(), len(seg_channels))
    after = cls.state_dict()
    unet_state = unet.state_dict()
    # Every stage's first convolution now holds the UNet encoder level's weights.
    for i in range(4):
        src = unet_state[unet_encoder_prefix(i, len(seg_channels)) + "conv.unit0.conv.weight"]
        assert torch.equal(after[f"base.{i}.conv.unit0.conv.weight"], src)
    assert copied >= 60
    # The FC head is untouched (it is trained for the classes).
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("head."))


def test_the_encoder_view_net_sees_what_the_segmentation_encoder_computes() -> None:
    """EncoderViewNet with a UNet's encoder copied in: each level's output is the UNet's own (forward hooks on
    its down path), pooled to mean and maximum per channel; a UNet of other channels is refused."""
    from fetalnode.inference.networks import build_view_net, load_unet_encoder

    torch.manual_seed(0)
    channels = [4, 8, 16]
    unet = build_segmentation_net({"channels": channels, "strides": [2, 2]}).eval()
    net = build_view_net({"encoder": "seg 1", "channels": channels, "strides": [2, 2], "n_classes": 5})
    assert load_unet_encoder(net, unet.state_dict()) == sum(1 for k in net.state_dict() if k.startswith("base."))
    outputs: list[torch.Tensor] = []
    modules = dict(unet.named_modules())
    for level in range(len(channels)):
        name = unet_encoder_prefix(level, len(channels)).rstrip(".")
        modules[name].register_forward_hook(lambda _m, _i, out: outputs.append(out))
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        unet(x)
        got = net.eval().features(x)
    expected = torch.cat([t for out in outputs for t in (out.mean(dim=(2, 3)), out.amax(dim=(2, 3)))], dim=1)
    assert got.shape == (2, 2 * sum(channels)) and torch.allclose(got, expected, atol=1e-6)
    # Standardised features into the linear layer.
    net.mean.fill_(0.5)
    net.scale.fill_(2.0)
    with torch.no_grad():
        assert torch.allclose(net(x), net.linear((got - 0.5) / 2.0), atol=1e-6)
    with pytest.raises(ValueError, match="no model"):
        load_unet_encoder(net, build_segmentation_net({"channels": [4, 8, 32], "strides": [2, 2]}).state_dict())
    # The first two levels only: the same pooled features of those levels, the bottom block never run.
    short = build_view_net({"encoder": "seg 1", "channels": channels, "strides": [2, 2], "n_classes": 5, "levels": 2})
    load_unet_encoder(short, unet.state_dict())
    with torch.no_grad():
        assert torch.allclose(short.eval().features(x), expected[:, : 2 * (4 + 8)], atol=1e-6)
    assert len(short.base) == 2 and short.linear.in_features == 2 * (4 + 8)


def test_abnormal_term_is_one_minus_p_normal() -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    p = torch.softmax(logits, dim=1).numpy()
    is_abn = torch.tensor([True, False, True, True, False, True])
    got = abnormal_nll(torch.log_softmax(logits, dim=1), is_abn, normal=2).numpy()
    want = -np.log(np.where(is_abn.numpy(), 1 - p[:, 2], p[:, 2]))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 1.5])
def test_validation_loss_adds_the_abnormal_term(weight: float) -> None:
    """With abnormal_weight the early-stopping loss is the 3-class NLL plus weight x normal-vs-abnormal NLL."""
    rng = np.random.default_rng(0)

    def crops(n: int) -> CropSet:
        y = np.arange(n) % 3
        return CropSet(rng.random((n, 32, 32), dtype=np.float32), y, y.astype(str), np.ones(n, bool), np.zeros((n, 1)))

    val = crops(9)
    recipe = ClsRecipe(epochs=1, batch_size=4, roi_size=32, channels=(8, 16), fc=(8,), abnormal_weight=weight)
    net, history = fit(crops(12), val, 3, recipe, None, normal=1)
    pv = predict(net, val.x)
    nll = -np.log(pv[np.arange(9), val.y]).mean()
    p_abn = 1 - pv[:, 1]
    nll_abn = -np.log(np.where(val.y != 1, p_abn, 1 - p_abn)).mean()
    assert history[0]["val_loss"] == pytest.approx(nll + weight * nll_abn, rel=1e-4)
    assert weight == 0 or nll_abn > 1e-3  # the term is not vanishing, so the two cases differ


def test_tiny_training_run_produces_working_bundles(tmp_path: Path) -> None:
    seg_meta = train_segmentation(
        DATA / "hc18_mini", tmp_path / "seg", SegRecipe(epochs=1, batch_size=4), "seg", "0.0.1", DATA
    )
    assert np.isfinite(seg_meta["training"]["history"][0]["loss"])
    # Reference outputs on the given folder, named as the repository's tests/data (so the tests resolve them).
    assert seg_meta["reference_outputs"][0]["image"] == "tests/data/hc18_mini/images/000_HC.png"
    assert seg_meta["training_data"][0]["splits"]["train"]["images"] >= 4
    cls_meta = train_classifier(
        DATA / "fba_mini",
        tmp_path / "seg",
        tmp_path / "cls",
        ClsRecipe(
            epochs=1,
            batch_size=4,
            roi_size=64,
            extra_normals=str(DATA / "hc18_mini"),
            extra_normals_n=3,
            cv_folds=2,
            # A 1-epoch segmentation finds no head: fit on the whole images too.
            heads_only=False,
        ),
        "cls",
        "0.0.1",
        DATA,
    )
    assert cls_meta["labels"] == ["arachnoid_cyst", "normal", "ventriculomegaly_moderate"]
    assert cls_meta["reference_outputs"]["images"][0]["image"].startswith("tests/data/fba_mini/images/")
    assert cls_meta["training_data"][1]["train"] == 3
    assert cls_meta["metrics"]["source_shift_hc18_test_heads"]["n"] >= 1
    cv = cls_meta["metrics"]["grouped_cv"]
    assert cv["n"] > 9, "CV pools the dataset and the extra normals"
    assert set(cv["baseline_abnormal_auroc"]) == {"intensity", "equalised_crop"}
    assert set(cv["tta_hflip"]) == {"balanced_accuracy", "macro_f1", "abnormal_auroc"}
    rows = read_labels(DATA / "fba_mini")
    groups = cv["type_limits"]["case_groups_per_class"]
    for label in ("arachnoid_cyst", "ventriculomegaly_moderate"):
        assert groups[label] == len(
            {r["case_group"] for r in rows if r["label"] == label and r["label_conflict"] == "0"}
        )
    assert cv["type_limits"]["balanced_accuracy_ceiling"] == sum(n >= 2 for n in groups.values()) / len(groups)
    # "As the node answers": only the images where a head was found, the rest counted as not analysed.
    test_m = cls_meta["metrics"]
    deployed = test_m["as_deployed"]
    assert deployed["n"] + deployed["not_analysed"] == test_m["n"]
    assert deployed["n"] == round(test_m["head_found_rate"] * test_m["n"])
    assert cv["as_deployed"]["n"] + cv["as_deployed"]["not_analysed"] == cv["n"]
    # Calibration and the type rule: temperatures from validation, ECE before/after, per-type evidence.
    cal, rule = cls_meta["calibration"], cls_meta["type_reporting"]
    assert cal["abnormal_temperature"] > 0 and cal["type_temperature"] > 0
    assert set(cal["test"]["abnormal"]) == {"before", "after"} and "grouped_cv" in cal
    assert set(rule["grouped_cv"]) == {"arachnoid_cyst", "ventriculomegaly_moderate"}
    assert rule["reportable_types"] == [], "nine images cannot make a type reportable"
    assert rule["type_probability_threshold"] is None and rule["why_none"]
    assert "type not determined" in (tmp_path / "cls" / "docs" / "README.md").read_text()
    for bundle in ("seg", "cls"):
        assert (tmp_path / bundle / "docs" / "README.md").read_text().count("RESEARCH USE ONLY") >= 1
    analyzer = Analyzer(load_bundle(tmp_path / "seg"), load_bundle(tmp_path / "cls"))
    result = analyzer.analyze(load_gray(DATA / "hc18_mini" / "images" / "000_HC.png"), (0.1, 0.1))
    assert result.fused_rgb is not None and result.fused_rgb.shape == (432, 640, 3)
    report = evaluate_bundle(tmp_path / "cls", DATA / "fba_mini", tmp_path / "eval" / "report.json", tmp_path / "seg")
    metrics = report["classification"]
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "abnormal_auroc",
        "abnormal_sensitivity",
        "abnormal_specificity",
        "per_class",
        "n",
    ):
        assert key in metrics
    assert metrics["n"] == 9
    assert (
        metrics["as_deployed"]["n"]
        == round(metrics["head_found_rate"] * 9)
        == 9 - metrics["as_deployed"]["not_analysed"]
    )
    assert Path(report["figures"][0]).is_file()
    assert set(metrics["calibration"]["abnormal"]) == {"before", "after"} and "type_precision" in metrics
    seg_report = evaluate_bundle(tmp_path / "seg", DATA / "hc18_mini", tmp_path / "eval" / "seg.json")
    assert seg_report["segmentation"]["n"] == 8
    assert json.loads((tmp_path / "eval" / "seg.json").read_text())["segmentation"]["n"] == 8
    # --split test re-derives the bundle's own split: the same images and figures as its training-time test metrics.
    seg_meta = json.loads((tmp_path / "seg" / "configs" / "metadata.json").read_text())
    test_report = evaluate_bundle(tmp_path / "seg", DATA / "hc18_mini", tmp_path / "eval" / "t.json", split="test")
    assert test_report["segmentation"]["n"] == seg_meta["training_data"][0]["splits"]["test"]["images"] < 8
    assert test_report["segmentation"]["dice_mean"] == pytest.approx(seg_meta["metrics"]["dice_mean"], abs=1e-6)
    val_report = evaluate_bundle(
        tmp_path / "cls", DATA / "fba_mini", tmp_path / "eval" / "v.json", tmp_path / "seg", "val"
    )
    cls_meta = json.loads((tmp_path / "cls" / "configs" / "metadata.json").read_text())
    assert val_report["classification"]["n"] == cls_meta["training_data"][0]["splits"]["val"]["images"]


def test_corrupt_bundle_is_refused(tmp_path: Path) -> None:
    train_segmentation(DATA / "hc18_mini", tmp_path / "seg", SegRecipe(epochs=1, batch_size=4), "seg", "0.0.1")
    weights = tmp_path / "seg" / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(tmp_path / "seg")
    (tmp_path / "seg" / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(tmp_path / "seg")


def test_train_command_names_the_bundle(tmp_path: Path) -> None:
    """A candidate trained into a scratch folder still carries the name it will be installed under."""
    out = tmp_path / "scratch-candidate"
    done = cli(
        "train", "segmentation", "--data", str(DATA / "hc18_mini"), "--out", str(out),
        "--name", "hc18-headseg", "--version", "9.9.9", "--epochs", "1", "--threads", "1",
        "--rotate-deg", "10", "--scale-jitter", "0.15",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert (meta["name"], meta["version"]) == ("hc18-headseg", "9.9.9")
    card = (out / "docs" / "README.md").read_text()
    assert "# hc18-headseg 9.9.9" in card
    assert "rotation ±10°, scale ±15%" in card and "kept epoch 1" in card
    assert (meta["training"]["recipe"]["rotate_deg"], meta["training"]["recipe"]["scale_jitter"]) == (10.0, 0.15)
    # No --reference-data: no reference outputs, said in the log and the card.
    assert "reference_outputs" not in meta and "No reference outputs are stored" in card
    assert "no --reference-data" in done.stderr


def test_fine_tuning_stage_starts_from_a_bundle(tmp_path: Path) -> None:
    """`train segmentation --init-from B --canvas HxW`: B's network and weights, a new canvas, both stages' time."""
    first = tmp_path / "first"
    train_segmentation(DATA / "hc18_mini", first, SegRecipe(epochs=1, batch_size=4, channels=(8, 16, 32, 64, 128)),
                       "seg", "0.0.1")  # fmt: skip
    out = tmp_path / "second"
    done = cli(
        "train", "segmentation", "--data", str(DATA / "hc18_mini"), "--out", str(out), "--init-from", str(first),
        "--canvas", "288x448", "--epochs", "1", "--threads", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["input"]["canvas_hw"] == [288, 448]
    assert meta["network"]["params"]["channels"] == [8, 16, 32, 64, 128], "the starting bundle's architecture"
    stages = meta["training"]["stages"]
    assert [s["init_from"] for s in stages] == ["random", str(first)]
    assert meta["training"]["minutes"] == pytest.approx(sum(s["minutes"] for s in stages), abs=0.11)
    assert "then 288x448, 1 epochs" in (out / "docs" / "README.md").read_text()
    bad = cli("train", "segmentation", "--data", str(DATA / "hc18_mini"), "--out", str(tmp_path / "x"),
              "--canvas", "300x400")  # fmt: skip
    assert bad.returncode != 0 and "multiples of 16" in bad.stderr


def test_contrastive_loss_prefers_matching_views() -> None:
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn(16, 8), 0.2) < nt_xent(z, torch.randn(16, 8), 0.2)


def test_contrastive_pretraining_trains_the_base_only(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    train_segmentation(DATA / "hc18_mini", seg, SegRecipe(epochs=1, batch_size=4), "seg", "0.0.1")
    recipe = ClsRecipe(epochs=1, batch_size=4, roi_size=64, base_init="contrastive", pretrain_epochs=2,
                       pretrain_data=(str(DATA / "hc18_mini"), str(DATA / "fba_mini")), heads_only=False)  # fmt: skip
    untouched = build_classifier_net(classifier_params(recipe, 3))
    torch.manual_seed(0)
    base, info = initial_base(recipe, load_bundle(seg), 3)
    assert base is not None and all(k.startswith("base.") for k in base)
    assert any(not torch.equal(base[k], v) for k, v in untouched.state_dict().items() if k in base)
    hc18_rows = read_labels(DATA / "hc18_mini")
    split = subject_split(hc18_rows, recipe.seed)
    # HC18-format folders give only their train/validation split; other folders every image.
    assert info["images"] == len(split["train"]) + len(split["val"]) + len(read_labels(DATA / "fba_mini"))
    assert info["epochs_run"] == 2
    meta = train_classifier(DATA / "fba_mini", seg, tmp_path / "cls", recipe, "cls", "0.0.1")
    assert meta["training"]["base_init"]["folders"] == list(recipe.pretrain_data)
    assert "pretrained self-supervised" in (tmp_path / "cls" / "docs" / "README.md").read_text()


def test_weight_average_is_the_mean_of_the_epochs_weights() -> None:
    nets = [build_segmentation_net({"channels": [4, 8], "strides": [2]}) for _ in range(3)]
    avg = WeightAverage()
    for net in nets:
        avg.add(net)
    target = build_segmentation_net({"channels": [4, 8], "strides": [2]})
    avg.apply(target, torch.rand(4, 1, 32, 32), batch_size=2)
    for name, p in target.named_parameters():
        expected = torch.stack([dict(n.named_parameters())[name] for n in nets]).mean(0)
        assert torch.allclose(p, expected, atol=1e-6), name
    bn = next(m for m in target.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)), "BN statistics recomputed"


def test_training_with_weight_averaging_records_both_candidates(tmp_path: Path) -> None:
    meta = train_segmentation(
        DATA / "hc18_mini", tmp_path / "seg", SegRecipe(epochs=2, batch_size=4, swa_from=1), "seg", "0.0.1"
    )
    swa = meta["training"]["weight_average"]
    assert swa["epochs_averaged"] == 2 and swa["chosen"] in ("weight average", "best epoch")
    assert {"val_dice", "val_hc_mae_mm"} <= set(swa["best_epoch"])


def test_gate_set_after_training_remeasures_the_test_split(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    train_segmentation(DATA / "hc18_mini", seg, SegRecipe(epochs=1, batch_size=4), "seg", "0.0.1")
    learnt = json.loads((seg / "configs" / "metadata.json").read_text())["postprocess"]["gate"]
    done = cli("models", "finalize", str(seg), "--gate", "0.86,0.72", "--threads", "1")
    assert done.returncode != 0 and "--data" in done.stderr
    done = cli(
        "models", "finalize", str(seg), "--gate", "0.86,0.72", "--data", str(DATA / "hc18_mini"), "--threads", "1",
        "--reference-data", str(DATA),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((seg / "configs" / "metadata.json").read_text())
    gate = meta["postprocess"]["gate"]
    assert (gate["min_iou"], gate["min_confidence"]) == (0.86, 0.72)
    assert gate["replaces"] == learnt
    assert meta["metrics"]["n"] == meta["training_data"][0]["splits"]["test"]["images"]
    assert "gate set after training" in meta["metrics"]["split"]
    # The node uses the new thresholds, the reference outputs were re-stored with them, and the card says so.
    bundle = load_bundle(seg)
    assert (seg_settings(bundle).min_iou, seg_settings(bundle).min_confidence) == (0.86, 0.72)
    assert meta["reference_outputs"] == segmentation_reference(bundle, DATA)
    assert "set after training by `fetalnode models finalize --gate`" in (seg / "docs" / "README.md").read_text()


def test_heads_only_fits_on_the_images_with_a_head(tmp_path: Path) -> None:
    """heads_only (the default): the classifier is fitted only on the crops where the shipped segmentation
    finds a head."""
    seg_path = MODELS / "hc18-headseg"
    recipe = ClsRecipe(
        epochs=1, batch_size=4, roi_size=64, extra_normals=str(DATA / "hc18_mini"), extra_normals_n=3, cv_folds=2
    )  # fmt: skip
    # A copy of fba_mini whose first training image is blank: no head there, so it must not be fitted on.
    data = tmp_path / "fba"
    shutil.copytree(DATA / "fba_mini", data)
    rows, _ = usable_rows(data)
    train_rows = case_split(rows, recipe.seed)["train"]
    blank = data / train_rows[0]["filename"]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(blank)))).save(blank)
    meta = train_classifier(data, seg_path, tmp_path / "cls", recipe, "cls", "0.0.1")
    seg = load_bundle(seg_path, "segmentation")
    _, found = roi_crops(seg, data, train_rows, 64, recipe.roi_margin)
    hc_train = subject_split(read_labels(DATA / "hc18_mini"), recipe.seed)["train"][:3]
    _, found_hc = roi_crops(seg, DATA / "hc18_mini", hc_train, 64, recipe.roi_margin)
    assert not found[0]
    assert meta["training"]["fitted_images"]["train"] == int(found.sum() + found_hc.sum()) < len(found) + 3
    # Only the fitting drops it: the cross-validation pool keeps every image (3 + 1 HC18 extra normals).
    cv = meta["metrics"]["grouped_cv"]
    assert cv["n"] == len(rows) + 4 and cv["as_deployed"]["not_analysed"] >= 1
    assert "only on the images where a head was found" in (tmp_path / "cls" / "docs" / "README.md").read_text()


def test_labour_segmentation_trains_splits_by_block_and_evaluates(tmp_path: Path) -> None:
    """`fetalnode train labour-segmentation` on the bundled PSFHS images -> a loadable bundle -> `evaluate`."""
    out = tmp_path / "psfhs-candidate"
    done = cli(
        "train", "labour-segmentation", "--data", str(DATA / "psfhs_mini"), "--out", str(out),
        "--name", "psfhs-seg", "--version", "9.9.9", "--epochs", "1", "--threads", "1", "--reference-data", str(DATA),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert (meta["name"], meta["task"], meta["training"]["stopped"]) == (
        "psfhs-seg",
        "multiclass-segmentation",
        "the last epoch",
    )
    splits = meta["training_data"][0]["splits"]
    assert meta["training_data"][0]["split_by"] == "id_block" and sum(s["images"] for s in splits.values()) == 12
    rows = read_labels(DATA / "psfhs_mini")
    parts = {k: {r["id_block"] for r in v} for k, v in block_split(rows, meta["training_data"][0]["seed"]).items()}
    assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["val"])
    assert "dice_fh_mean_ci95" in meta["metrics"] and len(meta["reference_outputs"]) == 4
    assert "# psfhs-seg 9.9.9" in (out / "docs" / "README.md").read_text()
    report = cli("evaluate", "--model", str(out), "--data", str(DATA / "psfhs_mini"), "--split", "test",
                 "--out", str(tmp_path / "report.json"))  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    printed = json.loads(report.stdout)
    assert printed["n"] == splits["test"]["images"] and "(the bundle's own seeded split" in printed["split"]


def test_tiny_view_training_run_and_evaluate(tmp_path: Path) -> None:
    """`train view` on the shipped minis: every view present, splits by group, a working bundle, evaluate."""
    from fetalnode.inference.view import ViewModel
    from fetalnode.training.view import ViewRecipe, evaluate_view, folder_images, folder_rows, train_view
    from fetalnode.vocab import View
    from tests.conftest import dicom_testfile

    not_fetal = tmp_path / "not_fetal"
    not_fetal.mkdir()
    for name in ("US1_UNCR.dcm", "OBXXXX1A.dcm", "examples_ybr_color.dcm", "gdcm-US-ALOKA-16.dcm"):
        shutil.copy(dicom_testfile(name), not_fetal / name)
    shutil.copy(dicom_testfile("CT_small.dcm"), not_fetal / "ct.dcm")  # not ultrasound: skipped
    view_mini = DATA / "view_mini"
    folders = [
        DATA / "hc18_mini",
        DATA / "fba_mini",
        view_mini / "psfhs",
        view_mini / "first_trimester_sagittal",
        view_mini / "fetal_planes_db",
        not_fetal,
    ]
    fmt, rows = folder_rows(not_fetal)
    assert fmt == "dicom" and len(rows) == 4 and {r["_view"] for r in rows} == {View.NOT_FETAL}
    fmt, rows = folder_rows(view_mini / "fetal_planes_db")
    assert fmt == "fetal_planes_db"
    assert sorted((r["plane"], r["_view"]) for r in rows) == [
        ("Fetal brain", View.AXIAL_FETAL_HEAD),
        ("Fetal femur", View.OTHER_FETAL_PLANE),
        ("Maternal cervix", View.OTHER_FETAL_PLANE),
    ]
    recipe = ViewRecipe(size=32, channels=(4, 8), strides=(2, 2), epochs=1, per_class_per_epoch=4, batch_size=4)
    meta = train_view(folders, tmp_path / "view", recipe, "view-test", "0.0.1")
    assert meta["task"] == "view" and meta["labels"] == [str(v) for v in View if v is not View.UNKNOWN]
    assert meta["training"]["images"]["train"] >= 5 and 0.5 <= meta["abstain_threshold"] <= 0.99
    assert set(meta["dicom_group_splits"].values()) <= {"train", "val", "test"}
    # Finalised: the measured runtime; the ONNX file is shipped only when it is the one used.
    assert meta["runtime"] in {"torch", "onnxruntime"} and meta["runtime_comparison"]["max_abs_diff"] <= 1e-4
    assert (tmp_path / "view" / "models" / "model.onnx").is_file() == (meta["runtime"] == "onnxruntime")
    for source in meta["training_data"]:
        groups = [source["splits"][k]["groups"] for k in ("train", "val", "test")]
        assert sum(groups) >= 1
    model = ViewModel(load_bundle(tmp_path / "view", "view"))
    assert model.predict(load_gray(DATA / "hc18_mini" / "images" / "000_HC.png")).model == ("view-test", "0.0.1")
    robust = meta["metrics"]["robustness"]
    assert robust["n"] == meta["metrics"]["n"] and set(robust) >= {"callipers_and_text", "jpeg_q75", "jpeg_q40"}
    assert all(0 <= robust[k]["unchanged"] <= 1 for k in ("callipers_and_text", "jpeg_q75"))
    # Leave one head source out: HC18's heads are neither trained on nor used for thresholds, and all are routed.
    held = train_view(folders, tmp_path / "loso", replace(recipe, leave_out="hc18"), "view-loso", "0.0.1")
    left = held["metrics"]["left_out_source"]
    assert left["origin"] == "hc18" and left["n"] == 8 and sum(left["routed"].values()) == 8
    assert sum(held["training"]["images"].values()) == sum(meta["training"]["images"].values()) - 8
    out = cli(
        "models", "finalize", str(tmp_path / "view"), "--source-holdout", str(tmp_path / "loso"),
        "--history", "a line of history", "--threads", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    card = (tmp_path / "view" / "docs" / "README.md").read_text()
    assert "| hc18 | 32 px, scanner augmentation, by origin | 8 / 8 |" in card and "- a line of history" in card
    assert "--leave-out hc18" in card
    report = evaluate_view(tmp_path / "view", view_mini / "psfhs", "all", node=False)
    assert report["n"] == 3 and report["true_views"] == {"intrapartum_transperineal": 3}
    assert 0 <= report["accuracy"] <= 1 and len(report["accuracy_ci95"]) == 2
    assert sum(map(sum, report["routed_confusion_matrix"])) == 3
    out = cli(
        "evaluate", "--model", str(tmp_path / "view"), "--data", str(not_fetal), "--out", str(tmp_path / "r.json"),
        "--no-node-check", "--threads", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["view"]["true_views"] == {"not_fetal": 4}
    # The whole-node check measured again with this build's router and the shipped application bundles: every
    # test image of another view is counted once, the earlier figure (none: trained without --head-models) kept.
    out = cli(
        "models", "finalize", str(tmp_path / "view"), "--data", str(view_mini / "psfhs"),
        "--data", str(view_mini / "first_trimester_sagittal"), "--data", str(view_mini / "fetal_planes_db"),
        "--models-dir", str(MODELS), "--threads", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    check = json.loads(out.stdout)["node_check"]
    meta = json.loads((tmp_path / "view" / "configs" / "metadata.json").read_text())
    assert meta["metrics"]["node_check"] == check and check["remeasured"]
    test_others = [
        im
        for folder in ("psfhs", "first_trimester_sagittal", "fetal_planes_db")
        for im in folder_images(view_mini / folder, "test", meta)[1]
        if im.view is not View.AXIAL_FETAL_HEAD
    ]
    assert check["other_view_images"] == len(test_others) == sum(c["images"] for c in check["by_true_view"].values())
    assert "labour_segmentation" in check["models"] and check["cross_check_probability"] == 0.01
    assert "re-measured" in (tmp_path / "view" / "docs" / "README.md").read_text()


def test_the_view_split_of_fetal_planes_db_is_the_one_earlier_bundles_held_out() -> None:
    """Renaming a view does not reshuffle a folder's seeded split: the FETAL_PLANES_DB images the tests use as
    held-out images of other views (tests/data/view_mini) are in the test split, as for fetal-view 0.1.0."""
    from fetalnode.training.view import folder_images, stratum
    from fetalnode.vocab import View

    assert stratum(View.AXIAL_FETAL_HEAD) == "second_trimester_head" and stratum(View.NOT_FETAL) == "not_fetal"
    shared = SHARED / "fetal_planes_db_sample"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not here")
    rows = csv.DictReader((DATA / "view_mini" / "fetal_planes_db" / "labels.csv").open())
    mini = {Path(r["filename"]).stem for r in rows}
    meta = {"training_data": [{"seed": 20261124}]}
    test = {im.path.stem for im in folder_images(shared, "test", meta)[1]}
    assert mini <= test and len(test) == 6


def test_tiny_encoder_view_training_run(tmp_path: Path) -> None:
    """`train view --encoder`: the shipped head segmentation's frozen encoder under a linear layer fitted for
    each weight decay (the lowest validation NLL kept), on the minis' frames letterboxed as that segmentation
    sees them; a bundle the router loads, whose card and command say so."""
    from fetalnode.inference.networks import EncoderViewNet
    from fetalnode.inference.preprocess import letterbox, to_unit_range
    from fetalnode.inference.view import ViewModel
    from fetalnode.training.view import ViewRecipe, train_view
    from fetalnode.training.view.card import command_of, recipe_words

    view_mini = DATA / "view_mini"
    folders = [DATA / "hc18_mini", DATA / "fba_mini", *(view_mini / f for f in ("psfhs", "first_trimester_sagittal", "fetal_planes_db"))]
    not_fetal = tmp_path / "not_fetal"
    not_fetal.mkdir()
    from tests.conftest import dicom_testfile

    for name in ("US1_UNCR.dcm", "OBXXXX1A.dcm", "examples_ybr_color.dcm", "gdcm-US-ALOKA-16.dcm"):
        shutil.copy(dicom_testfile(name), not_fetal / name)
    recipe = ViewRecipe(encoder=str(MODELS / "hc18-headseg"), weight_decays=(1.0, 1e-3, 100.0))
    meta = train_view([*folders, not_fetal], tmp_path / "view", recipe, "view-enc", "0.0.1")
    assert meta["network"]["class"].endswith("EncoderViewNet") and meta["input"]["canvas_hw"] == [256, 384]
    history = meta["training"]["history"]
    assert [h["weight_decay"] for h in history] == [1.0, 1e-3, 100.0]
    model = ViewModel(load_bundle(tmp_path / "view", "view"))
    net = model.bundle.net
    assert isinstance(net, EncoderViewNet) and float(net.scale.min()) > 0 and float(net.mean.abs().sum()) > 0
    # The encoder is the segmentation's, untouched; the kept linear layer is the one of the lowest validation NLL.
    seg = load_bundle(MODELS / "hc18-headseg", "segmentation").net.state_dict()
    assert torch.equal(net.state_dict()["base.0.conv.unit0.conv.weight"], seg["model.0.conv.unit0.conv.weight"])
    kept = [h for h in history if h["kept"]]
    assert len(kept) == 1 and kept[0]["val_nll"] == min(h["val_nll"] for h in history)
    assert f"weight decay {kept[0]['weight_decay']} of [1.0, 0.001, 100.0]" in (tmp_path / "view" / "docs" / "README.md").read_text()
    gray = load_gray(DATA / "hc18_mini" / "images" / "000_HC.png")
    np.testing.assert_array_equal(model.input(gray), letterbox(to_unit_range(gray), (256, 384))[0])
    assert model.predict(gray).model == ("view-enc", "0.0.1")
    card = (tmp_path / "view" / "docs" / "README.md").read_text()
    assert "frozen encoder of `hc18-headseg" in card and "L-BFGS" in card
    # Robustness: callipers are drawn three times on each test image, a JPEG round trip once.
    rb = meta["metrics"]["robustness"]
    drawn, n = rb["callipers_and_text"], rb["n"]
    assert drawn["draws"] == 3 and rb["jpeg_q75"]["draws"] == 1 and 0 <= drawn["changed"] <= 3 * n
    assert drawn["unchanged"] == pytest.approx(1 - drawn["changed"] / (3 * n))
    assert f"| {drawn['changed']} of {3 * n} |" in card and "drawn 3 times on each image" in card
    words = meta["training"]["recipe"]
    assert "--encoder" in command_of(words) and "frozen encoder of hc18-headseg" in recipe_words(words)
    assert "--overlay-copies 2" in command_of({**words, "overlay_copies": 2})


def test_the_view_recipe_geometry_is_in_its_command_and_card_words() -> None:
    """A run with mild geometry is recorded as such (model card and its command line); the default stays silent."""
    from dataclasses import asdict

    from fetalnode.training.view import ViewRecipe
    from fetalnode.training.view.card import command_of, recipe_words

    mild, strong = asdict(ViewRecipe(geometry="mild")), asdict(ViewRecipe())
    assert "--geometry mild" in command_of(mild) and "mild geometry" in recipe_words(mild)
    assert "--geometry" not in command_of(strong) and "geometry" not in recipe_words(strong)
    assert "--geometry" not in command_of({**mild, "scanner_augment": False})  # 0.1.0's augmentation is mild anyway


def test_overlay_consistency_term_and_its_record() -> None:
    """The Jensen-Shannon term is 0 for equal predictions and grows as they part; a run with it says so."""
    from dataclasses import asdict

    import torch

    from fetalnode.training.view import ViewRecipe
    from fetalnode.training.view.card import command_of, recipe_words
    from fetalnode.training.view.fitting import jensen_shannon

    a = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    assert float(jensen_shannon(a, a)) == pytest.approx(0.0, abs=1e-6)
    near, far = a + torch.tensor([[0.0, 0.3, 0.0]]), a + torch.tensor([[0.0, 3.0, 0.0]])
    assert 0 < float(jensen_shannon(a, near)) < float(jensen_shannon(a, far)) <= math.log(2) + 1e-6
    recipe = asdict(ViewRecipe(consistency=4.0))
    assert "--consistency 4" in command_of(recipe) and "overlay consistency 4" in recipe_words(recipe)
    assert "--consistency" not in command_of(asdict(ViewRecipe()))


def test_a_card_shows_a_run_command_without_its_output_folder() -> None:
    from fetalnode.training.view.train import portable_command

    run = "fetalnode train view --data-root ../shared/datasets --out /scratch/runs/x --leave-out hc18 --size 144"
    assert portable_command(run) == "fetalnode train view --data-root ../shared/datasets --out OUT --leave-out hc18 --size 144"
    assert portable_command("fetalnode train view --out=/a/b --epochs 3") == "fetalnode train view --out OUT --epochs 3"
