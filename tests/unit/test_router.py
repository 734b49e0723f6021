"""The view router with the shipped view bundle: heads go to fetal-head, other views get a clear "no
application" in every output and never a finding or a measurement."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis, ClaimsItsView
from fetalnode.applications.registry import build_application, register_application
from fetalnode.applications.view_router import codes as vrc
from fetalnode.applications.view_router.application import NAME, ViewRouter, frame_indices, router_routes
from fetalnode.applications.view_router.result import NoApplication
from fetalnode.config import Settings, load_settings
from fetalnode.errors import ConfigError, InferenceError
from fetalnode.inference import AnalysisResult
from fetalnode.inference.bundle import load_bundle
from fetalnode.inference.view import ClaimRule, ViewModel
from fetalnode.intake import US_MULTIFRAME, DecodedImage, decode_for_analysis
from fetalnode.outcomes import Received, Verdict
from fetalnode.outputs.findings import read_finding
from fetalnode.runner import Runtime, run_job
from fetalnode.runtime import build_runtime
from fetalnode.training.data import load_gray
from fetalnode.vocab import View
from fetalnode.wrap import wrap_png
from harness.node import MODELS
from tests.conftest import DATA, SAMPLES

pytestmark = pytest.mark.unit
VIEW = MODELS / "fetal-view"
FEMUR = DATA / "view_mini" / "fetal_planes_db" / "images" / "Patient01672_Plane5_2_of_2.png"
PSFHS = DATA / "view_mini" / "psfhs" / "images" / "psfhs_03920.png"
FIRST_TRIMESTER = DATA / "view_mini" / "first_trimester_sagittal" / "images" / "ff_0060.png"
# Views no application handles by default (intrapartum transperineal images go to labour-progress).
OTHER_VIEWS = {
    FEMUR: View.OTHER_FETAL_PLANE,
    FIRST_TRIMESTER: View.FIRST_TRIMESTER_MIDSAGITTAL,
}


def settings(**overrides: object) -> Settings:
    return load_settings(None, env={}, overrides={"models.dir": str(MODELS), **overrides})


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """The default node: worker.application is the view router; SR, SC, GSPS, SEG and OB-GYN SR enabled."""
    s = settings()
    s.output.enabled = ["sr", "sc", "gsps", "seg", "obsr"]
    return build_runtime(s, destinations=[])


def run(runtime: Runtime, ds: Dataset) -> tuple[dict, dict[str, Dataset]]:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    return outcome.summary, {k: dcmread(BytesIO(v)) for k, v in outcome.built.items()}


def test_view_bundle_is_small_complete_and_reproduces_its_reference() -> None:
    bundle = load_bundle(VIEW, "view")
    assert (VIEW / "models" / "model.pt").stat().st_size < 8 * 2**20
    meta = bundle.metadata
    assert meta["intended_use"].startswith("RESEARCH USE ONLY") and (VIEW / "docs" / "README.md").is_file()
    assert [View.named(v) for v in meta["labels"]] == [v for v in View if v is not View.UNKNOWN]
    assert 0.5 <= meta["abstain_threshold"] < 1
    assert meta["metrics"]["n"] > 0 and "test" in meta["metrics"]["split"]
    model = ViewModel(bundle)
    stored = meta["reference_outputs"]
    assert len(stored) >= 5
    x = np.stack([model.input(load_gray(MODELS.parent / r["image"])) for r in stored])
    np.testing.assert_allclose(model.probabilities(x), [r["probabilities"] for r in stored], atol=1e-4)


def test_view_bundle_runs_in_onnxruntime_with_the_torch_networks_answers() -> None:
    """The shipped ONNX graph (the runtime the bundle records) gives torch's class probabilities within 1e-4
    and the same top class on the samples and tests/data/view_mini, one image at a time and batched."""
    bundle = load_bundle(VIEW, "view")
    assert bundle.metadata["runtime"] == "onnxruntime" and bundle.infer is not bundle.net
    model = ViewModel(bundle)
    grays = [decode_for_analysis(dcmread(p), 10**8, 10).gray for p in sorted(SAMPLES.glob("*.dcm"))]
    grays += [load_gray(p) for p in sorted((DATA / "view_mini").glob("*/images/*.png"))]
    assert len(grays) >= 14
    x = np.stack([model.input(g) for g in grays])
    torch_model = ViewModel(dataclasses.replace(bundle, infer=bundle.net))
    expected = torch_model.probabilities(x)
    for got in (model.probabilities(x), np.concatenate([model.probabilities(x[i : i + 1]) for i in range(len(x))])):
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_samples_route_to_the_head_application_with_their_view(runtime: Runtime) -> None:
    for path in sorted(SAMPLES.glob("*.dcm")):
        analysis = runtime.application.analyse(dcmread(path))
        assert analysis.application == "fetal-head", (path.name, analysis.view)
        assert analysis.view is not None and analysis.view.label is View.AXIAL_FETAL_HEAD
        assert analysis.models[-1] == ("fetal-view", load_bundle(VIEW).version), "the view model is named"
        assert analysis.summary()["view"]["label"] == "axial_fetal_head"


def said_view(view: View, label: str) -> tuple[str, str]:
    """The reason and the view line for an image of ``view`` the router answered with ``label``: its own
    view, or "view not recognised" (below the abstain threshold) naming it as the most probable."""
    if label == View.UNKNOWN:
        return View.UNKNOWN.words, f"View not recognised (most probable: {view.words}"
    return view.words, f"Recognised view: {view.words}"


def test_other_views_are_not_analysed_in_any_output(runtime: Runtime) -> None:
    for png, view in OTHER_VIEWS.items():
        summary, built = run(runtime, wrap_png(png, pixel_size_mm=0.1))
        assert summary["view"]["label"] in {view, View.UNKNOWN} and summary["view"]["top"] == view, summary
        words, line = said_view(view, summary["view"]["label"])
        reason = f"not analysed: {words}, no application for this view"
        assert summary["application"] == NAME and summary["reason"] == reason, summary
        assert summary["view"]["model"].startswith("fetal-view/")
        assert not summary["analysed"] and summary["finding"] == "" and "hc_mm" not in summary
        assert set(built) == {"sr", "sc", "gsps"}, "no SEG or OB-GYN report for an image no application looked at"
        found = read_finding(built["sr"])
        assert found["readable"], found
        assert found["assessment"] == vrc.NO_APPLICATION.meaning
        assert (found["hc_mm"], found["bpd_mm"], found["confidence_pct"], found["malformation_type"]) == (
            None,
            None,
            None,
            "",
        )
        assert reason[:1].upper() + reason[1:] in found["comments"]
        assert any(c.startswith(line) for c in found["comments"]), found["comments"]
        sc = built["sc"]
        assert reason.upper() in sc.ImageComments and line in sc.ImageComments
        assert "HC " not in sc.ImageComments and "AI FINDING" not in sc.ImageComments
        [annotation] = built["gsps"].GraphicAnnotationSequence
        assert "GraphicObjectSequence" not in annotation, "nothing drawn"
        assert reason[:1].upper() + reason[1:] in annotation.TextObjectSequence[0].UnformattedTextValue


def test_a_transperineal_image_goes_to_labour_progress(runtime: Runtime) -> None:
    summary, built = run(runtime, wrap_png(PSFHS, pixel_size_mm=0.1))
    assert summary["view"]["label"] == View.INTRAPARTUM_TRANSPERINEAL, summary
    assert summary["application"] == "labour-progress" and summary["analysed"], summary
    assert summary["aop_deg"] is not None and summary["hsd_mm"] is not None and summary.get("hc_mm") is None
    assert set(built) == {"sr", "sc", "gsps", "seg"}, "no OB-GYN fetal biometry report for a labour image"
    found = read_finding(built["sr"])
    assert found["application"] == "labour-progress" and round(found["aop_deg"], 1) == summary["aop_deg"]
    view_line = f"Recognised view: {View.INTRAPARTUM_TRANSPERINEAL.words}"
    assert any(c.startswith(view_line) for c in found["comments"]), found["comments"]
    assert view_line in built["sc"].ImageComments


def test_a_head_keeps_its_finding_and_says_its_view(runtime: Runtime) -> None:
    summary, built = run(runtime, dcmread(SAMPLES / "hc18_104_HC.dcm"))
    assert summary["application"] == "fetal-head" and summary["analysed"] and summary["hc_mm"]
    assert set(built) == {"sr", "sc", "gsps", "seg", "obsr"}
    found = read_finding(built["sr"])
    assert found["hc_mm"] == pytest.approx(summary["hc_mm"], abs=0.05)
    assert any(c.startswith(f"Recognised view: {View.AXIAL_FETAL_HEAD.words}") for c in found["comments"])
    assert "Recognised view" in built["sc"].ImageComments


def test_below_the_abstain_threshold_the_view_is_unknown(runtime: Runtime) -> None:
    router = runtime.application
    assert isinstance(router, ViewRouter)
    unsure = ViewModel(router.view_model.bundle)
    unsure.threshold = 1.01
    unsure.claims = {}  # the head application may not claim it either (its claim: below)
    analysis = dataclasses.replace(router, view_model=unsure).analyse(dcmread(SAMPLES / "hc18_104_HC.dcm"))
    assert analysis.application == NAME and analysis.view is not None
    assert analysis.view.label is View.UNKNOWN and analysis.view.top is View.AXIAL_FETAL_HEAD
    assert analysis.result.reason == "not analysed: view not recognised, no application for this view"
    assert isinstance(analysis.result, NoApplication), "no head result, no biometry"


HARD_PSFHS = DATA / "view_hard" / "psfhs_04616.png"


class FixedViewModel(ViewModel):
    """The shipped view bundle answering given probabilities: a view model's mistake on demand."""

    def __init__(self, model: ViewModel, probabilities: dict[View, float]) -> None:
        super().__init__(model.bundle)
        self.fixed = np.array([probabilities.get(v, 0.0) for v in self.labels], dtype=np.float32)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return np.repeat(self.fixed[None], len(x), axis=0)


