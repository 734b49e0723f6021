"""Binary DICOM Segmentation (PS3.3 A.51) of the fetal head the segmentation model found.

One segment, "Fetal head" (category SCT 91723000 "Anatomical Structure" of CID 7150, type SCT 69536005
"Head" of CID 7151), algorithm type AUTOMATIC with the segmentation bundle as Segmentation Algorithm
Identification (family DCM 123110 "Artificial Intelligence", CID 7162). Its frame is the model's head
mask (:attr:`~fetalnode.inference.AnalysisResult.head_mask`, the region the ellipse was fitted to) pixel
for pixel on the source image; when no head was found the segment is written empty (highdicom keeps
the one empty frame, and a reader sees "no head" rather than a missing object).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.fetal_head import NAME
from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.outputs import codes
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.segmentation import binary_segmentation, segmentation_slots
from fetalnode.outputs.template import FastPath

SEGMENT_LABEL = "Fetal head"


def head_segment(seg_model: tuple[str, str]) -> hd.seg.SegmentDescription:
    """Segment 1: the fetal head, found automatically by the segmentation bundle."""
    name, version = seg_model
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SEGMENT_CATEGORY,
        segmented_property_type=fhc.HEAD_STRUCTURE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=name, version=version, family=codes.ALGORITHM_FAMILY
        ),
    )


def _comments(ctx: OutputContext) -> str:
    result = ctx.result_as(AnalysisResult)
    found = result.head_mask is not None
    return f"{RESEARCH_NOTICE}. " + (
        "Fetal head as segmented by the model" if found else result.reason or "no fetal head found"
    )


def _mask(ctx: OutputContext) -> np.ndarray:
    result, source = ctx.result_as(AnalysisResult), ctx.source
    shape = (int(source.Rows), int(source.Columns))
    mask = result.head_mask if result.head_mask is not None else np.zeros(shape, dtype=bool)
    if mask.shape != shape:
        raise EncodingError(f"head mask has shape {mask.shape}, the source image {shape}")
    return mask


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    result = ctx.result_as(AnalysisResult)
    return ("head", result.head_mask is not None, result.seg_model, ctx.analysis.decoded.frame_number)


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    return segmentation_slots(ctx, _mask(ctx)[None], _comments(ctx))


@register_output("seg", applications=[NAME], fast=FastPath(_shape, _slots))
def build_head_segmentation(ctx: OutputContext) -> hd.seg.Segmentation:
    """A binary Segmentation of the fetal head in the source study (series 9104)."""
    result = ctx.result_as(AnalysisResult)
    found = result.head_mask is not None
    return binary_segmentation(
        ctx,
        _mask(ctx).astype(bool),
        [head_segment(result.seg_model)],
        content_label="FETAL_HEAD",
        content_description=("AI fetal head" if found else "No fetal head found") + " - research use only",
        description="fetalnode AI head segmentation - research use only",
        comments=_comments(ctx),
    )
