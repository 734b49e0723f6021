"""The one job runner, in-process: every outcome, with the real fetal-head application and real files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis
from fetalnode.config import load_settings
from fetalnode.destinations.base import Item, Receipt
from fetalnode.destinations.folder import folder_destination
from fetalnode.errors import DeliveryError, InferenceError, IntakeRejected, TransferError
from fetalnode.outputs.registry import OutputContext, OutputWriter
from fetalnode.runner import Outcome, Received, RetryPolicy, Runtime, Verdict, run_job, stage_of
from fetalnode.runtime import build_runtime
from fetalnode.vocab import Stage
from harness.node import MODELS
from tests.conftest import SAMPLES, dicom_testfile

pytestmark = pytest.mark.unit
SAMPLE = SAMPLES / "hc18_104_HC.dcm"


class Counting:
    """The real application, counting its analyses (a retry with built outputs must not analyse again)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls, self.name = inner, 0, inner.name

    def analyse(self, ds: Dataset) -> Analysis:
        self.calls += 1
        return self.inner.analyse(ds)

    def bundle_paths(self) -> list[Path]:
        return self.inner.bundle_paths()

    def describe(self) -> dict[str, str]:
        return self.inner.describe()


class Flaky:
    """A folder destination that refuses the first ``fail`` stores with a transient or permanent error."""

    def __init__(self, folder: Path, name: str, fail: int = 0, transient: bool = True) -> None:
        self.inner = folder_destination(folder, ["sr", "sc"], name=name)
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
    assert set(outcome.built) == set(outcome.summary["outputs"]) == {"sr", "sc"}
    assert set(outcome.receipts) == {"a", "b"} and all(set(r) == {"sr", "sc"} for r in outcome.receipts.values())
    sr = dcmread(outcome.receipts["b"]["sr"])
    assert sr.SOPInstanceUID == outcome.summary["outputs"]["sr"]
    assert hd.sr.Comprehensive3DSR.from_dataset(sr).SOPInstanceUID == sr.SOPInstanceUID
    assert outcome.summary["finding"] in {"normal", "abnormal"} and outcome.summary["hc_mm"] > 0


def test_transient_failure_retries_later_without_analysing_again(runtime: Runtime, tmp_path: Path) -> None:
    ok, down = Flaky(tmp_path / "ok", "ok"), Flaky(tmp_path / "down", "down", fail=1)
    runtime.destinations = [ok, down]
    first = run_job(received(), runtime)
    assert first.verdict is Verdict.RETRY and first.stage is Stage.DELIVER
    assert first.retry_in == RetryPolicy().delay(0) == 1.0 and "down says no" in first.reason
    assert set(first.receipts["ok"]) == {"sr", "sc"} and first.receipts["down"] == {}
    second = run_job(received(attempts=1, built=first.built, receipts=first.receipts), runtime)
    assert second.verdict is Verdict.DELIVERED, second.reason
    assert runtime.application.calls == 1, "the outputs of the first run are delivered, not rebuilt"
    assert ok.stored == 2 and down.stored == 2, "what a destination already holds is not sent again"
    assert second.summary == {}, "nothing was analysed on the retry"


def test_retries_end_after_max_attempts(runtime: Runtime, tmp_path: Path) -> None:
    runtime.destinations = [Flaky(tmp_path, "down", fail=99)]
    runtime.retry = RetryPolicy(0.5, 2.0, max_attempts=3)
    assert run_job(received(attempts=1), runtime).verdict is Verdict.RETRY
    last = run_job(received(attempts=2), runtime)
    assert last.verdict is Verdict.FAILED and last.stage is Stage.DELIVER
    assert last.reason.startswith("gave up after 3 attempts")
    assert [RetryPolicy(0.5, 2.0).delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]


def test_permanent_refusal_fails_at_once(runtime: Runtime, tmp_path: Path) -> None:
    runtime.destinations = [Flaky(tmp_path, "pacs", fail=1, transient=False)]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.FAILED and outcome.stage is Stage.DELIVER
    assert "pacs says no" in outcome.reason and outcome.summary["outputs"], "analysed, then refused"


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

        def analyse(self, ds: Dataset) -> Analysis:
            raise self.exc

    for exc, reason in ((InferenceError("CUDA? no"), "CUDA? no"), (KeyError("x"), "KeyError: 'x'")):
        runtime.application = Broken(exc)
        outcome = run_job(received(), runtime)
        assert (outcome.verdict, outcome.stage, outcome.reason) == (Verdict.FAILED, Stage.INFER, reason)


def test_a_writer_that_breaks_fails_at_encode(runtime: Runtime, tmp_path: Path) -> None:
    def broken(ctx: OutputContext) -> Dataset:
        raise ValueError("no pixels for you")

    runtime.writers = [*runtime.writers, OutputWriter("broken", broken)]
    runtime.destinations = [Flaky(tmp_path, "a")]
    outcome = run_job(received(), runtime)
    assert outcome.verdict is Verdict.FAILED and outcome.stage is Stage.ENCODE
    assert "'broken'" in outcome.reason and "no pixels for you" in outcome.reason
    assert not list(tmp_path.iterdir()), "nothing is delivered when an output cannot be built"


def test_outcome_message_round_trip_and_stage_map() -> None:
    outcome = Outcome(Verdict.RETRY, Stage.DELIVER, "x", {"a": 1}, {"sr": b"bytes"}, {"d": {"sr": "id"}}, 2.0, 5.0)
    back = Outcome.from_message(json.loads(json.dumps(outcome.to_message())))
    assert back == dataclasses.replace(outcome, built={})
    assert stage_of(TransferError("x"), Stage.INTAKE) is Stage.TRANSFER
    assert stage_of(IntakeRejected("x"), Stage.INFER) is Stage.INTAKE
    assert stage_of(RuntimeError("x"), Stage.ENCODE) is Stage.ENCODE
