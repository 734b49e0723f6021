"""The labour-progress writers on real PSFHS images and their ground-truth geometry (``tests/labour.py``),
built by the job runner: the SR read back with highdicom and with the Orthanc plugin's reader (by code),
the Secondary Capture's drawing and banner, the SEG's masks, the Presentation State's graphics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.base import Analysis
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.applications.labour_progress.capture import MIN_WIDTH, YELLOW
from fetalnode.applications.labour_progress.geometry import angle_deg, labour_graphics
from fetalnode.errors import ConfigError, EncodingError
from fetalnode.outputs import codes as fc
from fetalnode.outputs.findings import read_finding
from fetalnode.outputs.registry import OUTPUTS, enabled_writers
from tests.labour import HIGH_AOP, LABELS, LOW_AOP, SEG_MODEL, Built, GroundTruthLabour, build, wrapped

pytestmark = pytest.mark.unit
PIXEL_SIZE_MM = 0.25  # made up: PSFHS has no calibration; it only exercises the mm path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("labour")


@pytest.fixture(scope="module")
def high(folder: Path) -> Built:
    return build(wrapped(HIGH_AOP, folder), GroundTruthLabour(HIGH_AOP))


@pytest.fixture(scope="module")
def low(folder: Path) -> Built:
    return build(wrapped(LOW_AOP, folder), GroundTruthLabour(LOW_AOP))


@pytest.fixture(scope="module")
def calibrated(folder: Path) -> Built:
    return build(wrapped(HIGH_AOP, folder, PIXEL_SIZE_MM), GroundTruthLabour(HIGH_AOP))


@pytest.fixture(scope="module")
def refused(folder: Path) -> Built:
    return build(wrapped(LOW_AOP, folder), GroundTruthLabour(LOW_AOP, analysed=False))


def groups(built: Built) -> dict[str, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    sr = hd.sr.Comprehensive3DSR.from_dataset(built.dataset("sr"))
    found = sr.content.get_planar_roi_measurement_groups()
    return {str(g.tracking_identifier): g for g in found}


def test_the_ground_truth_stand_in_matches_the_dataset_labels(high: Built, low: Built) -> None:
    """The fixture's geometry is the dataset's (FH-PS-AOP convention, moment instead of OpenCV fits)."""
    for built, image_id in ((high, HIGH_AOP), (low, LOW_AOP)):
        result = built.analysis.result
        assert result.geometry.aop_deg == pytest.approx(float(LABELS[image_id]["aop_deg"]), abs=0.5)
        assert result.geometry.hsd_px == pytest.approx(float(LABELS[image_id]["hsd_px"]), abs=1.0)


def derived_numbers(built: Built) -> list[hd.sr.NumContentItem]:
    """The NUMs of TID 1500's Derived Imaging Measurements container."""
    sr = built.dataset("sr")
    return [
        hd.sr.NumContentItem.from_dataset(item)
        for container in sr.ContentSequence
        if container.ConceptNameCodeSequence[0].CodeValue == lpc.DERIVED_IMAGING_MEASUREMENTS.value
        for item in container.ContentSequence
    ]


