"""Softcopy Presentation States over the source image: what every application's presentation writer shares.

A viewer that applies one draws, on the analysed image (and frame), one graphic layer ``FETALNODE``
with the application's graphics and a text box with its result and the research notice (PS3.3 C.10.5
Graphic Annotation, C.10.7 Graphic Layer). The source pixels are untouched.

Grayscale sources (MONOCHROME1/2) get a Grayscale Softcopy Presentation State (PS3.3 A.33.1); colour
sources (RGB, YBR_*, PALETTE COLOR) a Color Softcopy Presentation State (PS3.3 A.33.2), whose
pipeline (PS3.4 N.2) applies the image's palette to indexed colour before the ICC profile.

Coordinates are PIXEL units (PS3.3 C.10.5.1.2): sub-pixel, (0.0, 0.0) is the top left hand corner
of the top left pixel, so the centre of the first pixel is (0.5, 0.5). The analysis works in array
coordinates with pixel centres at integers, hence ``+ 0.5`` (:func:`pixel_units`). Points are clipped
to the image (highdicom and the standard allow nothing outside it).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

import highdicom as hd
import numpy as np
from PIL import ImageCms
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from fetalnode import RESEARCH_NOTICE, __version__
from fetalnode.errors import EncodingError
from fetalnode.outputs.common import identity
from fetalnode.outputs.registry import OutputContext

LAYER = "FETALNODE"
CONTENT_LABEL = "FETALNODE_AI"
PIXEL_CENTRE = 0.5  # array index -> PIXEL units (PS3.3 C.10.5.1.2)
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
_SAMPLES_PER_PIXEL = 0x00280002
_PIXEL_DATA = 0x7FE00010


def pixel_units(points: np.ndarray, rows: int, columns: int) -> np.ndarray:
    shifted = np.asarray(points, dtype=np.float64) + PIXEL_CENTRE
    return np.column_stack([np.clip(shifted[:, 0], 0.0, columns), np.clip(shifted[:, 1], 0.0, rows)])


def text_value(lines: list[str]) -> str:
    """The text box's lines as one value (ST allows CR LF between lines)."""
    return "\r\n".join(lines)[:1024]


def text_object(lines: list[str]) -> hd.pr.TextObject:
    # DISPLAY units keep the box on screen whatever the zoom.
    return hd.pr.TextObject(
        text_value=text_value(lines),
        units=hd.pr.AnnotationUnitsValues.DISPLAY,
        bounding_box=(0.02, 0.02, 0.98, 0.2),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )


def presentation_reference(source: Dataset, grayscale: bool) -> Dataset:
    """The source header (no pixels) as highdicom's Presentation State constructors accept it.

    Only UIDs, study attributes, matrix size and grey-scale LUTs are read from it; the source itself is
    not changed. Two departures, both for highdicom rather than DICOM:

    * colour: highdicom wants three samples per pixel, but PS3.4 N.2 applies a Color Softcopy
      Presentation State to PALETTE COLOR images too (the palette is the first step of the colour
      pipeline), so the copy says 3;
    * grayscale: highdicom reads the Modality and VOI LUTs of an image whose SOP class allows frames
      (US Multi-frame) from the Shared Functional Groups, which a classic multi-frame does not have;
      the copy carries the top-level Rescale and Window attributes there (ignored for single-frame
      classes, which are read from the top level).
    """
    ref = Dataset()
    ref.update({tag: elem for tag, elem in source.items() if tag != _PIXEL_DATA})
    if not grayscale:
        ref[_SAMPLES_PER_PIXEL] = DataElement(_SAMPLES_PER_PIXEL, "US", 3)
    elif "SharedFunctionalGroupsSequence" not in source:
        shared = Dataset()
        if "RescaleSlope" in source and "RescaleIntercept" in source:
            rescale = Dataset()
            rescale.RescaleSlope, rescale.RescaleIntercept = source.RescaleSlope, source.RescaleIntercept
            rescale.RescaleType = source.get("RescaleType", "US")
            shared.PixelValueTransformationSequence = [rescale]
        if "WindowCenter" in source and "WindowWidth" in source:
            window = Dataset()
            window.WindowCenter, window.WindowWidth = source.WindowCenter, source.WindowWidth
            shared.FrameVOILUTSequence = [window]
        ref.SharedFunctionalGroupsSequence = [shared]
        ref.PerFrameFunctionalGroupsSequence = []
    return ref


