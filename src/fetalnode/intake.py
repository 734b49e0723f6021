"""Intake checks and pixel decoding of a received instance (the DICOM side of the worker).

Turns a dataset into a grayscale analysis frame, a display image and the physical spacing,
or raises :class:`IntakeRejected` with a reason a person can act on.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import UID

from fetalnode import dicomio
from fetalnode.dicom_status import Status
from fetalnode.errors import IntakeRejected

US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
ANALYSABLE_SOP_CLASSES = {US_IMAGE, US_MULTIFRAME, SECONDARY_CAPTURE}

# Modalities an ultrasound screen capture may carry ("OT": other, as many capture devices write).
SC_MODALITIES = {"US", "OT", ""}

# DICOM PS3.3 C.8.5.5.1: PhysicalUnits 3 = cm; RegionSpatialFormat 1 = 2D; RegionDataType 1 = tissue.
_CM = 3

# PS3.3 C.7.6.3.1.2: each Photometric Interpretation and its Samples per Pixel; the ones only a compressed
# transfer syntax may carry (PS3.5 8.2) with the syntaxes that carry them.
PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
COMPRESSED_ONLY = {"YBR_ICT": _J2K, "YBR_RCT": _J2K}
# The tag of an Item (FFFE,E000), little endian: the first bytes of encapsulated Pixel Data (PS3.5 A.4).
_ITEM_TAG = b"\xfe\xff\x00\xe0"


@dataclass
class DecodedImage:
    """One analysis frame and what is known about its geometry."""

    gray: np.ndarray
    display_rgb: np.ndarray
    frame_number: int | None
    n_frames: int
    spacing_mm: tuple[float, float] | None
    spacing_source: str
    spacing_note: str
    photometric: str
    # What the intake had to assume about the header (an unknown character set it replaced), for the
    # reports' comments and the captures' banners.
    notes: tuple[str, ...] = ()
    # What an application's model found in this frame (the head application's skull), so that a router asking
    # the application about the frame and the application analysing it run that model once.
    found: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def gray01(self) -> np.ndarray:
        """``gray`` scaled to [0, 1] by its 0.5th-99.5th percentiles, computed once per image for the view
        model and the application (8.6 ms on an 800x540 frame)."""
        from fetalnode.inference.preprocess import to_unit_range

        return to_unit_range(self.gray)


def _region_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str, str]:
    try:
        return _region_spacing_of(ds)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        return None, "", f"ultrasound region calibration is malformed ({type(exc).__name__}); no measurement in mm"


def _region_spacing_of(ds: Dataset) -> tuple[tuple[float, float] | None, str, str]:
    regions = [
        r
        for r in getattr(ds, "SequenceOfUltrasoundRegions", [])
        if int(getattr(r, "RegionSpatialFormat", 0)) == 1
        and int(getattr(r, "PhysicalUnitsXDirection", 0)) == _CM
        and int(getattr(r, "PhysicalUnitsYDirection", 0)) == _CM
    ]
    if not regions:
        if "SequenceOfUltrasoundRegions" in ds:
            return None, "", "no 2D ultrasound region calibrated in cm"
        return None, "", ""

    def area(r: Dataset) -> int:
        return (int(r.RegionLocationMaxX1) - int(r.RegionLocationMinX0)) * (
            int(r.RegionLocationMaxY1) - int(r.RegionLocationMinY0)
        )

    best = max(regions, key=area)
    dx, dy = abs(float(best.PhysicalDeltaX)) * 10.0, abs(float(best.PhysicalDeltaY)) * 10.0
    if not (0 < dx < 10 and 0 < dy < 10):
        return None, "", f"ultrasound region calibration out of range ({dx:g} x {dy:g} mm/pixel)"
    others = {
        (round(abs(float(r.PhysicalDeltaX)) * 10, 6), round(abs(float(r.PhysicalDeltaY)) * 10, 6)) for r in regions
    }
    if len(others) > 1:
        return None, "", "ultrasound regions disagree on the pixel size; no measurement in mm"
    return (dy, dx), "SequenceOfUltrasoundRegions", ""


def physical_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str, str]:
    """(row, column) spacing in mm, where it came from, and why there is none."""
    if "PixelSpacing" in ds and ds.PixelSpacing:
        try:
            row, col = (float(v) for v in ds.PixelSpacing)
        except (TypeError, ValueError):
            return None, "", "Pixel Spacing is malformed"
        if 0 < row < 10 and 0 < col < 10:
            return (row, col), "PixelSpacing", ""
        return None, "", f"Pixel Spacing out of range ({row:g}\\{col:g} mm)"
    spacing, source, note = _region_spacing(ds)
    if spacing is None and not note:
        note = "no Pixel Spacing and no Sequence of Ultrasound Regions: measurements in mm not possible"
    return spacing, source, note


@dataclass(frozen=True)
class ImageHeader:
    rows: int
    cols: int
    samples: int
    n_frames: int


def read_received(data: bytes) -> Dataset:
    """Parse a received object (file meta + dataset) and its identifying UIDs, or refuse it (0xC210)."""
    ds = dicomio.read(data)
    try:
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            str(ds[keyword].value)
    except Exception as exc:  # a data set whose header pydicom parses lazily may fail only here
        raise IntakeRejected(f"cannot parse dataset: {exc}", Status.CANNOT_UNDERSTAND) from exc
    if not all(UID(str(ds[k].value)).is_valid for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        raise IntakeRejected("invalid Study, Series or SOP Instance UID", Status.CANNOT_UNDERSTAND)
    return ds


def check_header(ds: Dataset, max_pixels: int, max_frames: int) -> ImageHeader:
    """The checks that need no pixel decoding: run on receipt (SCP) and again before analysis.

    Raises :class:`IntakeRejected` carrying the C-STORE status to answer.
    """
    try:
        return _check_header(ds, max_pixels, max_frames)
    except IntakeRejected:
        raise
    except Exception as exc:  # a malformed element pydicom only notices on access
        raise IntakeRejected(f"malformed image module: {type(exc).__name__}: {exc}", Status.BAD_IMAGE_MODULE) from exc


def _check_header(ds: Dataset, max_pixels: int, max_frames: int) -> ImageHeader:
    sop_class = UID(str(getattr(ds, "SOPClassUID", "")))
    if sop_class not in ANALYSABLE_SOP_CLASSES:
        raise IntakeRejected(
            f"{sop_class.name or sop_class} is not analysed by this node", Status.SOP_CLASS_NOT_SUPPORTED
        )
    modality = str(getattr(ds, "Modality", "") or "").strip().upper()
    if sop_class == SECONDARY_CAPTURE and modality not in SC_MODALITIES:
        raise IntakeRejected(
            f"Secondary Capture of modality {modality} is not an ultrasound image", Status.NOT_ULTRASOUND
        )
    if "PixelData" not in ds:
        raise IntakeRejected("instance has no Pixel Data", Status.BAD_IMAGE_MODULE)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(getattr(ds, "SamplesPerPixel", 1))
        n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        bits = int(getattr(ds, "BitsAllocated", 8))
    except (AttributeError, TypeError, ValueError) as exc:
        raise IntakeRejected(f"image pixel module is incomplete or malformed: {exc}", Status.BAD_IMAGE_MODULE) from exc
    if rows < 16 or cols < 16:
        raise IntakeRejected(f"image is {cols}x{rows} pixels; at least 16x16 is needed", Status.BAD_IMAGE_MODULE)
    if rows * cols > max_pixels:
        raise IntakeRejected(
            f"image is {cols}x{rows} pixels, above the limit of {max_pixels} pixels per frame", Status.ABOVE_LIMITS
        )
    if not 1 <= n_frames <= max_frames:
        raise IntakeRejected(f"{n_frames} frames, outside 1..{max_frames}", Status.ABOVE_LIMITS)
    if samples not in (1, 3):
        raise IntakeRejected(f"Samples per Pixel {samples} is not supported", Status.BAD_IMAGE_MODULE)
    if bits not in (1, 8, 16, 32):
        raise IntakeRejected(f"Bits Allocated {bits} is not valid", Status.BAD_IMAGE_MODULE)
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(getattr(meta, "TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    photometric = _check_pixel_description(ds, samples, bits, syntax)
    if syntax.is_compressed:
        if not bytes(ds.PixelData[:4]) == _ITEM_TAG:
            raise IntakeRejected(
                f"Pixel Data is not encapsulated, as the transfer syntax {syntax.name} requires",
                Status.BAD_IMAGE_MODULE,
            )
    else:
        # YBR_FULL_422 stores two luminance samples and one pair of chrominance samples per two pixels.
        per_pixel = 2 if photometric == "YBR_FULL_422" else samples
        expected = (rows * cols * per_pixel * n_frames * bits + 7) // 8
        have = len(ds.PixelData) if ds.PixelData is not None else 0
        if have < expected:
            raise IntakeRejected(
                f"Pixel Data has {have} bytes; Rows x Columns x Samples x Frames needs {expected}",
                Status.PIXEL_DATA_TOO_SHORT,
            )
    return ImageHeader(rows, cols, samples, n_frames)


def _check_pixel_description(ds: Dataset, samples: int, bits: int, syntax: UID) -> str:
    """The Image Pixel module's description of the pixels is one a decoder can follow (PS3.3 C.7.6.3): the
    photometric interpretation is defined and fits the samples per pixel and the transfer syntax, Bits
    Stored and High Bit fit Bits Allocated, a palette has its lookup tables. Returns the photometric."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in PHOTOMETRIC_SAMPLES:
        raise IntakeRejected(
            f"Photometric Interpretation {photometric or '(none)'!r} is not one this node decodes",
            Status.BAD_IMAGE_MODULE,
        )
    if PHOTOMETRIC_SAMPLES[photometric] != samples:
        raise IntakeRejected(
            f"{photometric} has {PHOTOMETRIC_SAMPLES[photometric]} sample(s) per pixel, the image declares {samples}",
            Status.BAD_IMAGE_MODULE,
        )
    carriers = COMPRESSED_ONLY.get(photometric)
    if carriers is not None and str(syntax) not in carriers:
        raise IntakeRejected(f"{photometric} pixels cannot be carried by {syntax.name}", Status.BAD_IMAGE_MODULE)
    stored = int(getattr(ds, "BitsStored", bits) or bits)
    high = int(getattr(ds, "HighBit", stored - 1))
    if not 1 <= stored <= bits:
        raise IntakeRejected(f"Bits Stored {stored} does not fit Bits Allocated {bits}", Status.BAD_IMAGE_MODULE)
    if not stored - 1 <= high < bits:
        raise IntakeRejected(
            f"High Bit {high} does not fit Bits Stored {stored} and Bits Allocated {bits}", Status.BAD_IMAGE_MODULE
        )
    if int(getattr(ds, "PixelRepresentation", 0) or 0) not in (0, 1):
        raise IntakeRejected("Pixel Representation is neither 0 nor 1", Status.BAD_IMAGE_MODULE)
    if photometric == "PALETTE COLOR":
        _check_palette(ds)
    return photometric