def test_a_transperineal_image_the_view_model_calls_a_head_gets_no_head_finding(runtime: Runtime) -> None:
    """A held-out PSFHS image that fetal-view 0.1.0 called an axial head (83%, intrapartum 16%), given that
    answer again: the labour model finds its pubic symphysis, so the view is uncertain and nothing is measured."""
    router = runtime.application
    assert isinstance(router, ViewRouter)
    mistaken = FixedViewModel(router.view_model, {View.AXIAL_FETAL_HEAD: 0.83, View.INTRAPARTUM_TRANSPERINEAL: 0.16})
    router = dataclasses.replace(router, view_model=mistaken)
    summary, built = run(dataclasses.replace(runtime, application=router), wrap_png(HARD_PSFHS, pixel_size_mm=0.1))
    view = summary["view"]
    assert view["top"] == View.AXIAL_FETAL_HEAD and view["label"] == View.UNKNOWN, view
    assert "pubic symphysis" in view["conflict"] and "psfhs-seg" in view["conflict"]
    models = router.analyse(wrap_png(HARD_PSFHS, pixel_size_mm=0.1)).models
    assert [name for name, _ in models] == ["fetal-view", "psfhs-seg"], "the labour model that vetoed is named"
    assert summary["application"] == NAME and not summary["analysed"]
    assert summary.get("hc_mm") is None and summary.get("finding") == "" and summary.get("aop_deg") is None
    assert summary["reason"] == "not analysed: view uncertain, no application for this view"
    found = read_finding(built["sr"])
    assert found["application"] == "view-router" and found["hc_mm"] is None
    assert found["assessment"] == vrc.VIEW_UNCERTAIN.meaning, "coded as uncertain, not as a view without application"
    assert any(c.startswith("View uncertain: the view model says axial fetal head") for c in found["comments"])
    assert "VIEW UNCERTAIN" in built["sc"].ImageComments.upper() and "HC " not in built["sc"].ImageComments


