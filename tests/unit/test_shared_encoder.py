"""The view model and the head segmentation run their shared encoder once per frame: the segmentation's graph cut
in two gives its logits bit for bit, the view model its answers, and the router sets it up only for the
segmentation the view model's encoder was copied from."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pydicom import dcmread

from fetalnode.applications.base import ExposesBundles
from fetalnode.applications.registry import build_application
from fetalnode.applications.view_router.application import ViewRouter
from fetalnode.config import load_settings
from fetalnode.errors import BundleError
from fetalnode.inference.bundle import Bundle, load_bundle
from fetalnode.inference.shared_encoder import SharedEncoder, probe_canvas
from fetalnode.inference.view import ViewModel, share_segmentation_encoder
from fetalnode.intake import decode_for_analysis
from fetalnode.training.data import load_gray
from fetalnode.vocab import View
from harness.node import MODELS
from tests.conftest import DATA, SAMPLES

pytestmark = pytest.mark.unit
SEG, VIEW = MODELS / "hc18-headseg", MODELS / "fetal-view"


def grays() -> list[np.ndarray]:
    """Every sample and every image of tests/data/view_mini (heads and other views)."""
    out = [decode_for_analysis(dcmread(p), 10**8, 10).gray for p in sorted(SAMPLES.glob("*.dcm"))]
    return out + [load_gray(p) for p in sorted((DATA / "view_mini").glob("*/images/*.png"))]


@pytest.fixture(scope="module")
def shared() -> tuple[Bundle, ViewModel, SharedEncoder]:
    """The shipped segmentation (its ``infer`` now the cut graph) and view model, sharing the encoder."""
    seg, view = load_bundle(SEG, "segmentation"), ViewModel(load_bundle(VIEW, "view"))
    encoder = share_segmentation_encoder(view, [load_bundle(MODELS / "fba-classifier"), seg], capacity=2)
    assert encoder is not None and view.encoder is encoder and seg.infer == encoder.segment
    assert encoder.runs == 1, "both start-up checks use one encoder run on the probe canvas"
    encoder.levels_of(probe_canvas(encoder.canvas_hw))
    assert encoder.runs == 2, "the probe is not kept as a frame"
    encoder.forget()
    return seg, view, encoder


def test_the_cut_graph_gives_the_segmentation_logits_bit_for_bit(shared) -> None:
    seg, view, encoder = shared
    whole = load_bundle(SEG, "segmentation")
    assert encoder.levels == view.encoder_levels == 4 and encoder.canvas_hw == view.input.canvas_hw
    xs = [view.input(g) for g in grays()]
    assert len(xs) >= 14
    for x in xs:
        t = torch.from_numpy(x)[None, None]
        assert np.array_equal(seg.infer(t).numpy(), whole.infer(t).numpy())
    batch = torch.from_numpy(np.stack(xs[:3]))[:, None]  # the shipped graph takes one canvas at a time
    expected = np.concatenate([whole.infer(torch.from_numpy(x)[None, None]).numpy() for x in xs[:3]])
    assert np.array_equal(encoder.segment(batch).numpy(), expected)


def test_the_view_model_answers_as_on_its_own_encoder(shared) -> None:
    """Probabilities within 1e-4 of the bundle's own graph, the same routed view, on every image."""
    _, view, _ = shared
    own = ViewModel(load_bundle(VIEW, "view"))
    assert own.encoder is None
    labels = set()
    for gray in grays():
        got, expected = view.predict(gray), own.predict(gray)
        assert (got.label, got.top) == (expected.label, expected.top)
        labels.add(got.label)
        np.testing.assert_allclose(
            [got.probabilities[k] for k in expected.probabilities], list(expected.probabilities.values()), atol=1e-4
        )
    assert View.AXIAL_FETAL_HEAD in labels and len(labels) >= 3


def test_encoder_outputs_are_kept_for_the_last_canvases_compared_by_value(shared) -> None:
    _, view, encoder = shared
    encoder.forget()
    a, b, c = (view.input(g) for g in grays()[:3])
    first = encoder.levels_of(a)
    assert [m.shape[1] for m in first] == [16, 32, 64, 128]
    assert encoder.levels_of(a.copy()) is first  # the same canvas, another array: kept
    encoder.levels_of(b)
    assert encoder.levels_of(a) is first  # capacity 2: a and b kept
    encoder.levels_of(c)  # c pushes out the least recently used, b
    assert encoder.levels_of(a) is first
    edited = a.copy()
    edited[100, 100] += 0.5  # one pixel the cheap index does not look at
    assert encoder.levels_of(edited) is not first


def test_nothing_is_shared_with_another_segmentation_or_where_the_graph_cannot_be_cut(shared, caplog) -> None:
    view = ViewModel(load_bundle(VIEW, "view"))
    other = load_bundle(SEG, "segmentation")
    other.metadata = {**other.metadata, "weights_sha256": "0" * 64}  # weights the view model was not copied from
    infer = other.infer
    assert share_segmentation_encoder(view, [other]) is None and view.encoder is None and other.infer is infer
    seg = load_bundle(SEG, "segmentation")
    with pytest.raises(BundleError, match="down blocks to share, not 5"):
        SharedEncoder(seg, 5)
    torch_run = dataclasses.replace(seg, metadata={**seg.metadata, "runtime": "torch"}, infer=seg.net)
    assert share_segmentation_encoder(view, [torch_run]) is None and torch_run.infer is seg.net
    assert "run the encoder each" in caplog.text and view.encoder is None
    with pytest.raises(BundleError, match="not a view model on 3 encoder levels"):
        view.share_encoder(SharedEncoder(seg, 3))


def test_the_router_shares_the_encoder_with_the_head_segmentation_unless_told_not_to() -> None:
    """The head application's answers are the same either way (the HC to the bit)."""
    answers = {}
    for share in (True, False):
        settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS), "router.share_encoder": share})
        router = build_application(settings)
        assert isinstance(router, ViewRouter)
        head = router.routes[View.AXIAL_FETAL_HEAD]
        assert isinstance(head, ExposesBundles)
        seg = head.loaded_bundles()[0]
        assert (router.view_model.encoder is not None) is share
        assert (seg.infer == router.view_model.encoder.segment) if share else router.view_model.encoder is None
        summaries = []
        for path in sorted(SAMPLES.glob("*.dcm")):
            runs = router.view_model.encoder.runs if share else 0
            analysis = router.analyse(dcmread(path))
            if share:  # the view model and the head segmentation: one encoder run for the frame
                assert router.view_model.encoder.runs == runs + 1 and analysis.application == "fetal-head"
            summary = analysis.summary()
            summary.pop("timings_ms")
            biometry = getattr(analysis.result, "biometry", None)
            summary["exact"] = dataclasses.astuple(biometry) if biometry else None
            summaries.append(summary)
        answers[share] = summaries
    assert any(s["hc_mm"] for s in answers[True])
    for with_sharing, without in zip(answers[True], answers[False], strict=True):
        assert with_sharing["view"]["label"] == without["view"]["label"]
        assert abs(with_sharing["view"].pop("probability") - without["view"].pop("probability")) <= 1e-4
        assert with_sharing == without
