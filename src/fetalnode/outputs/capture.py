"""Secondary Capture of the fused heatmap, with the finding burned in as a legible banner."""

from __future__ import annotations

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


def banner_lines(result: AnalysisResult, view_line: str = "") -> list[str]:
    if not result.analysed:
        first = result.reason.upper()
    else:
        first = f"AI FINDING: {result.finding.upper()} ({100 * result.confidence:.0f}%)"
        if result.finding == "abnormal":
            first += f" - {result.malformation_type.replace('_', ' ')}"
        if result.biometry:
            first += f"  HC {result.biometry.hc_mm:.1f} mm"
    lines = [first, f"{RESEARCH_NOTICE} - fetalnode {result.cls_model[0]} {result.cls_model[1]}"]
    return [*lines, view_line] if view_line else lines


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def burn_banner(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Add a black banner above the image with the lines in white/yellow (image pixels untouched)."""
    h, w = rgb.shape[:2]
    size = max(12, min(28, w // 48))
    font = _font(size)
    pad = size // 2
    banner_h = pad + len(lines) * (size + pad)
    canvas = Image.new("RGB", (w, h + banner_h), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (size + pad)), line, fill=(255, 255, 0) if i == 0 else (255, 255, 255), font=font)
    return np.asarray(canvas)


@register_output("sc", applications=["fetal-head", "view-router"])
def build_heatmap_capture(ctx: OutputContext) -> hd.sc.SCImage:
    """An RGB Secondary Capture in the source study: fused Grad-CAM heatmap, ROI ellipse and banner."""
    source, result = ctx.source, ctx.analysis.result
    if result.fused_rgb is None:
        raise EncodingError("analysis produced no image to capture")
    lines = banner_lines(result, ctx.analysis.view.line() if ctx.analysis.view else "")
    pixels = burn_banner(result.fused_rgb, lines)
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
            **identity(ctx, series_number=9102),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodingError(f"Secondary Capture could not be built: {exc}") from exc
    sc.SeriesDescription = "fetalnode AI heatmap - research use only"
    sc.ImageComments = " / ".join(lines)[:10240]
    sc.BurnedInAnnotation = "YES"
    sc.PatientOrientation = ""  # type: ignore[assignment]
    sc.Laterality = ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "Grad-CAM saliency of the fetalnode classifier fused over the source image"
    sc.SourceImageSequence = [_reference(source)]
    return sc


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