def test_the_cross_check_leaves_a_head_to_the_head_application(runtime: Runtime) -> None:
    """A real head with a sizeable intrapartum probability: the labour model finds no symphysis."""
    router = runtime.application
    assert isinstance(router, ViewRouter)
    unsure = FixedViewModel(router.view_model, {View.AXIAL_FETAL_HEAD: 0.7, View.INTRAPARTUM_TRANSPERINEAL: 0.3})
    analysis = dataclasses.replace(router, view_model=unsure).analyse(dcmread(SAMPLES / "hc18_104_HC.dcm"))
    assert analysis.application == "fetal-head" and analysis.result.analysed
    assert analysis.view is not None and analysis.view.label is View.AXIAL_FETAL_HEAD
    assert not analysis.view.conflict


def test_the_cross_check_runs_only_above_its_probability(runtime: Runtime) -> None:
    router = runtime.application
    assert isinstance(router, ViewRouter)
    probs = {View.AXIAL_FETAL_HEAD: 0.9, View.INTRAPARTUM_TRANSPERINEAL: 0.005, View.NOT_FETAL: 0.095}
    wrong = dataclasses.replace(router, view_model=FixedViewModel(router.view_model, probs))
    psfhs = wrap_png(PSFHS, pixel_size_mm=None)
    # below router.cross_check_probability (0.01) the labour model is not asked: the head application answers
    assert wrong.classify(decode_for_analysis(psfhs, 10**8, 10)).label is View.AXIAL_FETAL_HEAD
    asked = dataclasses.replace(wrong, cross_check_probability=0.004)
    view = asked.classify(decode_for_analysis(psfhs, 10**8, 10))
    assert view.label is View.UNKNOWN and "pubic symphysis" in view.conflict
    mistaken = FixedViewModel(router.view_model, {View.AXIAL_FETAL_HEAD: 0.83, View.INTRAPARTUM_TRANSPERINEAL: 0.16})
    never = dataclasses.replace(router, view_model=mistaken, cross_check_probability=1.0)
    assert never.classify(decode_for_analysis(wrap_png(HARD_PSFHS, pixel_size_mm=None), 10**8, 10)).label is (
        View.AXIAL_FETAL_HEAD
    )


