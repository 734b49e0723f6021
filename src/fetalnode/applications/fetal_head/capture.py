"""Secondary Capture of the fetal head: the fused Grad-CAM heatmap with the finding burned in as a banner."""

from __future__ import annotations

import highdicom as hd
import numpy as np

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.fetal_head import NAME
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.outputs.capture import burn_banner, capture_slots, secondary_capture
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath


def banner_lines(result: AnalysisResult) -> list[str]:
    if not result.analysed:
        first = result.reason.upper()
    else:
        first = f"AI FINDING: {result.finding.upper()} ({100 * result.confidence:.0f}%)"
        if result.finding == "abnormal":
            first += f" - {result.type_words()}"
        if result.biometry:
            first += f"  HC {result.biometry.hc_mm:.1f} mm"
    return [first, f"{RESEARCH_NOTICE} - fetalnode {result.cls_model[0]} {result.cls_model[1]}"]


def _heatmap(ctx: OutputContext) -> tuple[np.ndarray, str]:
    """The capture's pixels (heatmap and banner) and its Image Comments."""
    result = ctx.result_as(AnalysisResult)
    if result.fused_rgb is None:
        raise EncodingError("analysis produced no image to capture")
    lines = ctx.with_context_lines(banner_lines(result))
    return burn_banner(result.fused_rgb, lines), " / ".join(lines)


def _heatmap_slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    return capture_slots(*_heatmap(ctx))


def _heatmap_shape(ctx: OutputContext) -> tuple[object, ...]:
    return ("head", ctx.result_as(AnalysisResult).cls_model, ctx.analysis.decoded.frame_number)  # + context_key


# Revision 1: the Grad-CAM heatmap drawn the right way up (it explains the reported finding). Revision 2: the
# recognised view named by anatomy and plane, the analysed frame of a cine in the Source Image Sequence.
@register_output("sc", applications=[NAME], revision=2, fast=FastPath(_heatmap_shape, _heatmap_slots))
def build_heatmap_capture(ctx: OutputContext) -> hd.sc.SCImage:
    """An RGB Secondary Capture in the source study: fused Grad-CAM heatmap, ROI ellipse and banner."""
    pixels, comments = _heatmap(ctx)
    return secondary_capture(
        ctx,
        pixels,
        description="fetalnode AI heatmap - research use only",
        comments=comments,
        derivation="Grad-CAM saliency of the fetalnode classifier fused over the source image",
    )
