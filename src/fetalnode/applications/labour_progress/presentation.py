"""Softcopy Presentation State of a labour-progress image: the angle of progression as graphics over the
source image (the source pixels untouched).

One graphic layer ``FETALNODE`` with: the angle as an open 3-point POLYLINE (symphysis axis end, vertex,
tangent point on the fetal head), the head-symphysis distance as an open 2-point POLYLINE, the outlines of
the pubic symphysis and the fetal head as closed POLYLINEs, a text anchored at the vertex with the angle,
and a text box with AoP / HSD, the literature reference and the research notice. Grayscale or Color
Softcopy Presentation State as for the head (:mod:`fetalnode.outputs.presentation`), series 9103; the
points are those of the SR (:mod:`fetalnode.applications.labour_progress.geometry`).
"""

from __future__ import annotations

import highdicom as hd

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.labour_progress import NAME
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.applications.labour_progress.geometry import hsd_text, labour_graphics, not_analysed_reason
from fetalnode.inference.labour import LabourResult
from fetalnode.outputs.presentation import (
    Annotations,
    presentation_shape,
    presentation_state,
    text_object,
    text_value,
)
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath


def annotation_lines(result: LabourResult) -> list[str]:
    """What the text box says (default character repertoire), the research notice last."""
    if not result.analysed:
        reason = not_analysed_reason(result)
        return [f"Not analysed: {reason}", RESEARCH_NOTICE]
    first = f"Angle of progression {result.geometry.aop_deg:.1f} deg"
    if hsd := hsd_text(result):
        first += f"  {hsd}"
    return [first, f"Reference: {lpc.AOP_REFERENCE_ASCII}", RESEARCH_NOTICE]


def labour_graphic_objects(result: LabourResult, rows: int, columns: int) -> list[hd.pr.GraphicObject]:
    """The angle, the HSD line, then the symphysis and head outlines (PIXEL units)."""
    graphics = labour_graphics(result, rows, columns)
    pixel, polyline = hd.pr.AnnotationUnitsValues.PIXEL, hd.pr.GraphicTypeValues.POLYLINE
    shapes = [graphics.angle, graphics.hsd, graphics.ps_contour, graphics.fh_contour]
    return [hd.pr.GraphicObject(graphic_type=polyline, graphic_data=s, units=pixel) for s in shapes if s is not None]


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    """Analysed or not, which lines and outlines are drawn and how many points the outlines have."""
    result = ctx.result_as(LabourResult)
    if not result.analysed:
        return presentation_shape(ctx, "labour", False, result.seg_model)
    graphics = labour_graphics(result, int(ctx.source.Rows), int(ctx.source.Columns))
    counts = [None if g is None else len(g) for g in (graphics.hsd, graphics.ps_contour, graphics.fh_contour)]
    return presentation_shape(ctx, "labour", True, result.seg_model, *counts)


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    """The values of one presentation state: the text box, the lines and outlines, the angle at the vertex."""
    result = ctx.result_as(LabourResult)
    slots: dict[str, tuple[str, object]] = {"text": ("UnformattedTextValue", text_value(annotation_lines(result)))}
    if result.analysed:
        graphics = labour_graphics(result, int(ctx.source.Rows), int(ctx.source.Columns))
        shapes = {"angle": graphics.angle, "hsd": graphics.hsd, "ps": graphics.ps_contour, "fh": graphics.fh_contour}
        for name, data in shapes.items():
            if data is not None:
                slots[f"graphic.{name}"] = ("GraphicData", data.ravel())
        slots["aop"] = ("UnformattedTextValue", f"AoP {result.geometry.aop_deg:.1f} deg")
        slots["anchor"] = ("AnchorPoint", [float(graphics.angle[1][0]), float(graphics.angle[1][1])])
    return slots


@register_output("gsps", applications=[NAME], fast=FastPath(_shape, _slots))
def build_labour_presentation_state(
    ctx: OutputContext,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    """GSPS for a grayscale source, Color Softcopy Presentation State otherwise, in the source study."""
    result = ctx.result_as(LabourResult)

    def annotate(rows: int, columns: int) -> Annotations:
        texts = [text_object(annotation_lines(result))]
        if not result.analysed:
            return None, texts
        vertex = labour_graphics(result, rows, columns).angle[1]
        texts.append(
            hd.pr.TextObject(
                text_value=f"AoP {result.geometry.aop_deg:.1f} deg",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(vertex[0]), float(vertex[1])),
                anchor_point_visible=True,
            )
        )
        return labour_graphic_objects(result, rows, columns), texts

    return presentation_state(
        ctx,
        "fetalnode AI angle of progression",
        annotate,
        content_description=f"fetalnode AI angle of progression - {RESEARCH_NOTICE.lower()}",
    )
