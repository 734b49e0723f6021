"""The view router's Secondary Capture: the image as shown, with the router's answer burned in as a banner."""

from __future__ import annotations

import highdicom as hd
import numpy as np

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.view_router import NAME
from fetalnode.applications.view_router.result import NoApplication
from fetalnode.outputs.capture import burn_banner, capture_slots, secondary_capture
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath


def _capture(ctx: OutputContext) -> tuple[np.ndarray, str]:
    result = ctx.result_as(NoApplication)
    name, version = result.model
    lines = ctx.with_context_lines([result.reason.upper(), f"{RESEARCH_NOTICE} - fetalnode {name} {version}"])
    return burn_banner(result.display_rgb, lines), " / ".join(lines)


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    return ("view", ctx.analysis.decoded.frame_number)


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    return capture_slots(*_capture(ctx))


# Revision 2: the router's own capture (revisions up to 1 were the head heatmap's, which the router borrowed).
@register_output("sc", applications=[NAME], revision=2, fast=FastPath(_shape, _slots))
def build_capture(ctx: OutputContext) -> hd.sc.SCImage:
    pixels, comments = _capture(ctx)
    return secondary_capture(
        ctx,
        pixels,
        description="fetalnode AI - not analysed - research use only",
        comments=comments,
        derivation="The source image with the view router's answer burned in (no application analysed it)",
    )
