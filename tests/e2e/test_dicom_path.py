"""The product's spine: DCMTK modality -> fetalnode -> worker -> SR + heatmap -> a real Orthanc."""

from __future__ import annotations

import json
import signal

import pytest
from pydicom import dcmread

from harness.node import cli
from harness.orthanc import OrthancProcess
from harness.processes import wait_for
from tests.conftest import RELIABILITY_OUTPUTS, SAMPLES, dicom_testfile, send, storescu
from tests.e2e.helpers import find, outputs_in_study, sr_content

pytestmark = pytest.mark.e2e
SAMPLE_INFO = json.loads((SAMPLES / "samples.json").read_text())


def test_samples_and_real_us_files_reach_orthanc_as_reports(make_node, orthanc) -> None:
    node = make_node().start()
    sent = []
    for name in SAMPLE_INFO:
        sent.append(SAMPLES / name)
        assert send(node.port, SAMPLES / name).returncode == 0
    real = [
        "OBXXXX1A_rle.dcm",
        "US1_J2KR.dcm",
        "examples_ybr_color.dcm",
        "gdcm-US-ALOKA-16.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
    ]
    for name in real:
        sent.append(dicom_testfile(name))
        assert send(node.port, dicom_testfile(name)).returncode == 0
    node.wait_all(len(sent), {"delivered"})
    jobs = {j.sop_uid: j for j in node.jobs.jobs()}
    for path in sent:
        src = dcmread(path, stop_before_pixels=True)
        job = jobs[src.SOPInstanceUID]
        srs, scs = outputs_in_study(orthanc, src.StudyInstanceUID)
        [sr] = [d for d in srs if d.SOPInstanceUID == job.result["outputs"]["sr"]]
        [sc] = [d for d in scs if d.SOPInstanceUID == job.result["outputs"]["sc"]]
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == src.StudyInstanceUID
        assert sr.PatientID == src.PatientID
        content = sr_content(sr)
        assert src.SOPInstanceUID in content["evidence"]
        assert content["comments"][0].startswith("RESEARCH USE ONLY")
        assert sc.SamplesPerPixel == 3 and sc.Rows > src.Rows, "heatmap carries a banner above the image"
        info = SAMPLE_INFO.get(path.name)
        # the answering application's assessment: the head's, labour progress', or the view router's
        [assessment] = [v for k, v in content["evaluations"].items() if k.startswith("AI assessment")]
        if info and info["dataset"] == "hc18":
            assert assessment in {"Normal", "Abnormal"}, content
            assert content["regions"] == {
                "fetal head": ("POLYLINE", 65),
                "fetal head ellipse": ("ELLIPSE", 4),
                "biparietal diameter": ("POLYLINE", 2),
                "occipital-frontal diameter": ("POLYLINE", 2),
            }
            assert content["refs"] == {src.SOPInstanceUID}
            hc, unit = content["measurements"]["Head Circumference"]
            assert unit == "mm"
            assert abs(float(hc) - info["hc_mm"]) < 0.1 * info["hc_mm"], (path.name, hc, info["hc_mm"])
            assert {"Biparietal Diameter", "Occipital-Frontal Diameter"} <= set(content["measurements"])
        elif path.name == "US1_J2KR.dcm":
            # no calibration: if it were analysed there would be no mm measurement, and it says why
            assert "Head Circumference" not in content["measurements"]
        if assessment == "Not analysed: no fetal head found":
            assert any("no fetal head found" in c for c in content["comments"])
    status = cli("status", "--config", str(node.config), check=True)
    assert json.loads(status.stdout)["counts"]["delivered"] == len(sent)
    logs = node.log.read_text() + (node.data_dir / "audit.jsonl").read_text()
    assert orthanc.password not in logs, "the Orthanc password must never be logged"
    names = {str(dcmread(p, stop_before_pixels=True).PatientName) for p in sent}
    for name in filter(None, names):
        for part in filter(lambda x: len(x) > 2, name.replace("^", " ").split()):
            assert part not in logs, f"patient name part {part!r} found in the logs"


def test_worker_killed_mid_job_every_instance_delivered_exactly_once(make_node, orthanc) -> None:
    node = make_node().start("--no-worker")
    files = [SAMPLES / n for n in SAMPLE_INFO] + [dicom_testfile("OBXXXX1A.dcm"), dicom_testfile("US1_UNCR.dcm")]
    for f in files:
        assert send(node.port, f).returncode == 0
    assert node.jobs.counts()["queued"] == len(files)
    worker = node.start_worker()
    wait_for(
        lambda: node.jobs.counts()["delivered"] >= 1 and node.jobs.counts()["analysing"] >= 1,
        180,
        "the worker to be mid-way through the queue",
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    interrupted = node.jobs.counts()
    assert interrupted["delivered"] < len(files)
    node.start_worker()
    node.wait_all(len(files), {"delivered"})
    for f in files:
        src = dcmread(f, stop_before_pixels=True)
        reports = find(orthanc, StudyInstanceUID=src.StudyInstanceUID, Modality="SR")
        job = next(j for j in node.jobs.jobs() if j.sop_uid == src.SOPInstanceUID)
        assert [r["MainDicomTags"]["SOPInstanceUID"] for r in reports].count(job.result["outputs"]["sr"]) == 1


def test_orthanc_down_then_up_everything_delivered_once(make_node, tmp_path) -> None:
    target = OrthancProcess(tmp_path / "orthanc2", webviewer=False)
    target.start()
    target.stop()  # ports and password are fixed now; Orthanc is down while the node works
    node = make_node(target, **RELIABILITY_OUTPUTS).start()
    files = [SAMPLES / n for n in list(SAMPLE_INFO)[:3]]
    for f in files:
        assert send(node.port, f).returncode == 0
    wait_for(
        lambda: (
            all(j.state == "delivering" and j.attempts >= 2 for j in node.jobs.jobs())
            and len(node.jobs.jobs()) == len(files)
        ),
        180,
        "delivery retries while Orthanc is down",
    )
    assert "ConnectError" in node.jobs.jobs()[0].error
    target.start()
    try:
        node.wait_all(len(files), {"delivered"})
        for f in files:
            src = dcmread(f, stop_before_pixels=True)
            assert len(find(target, StudyInstanceUID=src.StudyInstanceUID, Modality="SR")) == 1
            assert len(find(target, StudyInstanceUID=src.StudyInstanceUID)) == 2, "SR + SC, nothing duplicated"
    finally:
        target.stop()


def test_permanent_rejection_fails_fast_and_resend_replays(make_node, orthanc) -> None:
    node = make_node()
    pw = node.config.parent / "orthanc-password"
    pw.write_text("wrong-password")
    node.start()
    sample = SAMPLES / next(iter(SAMPLE_INFO))
    assert storescu(node.port, sample).returncode == 0
    node.wait_all(1, {"failed"})
    [job] = node.jobs.jobs()
    assert "HTTP 401" in job.error and job.attempts == 0 and job.stage == "deliver"
    pw.write_text(orthanc.password)
    out = cli("resend", "--config", str(node.config), check=True)
    assert json.loads(out.stdout) == {"requeued": 1}
    node.wait_all(1, {"delivered"})
