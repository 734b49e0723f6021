"""Secondary Capture of a labour-progress image: the angle of progression drawn on the source image.

The source (enlarged to at least :data:`MIN_WIDTH` pixels so that lines and text stay legible on the
256-pixel images of intrapartum scanners' exports) with the outlines of the pubic symphysis (cyan) and the
fetal head (green), the symphysis axis and the tangent to the head (yellow), the angle's arc and value at
the vertex, the head-symphysis distance (orange), and above it a black banner, wrapped to the image width:
AoP / HSD, a colour legend, the literature reference (Kalache et al. 2009) and the research notice.
"""

from __future__ import annotations

import functools
import math

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fetalnode import RESEARCH_NOTICE
from fetalnode.applications.labour_progress import NAME
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.applications.labour_progress.geometry import (
    LabourGraphics,
    angle_deg,
    hsd_text,
    labour_graphics,
    not_analysed_reason,
)
from fetalnode.errors import EncodingError
from fetalnode.inference.labour import LabourResult
from fetalnode.outputs.capture import banner_font, capture_slots, secondary_capture
from fetalnode.outputs.registry import OutputContext, register_output
from fetalnode.outputs.template import FastPath

MIN_WIDTH = 512
YELLOW, CYAN, GREEN, ORANGE, WHITE = (255, 255, 0), (0, 255, 255), (0, 230, 0), (255, 150, 0), (255, 255, 255)
LEGEND = "yellow: symphysis axis and tangent to the head; cyan: pubic symphysis; green: fetal head; orange: HSD"


def banner_lines(result: LabourResult, reference: str = lpc.AOP_REFERENCE) -> list[str]:
    """What the banner says, first line the result (highlighted), last the research notice."""
    notice = f"{RESEARCH_NOTICE} - fetalnode {result.seg_model[0]} {result.seg_model[1]}"
    if not result.analysed:
        reason = not_analysed_reason(result)
        return [f"NOT ANALYSED: {reason}".upper(), notice]
    first = f"ANGLE OF PROGRESSION {result.geometry.aop_deg:.1f}\u00b0"
    if hsd := hsd_text(result):
        first += f"   {hsd}"
    return [first, LEGEND, f"Reference: {reference}", notice]


def wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word stands alone)."""
    return list(_wrap(text, font, width))


@functools.lru_cache(maxsize=256)  # the legend, reference and notice lines are the same on every image
def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> tuple[str, ...]:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return tuple(lines or [""])


def burn_wrapped_banner(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """A black banner above the image with ``lines`` wrapped to its width (the first in yellow)."""
    h, w = rgb.shape[:2]
    size = max(12, min(28, w // 40))
    font, pad = banner_font(size), max(4, size // 2)
    rows = [(text, i == 0) for i, line in enumerate(lines) for text in wrap(line, font, w - 2 * pad)]
    banner_h = pad + len(rows) * (size + pad // 2) + pad // 2
    canvas = Image.new("RGB", (w, h + banner_h), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, (text, first) in enumerate(rows):
        draw.text((pad, pad + i * (size + pad // 2)), text, fill=YELLOW if first else WHITE, font=font)
    return np.asarray(canvas)


def _points(data: np.ndarray, scale: int) -> list[tuple[float, float]]:
    return [(float(x) * scale, float(y) * scale) for x, y in data]


def draw_angle(rgb: np.ndarray, graphics: LabourGraphics, aop_deg: float, scale: int) -> np.ndarray:
    """The outlines, the two lines of the angle with its arc and value, and the HSD line, on ``rgb``
    (already enlarged by ``scale``; ``graphics`` in source pixel units)."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    width = max(1, scale)
    for contour, colour in ((graphics.ps_contour, CYAN), (graphics.fh_contour, GREEN)):
        if contour is not None:
            draw.line(_points(contour, scale), fill=colour, width=width)
    if graphics.hsd is not None:
        draw.line(_points(graphics.hsd, scale), fill=ORANGE, width=width)
    draw.line(_points(graphics.angle, scale), fill=YELLOW, width=width + 1)
    end, vertex, tangent = (np.asarray(p) for p in _points(graphics.angle, scale))
    directions = [math.degrees(math.atan2(p[1] - vertex[1], p[0] - vertex[0])) for p in (end, tangent)]
    start, stop = directions
    if (stop - start) % 360 > 180:  # PIL draws clockwise (y down) from start to stop: take the inner angle
        start, stop = stop, start
    radius = 0.12 * min(image.size)
    box = (vertex[0] - radius, vertex[1] - radius, vertex[0] + radius, vertex[1] + radius)
    draw.arc(box, start, start + (stop - start) % 360, fill=YELLOW, width=width)
    middle = math.radians(start + ((stop - start) % 360) / 2)
    font = banner_font(max(12, min(28, image.size[0] // 32)))
    label = f"{aop_deg:.1f}\u00b0"
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    x = vertex[0] + 1.5 * radius * math.cos(middle) - (right - left) / 2
    y = vertex[1] + 1.5 * radius * math.sin(middle) - (bottom - top) / 2
    x = min(max(x, 2), image.size[0] - (right - left) - 2)
    y = min(max(y, 2), image.size[1] - (bottom - top) - 2)
    draw.text((x, y), label, fill=YELLOW, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(image)


def capture_pixels(result: LabourResult, display_rgb: np.ndarray, banner: list[str]) -> np.ndarray:
    """The Secondary Capture's pixels: the enlarged source, the drawing when analysed, the ``banner`` lines."""
    rows, columns = display_rgb.shape[:2]
    scale = max(1, math.ceil(MIN_WIDTH / columns))
    image = Image.fromarray(np.ascontiguousarray(display_rgb, dtype=np.uint8))
    if scale > 1:
        image = image.resize((columns * scale, rows * scale), Image.Resampling.BICUBIC)
    pixels = np.asarray(image.convert("RGB"))
    if result.analysed:
        if result.geometry.aop_deg is None:
            raise EncodingError("an analysed labour result has no angle of progression")
        graphics = labour_graphics(result, rows, columns)
        pixels = draw_angle(pixels, graphics, result.geometry.aop_deg, scale)
        if abs(angle_deg(graphics.angle) - result.geometry.aop_deg) > 0.5:
            raise EncodingError(
                f"the drawn angle ({angle_deg(graphics.angle):.1f} deg) is not the measured AoP ({result.geometry.aop_deg:.1f})"
            )
    return burn_wrapped_banner(pixels, banner)


def _capture(ctx: OutputContext) -> tuple[np.ndarray, str]:
    """The capture's pixels and its Image Comments."""
    result = ctx.result_as(LabourResult)
    lines = ctx.with_context_lines(banner_lines(result, lpc.AOP_REFERENCE_ASCII))
    comments = " / ".join(line.replace("\u00b0", " deg") for line in lines)
    pixels = capture_pixels(result, ctx.analysis.decoded.display_rgb, ctx.with_context_lines(banner_lines(result)))
    return pixels, comments


def _shape(ctx: OutputContext) -> tuple[object, ...]:
    return ("labour", ctx.result_as(LabourResult).seg_model, ctx.analysis.decoded.frame_number)  # + context_key


def _slots(ctx: OutputContext) -> dict[str, tuple[str, object]]:
    return capture_slots(*_capture(ctx))


# Revision 1: the view line under the research notice (banner and Image Comments).
@register_output("sc", applications=[NAME], revision=1, fast=FastPath(_shape, _slots))
def build_labour_capture(ctx: OutputContext) -> hd.sc.SCImage:
    """An RGB Secondary Capture in the source study (series 9102) with the angle drawn and the banner."""
    pixels, comments = _capture(ctx)
    return secondary_capture(
        ctx,
        pixels,
        description="fetalnode AI angle of progression - research use only",
        comments=comments,
        derivation="fetalnode labour progress: angle of progression drawn over the source image",
    )
