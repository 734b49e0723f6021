"""The labour-progress objects pass third-party validators: dicom3tools' dciodvfy (zero errors) on the SR,
SC, SEG and Presentation State; DCMTK's dsrdump reads the SR without a warning and names the codes; DCMTK's
dcmp2pgm applies the Presentation State; highdicom reads the SR and the SEG back (``from_dataset``, ``segread``).
Sources: two PSFHS images wrapped as US DICOM (``fetalnode wrap``), one also with a (made-up) calibration, and
an image the application could not measure; the geometry is the ground truth (``tests/labour.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.outputs.findings import read_finding
from tests.conftest import need
from tests.labour import HIGH_AOP, LOW_AOP, Built, GroundTruthLabour, build, wrapped

pytestmark = pytest.mark.interop
CASES = {
    "high": (HIGH_AOP, None, True),
    "low": (LOW_AOP, None, True),
    "calibrated": (HIGH_AOP, 0.25, True),
    "not_analysed": (LOW_AOP, None, False),
}
OBJECTS = ["sr", "sc", "seg", "gsps"]


@pytest.fixture(scope="module", params=list(CASES))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, Path]:
    image_id, pixel_size, analysed = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    built = build(wrapped(image_id, folder, pixel_size), GroundTruthLabour(image_id, analysed=analysed))
    for name in OBJECTS:
        built.write(name, folder)
    return built, folder


def _run(tool: list[str]) -> tuple[int, str]:
    result = subprocess.run(tool, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("name", OBJECTS)
def test_dciodvfy_reports_no_errors(written: tuple[Built, Path], name: str) -> None:
    need("dciodvfy")
    _, folder = written
    _, log = _run(["dciodvfy", str(folder / f"{name}.dcm")])
    assert [line for line in log.splitlines() if line.startswith("Error")] == [], log


def test_dsrdump_reads_the_report_without_warnings(written: tuple[Built, Path]) -> None:
    need("dsrdump")
    built, folder = written
    result = subprocess.run(["dsrdump", "-Ee", "+Pc", str(folder / "sr.dcm")], capture_output=True, text=True)
    assert result.returncode == 0
    assert "W:" not in result.stderr and "E:" not in result.stderr, result.stderr
    out = result.stdout
    assert "Imaging Measurement Report" in out and '(FN0103,99FETALNODE,"AI assessment of labour progress")' in out
    if built.analysis.result.analysed:
        assert '(FN0101,99FETALNODE,"Angle of progression")' in out and "(deg,UCUM" in out
        unit = "(mm,UCUM" if built.analysis.result.hsd_mm is not None else '({pixels},UCUM,"pixels")'
        assert '(FN0102,99FETALNODE,"Head-symphysis distance")' in out and unit in out
        # the angle (both its lines), the HSD line and the two outlines: one Image Region per drawn region
        assert out.count('SCOORD:(111030,DCM,"Image Region")=(POLYLINE') == 4
        if built.analysis.result.hsd_mm is None:  # the HSD in pixels, inferred from its line, outside any group
            assert '(126011,DCM,"Derived Imaging Measurements")' in out
            assert out.count('inferred from SCOORD:(260753009,SCT,"Source")=(POLYLINE') == 1
        assert '(82561000,SCT,"Symphysis pubis")' in out and '(362865009,SCT,"Entire fetal head")' in out
    else:
        assert "NUM:" not in out and "SCOORD:" not in out
        assert '(FN0105,99FETALNODE,"Not analysed: pubic symphysis or fetal head not measurable")' in out


def test_highdicom_reads_the_report_back(written: tuple[Built, Path]) -> None:
    built, _ = written
    sr = hd.sr.Comprehensive3DSR.from_dataset(built.dataset("sr"))
    assert sr.SeriesNumber == 9101 and sr.StudyInstanceUID == built.source.StudyInstanceUID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == built.source.StudyInstanceUID
    result = built.analysis.result
    if result.analysed:
        [group] = sr.content.get_planar_roi_measurement_groups(tracking_uid=None, graphic_type=None)[:1]
        [aop] = group.get_measurements(name=lpc.ANGLE_OF_PROGRESSION)
        assert aop.value == pytest.approx(result.geometry.aop_deg, abs=0.005)
    finding = read_finding(built.dataset("sr"))
    assert finding["readable"] and finding["analysed"] is result.analysed


def test_segread_gives_back_the_masks(written: tuple[Built, Path]) -> None:
    built, folder = written
    seg = hd.seg.segread(folder / "seg.dcm")
    pixels = seg.get_pixels_by_source_instance([built.source.SOPInstanceUID], segment_numbers=[1, 2])
    result = built.analysis.result
    expected = [result.ps_mask, result.fh_mask] if result.analysed else [None, None]
    for i, mask in enumerate(expected):
        got = pixels[0, :, :, i].astype(bool)
        assert np.array_equal(got, mask) if mask is not None else not got.any()


def test_dcmtk_applies_the_presentation_state(written: tuple[Built, Path]) -> None:
    need("dcmp2pgm")
    built, folder = written
    code, log = _run(["dcmp2pgm", "-v", "-p", str(folder / "gsps.dcm"), str(built.src), str(folder / "out.pgm")])
    assert code == 0 and "E:" not in log and "W:" not in log, log
    if built.analysis.result.analysed:
        assert "points=3 type=polyline" in log and "points=2 type=polyline" in log
    assert (folder / "out.pgm").stat().st_size > 0