def _check_palette(ds: Dataset) -> None:
    """A PALETTE COLOR image has, for red, green and blue, a descriptor and the data it describes."""
    for colour in ("Red", "Green", "Blue"):
        descriptor = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
        if descriptor is None or len(descriptor) != 3:
            raise IntakeRejected(f"PALETTE COLOR without its {colour} lookup table descriptor", Status.BAD_IMAGE_MODULE)
        entries, _, entry_bits = (int(v) for v in descriptor)
        if entry_bits not in (8, 16):
            raise IntakeRejected(f"{colour} palette entries of {entry_bits} bits (8 or 16)", Status.BAD_IMAGE_MODULE)
        if f"Segmented{colour}PaletteColorLookupTableData" in ds:
            continue
        data = ds.get(f"{colour}PaletteColorLookupTableData")
        need = (entries or 65536) * entry_bits // 8
        if data is None or len(data) < need:
            have = 0 if data is None else len(data)
            raise IntakeRejected(
                f"PALETTE COLOR {colour} lookup table has {have} bytes, its descriptor needs {need}",
                Status.BAD_IMAGE_MODULE,
            )


def readable_character_set(ds: Dataset) -> str:
    """Make the header encodable again when it declares a character set pydicom does not know: its text is
    read with pydicom's fallback (ISO 8859-1) and the dataset re-declared as UTF-8 (``ISO_IR 192``), so the
    outputs, which copy the patient and study modules, can be written. Returns a note for the reports
    (empty when nothing was changed)."""
    value = ds.get("SpecificCharacterSet") or []
    terms = [str(t).strip() for t in ([value] if isinstance(value, str) else value)]
    unknown = [t for t in terms if t and t not in python_encoding]
    if not unknown:
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns once per element; the note says it once
        _PYDICOM.disabled, was = True, _PYDICOM.disabled
        try:
            ds.decode()
        finally:
            _PYDICOM.disabled = was
    ds.SpecificCharacterSet = "ISO_IR 192"
    names = ", ".join(repr(t) for t in unknown)
    return (
        f"The image's character set {names} is not a DICOM one: its text was read as ISO 8859-1 (the reader's "
        "fallback) and is written in UTF-8 (ISO_IR 192)."
    )


