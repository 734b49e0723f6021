"""Labour progress on real peers (issue 19): an intrapartum transperineal PSFHS image, wrapped as US DICOM by
``fetalnode wrap`` and sent with DCMTK storescu to a node with the default view router, is routed to the
``labour-progress`` application and reaches Orthanc as a TID 1500 SR with the angle of progression (degrees)
and the head-symphysis distance, a Secondary Capture with the angle drawn and a SEG of both structures; the
Orthanc plugin's reader finds the AoP in that SR by code, with its literature reference."""

from __future__ import annotations

import csv

import pytest
from pydicom import dcmread

from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.outputs.findings import read_finding
from harness.node import cli
from tests.conftest import DATA, send
from tests.e2e.helpers import find, outputs_in_study, sr_content

pytestmark = pytest.mark.e2e
PSFHS_MINI = DATA / "psfhs_mini"
IMAGE = "psfhs_04536"  # AoP 132.5 deg in labels.csv (the challenge construction on the annotators' masks)


def test_a_transperineal_image_gets_an_aop_report_in_orthanc(make_node, orthanc, tmp_path) -> None:
    png = PSFHS_MINI / "images" / f"{IMAGE}.png"
    reference = next(r for r in csv.DictReader((PSFHS_MINI / "labels.csv").open()) if r["filename"].endswith(png.name))
    cli("wrap", str(png), "--out", str(tmp_path), check=True)
    path = tmp_path / f"{IMAGE}.dcm"
    node = make_node().start()
    assert send(node.port, path).returncode == 0
    node.wait_all(1, {"delivered"})
    [job] = node.jobs.jobs()
    result = job.result
    assert result["application"] == "labour-progress", result
    assert result["view"]["label"] == "intrapartum_transperineal"
    assert result["analysed"], result["reason"]
    aop = result["aop_deg"]
    # A sanity bound, not an accuracy figure (that is docs/models.md, on held-out blocks).
    assert abs(aop - float(reference["aop_deg"])) < 20, (aop, reference["aop_deg"])
    assert result["hsd_px"] > 0 and result["hsd_mm"] is None, "PSFHS images carry no calibration"

    src = dcmread(path, stop_before_pixels=True)
    [sr], [sc] = outputs_in_study(orthanc, src.StudyInstanceUID)
    content = sr_content(sr)
    value, unit = content["measurements"][lpc.ANGLE_OF_PROGRESSION.meaning]
    assert unit == "deg" and round(float(value), 1) == round(aop, 1)
    assert content["measurements"][lpc.HEAD_SYMPHYSIS_DISTANCE.meaning][1] == "{pixels}"
    assert content["comments"][0].startswith("RESEARCH USE ONLY")
    assert "ANGLE OF PROGRESSION" in sc.ImageComments
    assert len(find(orthanc, StudyInstanceUID=src.StudyInstanceUID, Modality="SEG")) == 1, (
        "one SEG with the pubic symphysis and the fetal head"
    )

    finding = read_finding(sr)  # what the Orthanc plugin's panel and triage list show, read by code
    assert round(finding["aop_deg"], 1) == round(aop, 1) and "Kalache" in finding["aop_reference"]