@pytest.mark.parametrize("which", ["high", "low"])
def test_sr_carries_aop_and_hsd_by_code(which: str, request: pytest.FixtureRequest) -> None:
    built: Built = request.getfixturevalue(which)
    result = built.analysis.result
    by_name = groups(built)
    # One group per drawn region: the angle's polyline holds both lines of the angle (no separate groups).
    assert list(by_name) == [
        "angle of progression",
        "head-symphysis distance",
        "pubic symphysis contour",
        "fetal head contour",
    ]
    [aop] = by_name["angle of progression"].get_measurements()  # no HSD in pixels beside it: never a label
    assert aop.name == lpc.ANGLE_OF_PROGRESSION
    assert aop.value == pytest.approx(result.geometry.aop_deg, abs=0.005) and aop.unit == lpc.DEGREE
    assert [s.value for s in aop.finding_sites] == [lpc.SYMPHYSIS_PUBIS]
    for name, group in by_name.items():
        # No group-level finding site: a viewer would label the region with its code value.
        assert group.finding_sites == [], name
        assert name == "angle of progression" or group.get_measurements() == [], name
    [hsd] = derived_numbers(built)
    assert hsd.name == lpc.HEAD_SYMPHYSIS_DISTANCE and hsd.unit == lpc.PIXELS
    assert hsd.value == pytest.approx(result.geometry.hsd_px, abs=0.005)
    [inferred_from] = [i for i in hsd.ContentSequence if i.ValueType == "SCOORD"]
    np.testing.assert_allclose(
        np.reshape(inferred_from.GraphicData, (-1, 2)), by_name["head-symphysis distance"].roi.value, atol=1e-4
    )
    [evaluation] = by_name["angle of progression"].get_qualitative_evaluations(name=lpc.LABOUR_ASSESSMENT)
    assert evaluation.value == lpc.LABOUR_MEASURED
    for name, group in by_name.items():
        assert group.finding_type in (lpc.FETAL_HEAD, lpc.SYMPHYSIS_PUBIS), name
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        [selected_from] = region.ContentSequence
        assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == built.source.SOPInstanceUID
        algorithm = {
            item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT"
        }
        assert (algorithm[fc.ALGORITHM_NAME.value], algorithm[fc.ALGORITHM_VERSION.value]) == (
            f"fetalnode {SEG_MODEL[0]}",
            SEG_MODEL[1],
        )


def test_sr_lines_are_the_measured_geometry(high: Built) -> None:
    by_name = groups(high)
    result = high.analysis.result
    angle = by_name["angle of progression"].roi.value
    assert angle.shape == (3, 2) and angle_deg(angle) == pytest.approx(result.geometry.aop_deg, abs=0.01)
    np.testing.assert_allclose(angle[1], np.add(result.geometry.vertex, 0.5), atol=1e-4)
    graphics = labour_graphics(result, 256, 256)  # the axis and the tangent are the angle's two lines
    np.testing.assert_allclose(graphics.symphysis_axis, angle[:2], atol=1e-4)
    np.testing.assert_allclose(graphics.tangent, angle[1:], atol=1e-4)
    hsd = by_name["head-symphysis distance"].roi.value
    assert np.linalg.norm(hsd[1] - hsd[0]) == pytest.approx(result.geometry.hsd_px, abs=0.01)
    for name in ("pubic symphysis contour", "fetal head contour"):
        contour = by_name[name].roi.value
        assert len(contour) > 10 and np.array_equal(contour[0], contour[-1]), name
        assert contour.min() >= 0 and contour[:, 0].max() <= 256 and contour[:, 1].max() <= 256


def test_a_line_running_out_of_the_image_is_shortened_along_itself(high: Built) -> None:
    """A tangent point beyond the image edge: the line ends at the border, the angle is unchanged."""
    result = high.analysis.result
    vertex = np.asarray(result.geometry.vertex)
    far = vertex + 10 * (np.asarray(result.geometry.tangent_point) - vertex)
    geometry = dataclasses.replace(result.geometry, tangent_point=(float(far[0]), float(far[1])))
    moved = labour_graphics(dataclasses.replace(result, geometry=geometry), 256, 256)
    assert moved.angle.max() <= 256 and moved.angle.min() >= 0
    assert angle_deg(moved.angle) == pytest.approx(result.geometry.aop_deg, abs=1e-6)


def test_calibrated_hsd_is_written_in_mm(calibrated: Built) -> None:
    result = calibrated.analysis.result
    assert result.hsd_mm == pytest.approx(result.geometry.hsd_px * PIXEL_SIZE_MM)
    by_name = groups(calibrated)
    # In mm the HSD is a label: the angle's group's second number (its own line's label would land on the AoP's).
    [aop, hsd] = by_name["angle of progression"].get_measurements()
    assert aop.name == lpc.ANGLE_OF_PROGRESSION and hsd.name == lpc.HEAD_SYMPHYSIS_DISTANCE
    assert hsd.unit == fc.MM and hsd.value == pytest.approx(result.hsd_mm, abs=0.005)
    assert [s.value for s in hsd.finding_sites] == [lpc.SYMPHYSIS_PUBIS]
    assert by_name["head-symphysis distance"].get_measurements() == [] and derived_numbers(calibrated) == []
    finding = read_finding(calibrated.dataset("sr"))
    assert finding["hsd_mm"] == pytest.approx(result.hsd_mm, abs=0.005) and finding["hsd_px"] is None