_PYDICOM = logging.getLogger("pydicom")


class QuietDecoders(logging.Filter):
    """pydicom logs, with its traceback, every decoding plugin that fails on a frame before it raises one error
    naming them all; the intake reports that error once (a rejected job's reason), so these go."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


logging.getLogger("pydicom.pixels.decoders.base").addFilter(QuietDecoders())


def decode_for_analysis(ds: Dataset, max_pixels: int, max_frames: int, index: int | None = None) -> DecodedImage:
    """Check the instance and decode one frame: ``index`` (0-based) of a cine, else its middle one. A header in
    a character set pydicom does not know is re-declared in UTF-8 first (:func:`readable_character_set`)."""
    head = check_header(ds, max_pixels, max_frames)
    charset_note = readable_character_set(ds)
    rows, cols, samples, n_frames = head.rows, head.cols, head.samples, head.n_frames
    if index is None:
        index = n_frames // 2
    elif not 0 <= index < n_frames:
        raise IntakeRejected(f"frame index {index} is outside the {n_frames} frames of the image")
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    try:
        # raw=False: pydicom returns RGB for YBR_FULL/YBR_FULL_422 and the JPEG 2000 YBR_RCT/YBR_ICT.
        arr = pixel_array(ds, index=index if n_frames > 1 else None, raw=False)
    except Exception as exc:
        raise IntakeRejected(f"pixel data cannot be decoded: {exc}") from exc
    try:
        if photometric == "PALETTE COLOR":
            rgb = np.asarray(apply_color_lut(arr, ds))
        elif samples == 3:
            rgb = arr
        else:
            rgb = None
    except Exception as exc:
        raise IntakeRejected(f"colour conversion from {photometric} failed: {exc}") from exc
    if rgb is not None:
        rgbf = rgb.astype(np.float32)
        if rgb.dtype.itemsize > 1:
            rgbf = rgbf / float(np.iinfo(rgb.dtype).max) * 255.0
        gray = rgbf @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        display = np.clip(rgbf, 0, 255).round().astype(np.uint8)
    else:
        gray = arr.astype(np.float32)
        if photometric == "MONOCHROME1":
            gray = gray.max() - gray
        lo, hi = float(gray.min()), float(gray.max())
        scaled = (gray - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(gray)
        display = np.repeat(scaled.round().astype(np.uint8)[..., None], 3, axis=2)
    if gray.shape != (rows, cols):
        raise IntakeRejected(f"decoded frame has shape {gray.shape}, expected {(rows, cols)}")
    spacing, source, note = physical_spacing(ds)
    return DecodedImage(
        gray=gray,
        display_rgb=display,
        frame_number=index + 1 if n_frames > 1 else None,
        n_frames=n_frames,
        spacing_mm=spacing,
        spacing_source=source,
        spacing_note=note,
        photometric=photometric,
        notes=(charset_note,) if charset_note else (),
    )
