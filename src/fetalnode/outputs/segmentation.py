"""Binary DICOM Segmentations (PS3.3 A.51) of the applications: what their segmentation writers share.

Ultrasound images have no Frame of Reference or Image Plane module: highdicom then accepts one
single-frame source whose pixels the mask matches. For a US Multi-frame source it is given the header
as a single-frame Ultrasound Image (:func:`source_header`); the references are then restored to the
multi-frame instance with the analysed frame as Referenced Frame Number (:func:`refer_to_frame`; PS3.3
C.7.6.1.1 Source Image Sequence, C.7.6.16.2.6 Derivation Image Macro). Colour sources need nothing
special: a SEG takes only the source's geometry.
"""

from __future__ import annotations

from copy import deepcopy

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from fetalnode import __version__
from fetalnode.errors import EncodingError
from fetalnode.outputs.common import identity
from fetalnode.outputs.registry import OutputContext

SERIES_NUMBER = 9104  # the series of the output ``seg``, whatever the application


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


def binary_segmentation(
    ctx: OutputContext,
    pixel_array: np.ndarray,
    segments: list[hd.seg.SegmentDescription],
    *,
    content_label: str,
    content_description: str,
    description: str,
    comments: str,
) -> hd.seg.Segmentation:
    """A binary Segmentation of ``pixel_array`` (``segments`` described) in the source study (series
    :data:`SERIES_NUMBER`), on the source image (its analysed frame of a cine), with a frame for every
    segment also when it is empty; every segmentation writer builds its object here."""
    source = ctx.source
    multiframe = source.SOPClassUID == UltrasoundMultiFrameImageStorage
    try:
        seg = hd.seg.Segmentation(
            source_images=[source_header(source, multiframe)],
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            manufacturer_model_name="fetalnode",
            software_versions=__version__,
            device_serial_number=ctx.station_name[:64] or "fetalnode",
            content_label=content_label,
            content_description=content_description,
            omit_empty_frames=False,
            **identity(ctx, series_number=SERIES_NUMBER),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"Segmentation could not be built: {exc}") from exc
    if multiframe:
        refer_to_frame(seg, source, ctx.analysis.decoded.frame_number or 1)
    dimension_uid = dimension_organization_uid(ctx)
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimension_uid
    seg.SeriesDescription = description
    seg.ImageComments = comments
    # Type 2C in General Image when there is no Image Plane module (ultrasound): empty unless the source has it.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