def test_the_orthanc_reader_finds_aop_by_code(high: Built) -> None:
    finding = read_finding(high.dataset("sr"))
    assert finding["readable"] is True, finding
    assert finding["application"] == "labour-progress" and finding["analysed"] is True
    assert finding["aop_deg"] == pytest.approx(high.outcome.summary["aop_deg"], abs=0.05)
    assert finding["hsd_px"] == pytest.approx(high.outcome.summary["hsd_px"], abs=0.05) and finding["hsd_mm"] is None
    assert "Kalache" in finding["aop_reference"] and "literature" in finding["aop_reference"]
    assert finding["abnormal"] is False and finding["hc_mm"] is None
    assert finding["comments"][0].startswith(RESEARCH_NOTICE)
    assert finding["model"] == " ".join(SEG_MODEL)


def test_the_reader_goes_by_code_not_by_meaning(high: Built) -> None:
    sr = high.dataset("sr")
    for item in _items(sr):
        for concept in item.get("ConceptNameCodeSequence", []):
            concept.CodeMeaning = "something else"
    assert read_finding(sr)["aop_deg"] == pytest.approx(high.analysis.result.geometry.aop_deg, abs=0.005)
    for item in _items(sr):
        for concept in item.get("ConceptNameCodeSequence", []):
            if concept.CodeValue == lpc.ANGLE_OF_PROGRESSION.value:
                concept.CodeValue = "FN9999"
    finding = read_finding(sr)
    assert finding["readable"] is False and "Angle of progression" in finding["error"]


def test_not_analysed_report_has_the_reason_and_no_number(refused: Built) -> None:
    sr = refused.dataset("sr")
    assert not [item for item in _items(sr) if item.ValueType in ("NUM", "SCOORD")]
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    [group] = report.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations(name=lpc.LABOUR_ASSESSMENT)
    assert evaluation.value == lpc.LABOUR_NOT_ANALYSED
    finding = read_finding(sr)
    assert finding["readable"] is True and finding["analysed"] is False
    assert finding["aop_deg"] is None and finding["hsd_px"] is None and finding["aop_reference"] == ""
    assert finding["comments"][1] == "Not analysed: no pubic symphysis found."
    assert refused.dataset("sc").ImageComments.startswith("NOT ANALYSED: NO PUBIC SYMPHYSIS FOUND")
    assert "deg" not in refused.dataset("sc").ImageComments and "deg" not in str(refused.dataset("gsps"))


def test_capture_draws_the_angle_and_the_banner(high: Built) -> None:
    sc = high.dataset("sc")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == high.source.SOPInstanceUID
    comments = sc.ImageComments
    assert f"ANGLE OF PROGRESSION {high.analysis.result.geometry.aop_deg:.1f} deg" in comments
    hsd = high.analysis.result.geometry.hsd_px
    assert f"HSD {hsd:.1f} px" in comments and "Kalache et al." in comments and RESEARCH_NOTICE in comments
    pixels = sc.pixel_array
    assert pixels.shape[1] == MIN_WIDTH and pixels.shape[0] > MIN_WIDTH  # enlarged 2x, banner above
    banner = pixels.shape[0] - MIN_WIDTH
    # The yellow lines of the angle pass through the vertex (source pixel units, enlarged 2x).
    vertex = (np.add(high.analysis.result.geometry.vertex, 0.5) * 2).round().astype(int)
    patch = pixels[banner + vertex[1] - 3 : banner + vertex[1] + 4, vertex[0] - 3 : vertex[0] + 4]
    assert (patch == YELLOW).all(axis=-1).any()
    assert (pixels[:banner] == YELLOW).all(axis=-1).any()  # the highlighted first banner line