def test_an_application_is_not_cross_checked_by_itself_and_a_failed_check_is_uncertain(runtime: Runtime) -> None:
    router = runtime.application
    assert isinstance(router, ViewRouter)
    labour = router.routes[View.INTRAPARTUM_TRANSPERINEAL]
    # labour-progress routed from two views: an image routed to it is not shown to it again (it would veto itself)
    routes = {**router.routes, View.FIRST_TRIMESTER_MIDSAGITTAL: labour}
    probs = {View.INTRAPARTUM_TRANSPERINEAL: 0.97, View.FIRST_TRIMESTER_MIDSAGITTAL: 0.03}
    twice = dataclasses.replace(router, routes=routes, view_model=FixedViewModel(router.view_model, probs))
    analysis = twice.analyse(wrap_png(PSFHS, pixel_size_mm=None))
    assert analysis.application == "labour-progress" and analysis.view is not None and not analysis.view.conflict

    class Broken:
        """labour-progress whose model fails during the cross-check."""

        name = "labour-progress"
        applications = ("labour-progress",)

        def recognises(self, decoded: DecodedImage) -> None:
            raise InferenceError("labour model: RuntimeError: out of memory")

        def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
            raise AssertionError("not routed here")

        def bundle_paths(self) -> list[Path]:
            return []

        def describe(self) -> dict[str, str]:
            return {}

    broken_routes = {**router.routes, View.INTRAPARTUM_TRANSPERINEAL: Broken()}
    unsure = FixedViewModel(router.view_model, {View.AXIAL_FETAL_HEAD: 0.8, View.INTRAPARTUM_TRANSPERINEAL: 0.2})
    broken = dataclasses.replace(router, routes=broken_routes, view_model=unsure)
    analysis = broken.analyse(dcmread(SAMPLES / "hc18_104_HC.dcm"))
    assert analysis.application == NAME and analysis.view is not None and analysis.view.label is View.UNKNOWN
    assert "cross-check by labour-progress failed" in analysis.view.conflict and not analysis.result.analysed


class Stub:
    """A registered application standing in for one this build may not have (labour-progress)."""

    name = "test-labour"
    applications = ("test-labour",)
    given: DecodedImage | None = None  # the decoded image the router handed over

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        self.given = decoded
        decoded = decoded or decode_for_analysis(ds, 10**8, 10)
        result = AnalysisResult(analysed=False, reason="stub", seg_model=("stub", "0"), cls_model=("stub", "0"))
        return Analysis(self.name, result, decoded, (("stub", "0"),))

    def bundle_paths(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, str]:
        return {"segmentation": "stub 0"}


def test_a_route_to_an_unregistered_application_is_dropped_with_a_warning(caplog) -> None:
    routes = {"axial_fetal_head": "fetal-head", "intrapartum_transperineal": "no-such-application"}
    with caplog.at_level(logging.WARNING, logger="fetalnode.applications.view_router.application"):
        router = build_application(settings(**{"router.applications": routes}))
    assert "'no-such-application'" in caplog.text and "not registered" in caplog.text
    assert isinstance(router, ViewRouter) and set(router.routes) == {View.AXIAL_FETAL_HEAD}
    analysis = router.analyse(wrap_png(PSFHS, pixel_size_mm=None))
    assert analysis.application == NAME
    assert (
        analysis.result.reason == f"not analysed: {View.INTRAPARTUM_TRANSPERINEAL.words}, no application for this view"
    )


