"""TID 1500 Measurement Report in a Comprehensive 3D SR, following IHE AI Results (AIR).

The report lives in the source study, names the algorithm (TID 4019 Algorithm Identification and
the Contributing Equipment Sequence), carries the finding and malformation type as coded
qualitative evaluations with their confidence (an abnormal finding whose type the classifier bundle's
reporting rule does not name carries the type "Undetermined"), the head biometry in mm, and the head on the
source image, each a TID 1410 planar ROI group of its own: the head as a closed POLYLINE on the fitted
ellipse, the group of every number (HC, BPD, OFD, the confidences); the fitted ELLIPSE (exact geometry); the
BPD and OFD calliper lines as open POLYLINEs.

Why the numbers share the head's group: a viewer drawing TID 1410 groups labels each drawn region with its
group's NUMs as "<concept meaning>: <value> <unit>" beside the region (OHIF 3 does, at the region's right
edge and mid-height; it does not draw an oblique ELLIPSE). The head, its callipers and the ellipse are all
centred on the head, so labels of separate groups land on one another; one group gives one label box.
The confidence's concept names the finding ("Normal (AI)", "Abnormal, type not determined (AI)"), so the
finding reads beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.fetal_head import NAME
from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.inference import AnalysisResult
from fetalnode.inference.ellipse import Ellipse
from fetalnode.intake import DecodedImage
from fetalnode.outputs import codes as fc
from fetalnode.outputs.common import measurement_report
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath
from fetalnode.outputs.uids import instance_derived


def _algorithm(result: AnalysisResult) -> hd.sr.AlgorithmIdentification:
    seg, cls = result.seg_model, result.cls_model
    return hd.sr.AlgorithmIdentification(
        name=f"fetalnode {cls[0]}",
        version=cls[1],
        parameters=[f"segmentation {seg[0]} {seg[1]}", f"classifier {cls[0]} {cls[1]}"],
        manufacturer="fetalnode project",
    )


CONTOUR_POINTS = 64  # points of the closed head contour, the first repeated at the end


@dataclass(frozen=True)
class HeadGeometry:
    """SCOORD Graphic Data of the head, (column, row) in image pixel units.

    PS3.3 C.18.6.1.1 and highdicom: (0.0, 0.0) is the top left corner of the top left pixel, so the
    centre of pixel (i, j) of the analysis (0-based, centres at integers) is (i + 0.5, j + 0.5).
    """

    ellipse: np.ndarray  # ELLIPSE: major-axis then minor-axis end points, (4, 2)
    contour: np.ndarray  # closed POLYLINE on the ellipse, (CONTOUR_POINTS + 1, 2)
    bpd: np.ndarray  # open POLYLINE, (2, 2)
    ofd: np.ndarray  # open POLYLINE, (2, 2)


def head_geometry(ellipse: Ellipse, spacing_mm: tuple[float, float] | None) -> HeadGeometry:
    """The head's graphics; the callipers are the axes :func:`~fetalnode.inference.ellipse.biometry` measures."""
    bpd, ofd = ellipse.calliper_endpoints(spacing_mm)
    outline = ellipse.outline(CONTOUR_POINTS)
    return HeadGeometry(
        ellipse=ellipse.axis_endpoints() + 0.5,
        contour=np.vstack([outline, outline[:1]]) + 0.5,
        bpd=bpd + 0.5,
        ofd=ofd + 0.5,
    )


