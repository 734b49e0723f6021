"""Secondary Capture of the fused heatmap, with the finding burned in as a legible banner
(wrapped to the image width, so a 320-pixel-wide image shows all of it)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fetalnode import RESEARCH_NOTICE
from fetalnode.errors import EncodingError
from fetalnode.inference import AnalysisResult
from fetalnode.outputs.common import identity
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


def _heatmap(ctx: OutputContext) -> tuple[np.ndarray, str]:
    """The capture's pixels (heatmap and banner) and its Image Comments."""
    result = ctx.result_as(AnalysisResult)
    if result.fused_rgb is None:
        raise EncodingError("analysis produced no image to capture")
    lines = ctx.with_context_lines(banner_lines(result))
    return burn_banner(result.fused_rgb, lines), " / ".join(lines)


def capture_slots(pixels: np.ndarray, comments: str) -> dict[str, tuple[str, object]]:
    """The values of one capture: its pixels (RGB, 8 bits, native) and their size, the comments."""
    data = np.ascontiguousarray(pixels, dtype=np.uint8)
    return {
        "pixels": ("PixelData", data.tobytes()),
        "rows": ("Rows", int(data.shape[0])),
        "columns": ("Columns", int(data.shape[1])),
        "comments": ("ImageComments", comments[:10240]),
    }


def _heatmap_slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    return capture_slots(*_heatmap(ctx))


def _heatmap_shape(ctx: OutputContext) -> tuple[object, ...]:
    return ("head", ctx.result_as(AnalysisResult).cls_model, ctx.analysis.decoded.frame_number)  # + context_key


@register_output(
    "sc", applications=["fetal-head", "view-router"], revision=2, fast=FastPath(_heatmap_shape, _heatmap_slots)
)
def build_heatmap_capture(ctx: OutputContext) -> hd.sc.SCImage:
    """An RGB Secondary Capture in the source study: fused Grad-CAM heatmap, ROI ellipse and banner."""
    pixels, comments = _heatmap(ctx)
    return secondary_capture(
        ctx,
        pixels,
        series_number=9102,
        description="fetalnode AI heatmap - research use only",
        comments=comments,
        derivation="Grad-CAM saliency of the fetalnode classifier fused over the source image",
        frame_number=ctx.analysis.decoded.frame_number,
    )


def secondary_capture(
    ctx: OutputContext,
    pixels: np.ndarray,
    *,
    series_number: int,
    description: str,
    comments: str,
    derivation: str,
    frame_number: int | None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``pixels`` (text burnt in) in the source study, derived from the source
    image (and ``frame_number`` of a multi-frame source); every capture writer builds its object here."""
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
            **identity(ctx, series_number=series_number),
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
    if frame_number:
        reference.ReferencedFrameNumber = frame_number
    sc.SourceImageSequence = [reference]
    return sc


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