@functools.cache
def srgb_input_profile() -> bytes:
    """sRGB as an ICC Input profile.

    PS3.3 C.11.15.1.1 wants the profile of the source colour space as an Input ("scnr") or ColorSpace
    ("spac") profile; littlecms makes sRGB a display ("mntr") profile. A matrix/TRC profile is a valid
    Input profile (ICC.1 8.3), so only the class is changed and the Profile ID (an MD5 over the header)
    is zeroed, which means "not computed". littlecms stamps the creation date and time of the process's
    first call: a fixed one instead, so that a retry in another process writes the same object.
    """
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[12:16] = b"scnr"
    data[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)  # dateTimeNumber: year, month, day, h, min, s
    data[84:100] = bytes(16)
    return bytes(data)


def icc_profile(source: Dataset) -> bytes:
    """The source's ICC profile, else sRGB (the ICC Profile Module is mandatory in a Color PS)."""
    profile = source.get("ICCProfile")
    return bytes(profile) if profile else srgb_input_profile()


def presentation_shape(ctx: OutputContext, *shape: object) -> tuple[object, ...]:
    """The fast path's key of a presentation state: the writer's ``shape``, grayscale or colour, the frame
    and what the object names (models, node)."""
    decoded = ctx.analysis.decoded
    return (
        *shape,
        str(ctx.source.get("PhotometricInterpretation", "")).strip() in GRAYSCALE,
        decoded.frame_number if decoded.n_frames > 1 else None,
    )  # the application, its models, the station and the settings: template.context_key


def graphic_layer(description: str) -> hd.pr.GraphicLayer:
    """fetalnode's one graphic layer (yellow), described with the research-use notice."""
    return hd.pr.GraphicLayer(
        layer_name=LAYER,
        order=1,
        description=f"{description} - {RESEARCH_NOTICE.lower()}"[:64],
        display_color=hd.color.CIELabColor(97.0, -21.0, 94.0),  # yellow
    )


# A writer's graphics (``None``: none) and text boxes for an image of ``rows`` x ``columns`` pixels.
Annotations = tuple[list[hd.pr.GraphicObject] | None, list[hd.pr.TextObject]]


GSPS_SERIES_NUMBER = 9103  # the series of the output ``gsps``, whatever the application


def presentation_state(
    ctx: OutputContext,
    layer_description: str,
    annotate: Callable[[int, int], Annotations],
    *,
    content_description: str,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    """A Grayscale (grayscale source) or Color (colour source) Softcopy Presentation State of one graphic
    annotation (``annotate``'s graphics and texts, on one layer) on the source image (its analysed frame of a
    cine), in the source study; every presentation writer builds it here."""
    source, decoded = ctx.source, ctx.analysis.decoded
    grayscale = str(source.get("PhotometricInterpretation", "")).strip() in GRAYSCALE
    reference = presentation_reference(source, grayscale)
    layer = graphic_layer(layer_description)
    try:
        graphics, texts = annotate(int(source.Rows), int(source.Columns))
        annotation = hd.pr.GraphicAnnotation(
            referenced_images=[reference],
            graphic_layer=layer,
            referenced_frame_number=decoded.frame_number if decoded.n_frames > 1 and decoded.frame_number else None,
            graphic_objects=graphics,
            text_objects=texts,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"Presentation State could not be built: {exc}") from exc
    common = {
        "referenced_images": [reference],
        "manufacturer_model_name": "fetalnode",
        "software_versions": __version__,
        "device_serial_number": None,  # Type 3 (General Equipment); highdicom omits it when None
        "content_label": CONTENT_LABEL,
        "content_description": content_description[:64],
        "graphic_annotations": [annotation],
        "graphic_layers": [layer],
        "institution_name": ctx.settings.institution_name or None,
        **identity(ctx, series_number=GSPS_SERIES_NUMBER),
    }
    pr: hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState
    try:
        if grayscale:
            pr = hd.pr.GrayscaleSoftcopyPresentationState(**common)
        else:
            pr = hd.pr.ColorSoftcopyPresentationState(icc_profile=icc_profile(ctx.source), **common)
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"Presentation State could not be built: {exc}") from exc
    pr.SeriesDescription = "fetalnode AI annotations - research use only"
    pr.Laterality = ""  # Type 2C in General Series; dciodvfy wants it present (as in the SC)
    return pr