def _measurement_groups(
    source: Dataset, result: AnalysisResult, decoded: DecodedImage, sr_instance_uid: str
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The head group (TID 1410: the closed contour with every number and the assessment; TID 1501 with
    the assessment only when no head was found), then the ELLIPSE and the callipers (TID 1410, no number)."""
    algorithm = _algorithm(result)
    frame_number = decoded.frame_number

    def tracking(kind: str, identifier: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=instance_derived(kind, sr_instance_uid), identifier=identifier)

    def region(graphic_type: hd.sr.GraphicTypeValues, data: np.ndarray) -> hd.sr.ImageRegion:
        return hd.sr.ImageRegion(
            graphic_type=graphic_type,
            graphic_data=data,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=[frame_number] if frame_number else None,
            ),
        )

    def mm(code: Code, value: float) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=code, value=round(value, 2), unit=fc.MM, algorithm_id=algorithm)

    if not result.analysed or result.ellipse is None:
        source_image = hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=[frame_number] if frame_number else None,
        )
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking("tracking", "fetal head"),
                finding_type=fhc.HEAD_STRUCTURE,
                algorithm_id=algorithm,
                source_images=[source_image],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(fhc.AI_ASSESSMENT, fhc.NOT_ANALYSED)],
            )
        ]
    geometry = head_geometry(result.ellipse, decoded.spacing_mm)
    bio = result.biometry
    typed = result.finding == "abnormal" and bool(result.malformation_type)
    measurements = []
    if bio is not None:
        measurements += [
            mm(fhc.HEAD_CIRCUMFERENCE, bio.hc_mm),
            mm(fhc.BIPARIETAL_DIAMETER, bio.bpd_mm),
            mm(fhc.OCCIPITAL_FRONTAL_DIAMETER, bio.ofd_mm),
        ]
    measurements.append(
        hd.sr.Measurement(
            name=fhc.finding_confidence_code(result.finding, typed),
            value=round(100 * result.confidence, 2),
            unit=fc.PERCENT,
            algorithm_id=algorithm,
        )
    )
    evaluations = [
        hd.sr.QualitativeEvaluation(fhc.AI_ASSESSMENT, fhc.ABNORMAL if result.finding == "abnormal" else fhc.NORMAL)
    ]
    if result.finding == "abnormal" and not typed:
        # The bundle's reporting rule names no type here: "abnormal, type not determined", by code.
        evaluations.append(hd.sr.QualitativeEvaluation(fhc.MALFORMATION_TYPE, fhc.TYPE_NOT_DETERMINED))
    elif typed:
        evaluations.append(
            hd.sr.QualitativeEvaluation(fhc.MALFORMATION_TYPE, fhc.malformation_code(result.malformation_type))
        )
        measurements.append(
            hd.sr.Measurement(
                name=fhc.type_confidence_code(result.malformation_type),
                value=round(100 * result.type_probability, 2),
                unit=fc.PERCENT,
                algorithm_id=algorithm,
            )
        )
    polyline, ellipse = hd.sr.GraphicTypeValues.POLYLINE, hd.sr.GraphicTypeValues.ELLIPSE
    groups = [
        (tracking("tracking", "fetal head"), region(polyline, geometry.contour), measurements, evaluations),
        (tracking("tracking-ellipse", "fetal head ellipse"), region(ellipse, geometry.ellipse), [], []),
        (tracking("tracking-bpd", "biparietal diameter"), region(polyline, geometry.bpd), [], []),
        (tracking("tracking-ofd", "occipital-frontal diameter"), region(polyline, geometry.ofd), [], []),
    ]
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking_id,
            referenced_region=roi,
            finding_type=fhc.HEAD_STRUCTURE,
            algorithm_id=algorithm,
            measurements=values or None,
            qualitative_evaluations=coded or None,
        )
        for tracking_id, roi, values, coded in groups
    ]


def report_comments(result: AnalysisResult, frame_number: int | None, n_frames: int, spacing_source: str) -> list[str]:
    """Free-text statements of the report: the notice first, then what a reader must know."""
    lines = [f"{RESEARCH_NOTICE}: generated by fetalnode from models trained on small public datasets."]
    if not result.analysed:
        lines.append(result.reason[:1].upper() + result.reason[1:])
    else:
        text = f"Finding: {result.finding}"
        if result.finding == "abnormal":
            text += f" ({result.type_words()})"
        lines.append(f"{text}; confidence {100 * result.confidence:.0f}%.")
        if result.biometry is None:
            lines.append(f"No measurement in mm: {result.measurement_note}.")
        else:
            lines.append(f"Calibration from {spacing_source}.")
    if n_frames > 1 and frame_number:
        lines.append(f"Analysed frame {frame_number} of {n_frames}.")
    return lines


def _comment_lines(ctx: OutputContext) -> list[str]:
    result, decoded = ctx.result_as(AnalysisResult), ctx.analysis.decoded
    lines = report_comments(result, decoded.frame_number, decoded.n_frames, decoded.spacing_source)
    return ctx.with_context_lines(lines)


def _numbers(result: AnalysisResult) -> dict[str, float]:
    """The report's numbers as written (the names of their slots)."""
    numbers = {"confidence": round(100 * result.confidence, 2)}
    if result.biometry is not None:
        bio = result.biometry
        numbers |= {"hc": round(bio.hc_mm, 2), "bpd": round(bio.bpd_mm, 2), "ofd": round(bio.ofd_mm, 2)}
    if result.finding == "abnormal" and result.malformation_type:
        numbers["type-confidence"] = round(100 * result.type_probability, 2)
    return numbers


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    """What shapes the report (the fast path's key): the content tree, the models, the node's names."""
    result, decoded = ctx.result_as(AnalysisResult), ctx.analysis.decoded
    drawn = result.analysed and result.ellipse is not None
    return (
        ctx.analysis.application,
        drawn,
        result.biometry is not None if drawn else None,
        result.finding if drawn else None,
        result.malformation_type if drawn and result.finding == "abnormal" else None,
        decoded.frame_number,
        len(_comment_lines(ctx)),
        result.seg_model,  # named by the algorithm identification (the analysis's models are in context_key)
        result.cls_model,
    )  # the application, its models, the station and the settings: template.context_key


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    """The values of one report: comments, tracking UIDs, numbers and graphics."""
    result, decoded = ctx.result_as(AnalysisResult), ctx.analysis.decoded
    slots: dict[str, tuple[str, object]] = {
        f"comment.{i}": ("TextValue", line[:1024]) for i, line in enumerate(_comment_lines(ctx))
    }
    if not result.analysed or result.ellipse is None:
        slots["uid.tracking"] = ("UID", ctx.uids.derived("tracking"))
        return slots
    for kind in ("tracking", "tracking-ellipse", "tracking-bpd", "tracking-ofd"):
        slots[f"uid.{kind}"] = ("UID", ctx.uids.derived(kind))
    geometry = head_geometry(result.ellipse, decoded.spacing_mm)
    for name, data in (
        ("ellipse", geometry.ellipse),
        ("contour", geometry.contour),
        ("bpd", geometry.bpd),
        ("ofd", geometry.ofd),
    ):
        slots[f"graphic.{name}"] = ("GraphicData", data.ravel())
    for name, value in _numbers(result).items():
        slots[f"number.{name}"] = ("NumericValue", value)
        slots[f"float.{name}"] = ("FloatingPointValue", value)
    return slots


# Revision 1: HC coded 11984-2 (was 11779-6, a delivery-date concept), head contour and calliper POLYLINEs.
# Revision 2: every number in the head contour's group (the first), the ELLIPSE in a group of its own, the
# confidences under concepts that name the finding (FN0008-FN0010, FNT...) instead of FN0003 / FN0004.
# Revision 3: the view named by anatomy and plane ("axial fetal head", was "second-trimester axial fetal head").
@register_output("sr", applications=[NAME], revision=3, fast=FastPath(_shape, _slots))
def build_report(ctx: OutputContext) -> hd.sr.Comprehensive3DSR:
    """Build the SR; raises :class:`EncodingError` with the reason if highdicom refuses the content."""
    source, result, decoded = ctx.source, ctx.result_as(AnalysisResult), ctx.analysis.decoded
    return measurement_report(
        ctx,
        lambda: _measurement_groups(source, result, decoded, ctx.uids.instance),
        _comment_lines(ctx),
        description="fetalnode AI report - research use only",
    )