def test_segmentation_masks_equal_the_input_masks(high: Built) -> None:
    seg = hd.seg.Segmentation.from_dataset(high.dataset("seg"))
    result = high.analysis.result
    assert seg.SegmentationType == "BINARY" and list(seg.segment_numbers) == [1, 2]
    pixels = seg.get_pixels_by_source_instance([high.source.SOPInstanceUID], segment_numbers=[1, 2])
    assert np.array_equal(pixels[0, :, :, 0].astype(bool), result.ps_mask)
    assert np.array_equal(pixels[0, :, :, 1].astype(bool), result.fh_mask)
    ps, fh = (seg.get_segment_description(n) for n in (1, 2))
    assert (ps.segment_label, fh.segment_label) == ("Pubic symphysis", "Fetal head")
    assert ps.segmented_property_type == lpc.SYMPHYSIS_PUBIS and fh.segmented_property_type == lpc.FETAL_HEAD
    assert ps.segmented_property_category == fc.SEGMENT_CATEGORY
    assert (ps.algorithm_identification[0].AlgorithmName, ps.algorithm_identification[0].AlgorithmVersion) == SEG_MODEL


def test_not_analysed_segmentation_is_empty(refused: Built) -> None:
    seg = hd.seg.Segmentation.from_dataset(refused.dataset("seg"))
    pixels = seg.get_pixels_by_source_instance([refused.source.SOPInstanceUID], segment_numbers=[1, 2])
    assert not pixels.any() and "Not analysed: no pubic symphysis found" in seg.ImageComments


def test_presentation_state_draws_the_angle_and_outlines(high: Built) -> None:
    pr = high.dataset("gsps")
    [annotation] = pr.GraphicAnnotationSequence
    shapes = [np.reshape(g.GraphicData, (-1, 2)) for g in annotation.GraphicObjectSequence]
    assert [len(s) for s in shapes[:2]] == [3, 2] and all(np.array_equal(s[0], s[-1]) for s in shapes[2:])
    assert angle_deg(shapes[0]) == pytest.approx(high.analysis.result.geometry.aop_deg, abs=0.01)
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert texts[1] == f"AoP {high.analysis.result.geometry.aop_deg:.1f} deg" and RESEARCH_NOTICE in texts[0]


def test_uids_are_deterministic_and_differ_from_the_heads(high: Built, folder: Path) -> None:
    again = build(high.src, GroundTruthLabour(HIGH_AOP))
    assert again.outcome.summary["outputs"] == high.outcome.summary["outputs"]
    assert again.dataset("seg").PixelData == high.dataset("seg").PixelData


def test_a_head_writer_without_labour_builder_is_refused_and_builders_check_the_result(high: Built) -> None:
    with pytest.raises(ConfigError, match="obsr"):
        enabled_writers(["obsr"], ["labour-progress"])
    head_like = Analysis("labour-progress", object(), high.analysis.decoded, (SEG_MODEL,))  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="not a LabourResult"):
        OUTPUTS.get("sr", "test").write(high.source, head_like, _settings(), "TEST")


def _settings():  # type: ignore[no-untyped-def]
    from fetalnode.config import load_settings

    return load_settings(None, env={}).output


def _items(ds):  # type: ignore[no-untyped-def]
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("no pubic symphysis found", "no pubic symphysis found"),
        ("Not analysed: no pubic symphysis found", "no pubic symphysis found"),
        ("", "pubic symphysis or fetal head not found"),
    ],
)
def test_the_reason_is_said_once(reason: str, shown: str) -> None:
    from fetalnode.applications.labour_progress.geometry import not_analysed_reason
    from fetalnode.inference.labour import LabourResult

    assert not_analysed_reason(LabourResult(analysed=False, reason=reason, seg_model=SEG_MODEL)) == shown
