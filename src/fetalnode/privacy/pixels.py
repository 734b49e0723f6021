"""Clean Pixel Data (PS3.15 E.3.1) for ultrasound: keep the imaging area, blank everything else.

Scanners burn the patient's name, ID and the date into a banner outside the imaging area. The area
kept is the union of the tissue and colour-flow regions of the Sequence of Ultrasound Regions
(PS3.3 C.8.5.5.1.2, Region Data Type 0001 and 0002); spectral Doppler, traces, grey and colour bars
and every other region type are blanked with the banner. An image without such a region (a screen
capture, a printed film) keeps the rectangles of the first ``[[privacy.masks]]`` entry that matches
it; an image with neither is refused with :class:`BurnedInTextNotRemoved`.

Every frame is decoded (all the transfer syntaxes the SCP accepts), blanked and stored uncompressed:
YBR and palette colour become RGB, MONOCHROME1 becomes MONOCHROME2, so a blanked pixel is 0 in the
stored and in the displayed values alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from fetalnode.config import MaskSettings
from fetalnode.dicom_status import Status
from fetalnode.errors import BurnedInTextNotRemoved, IntakeRejected
from fetalnode.vocab import PixelCleaning

# PS3.3 C.8.5.5.1.2 Region Data Type: the regions that hold the image itself.
KEPT_REGION_TYPES = {0x0001: "tissue", 0x0002: "color flow"}
_PALETTE = (
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
)
Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class KeptArea:
    """Where the image is: rectangles ``(x0, y0, x1, y1)``, corners included, and where they came from."""

    method: str  # "regions" or "mask"
    rectangles: tuple[Rect, ...]
    label: str  # the region types, or the mask entry: no patient data

    def boolean(self, rows: int, cols: int) -> np.ndarray:
        keep = np.zeros((rows, cols), dtype=bool)
        for x0, y0, x1, y1 in self.rectangles:
            keep[y0 : y1 + 1, x0 : x1 + 1] = True
        return keep


@dataclass(frozen=True)
class PixelReport:
    """What the pixel cleaning did, for the audit (no patient data)."""

    method: str
    label: str
    rectangles: tuple[Rect, ...]
    frames: int
    blanked_fraction: float
    photometric_in: str
    photometric_out: str
    bits: int

    def describe(self) -> str:
        where = (
            f"{len(self.rectangles)} ultrasound region(s) ({self.label})"
            if self.method == "regions"
            else (f"mask {self.label}")
        )
        return (
            f"pixels outside {where} blanked in {self.frames} frame(s), {self.blanked_fraction:.0%} of each; "
            f"{self.photometric_in} stored as {self.photometric_out} {self.bits}-bit, uncompressed"
        )


def _clip(rect: Sequence[int], rows: int, cols: int) -> Rect | None:
    x0, y0, x1, y1 = (int(v) for v in rect)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cols - 1), min(y1, rows - 1)
    return (x0, y0, x1, y1) if x0 <= x1 and y0 <= y1 else None


def region_area(ds: Dataset) -> KeptArea | None:
    """The tissue and colour-flow regions of the Sequence of Ultrasound Regions, clipped to the image."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    rects, kinds = [], set()
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        kind = KEPT_REGION_TYPES.get(int(region.get("RegionDataType", 0) or 0))
        if kind is None:
            continue
        try:
            corners = [
                region.RegionLocationMinX0,
                region.RegionLocationMinY0,
                region.RegionLocationMaxX1,
                region.RegionLocationMaxY1,
            ]
        except AttributeError:
            continue
        clipped = _clip(corners, rows, cols)
        if clipped is not None:
            rects.append(clipped)
            kinds.add(kind)
    if not rects:
        return None
    return KeptArea("regions", tuple(rects), ", ".join(sorted(kinds)))


def _matches(criterion: str, value: object) -> bool:
    return not criterion.strip() or criterion.strip().casefold() == str(value or "").strip().casefold()


def matching_mask(ds: Dataset, masks: Sequence[MaskSettings]) -> tuple[int, MaskSettings] | None:
    """The first mask whose every non-empty criterion equals the image's Manufacturer, Manufacturer's
    Model Name and Station Name (case and surrounding spaces ignored), with its 1-based position."""
    for i, mask in enumerate(masks, start=1):
        if (
            _matches(mask.manufacturer, ds.get("Manufacturer"))
            and _matches(mask.model, ds.get("ManufacturerModelName"))
            and _matches(mask.station, ds.get("StationName"))
        ):
            return i, mask
    return None