def test_a_registered_application_gets_its_view(caplog) -> None:
    register_application("test-labour")(lambda s: Stub())
    routes = {"axial_fetal_head": "fetal-head", "intrapartum_transperineal": "test-labour"}
    router = build_application(settings(**{"router.applications": routes}))
    assert isinstance(router, ViewRouter)
    assert router.applications == (NAME, "fetal-head", "test-labour")
    assert router.describe()["test-labour segmentation"] == "stub 0"
    analysis = router.analyse(wrap_png(PSFHS, pixel_size_mm=None))
    assert analysis.application == "test-labour" and analysis.view is not None
    assert analysis.view.label is View.INTRAPARTUM_TRANSPERINEAL
    assert analysis.models == (("stub", "0"), ("fetal-view", router.view_model.version))
    stub = router.routes[View.INTRAPARTUM_TRANSPERINEAL]
    assert isinstance(stub, Stub) and stub.given is analysis.decoded, "the image is decoded once, by the router"
    assert router.analyse(wrap_png(FIRST_TRIMESTER, pixel_size_mm=None)).application == NAME


def test_router_configuration_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[router.applications]\naxial_fetal_head = "fetal-head"\nnot_fetal = ""\n')
    s = load_settings(cfg, env={})
    assert s.router.applications == {"axial_fetal_head": "fetal-head", "not_fetal": ""}
    assert router_routes(s) == {View.AXIAL_FETAL_HEAD: "fetal-head"}
    env = {"FETALNODE__ROUTER__APPLICATIONS": "intrapartum_transperineal=labour-progress"}
    assert load_settings(None, env=env).router.applications == {"intrapartum_transperineal": "labour-progress"}
    with pytest.raises(ConfigError, match="key=value"):
        load_settings(None, env={"FETALNODE__ROUTER__APPLICATIONS": "fetal-head"})
    for routes, why in (
        ({"femur": "fetal-head"}, "unknown view 'femur'"),
        ({"unknown": "fetal-head"}, "abstention"),
        ({"not_fetal": NAME}, "router itself"),
    ):
        with pytest.raises(ConfigError, match=why):
            router_routes(settings(**{"router.applications": routes}))
    assert (
        load_settings(None, env={"FETALNODE__ROUTER__CROSS_CHECK_PROBABILITY": "0.2"}).router.cross_check_probability
        == 0.2
    )
    with pytest.raises(ConfigError, match="cross_check_probability must be between 0 and 1"):
        settings(**{"router.cross_check_probability": 1.5})


def test_the_earlier_name_of_the_head_view_is_read_with_a_deprecation_warning(tmp_path: Path, caplog) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[router.applications]\nsecond_trimester_head = "fetal-head"\nnot_fetal = ""\n')
    with caplog.at_level(logging.WARNING, logger="fetalnode.applications.view_router.application"):
        assert router_routes(load_settings(cfg, env={})) == {View.AXIAL_FETAL_HEAD: "fetal-head"}
    assert "'second_trimester_head' is deprecated" in caplog.text and "'axial_fetal_head'" in caplog.text
    # beside the new name, the new name wins; the old one mapped to "" turns the head off as before
    both = {"second_trimester_head": "fetal-head", "axial_fetal_head": "test-labour"}
    assert router_routes(settings(**{"router.applications": both})) == {View.AXIAL_FETAL_HEAD: "test-labour"}
    assert router_routes(settings(**{"router.applications": {"second_trimester_head": ""}})) == {}
    env = {"FETALNODE__ROUTER__APPLICATIONS": "second_trimester_head=fetal-head"}
    assert router_routes(load_settings(None, env=env)) == {View.AXIAL_FETAL_HEAD: "fetal-head"}
    assert View.named("second_trimester_head") is View.AXIAL_FETAL_HEAD
    with pytest.raises(ValueError):
        View.named("second_trimester_abdomen")




