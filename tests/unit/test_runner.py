"""The one job runner, in-process: every outcome, with the real fetal-head application and real files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.destinations.base import Item, Receipt
from fetalnode.destinations.folder import folder_destination
from fetalnode.errors import ConfigError, DeliveryError, InferenceError, IntakeRejected, TransferError
from fetalnode.intake import DecodedImage
from fetalnode.outcomes import Delivery, Outcome, Received, Verdict
from fetalnode.outputs.registry import OUTPUTS, OutputContext, OutputWriter, enabled_writers, register_output
from fetalnode.outputs.uids import object_uids
from fetalnode.runner import RetryPolicy, Runtime, run_job, stage_of
from fetalnode.runtime import build_runtime
from fetalnode.vocab import DeliveryStatus, RouteAction, Stage
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile

pytestmark = pytest.mark.unit
SAMPLE = SAMPLES / "hc18_104_HC.dcm"


class Counting:
    """The real application, counting its analyses (a retry with built outputs must not analyse again)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls, self.name, self.applications = inner, 0, inner.name, inner.applications

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        self.calls += 1
        return self.inner.analyse(ds, decoded)

    def bundle_paths(self) -> list[Path]:
        return self.inner.bundle_paths()

    def describe(self) -> dict[str, str]:
        return self.inner.describe()


class Flaky:
    """A folder destination that refuses the first ``fail`` stores with a transient or permanent error."""

    def __init__(
        self, folder: Path, name: str, fail: int = 0, transient: bool = True, send=("sr", "sc"), **policy
    ) -> None:
        self.inner = folder_destination(folder, list(send), name=name)
        self.inner.settings = dataclasses.replace(self.inner.settings, **policy)
        self.settings, self.name = self.inner.settings, name
        self.fail, self.transient, self.stored = fail, transient, 0

    def store(self, item: Item) -> Receipt:
        if self.fail > 0:
            self.fail -= 1
            raise DeliveryError(f"{self.name} says no", transient=self.transient)
        self.stored += 1
        return self.inner.store(item)

    def probe(self) -> dict[str, object]:
        return self.inner.probe()


@pytest.fixture(scope="module")
def base_runtime(tmp_path_factory) -> Runtime:
    settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS)})
    return build_runtime(settings, destinations=[])


@pytest.fixture
def runtime(base_runtime: Runtime) -> Iterator[Runtime]:
    yield dataclasses.replace(base_runtime, application=Counting(base_runtime.application), destinations=[])


def received(path: Path = SAMPLE, **kw) -> Received:
    data = path.read_bytes()
    fields = {"job_id": 1, "sop_uid": "", "sha256": hashlib.sha256(data).hexdigest(), "read": lambda: data}
    return Received(station_name="TEST", **{**fields, **kw})


def test_delivered_every_enabled_output_to_every_destination(runtime: Runtime, tmp_path: Path) -> None:
    a, b = Flaky(tmp_path / "a", "a"), Flaky(tmp_path / "b", "b")
    runtime.destinations = [a, b]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.DELIVERED and outcome.stage is Stage.DELIVER, outcome.reason
    enabled = {w.name for w in runtime.writers}
    assert enabled == {"sr", "sc", "gsps", "seg", "obsr"}, "every output is enabled by default"
    assert set(outcome.built) == set(outcome.summary["outputs"]) == enabled
    assert set(outcome.receipts) == {"a", "b"} and all(set(r) == {"sr", "sc"} for r in outcome.receipts.values())
    sr = dcmread(outcome.receipts["b"]["sr"])
    assert sr.SOPInstanceUID == outcome.summary["outputs"]["sr"]
    source = dcmread(SAMPLE)
    version = "+".join(v for _, v in runtime.application.inner.analyse(source).models)
    sr_uids = [
        object_uids("sr", source.SOPInstanceUID, source.SeriesInstanceUID, version, revision=r) for r in (0, 1, 2, 3)
    ]
    assert sr.SOPInstanceUID == sr_uids[3].instance
    # No earlier SR (the wrong HC code: 0; the HC OHIF could not label: 1; the view named by trimester: 2) shares
    # its UID.
    assert sr.SOPInstanceUID not in {u.instance for u in sr_uids[:3]}
    sc = dcmread(outcome.receipts["b"]["sc"])
    sc_uids = [
        object_uids("sc", source.SOPInstanceUID, source.SeriesInstanceUID, version, revision=r) for r in (0, 1, 2)
    ]
    assert sc.SOPInstanceUID == sc_uids[2].instance not in {sc_uids[0].instance, sc_uids[1].instance}, (
        "neither the SC whose heatmap was inverted (revision 0) nor the one naming the view by trimester, without "
        "its cine frame (1) shares its UID"
    )
    assert hd.sr.Comprehensive3DSR.from_dataset(sr).SOPInstanceUID == sr.SOPInstanceUID
    assert outcome.summary["finding"] in {"normal", "abnormal"} and outcome.summary["hc_mm"] > 0


