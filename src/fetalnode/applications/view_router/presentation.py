"""The view router's Presentation State: a text box over the source image saying no application looked at
it, and why (no graphics)."""

from __future__ import annotations

import highdicom as hd

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.view_router import NAME
from fetalnode.applications.view_router.result import NoApplication
from fetalnode.outputs.presentation import (
    Annotations,
    presentation_shape,
    presentation_state,
    text_object,
    text_value,
)
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath


def annotation_lines(result: NoApplication) -> list[str]:
    return [result.reason[:1].upper() + result.reason[1:], RESEARCH_NOTICE]


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    return presentation_shape(ctx, "view")


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    return {"text": ("UnformattedTextValue", text_value(annotation_lines(ctx.result_as(NoApplication))))}


# Revision 1: the router's own presentation state (revision 0 was the head's, which the router borrowed).
@register_output("gsps", applications=[NAME], revision=1, fast=FastPath(_shape, _slots))
def build_presentation_state(
    ctx: OutputContext,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    lines = annotation_lines(ctx.result_as(NoApplication))

    def annotate(rows: int, columns: int) -> Annotations:
        return None, [text_object(lines)]

    return presentation_state(
        ctx,
        "fetalnode AI view",
        annotate,
        content_description=f"fetalnode AI annotations - {RESEARCH_NOTICE.lower()}",
    )