def pixel_size(png: Path) -> float:
    rows = {r["filename"]: r for r in csv.DictReader((DATA / "hc18_mini" / "labels.csv").open())}
    return float(rows[f"images/{png.name}"]["pixel_size_mm"])


def test_an_application_claims_a_frame_the_view_model_is_unsure_about_by_its_own_check(runtime: Runtime) -> None:
    """The view model abstains (head 45%, below its threshold): the head application's gate finds a well-fitted
    skull, so the head application claims the image and measures it; the outputs say it was claimed."""
    router = runtime.application
    assert isinstance(router, ViewRouter)
    unsure = FixedViewModel(
        router.view_model,
        {View.AXIAL_FETAL_HEAD: 0.45, View.FIRST_TRIMESTER_MIDSAGITTAL: 0.4, View.OTHER_FETAL_PLANE: 0.15},
    )
    unsure.claims = {View.AXIAL_FETAL_HEAD: ClaimRule(min_probability=0.3, min_score=0.8)}
    claiming = dataclasses.replace(router, view_model=unsure)
    analysis = claiming.analyse(dcmread(SAMPLES / "hc18_104_HC.dcm"))
    assert analysis.application == "fetal-head" and analysis.result.analysed and analysis.result.biometry
    assert analysis.view is not None and analysis.view.label is View.AXIAL_FETAL_HEAD
    assert "well-fitted skull" in analysis.view.claimed and "hc18-headseg" in analysis.view.claimed
    line = analysis.view.line()
    assert line.startswith("Recognised view: axial fetal head, claimed by its application: the view model was unsure")
    assert analysis.summary()["view"]["claimed"] == analysis.view.claimed
    # the same frame without a rule, or below the rule's view probability: not recognised, nothing measured
    for rule in ({}, {View.AXIAL_FETAL_HEAD: ClaimRule(min_probability=0.5, min_score=0.8)}):
        unsure.claims = rule
        analysis = claiming.analyse(dcmread(SAMPLES / "hc18_104_HC.dcm"))
        assert analysis.application == NAME and analysis.view is not None and analysis.view.label is View.UNKNOWN
        assert not analysis.result.analysed and not analysis.view.claimed


def test_a_claim_needs_the_skull_and_never_overrides_a_confident_other_view(runtime: Runtime) -> None:
    router = runtime.application
    assert isinstance(router, ViewRouter)
    rule = {View.AXIAL_FETAL_HEAD: ClaimRule(min_probability=0.0, min_score=0.5)}
    # a femur plane the model is unsure about: the head gate finds no plausible skull, no claim
    unsure = FixedViewModel(
        router.view_model, {View.AXIAL_FETAL_HEAD: 0.4, View.OTHER_FETAL_PLANE: 0.55, View.NOT_FETAL: 0.05}
    )
    unsure.claims = rule
    analysis = dataclasses.replace(router, view_model=unsure).analyse(wrap_png(FEMUR, pixel_size_mm=0.1))
    assert analysis.application == NAME and analysis.view is not None and analysis.view.label is View.UNKNOWN
    assert not analysis.view.claimed
    # a head the model confidently calls another view: routed there, the head application never asked
    confident = FixedViewModel(router.view_model, {View.FIRST_TRIMESTER_MIDSAGITTAL: 0.9, View.AXIAL_FETAL_HEAD: 0.1})
    confident.claims = rule
    analysis = dataclasses.replace(router, view_model=confident).analyse(dcmread(SAMPLES / "hc18_104_HC.dcm"))
    assert analysis.application == NAME and analysis.view is not None
    assert analysis.view.label is View.FIRST_TRIMESTER_MIDSAGITTAL and not analysis.result.analysed
    # a transperineal image claimed for its whole fetal head still meets the cross-check: view uncertain
    labour_unsure = FixedViewModel(
        router.view_model, {View.AXIAL_FETAL_HEAD: 0.45, View.INTRAPARTUM_TRANSPERINEAL: 0.4, View.NOT_FETAL: 0.15}
    )
    labour_unsure.claims = rule
    claiming = dataclasses.replace(router, view_model=labour_unsure)
    decoded = decode_for_analysis(wrap_png(HARD_PSFHS, pixel_size_mm=None), 10**8, 10)
    view = claiming.classify(decoded)
    if view.claimed or view.conflict:  # the head gate's view of this image decides whether it is claimed at all
        assert view.label is View.UNKNOWN and "pubic symphysis" in view.conflict


