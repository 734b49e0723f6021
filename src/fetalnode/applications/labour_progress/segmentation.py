"""Binary DICOM Segmentation (PS3.3 A.51) of a labour-progress image: pubic symphysis and fetal head.

Segment 1 "Pubic symphysis" (type SCT 82561000 "Symphysis pubis"), segment 2 "Fetal head" (type SCT
362865009 "Entire fetal head"), both of category SCT 91723000 "Anatomical Structure" (CID 7150), algorithm
type AUTOMATIC with the segmentation bundle as Segmentation Algorithm Identification (family DCM 123110
"Artificial Intelligence", CID 7162). The numbering is PSFHS's label values (1 symphysis, 2 head). Each
frame is the model's mask pixel for pixel on the source image; when the image was not analysed both segments
are written empty, with the reason in Image Comments. References, the multi-frame source and the
Dimension Organization UID are handled as for the head SEG (:mod:`fetalnode.outputs.segmentation`).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.labour_progress import NAME
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.applications.labour_progress.geometry import not_analysed_reason
from fetalnode.errors import EncodingError
from fetalnode.inference.labour import LabourResult
from fetalnode.outputs import codes
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.segmentation import binary_segmentation, segmentation_slots
from fetalnode.outputs.template import FastPath

SEGMENTS: tuple[tuple[int, str, Code], ...] = (
    (1, "Pubic symphysis", lpc.SYMPHYSIS_PUBIS),
    (2, "Fetal head", lpc.FETAL_HEAD),
)


def labour_segments(seg_model: tuple[str, str]) -> list[hd.seg.SegmentDescription]:
    """The two segments, found automatically by the segmentation bundle."""
    name, version = seg_model
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SEGMENT_CATEGORY,
            segmented_property_type=concept,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=name, version=version, family=codes.ALGORITHM_FAMILY
            ),
        )
        for number, label, concept in SEGMENTS
    ]


def _mask(mask: np.ndarray | None, shape: tuple[int, int], label: str) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if mask.shape != shape:
        raise EncodingError(f"{label} mask has shape {mask.shape}, the source image {shape}")
    return np.asarray(mask).astype(bool)


def _masks(ctx: OutputContext) -> np.ndarray:
    """(rows, columns, 2): the symphysis and head masks."""
    result, source = ctx.result_as(LabourResult), ctx.source
    shape = (int(source.Rows), int(source.Columns))
    return np.stack(
        [_mask(result.ps_mask, shape, "pubic symphysis"), _mask(result.fh_mask, shape, "fetal head")], axis=-1
    )


def _comments(result: LabourResult, found: bool) -> str:
    comments = [RESEARCH_NOTICE]
    if found:
        comments.append("Pubic symphysis and fetal head as segmented by the model")
    if not result.analysed:
        comments.append(f"Not analysed: {not_analysed_reason(result)}")
    return ". ".join(comments)


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    """Found or not, analysed or not, the segments overlapping or not (highdicom's Segments Overlap)."""
    result, masks = ctx.result_as(LabourResult), _masks(ctx)
    overlap = bool(np.any(masks[..., 0] & masks[..., 1]))
    return ("labour", bool(masks.any()), result.analysed, overlap, result.seg_model, ctx.analysis.decoded.frame_number)


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    result, masks = ctx.result_as(LabourResult), _masks(ctx)
    return segmentation_slots(ctx, np.moveaxis(masks, -1, 0), _comments(result, bool(masks.any())))


@register_output("seg", applications=[NAME], fast=FastPath(_shape, _slots))
def build_labour_segmentation(ctx: OutputContext) -> hd.seg.Segmentation:
    """A binary Segmentation with the two structures in the source study (series 9104)."""
    result, masks = ctx.result_as(LabourResult), _masks(ctx)
    found = bool(masks.any())
    return binary_segmentation(
        ctx,
        masks[None],
        labour_segments(result.seg_model),
        content_label="PS_FETAL_HEAD",
        content_description=("AI pubic symphysis and fetal head" if found else "No structures found")
        + " - research use only",
        description="fetalnode AI labour segmentation - research use only",
        comments=_comments(result, found),
    )
