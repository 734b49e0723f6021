"""Binary DICOM Segmentation (PS3.3 A.51) of the fetal head the segmentation model found.

One segment, "Fetal head" (category SCT 91723000 "Anatomical Structure" of CID 7150, type SCT 69536005
"Head" of CID 7151), algorithm type AUTOMATIC with the segmentation bundle as Segmentation Algorithm
Identification (family DCM 123110 "Artificial Intelligence", CID 7162). Its frame is the model's head
mask (:attr:`~fetalnode.inference.AnalysisResult.head_mask`, the region the ellipse was fitted to) pixel
for pixel on the source image; when no head was found the segment is written empty (highdicom keeps
the one empty frame, and a reader sees "no head" rather than a missing object).

Ultrasound images have no Frame of Reference or Image Plane module: highdicom then accepts one
single-frame source whose pixels the mask matches. For a US Multi-frame source it is given the header
as a single-frame Ultrasound Image; the references are then restored to the multi-frame instance with
the analysed frame as Referenced Frame Number (PS3.3 C.7.6.1.1 Source Image Sequence, C.7.6.16.2.6
Derivation Image Macro). Colour sources need nothing special: a SEG takes only the source's geometry.
"""

from __future__ import annotations

from copy import deepcopy

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from fetalnode import RESEARCH_NOTICE, __version__
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.outputs import codes
from fetalnode.outputs.common import identity
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath

SERIES_NUMBER = 9104
SEGMENT_LABEL = "Fetal head"


def head_segment(seg_model: tuple[str, str]) -> hd.seg.SegmentDescription:
    """Segment 1: the fetal head, found automatically by the segmentation bundle."""
    name, version = seg_model
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SEGMENT_CATEGORY,
        segmented_property_type=codes.HEAD_STRUCTURE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=name, version=version, family=codes.ALGORITHM_FAMILY
        ),
    )


def source_header(source: Dataset, multiframe: bool) -> Dataset:
    """The source's header without its pixels; a multi-frame one as a single-frame Ultrasound Image,
    the form highdicom accepts without a Frame of Reference."""
    skip = {"PixelData"}
    if multiframe:
        skip |= {"NumberOfFrames", "FrameIncrementPointer", "FrameTime", "SOPClassUID"}
    header = Dataset({elem.tag: elem for elem in source if elem.keyword not in skip})
    if multiframe:
        header.SOPClassUID = UltrasoundImageStorage
    return header


def refer_to_frame(ds: Dataset, source: Dataset, frame_number: int) -> None:
    """Point every reference to the stand-in back at the multi-frame source (and its analysed frame)."""
    uid = source.SOPInstanceUID
    holders = [ds, *(d for g in ds.PerFrameFunctionalGroupsSequence for d in g.get("DerivationImageSequence", []))]
    for holder in holders:
        # highdicom shares items between sequences: copies, so that no other reference gets a frame number.
        items = [deepcopy(item) for item in holder.get("SourceImageSequence", [])]
        for item in items:
            if item.ReferencedSOPInstanceUID == uid:
                item.ReferencedSOPClassUID = source.SOPClassUID
                item.ReferencedFrameNumber = frame_number
        if items:
            holder.SourceImageSequence = items
    for series in ds.get("ReferencedSeriesSequence", []):
        for item in series.ReferencedInstanceSequence:
            if item.ReferencedSOPInstanceUID == uid:
                item.ReferencedSOPClassUID = source.SOPClassUID


def segmentation_slots(ctx: OutputContext, frames: np.ndarray, comments: str) -> dict[str, tuple[str, object]]:
    """The values of one Segmentation: its frames (bits packed as highdicom packs them, frame after frame),
    the Dimension Organization UID, the comments."""
    data = hd.frame.pack_bits(np.asarray(frames, dtype=bool).ravel(), pad=False)
    if len(data) % 2:
        data += b"0"  # as highdicom pads an odd Pixel Data
    return {
        "pixels": ("PixelData", data),
        "dimension-organization": ("DimensionOrganizationUID", dimension_organization_uid(ctx)),
        "comments": ("ImageComments", comments),
    }


def dimension_organization_uid(ctx: OutputContext) -> str:
    # highdicom draws a random Dimension Organization UID: derive it so that a retry writes the same object.
    return ctx.uids.derived("seg-dimension-organization")


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


@register_output("seg", applications=["fetal-head"], fast=FastPath(_shape, _slots))
def build_head_segmentation(ctx: OutputContext) -> hd.seg.Segmentation:
    """A binary Segmentation of the fetal head in the source study (series 9104)."""
    source, analysis = ctx.source, ctx.analysis
    result = ctx.result_as(AnalysisResult)
    mask = _mask(ctx)
    multiframe = source.SOPClassUID == UltrasoundMultiFrameImageStorage
    frame_number = analysis.decoded.frame_number or 1
    found = result.head_mask is not None
    try:
        seg = hd.seg.Segmentation(
            source_images=[source_header(source, multiframe)],
            pixel_array=mask.astype(bool),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[head_segment(result.seg_model)],
            manufacturer_model_name="fetalnode",
            software_versions=__version__,
            device_serial_number=ctx.station_name[:64] or "fetalnode",
            content_label="FETAL_HEAD",
            content_description=("AI fetal head" if found else "No fetal head found") + " - research use only",
            # One frame always, also the empty one (no head found).
            omit_empty_frames=False,
            **identity(ctx, series_number=SERIES_NUMBER),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"Segmentation could not be built: {exc}") from exc
    if multiframe:
        refer_to_frame(seg, source, frame_number)
    dimension_uid = dimension_organization_uid(ctx)
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimension_uid
    seg.SeriesDescription = "fetalnode AI head segmentation - research use only"
    seg.ImageComments = _comments(ctx)
    # Type 2C in General Image when there is no Image Plane module (ultrasound): empty unless the source has it.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
