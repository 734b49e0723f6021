"""Secondary Captures of the applications: an RGB image with its text burned in as a legible banner
(wrapped to the image width, so a 320-pixel-wide image shows all of it), in the source study."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fetalnode.errors import EncodingError
from fetalnode.outputs.common import identity
from fetalnode.outputs.registry import OutputContext


@functools.cache  # loading the face costs more than drawing a banner line
def banner_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


MIN_FONT_PX = 9  # below this the banner stops shrinking and wraps only


def _wrap(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Greedy word wrap; a word wider than the line on its own is broken between characters."""
    out: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if fits(candidate):
            line = candidate
            continue
        if line:
            out.append(line)
        line = ""
        for ch in word:
            if line and not fits(line + ch):
                out.append(line)
                line = ""
            line += ch
    if line:
        out.append(line)
    return out


@dataclass(frozen=True)
class BannerLayout:
    """The banner's font size, margin and drawn lines, each with the index of the line it comes from."""

    size: int
    pad: int
    lines: list[tuple[int, str]]


def banner_layout(lines: list[str], width: int) -> BannerLayout:
    """Fit the lines into ``width`` pixels: wrap at spaces, and shrink the font (down to
    :data:`MIN_FONT_PX`) while a line would wrap into more than two, so a narrow image keeps the whole
    text readable instead of cutting it at the right edge."""
    size = max(12, min(28, width // 48))
    while True:
        font, pad = banner_font(size), size // 2
        room = width - 2 * pad

        def fits(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont = font, room: int = room) -> bool:
            return font.getlength(text) <= room

        wrapped = [(i, part) for i, line in enumerate(lines) for part in _wrap(line, fits)]
        if size <= MIN_FONT_PX or len(wrapped) <= 2 * len(lines):
            return BannerLayout(size, pad, wrapped)
        size -= 1


def burn_banner(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Add a black banner above the image with the lines in yellow (first) and white, wrapped to the
    image's width (image pixels untouched)."""
    h, w = rgb.shape[:2]
    layout = banner_layout(lines, w)
    size, pad = layout.size, layout.pad
    font = banner_font(size)
    banner_h = pad + len(layout.lines) * (size + pad)
    canvas = Image.new("RGB", (w, h + banner_h), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for row, (source, line) in enumerate(layout.lines):
        colour = (255, 255, 0) if source == 0 else (255, 255, 255)
        draw.text((pad, pad + row * (size + pad)), line, fill=colour, font=font)
    return np.asarray(canvas)


def capture_slots(pixels: np.ndarray, comments: str) -> dict[str, tuple[str, object]]:
    """The values of one capture: its pixels (RGB, 8 bits, native) and their size, the comments."""
    data = np.ascontiguousarray(pixels, dtype=np.uint8)
    return {
        "pixels": ("PixelData", data.tobytes()),
        "rows": ("Rows", int(data.shape[0])),
        "columns": ("Columns", int(data.shape[1])),
        "comments": ("ImageComments", comments[:10240]),
    }


SC_SERIES_NUMBER = 9102  # the series of the output ``sc``, whatever the application


def secondary_capture(
    ctx: OutputContext,
    pixels: np.ndarray,
    *,
    description: str,
    comments: str,
    derivation: str,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``pixels`` (text burnt in) in the source study (series
    :data:`SC_SERIES_NUMBER`), derived from the source image (its analysed frame of a cine); every capture
    writer builds its object here."""
    source = ctx.source
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(pixels),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            # highdicom needs an orientation for the patient coordinate system; an ultrasound still has
            # none, so the placeholder is replaced by an empty (Type 2) Patient Orientation below.
            coordinate_system="PATIENT",
            patient_orientation=("A", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            **identity(ctx, series_number=SC_SERIES_NUMBER),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"Secondary Capture could not be built: {exc}") from exc
    sc.SeriesDescription = description
    sc.ImageComments = comments[:10240]
    sc.BurnedInAnnotation = "YES"
    sc.PatientOrientation = ""  # type: ignore[assignment]
    sc.Laterality = ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = derivation
    reference = _reference(source)
    if ctx.analysis.decoded.frame_number:
        reference.ReferencedFrameNumber = ctx.analysis.decoded.frame_number
    sc.SourceImageSequence = [reference]
    return sc


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
