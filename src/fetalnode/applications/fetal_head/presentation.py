"""Softcopy Presentation State of the fetal head over the source image: the head contour, the callipers
and the result.

One graphic layer: the fitted head ellipse as a closed POLYLINE, the OFD (major axis) and BPD (minor axis)
callipers as open POLYLINEs, and a text box with the biometry, the finding and the research notice
(:mod:`fetalnode.outputs.presentation` builds the object).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.fetal_head import NAME
from fetalnode.inference import AnalysisResult
from fetalnode.inference.ellipse import Ellipse
from fetalnode.outputs.presentation import (
    Annotations,
    pixel_units,
    presentation_shape,
    presentation_state,
    text_object,
    text_value,
)
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath

CONTOUR_POINTS = 72  # every 5 degrees; the closed polyline repeats the first point (73 points)


def annotation_lines(result: AnalysisResult) -> list[str]:
    """What the text annotation says, the research notice last."""
    if not result.analysed or result.ellipse is None:
        reason = result.reason or "not analysed: no fetal head found"
        return [reason[:1].upper() + reason[1:], RESEARCH_NOTICE]
    lines = []
    if result.biometry is not None:
        bio = result.biometry
        lines.append(f"HC {bio.hc_mm:.1f} mm  BPD {bio.bpd_mm:.1f} mm  OFD {bio.ofd_mm:.1f} mm")
    else:
        lines.append(f"No measurement in mm: {result.measurement_note or 'no calibration'}")
    finding = f"AI finding: {result.finding}"
    if result.finding == "abnormal":
        finding += f" ({result.type_words()})"
    lines.append(f"{finding}, confidence {100 * result.confidence:.0f}%")
    lines.append(RESEARCH_NOTICE)
    return lines


def head_graphic_data(ellipse: Ellipse, rows: int, columns: int) -> list[np.ndarray]:
    """Closed head contour, then the OFD (major axis) and BPD (minor axis) calliper lines (PIXEL units)."""
    outline = ellipse.outline(CONTOUR_POINTS)
    contour = pixel_units(np.vstack([outline, outline[:1]]), rows, columns)
    ends = pixel_units(ellipse.axis_endpoints(), rows, columns)
    return [contour, ends[0:2], ends[2:4]]


def head_graphics(ellipse: Ellipse, rows: int, columns: int) -> list[hd.pr.GraphicObject]:
    """:func:`head_graphic_data` as open or closed POLYLINEs."""
    polyline = hd.pr.GraphicTypeValues.POLYLINE
    pixel = hd.pr.AnnotationUnitsValues.PIXEL
    return [
        hd.pr.GraphicObject(graphic_type=polyline, graphic_data=data, units=pixel)
        for data in head_graphic_data(ellipse, rows, columns)
    ]


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    result = ctx.result_as(AnalysisResult)
    return presentation_shape(ctx, "head", result.analysed and result.ellipse is not None)


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    """The values of one presentation state: the text box and the head's graphics."""
    result = ctx.result_as(AnalysisResult)
    slots: dict[str, tuple[str, object]] = {"text": ("UnformattedTextValue", text_value(annotation_lines(result)))}
    if result.analysed and result.ellipse is not None:
        graphics = head_graphic_data(result.ellipse, int(ctx.source.Rows), int(ctx.source.Columns))
        for name, data in zip(("contour", "ofd", "bpd"), graphics, strict=True):
            slots[f"graphic.{name}"] = ("GraphicData", data.ravel())
    return slots


@register_output("gsps", applications=[NAME], fast=FastPath(_shape, _slots))
def build_presentation_state(
    ctx: OutputContext,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    """GSPS for a grayscale source, Color Softcopy Presentation State otherwise, in the source study."""
    result = ctx.result_as(AnalysisResult)

    def annotate(rows: int, columns: int) -> Annotations:
        graphics = (
            head_graphics(result.ellipse, rows, columns) if result.analysed and result.ellipse is not None else None
        )
        return graphics, [text_object(annotation_lines(result))]

    return presentation_state(
        ctx,
        "fetalnode AI head annotation",
        annotate,
        content_description=f"fetalnode AI annotations - {RESEARCH_NOTICE.lower()}",
    )