def test_an_object_that_replaces_another_writes_its_outputs_under_the_replaced_ones_uids(runtime: Runtime) -> None:
    """``scp.uid_conflict = "replace"``: the outputs written for the replaced object are replaced, not joined by
    new ones, even where the analysis now answers differently (another application, other model versions:
    other derived UIDs); outputs the replaced object did not have keep their derived UIDs."""
    plain = run_job(received(), runtime)
    replaced = {"sr": "2.25.1234567890", "sc": "2.25.987654321"}
    outcome = run_job(received(replaces=True, replaced_outputs=replaced), runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    outputs = outcome.summary["outputs"]
    assert outputs["sr"] == replaced["sr"] and outputs["sc"] == replaced["sc"]
    assert dcmread(BytesIO(outcome.built["sr"])).SOPInstanceUID == replaced["sr"]
    assert dcmread(BytesIO(outcome.built["sc"])).SOPInstanceUID == replaced["sc"]
    assert {k: v for k, v in outputs.items() if k not in replaced} == {
        k: v for k, v in plain.summary["outputs"].items() if k not in replaced
    }


def test_transient_failure_retries_later_without_analysing_again(runtime: Runtime, tmp_path: Path) -> None:
    ok, down = Flaky(tmp_path / "ok", "ok"), Flaky(tmp_path / "down", "down", fail=1)
    runtime.destinations = [ok, down]
    first = run_job(received(), runtime, clock=lambda: 1000.0)
    assert first.verdict is Verdict.RETRY and first.stage is Stage.DELIVER
    assert first.retry_in == RetryPolicy().delay(0) == 1.0 and "down says no" in first.reason
    assert first.deliveries["ok"].status is DeliveryStatus.DELIVERED and first.receipts["down"] == {}
    assert first.deliveries["down"].next_at == 1001.0 and first.deliveries["down"].attempts == 1
    early = run_job(received(built=first.built, deliveries=first.deliveries), runtime, clock=lambda: 1000.5)
    assert early.verdict is Verdict.RETRY and down.stored == 0, "a destination is not tried before it is due"
    second = run_job(received(built=first.built, deliveries=first.deliveries), runtime, clock=lambda: 1001.0)
    assert second.verdict is Verdict.DELIVERED, second.reason
    assert runtime.application.calls == 1, "the outputs of the first run are delivered, not rebuilt"
    assert ok.stored == 2 and down.stored == 2, "what a destination already holds is not sent again"
    assert second.summary == {}, "nothing was analysed on the retry"


def test_retries_end_in_a_dead_letter_after_max_attempts(runtime: Runtime, tmp_path: Path) -> None:
    runtime.destinations = [Flaky(tmp_path, "down", fail=99, retry_initial=0.5, retry_max=2.0, max_attempts=3)]
    outcome, now, waits = run_job(received(), runtime, clock=lambda: 0.0), 0.0, []
    while outcome.verdict is Verdict.RETRY:
        waits.append(outcome.retry_in)
        now += outcome.retry_in
        outcome = run_job(received(built=outcome.built, deliveries=outcome.deliveries), runtime, clock=lambda t=now: t)
    assert waits == [0.5, 1.0]
    assert outcome.verdict is Verdict.FAILED and outcome.stage is Stage.DELIVER
    assert outcome.deliveries["down"].status is DeliveryStatus.DEAD
    assert outcome.reason.startswith("down: gave up after 3 attempts")
    assert [RetryPolicy(0.5, 2.0).delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]


def test_permanent_refusal_is_a_dead_letter_at_once_and_others_still_receive(runtime: Runtime, tmp_path: Path) -> None:
    pacs, archive = Flaky(tmp_path / "p", "pacs", fail=1, transient=False), Flaky(tmp_path / "a", "archive")
    runtime.destinations = [pacs, archive]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.FAILED and outcome.stage is Stage.DELIVER
    assert outcome.reason == "pacs: pacs says no" and outcome.deliveries["pacs"].attempts == 1
    assert outcome.deliveries["archive"].status is DeliveryStatus.DELIVERED and set(outcome.receipts["archive"]) == {
        "sr",
        "sc",
    }


def test_source_is_forwarded_unchanged_and_forward_rules_skip_analysis(runtime: Runtime, tmp_path: Path) -> None:
    pacs = Flaky(tmp_path / "pacs", "pacs", send=("source", "sr"))
    viewer = Flaky(tmp_path / "viewer", "viewer", send=("sc",))
    runtime.destinations = [pacs, viewer]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.DELIVERED
    assert set(outcome.receipts["pacs"]) == {"source", "sr"} and set(outcome.receipts["viewer"]) == {"sc"}
    assert Path(outcome.receipts["pacs"]["source"]).read_bytes() == SAMPLE.read_bytes()
    forwarded = run_job(received(action=RouteAction.FORWARD), runtime)
    assert forwarded.verdict is Verdict.DELIVERED and forwarded.summary == {} and forwarded.built == {}
    assert set(forwarded.receipts["pacs"]) == {"source"} and forwarded.receipts["viewer"] == {}
    assert runtime.application.calls == 1, "a forwarded image is not analysed"


def test_unreadable_and_unsupported_input_is_rejected_at_intake(runtime: Runtime, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 200 + b"not DICOM")
    for path in (garbage, dicom_testfile("CT_small.dcm")):
        outcome = run_job(received(path), runtime)
        assert outcome.verdict is Verdict.REJECTED and outcome.stage is Stage.INTAKE, outcome
        assert outcome.reason and outcome.built == {}


def test_bytes_differing_from_the_announcement_or_lost_fail_at_transfer(runtime: Runtime, tmp_path: Path) -> None:
    outcome = run_job(received(sha256="0" * 64), runtime)
    assert outcome.verdict is Verdict.FAILED and outcome.stage is Stage.TRANSFER
    lost = run_job(received(read=(tmp_path / "gone.dcm").read_bytes), runtime)
    assert lost.verdict is Verdict.FAILED and lost.stage is Stage.TRANSFER and "gone.dcm" in lost.reason
    assert runtime.application.calls == 0


def test_model_failure_and_unexpected_errors_fail_at_infer(runtime: Runtime) -> None:
    class Broken(Counting):
        def __init__(self, exc: Exception) -> None:
            self.exc, self.name = exc, "broken"

        def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
            raise self.exc

    for exc, reason in ((InferenceError("CUDA? no"), "CUDA? no"), (KeyError("x"), "KeyError: 'x'")):
        runtime.application = Broken(exc)
        outcome = run_job(received(), runtime)
        assert (outcome.verdict, outcome.stage, outcome.reason) == (Verdict.FAILED, Stage.INFER, reason)


def test_a_writer_that_breaks_fails_at_encode(runtime: Runtime, tmp_path: Path) -> None:
    def broken(ctx: OutputContext) -> Dataset:
        raise ValueError("no pixels for you")

    runtime.writers = [*runtime.writers, OutputWriter("broken", {"": broken})]
    runtime.destinations = [Flaky(tmp_path, "a")]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.FAILED and outcome.stage is Stage.ENCODE
    assert "'broken'" in outcome.reason and "no pixels for you" in outcome.reason
    assert not list(tmp_path.iterdir()), "nothing is delivered when an output cannot be built"


def test_a_writer_without_a_builder_for_the_application_writes_nothing(runtime: Runtime, tmp_path: Path) -> None:
    def labour_only(ctx: OutputContext) -> Dataset:
        raise AssertionError("never called for a fetal-head analysis")

    writer = OutputWriter("labour-only", {"labour-progress": labour_only})
    runtime.writers = [*runtime.writers, writer]
    runtime.destinations = [Flaky(tmp_path, "a", send=("outputs",))]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.DELIVERED, outcome.reason
    assert set(outcome.built) == set(outcome.summary["outputs"]) == {"sr", "sc", "gsps", "seg", "obsr"}
    assert set(outcome.receipts["a"]) == set(outcome.built), "'outputs' sends every output built for the image"
    OUTPUTS.add("labour-only", writer)
    with pytest.raises(ConfigError, match="cannot be written for application 'fetal-head'"):
        enabled_writers(["sr", "labour-only"], ["fetal-head"])
    both = enabled_writers(["sr", "labour-only"], ["fetal-head", "labour-progress"])
    assert [w.name for w in both] == ["sr", "labour-only"], "a writer feeding one of the applications is enabled"


def test_one_output_name_has_one_builder_per_application() -> None:
    def one(ctx: OutputContext) -> Dataset:
        raise AssertionError

    def two(ctx: OutputContext) -> Dataset:
        raise AssertionError

    register_output("test-two-apps", applications=["app-a"])(one)
    register_output("test-two-apps", applications=["app-b"])(two)
    writer = OUTPUTS.get("test-two-apps", "test")
    assert (writer.builder_for("app-a"), writer.builder_for("app-b"), writer.builder_for("app-c")) == (one, two, None)
    with pytest.raises(ConfigError, match="registered twice for application 'app-a'"):
        register_output("test-two-apps", applications=["app-a"])(two)


def test_outcome_message_round_trip_and_stage_map() -> None:
    pending = Delivery(DeliveryStatus.PENDING, 2, 12.5, {"sr": "id"}, "HTTP 503")
    outcome = Outcome(Verdict.RETRY, Stage.DELIVER, "x", {"a": 1}, {"sr": b"bytes"}, {"d": pending}, 2.0, 5.0)
    back = Outcome.from_message(json.loads(json.dumps(outcome.to_message())))
    assert back == dataclasses.replace(outcome, built={})
    assert stage_of(TransferError("x"), Stage.INTAKE) is Stage.TRANSFER
    assert stage_of(IntakeRejected("x"), Stage.INFER) is Stage.INTAKE
    assert stage_of(RuntimeError("x"), Stage.ENCODE) is Stage.ENCODE
