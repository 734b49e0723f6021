"""The view router on real peers: dataset images of other views, wrapped as US DICOM by `fetalnode wrap`, sent
with DCMTK storescu to a real node, reach Orthanc as reports that say "no application for this view" and hold
no measurement; a transperineal image an earlier view model called a head gets no head finding; a head
sent beside them still gets its HC, and so does a head carrying a scanner's callipers and banner text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fetalnode.applications.registry import build_application
from fetalnode.config import load_settings
from fetalnode.training.scanner import draw_callipers_and_text
from fetalnode.vocab import View
from harness.node import MODELS, cli
from tests.conftest import DATA, SAMPLES, send
from tests.e2e.helpers import outputs_in_study, sr_content

pytestmark = pytest.mark.e2e
VIEW_MINI = DATA / "view_mini"
HARD_PSFHS = DATA / "view_hard" / "psfhs_04616.png"
# FETAL_PLANES_DB test-split images the view model never saw: a femur and a maternal cervix (issue 19: a
# femur plane once came back as a normal head with an HC), and a first-trimester mid-sagittal view.
NO_APPLICATION = {
    "Patient01672_Plane5_2_of_2": View.OTHER_FETAL_PLANE,
    "Patient01679_Plane4_3_of_9": View.OTHER_FETAL_PLANE,
    "ff_0060": View.FIRST_TRIMESTER_MIDSAGITTAL,
}


def test_images_of_other_views_get_no_application_and_no_numbers(make_node, orthanc, tmp_path) -> None:
    pngs = [
        VIEW_MINI / "fetal_planes_db" / "images" / "Patient01672_Plane5_2_of_2.png",
        VIEW_MINI / "fetal_planes_db" / "images" / "Patient01679_Plane4_3_of_9.png",
        VIEW_MINI / "first_trimester_sagittal" / "images" / "ff_0060.png",
    ]
    wrapped = cli("wrap", *map(str, pngs), "--out", str(tmp_path / "wrapped"), "--pixel-size-mm", "0.2", check=True)
    files = [tmp_path / "wrapped" / f"{p.stem}.dcm" for p in pngs]
    assert wrapped.stdout.split() == list(map(str, files))
    cli("wrap", str(HARD_PSFHS), "--out", str(tmp_path / "hard"), "--pixel-size-mm", "0.1", check=True)
    hard = tmp_path / "hard" / f"{HARD_PSFHS.stem}.dcm"
    head = SAMPLES / "hc18_104_HC.dcm"
    node = make_node().start()
    for path in [*files, hard, head]:
        assert send(node.port, path).returncode == 0
    node.wait_all(len(files) + 2, {"delivered"})
    jobs = {j.sop_uid: j for j in node.jobs.jobs()}
    for path in files:
        src = dcmread(path, stop_before_pixels=True)
        job = jobs[src.SOPInstanceUID]
        view = NO_APPLICATION[path.stem]
        # its own view, or "view not recognised" when the view model is not sure (naming it as most probable)
        assert job.result["view"]["top"] == view, job.result
        words, line = (
            (View.UNKNOWN.words, f"View not recognised (most probable: {view.words}")
            if job.result["view"]["label"] == View.UNKNOWN
            else (view.words, f"Recognised view: {view.words}")
        )
        reason = f"not analysed: {words}, no application for this view"
        assert job.result["application"] == "view-router" and job.result["reason"] == reason, job.result
        assert "hc_mm" not in job.result and job.result["finding"] == ""
        [sr], [sc] = outputs_in_study(orthanc, src.StudyInstanceUID)
        content = sr_content(sr)
        assert content["evaluations"] == {"AI assessment of image view": "Not analysed: no application for this view"}
        assert content["measurements"] == {} and content["regions"] == {}, "no number, nothing drawn"
        assert content["comments"][0].startswith("RESEARCH USE ONLY")
        assert reason[:1].upper() + reason[1:] in content["comments"]
        assert any(c.startswith(line) for c in content["comments"]), content["comments"]
        assert reason.upper() in sc.ImageComments and "HC " not in sc.ImageComments
    # A held-out transperineal image that fetal-view 0.1.0 called a head (83%; its cross-check made the view
    # uncertain): whatever the view model says of it now, it gets no head finding and no HC.
    src = dcmread(hard, stop_before_pixels=True)
    job = jobs[src.SOPInstanceUID]
    assert job.result["application"] in {"labour-progress", "view-router"}, job.result
    assert job.result.get("hc_mm") is None and job.result.get("finding", "") == "", job.result
    if job.result["application"] == "view-router":
        assert job.result["view"]["label"] == View.UNKNOWN and "no application for this view" in job.result["reason"]
    [sr], [sc] = outputs_in_study(orthanc, src.StudyInstanceUID)
    content = sr_content(sr)
    assert "Head Circumference" not in content["measurements"], content
    assert "HC " not in sc.ImageComments
    src = dcmread(head, stop_before_pixels=True)
    job = jobs[src.SOPInstanceUID]
    assert job.result["application"] == "fetal-head" and job.result["view"]["label"] == "axial_fetal_head"
    # Other tests send the same head sample to this Orthanc: read this job's report.
    [sr] = [
        d for d in outputs_in_study(orthanc, src.StudyInstanceUID)[0] if d.SOPInstanceUID == job.result["outputs"]["sr"]
    ]
    content = sr_content(sr)
    assert "Head Circumference" in content["measurements"]
    assert any(c.startswith("Recognised view: axial fetal head") for c in content["comments"])
    status = json.loads(cli("status", "--config", str(node.config), check=True).stdout)
    assert status["counts"]["delivered"] == len(files) + 2


def test_a_head_with_the_sonographers_callipers_and_banner_text_gets_its_hc(make_node, orthanc, tmp_path) -> None:
    """A stored biometry image carries the scanner's banner and the sonographer's own callipers: a sample head
    with both burned in (at its own resolution, as a scanner draws them) is still routed to the head
    application and measured."""
    sample = SAMPLES / "hc18_316_HC.dcm"
    reference_hc = json.loads((SAMPLES / "samples.json").read_text())[sample.name]["hc_mm"]
    ds = dcmread(sample)
    # the sonographer's HC trace lies on the skull: where the head application finds it in the unmarked image
    settings = load_settings(None, env={}, overrides={"models.dir": str(MODELS), "worker.application": "fetal-head"})
    ellipse = build_application(settings).analyse(dcmread(sample)).result.ellipse
    assert ellipse is not None
    trace = (ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle_deg)
    drawn = draw_callipers_and_text(ds.pixel_array.astype(np.float32), np.random.default_rng(316), head=trace)
    assert (drawn != ds.pixel_array).mean() > 0.005, "callipers and text are drawn"
    ds.PixelData = np.clip(drawn, 0, 255).astype(np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[ds.SOPInstanceUID, "callipers"]
    )
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "series"])
    ds.BurnedInAnnotation = "YES"
    path = tmp_path / "callipers.dcm"
    ds.save_as(path, enforce_file_format=True)
    node = make_node().start()
    assert send(node.port, path).returncode == 0
    node.wait_all(1, {"delivered"})
    [job] = [j for j in node.jobs.jobs() if j.sop_uid == ds.SOPInstanceUID]
    assert job.result["application"] == "fetal-head" and job.result["view"]["label"] == View.AXIAL_FETAL_HEAD
    assert job.result["analysed"] and abs(job.result["hc_mm"] - reference_hc) <= 5.0, (
        job.result["hc_mm"],
        reference_hc,
    )
    [sr] = [
        d for d in outputs_in_study(orthanc, ds.StudyInstanceUID)[0] if d.SOPInstanceUID == job.result["outputs"]["sr"]
    ]
    assert "Head Circumference" in sr_content(sr)["measurements"]