def cine(frames: list[Path], pixel_size_mm: float) -> Dataset:
    """A US Multi-frame image of dataset PNGs (each letterboxed onto the first one's size), one calibration."""
    from PIL import Image

    ds = wrap_png(frames[0], pixel_size_mm=pixel_size_mm)
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = []
    for png in frames:
        with Image.open(png) as im:
            gray = im.convert("L")
            gray.thumbnail((cols, rows))
            canvas = Image.new("L", (cols, rows), 0)
            canvas.paste(gray, ((cols - gray.width) // 2, (rows - gray.height) // 2))
            pixels.append(np.asarray(canvas, dtype=np.uint8))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.NumberOfFrames = len(frames)
    ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.FrameTime = 40.0
    ds.PixelData = np.stack(pixels).tobytes()
    return ds


def test_a_cine_is_analysed_on_the_frame_its_application_recognises_best(runtime: Runtime) -> None:
    """Five frames, the middle one a femur plane, the others heads: the head application analyses the head
    frame whose skull it fits best, every output references that frame, the summary says which and why."""
    # HC18 heads, the best-fitted skull (006) first: the frame nearest the middle is not the one to analyse
    heads = [DATA / "hc18_mini" / "images" / f"{n}_HC.png" for n in ("006", "000", "002", "007")]
    frames = [heads[0], heads[1], FEMUR, heads[2], heads[3]]
    ds = cine(frames, pixel_size(heads[0]))
    summary, built = run(runtime, ds)
    assert summary["n_frames"] == 5 and summary["application"] == "fetal-head", summary
    frame = summary["frame_number"]
    assert frame in (1, 2, 4, 5) and summary["analysed"] and summary["hc_mm"], summary
    choice = summary["view"]["frame_choice"]
    assert choice.startswith(f"Frame {frame} of 5 analysed: of the 5 frames looked at (1, 2, 3, 4, 5)"), choice
    assert "fetal-head recognised" in choice and "the middle frame 3: " in choice
    router = runtime.application
    assert isinstance(router, ViewRouter)
    head = router.routes[View.AXIAL_FETAL_HEAD]
    assert isinstance(head, ClaimsItsView)
    decoded = {f: router.setup.decode_frame(ds, f - 1) for f in range(1, 6)}
    heads = [f for f in decoded if router.classify(decoded[f]).label is View.AXIAL_FETAL_HEAD]
    assert 3 not in heads and len(heads) >= 2 and f"{len(heads)} showed the axial fetal head" in choice
    fits = {f: head.claim(decoded[f]).score for f in heads}
    assert frame == max(heads, key=lambda f: fits[f]), fits
    sr = hd.sr.Comprehensive3DSR.from_dataset(built["sr"])
    for group in sr.content.get_planar_roi_measurement_groups():
        [image] = group.roi.ContentSequence
        [ref] = image.ReferencedSOPSequence
        assert int(ref.ReferencedFrameNumber) == frame
    [annotation] = built["gsps"].GraphicAnnotationSequence
    assert int(annotation.ReferencedImageSequence[0].ReferencedFrameNumber) == frame
    seg_refs = [
        item
        for group in built["seg"].PerFrameFunctionalGroupsSequence
        for derivation in group.DerivationImageSequence
        for item in derivation.SourceImageSequence
    ]
    assert seg_refs and {int(item.ReferencedFrameNumber) for item in seg_refs} == {frame}
    assert int(built["sc"].SourceImageSequence[0].ReferencedFrameNumber) == frame
    found = read_finding(built["sr"])
    assert any(c.startswith("Recognised view") and choice in c for c in found["comments"]), found["comments"]
    assert choice in built["sc"].ImageComments
    # router.cine_frames = 1: the middle frame only, as before (a femur: no application)
    middle = dataclasses.replace(router, cine_frames=1).analyse(ds)
    assert middle.decoded.frame_number == 3 and middle.application == NAME


def test_cine_frame_indices_are_evenly_spaced_and_keep_the_middle() -> None:
    assert frame_indices(1, 5) == [0]
    assert frame_indices(5, 5) == [0, 1, 2, 3, 4]
    assert frame_indices(500, 5) == [50, 150, 250, 350, 450]
    assert frame_indices(7, 1) == [3] and frame_indices(8, 1) == [4]
    assert frame_indices(3, 10) == [0, 1, 2]