def kept_area(ds: Dataset, policy: PixelCleaning, masks: Sequence[MaskSettings]) -> KeptArea:
    """Where the image is, from the regions (policy ``regions``) or else a matching mask.

    Raises
    ------
    BurnedInTextNotRemoved
        Neither gives an area of this image.
    """
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise IntakeRejected(f"image of {cols}x{rows} pixels", Status.BAD_IMAGE_MODULE)
    if policy == PixelCleaning.REGIONS:
        area = region_area(ds)
        if area is not None:
            return area
    found = matching_mask(ds, masks)
    if found is None:
        raise BurnedInTextNotRemoved(
            f"{BurnedInTextNotRemoved.OUTCOME}: no ultrasound tissue region and no [[privacy.masks]] entry "
            "matches this image's manufacturer, model and station"
        )
    index, mask = found
    label = f"{index}" + (f" ({mask.name})" if mask.name else "")
    rects = tuple(r for r in (_clip(rect, rows, cols) for rect in mask.rectangles) if r is not None)
    if not rects:
        raise BurnedInTextNotRemoved(
            f"{BurnedInTextNotRemoved.OUTCOME}: mask {label} keeps no pixel of this {cols}x{rows} image"
        )
    return KeptArea("mask", rects, label)


def clean_pixels(ds: Dataset, area: KeptArea) -> PixelReport:
    """Decode every frame of ``ds``, blank outside ``area`` and store the frames uncompressed, in place.

    The caller sets the Transfer Syntax to Explicit VR Little Endian.

    Raises
    ------
    IntakeRejected
        The pixel data cannot be decoded (the worker would refuse the image the same way).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    if int(ds.get("BitsAllocated", 0) or 0) not in (8, 16):
        raise IntakeRejected(f"{ds.get('BitsAllocated')}-bit pixels are not supported (8 or 16)")
    try:
        # raw=False: YBR_FULL, YBR_FULL_422 and the JPEG 2000 YBR_RCT/YBR_ICT come back as RGB.
        arr = np.asarray(pixel_array(ds, raw=False))
        if photometric == "PALETTE COLOR":
            arr = np.asarray(apply_color_lut(arr, ds))
    except Exception as exc:
        raise IntakeRejected(f"pixel data cannot be decoded: {exc}") from exc
    samples = 3 if arr.ndim == (4 if frames > 1 else 3) else 1
    arr = arr.reshape(frames, rows, cols, samples)
    if samples == 3 and arr.dtype.itemsize > 1:  # 16-bit palette entries: 8-bit RGB as the IODs want
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if photometric == "MONOCHROME1":
        arr = _invert(arr, ds)
    keep = area.boolean(rows, cols)
    arr[:, ~keep, :] = 0

    out_photometric = "RGB" if samples == 3 else "MONOCHROME2"
    for keyword in (*_PALETTE, "SmallestImagePixelValue", "LargestImagePixelValue", "ICCProfile"):
        ds.pop(keyword, None)
    if samples == 3:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        ds.pop("PlanarConfiguration", None)
    ds.PhotometricInterpretation = out_photometric
    if transfer_syntax in (JPEGBaseline8Bit, JPEGExtended12Bit) and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    data = arr.reshape(frames, rows, cols, samples) if frames > 1 else arr[0]
    ds.PixelData = np.ascontiguousarray(data.astype(data.dtype.newbyteorder("<"))).tobytes()
    ds["PixelData"].VR = "OB" if arr.dtype.itemsize == 1 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.BurnedInAnnotation = "NO"
    return PixelReport(
        method=area.method,
        label=area.label,
        rectangles=area.rectangles,
        frames=frames,
        blanked_fraction=float(1.0 - keep.mean()),
        photometric_in=photometric,
        photometric_out=out_photometric,
        bits=int(ds.BitsAllocated),
    )


def _invert(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 as MONOCHROME2 over the stored bit range (window centres follow)."""
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        top = (1 << bits) - 1
        out = (top - arr.astype(np.int64)).astype(arr.dtype)
        shift = float(top)
    else:
        out = (-1 - arr.astype(np.int64)).astype(arr.dtype)
        shift = -1.0
    if "WindowCenter" in ds:
        centres = ds.WindowCenter if ds["WindowCenter"].VM > 1 else [ds.WindowCenter]
        inverted = [round(shift - float(c), 4) for c in centres]
        ds.WindowCenter = inverted if len(inverted) > 1 else inverted[0]
    return out
