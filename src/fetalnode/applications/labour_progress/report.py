"""TID 1500 Measurement Report (Comprehensive 3D SR) of a labour-progress image, following IHE AI Results.

On the source image, one TID 1410 planar ROI group per drawn region, each with its own Tracking Identifier
and UID and the algorithm (TID 4019): the angle of progression (AoP, UCUM ``deg``) with its 3-point open
POLYLINE (symphysis axis end, vertex, tangent point: both lines of the angle), the group of every labelled
number; the head-symphysis distance (HSD) line; the outlines of the pubic symphysis and the fetal head as
closed POLYLINEs. The HSD with a calibration (``mm``) is the AoP group's second number; without one, its
value in UCUM ``{pixels}`` is written under Derived Imaging Measurements (TID 1500), inferred from the HSD
line, where no viewer labels the line with it. The symphysis pubis is the finding site of each number.
When the structures could not be measured, one TID 1501 group says so by code
(:data:`~fetalnode.outputs.codes.LABOUR_NOT_ANALYSED`), with the reason as a comment and no number.
Codes: :mod:`fetalnode.outputs.codes` (why each, docs/conformance.md).

Why so: a viewer drawing TID 1410 groups labels each drawn region with its group's NUMs and SCT finding
sites as "<concept meaning or code>: <value> <unit code>" beside the region (OHIF 3 does, at the region's
right edge and mid-height, with the finding site's code value and the unit's UCUM code verbatim). Regions
meeting at the vertex would put their labels on one another, and a group-level finding site or a pixel
count would be shown as ``363698007: Symphysis pubis`` or ``{pixels}``.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.labour_progress import NAME
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.applications.labour_progress.geometry import labour_graphics, not_analysed_reason
from fetalnode.errors import EncodingError
from fetalnode.inference.labour import LabourResult
from fetalnode.intake import DecodedImage
from fetalnode.outputs import codes as fc
from fetalnode.outputs.common import measurement_report
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath
from fetalnode.outputs.uids import instance_derived

AOP_CONVENTION = (
    "FH-PS-AOP 2023 challenge convention: ellipse fits of both structures; vertex = inferior apex of the pubic "
    "symphysis (end of its major axis); tangent from the vertex to the far side of the fetal head ellipse"
)
HSD_CONVENTION = "distance from the vertex to the nearest point of the fetal head contour"


def algorithm(result: LabourResult) -> hd.sr.AlgorithmIdentification:
    name, version = result.seg_model
    return hd.sr.AlgorithmIdentification(
        name=f"fetalnode {name}",
        version=version,
        parameters=[f"segmentation {name} {version}", "angle of progression: FH-PS-AOP 2023 convention"],
        manufacturer="fetalnode project",
    )


def _measurement_groups(
    source: Dataset, result: LabourResult, decoded: DecodedImage, sr_instance_uid: str
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]:
    algorithm_id = algorithm(result)
    frames = [decoded.frame_number] if decoded.frame_number else None
    symphysis = [hd.sr.FindingSite(lpc.SYMPHYSIS_PUBIS)]

    def tracking(kind: str, identifier: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=instance_derived(f"labour-{kind}", sr_instance_uid), identifier=identifier)

    if not result.analysed:
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking("tracking", "labour progress"),
                finding_type=lpc.FETAL_HEAD,
                algorithm_id=algorithm_id,
                finding_sites=symphysis,
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup(
                        referenced_sop_class_uid=source.SOPClassUID,
                        referenced_sop_instance_uid=source.SOPInstanceUID,
                        referenced_frame_numbers=frames,
                    )
                ],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(lpc.LABOUR_ASSESSMENT, lpc.LABOUR_NOT_ANALYSED)],
            )
        ]
    if result.geometry.aop_deg is None:
        raise EncodingError("an analysed labour result has no angle of progression")
    graphics = labour_graphics(result, int(source.Rows), int(source.Columns))

    def region(data: np.ndarray) -> hd.sr.ImageRegion:
        return hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=data,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=frames,
            ),
        )

    numbers = [number(lpc.ANGLE_OF_PROGRESSION, result.geometry.aop_deg, lpc.DEGREE, algorithm_id)]
    if result.hsd_mm is not None:
        numbers.append(number(lpc.HEAD_SYMPHYSIS_DISTANCE, result.hsd_mm, fc.MM, algorithm_id))
    # (tracking kind, identifier, finding, region, measurements, evaluations, purpose)
    groups: list[tuple[str, str, Code, np.ndarray | None, list, list, Code | None]] = [
        (
            "aop",
            "angle of progression",
            lpc.FETAL_HEAD,
            graphics.angle,
            numbers,
            [hd.sr.QualitativeEvaluation(lpc.LABOUR_ASSESSMENT, lpc.LABOUR_MEASURED)],
            None,
        ),
        ("hsd", "head-symphysis distance", lpc.FETAL_HEAD, graphics.hsd, [], [], None),
        ("ps", "pubic symphysis contour", lpc.SYMPHYSIS_PUBIS, graphics.ps_contour, [], [], lpc.OUTLINE),
        ("fh", "fetal head contour", lpc.FETAL_HEAD, graphics.fh_contour, [], [], lpc.OUTLINE),
    ]
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(kind, identifier),
            referenced_region=region(data),
            finding_type=finding,
            algorithm_id=algorithm_id,
            measurements=values or None,
            qualitative_evaluations=evaluations or None,
            geometric_purpose=purpose,
        )
        for kind, identifier, finding, data, values, evaluations, purpose in groups
        if data is not None
    ]


def number(name: Code, value: float, unit: Code, algorithm_id: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    """A NUM to 0.01 with the symphysis pubis as its finding site (TID 300, below the group: no viewer label)."""
    return hd.sr.Measurement(
        name=name,
        value=round(value, 2),
        unit=unit,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(lpc.SYMPHYSIS_PUBIS)],
    )


def derived_measurements(
    source: Dataset, result: LabourResult, decoded: DecodedImage
) -> hd.sr.ContainerContentItem | None:
    """TID 1500 Derived Imaging Measurements: the HSD in pixels when there is no calibration (its line the
    SCOORD it is inferred from); ``None`` otherwise."""
    if not result.analysed or result.hsd_mm is not None or result.geometry.hsd_px is None:
        return None
    graphics = labour_graphics(result, int(source.Rows), int(source.Columns))
    if graphics.hsd is None:
        return None
    pixels = hd.sr.Measurement(
        name=lpc.HEAD_SYMPHYSIS_DISTANCE,
        value=round(result.geometry.hsd_px, 2),
        unit=lpc.PIXELS,
        algorithm_id=algorithm(result),
        finding_sites=[hd.sr.FindingSite(lpc.SYMPHYSIS_PUBIS)],
        referenced_coordinates=[
            hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=graphics.hsd,
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=source.SOPClassUID,
                    referenced_sop_instance_uid=source.SOPInstanceUID,
                    referenced_frame_numbers=[decoded.frame_number] if decoded.frame_number else None,
                ),
            )
        ],
    )
    container = hd.sr.ContainerContentItem(
        name=lpc.DERIVED_IMAGING_MEASUREMENTS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = pixels  # a TID 300 template is the content sequence of its one NUM
    return container


def report_comments(result: LabourResult, decoded: DecodedImage) -> list[str]:
    """Free-text statements of the report: the notice first, then what a reader must know."""
    lines = [f"{RESEARCH_NOTICE}: generated by fetalnode from a model trained on a small public dataset (PSFHS)."]
    if not result.analysed:
        reason = not_analysed_reason(result)
        lines.append(f"Not analysed: {reason}.")
    else:
        lines.append(f"Angle of progression {result.geometry.aop_deg:.1f} degrees ({AOP_CONVENTION}).")
        if result.hsd_mm is not None:
            lines.append(f"Head-symphysis distance {result.hsd_mm:.1f} mm ({HSD_CONVENTION}).")
            lines.append(f"Calibration from {decoded.spacing_source}.")
        elif result.geometry.hsd_px is not None:
            why = result.measurement_note or decoded.spacing_note or "no calibration"
            lines.append(
                f"Head-symphysis distance {result.geometry.hsd_px:.1f} pixels ({HSD_CONVENTION}); no mm: {why}."
            )
        lines.append(f"Reference: {lpc.AOP_REFERENCE_ASCII}.")
    if decoded.n_frames > 1 and decoded.frame_number:
        lines.append(f"Analysed frame {decoded.frame_number} of {decoded.n_frames}.")
    return lines


def comment_lines(ctx: OutputContext) -> list[str]:
    """The report's comments, then the view line when the view router chose the application."""
    lines = report_comments(ctx.result_as(LabourResult), ctx.analysis.decoded)
    return ctx.with_context_lines(lines)


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    """Analysed or not, which regions are drawn, the HSD's unit, the frame, how many comments."""
    result, decoded = ctx.result_as(LabourResult), ctx.analysis.decoded
    regions: tuple[bool, ...] = ()
    if result.analysed:
        graphics = labour_graphics(result, int(ctx.source.Rows), int(ctx.source.Columns))
        regions = tuple(g is not None for g in (graphics.hsd, graphics.ps_contour, graphics.fh_contour))
    hsd = "mm" if result.hsd_mm is not None else "px" if result.geometry.hsd_px is not None else None
    return (
        result.analysed,
        regions,
        hsd,
        decoded.frame_number,
        len(comment_lines(ctx)),
        result.seg_model,
    )


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    """The values of one report: comments, tracking UIDs, the AoP and HSD, the graphics."""
    result = ctx.result_as(LabourResult)
    slots: dict[str, tuple[str, object]] = {
        f"comment.{i}": ("TextValue", line[:1024]) for i, line in enumerate(comment_lines(ctx))
    }
    if not result.analysed:
        slots["uid.tracking"] = ("UID", ctx.uids.derived("labour-tracking"))
        return slots
    graphics = labour_graphics(result, int(ctx.source.Rows), int(ctx.source.Columns))
    regions = {"aop": graphics.angle, "hsd": graphics.hsd, "ps": graphics.ps_contour, "fh": graphics.fh_contour}
    for kind, data in regions.items():
        if data is not None:
            slots[f"uid.{kind}"] = ("UID", ctx.uids.derived(f"labour-{kind}"))
            slots[f"graphic.{kind}"] = ("GraphicData", data.ravel())
    numbers = {
        "aop": result.geometry.aop_deg,
        "hsd": result.hsd_mm if result.hsd_mm is not None else result.geometry.hsd_px,
    }
    for name, value in numbers.items():
        if value is not None:
            slots[f"number.{name}"] = ("NumericValue", round(value, 2))
            slots[f"float.{name}"] = ("FloatingPointValue", round(value, 2))
    return slots


# Revision 1: the view line ("Recognised view: intrapartum transperineal view (97%; ...)") added to the comments.
# Revision 2: the numbers in the angle's group with the symphysis as their finding site (no group finding sites),
# the HSD in pixels under Derived Imaging Measurements, no separate symphysis axis and tangent groups.
@register_output("sr", applications=[NAME], revision=2, fast=FastPath(_shape, _slots))
def build_labour_report(ctx: OutputContext) -> hd.sr.Comprehensive3DSR:
    """Build the SR; raises :class:`EncodingError` with the reason if the content is refused."""
    source, result, decoded = ctx.source, ctx.result_as(LabourResult), ctx.analysis.decoded
    return measurement_report(
        ctx,
        lambda: _measurement_groups(source, result, decoded, ctx.uids.instance),
        comment_lines(ctx),
        description="fetalnode AI labour progress report - research use only",
        derived=lambda: derived_measurements(source, result, decoded),
    )
