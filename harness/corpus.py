"""A corpus of malformed and awkward inputs, built from real files, and what the node must answer.

Used by ``tests/network/test_bad_input.py``, ``tests/e2e/test_awkward_input.py`` and
``tests/unit/test_fuzz_intake.py``, and by ``benchmarks/reliability.py`` (which prints the table).
Nothing here is a mock: every case is a DICOM object or file that travels over a real association.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "hc18_104_HC.dcm"  # calibrated 8-bit grayscale US, 640x432
SC_CLASS = UID("1.2.840.10008.5.1.4.1.1.7")
US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
PHI_TEXT = "DOE^JANE 19790101 ID 4711"


def base() -> Dataset:
    """A fresh copy of a bundled sample with new study, series and instance UIDs (cases never collide)."""
    ds = dcmread(SAMPLE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _raw_file(ds: Dataset, path: Path, mutate: Callable[[bytes], bytes]) -> Path:
    """Write ``ds`` then edit its bytes after the file meta (pynetdicom sends such a file as it is)."""
    _save(ds, path)
    data = path.read_bytes()
    meta_end = dataset_offset(data)
    path.write_bytes(data[:meta_end] + mutate(data[meta_end:]))
    return path


def truncated_in_pixels(folder: Path) -> Path:
    return _raw_file(base(), folder / "truncated_pixels.dcm", lambda b: b[: len(b) - 200_000])


def truncated_in_header(folder: Path) -> Path:
    def cut(body: bytes) -> bytes:
        at = body.index(b"\x28\x00\x10\x00")  # (0028,0010) Rows: cut inside its element
        return body[: at + 5]

    return _raw_file(base(), folder / "truncated_header.dcm", cut)


def wrong_vr(folder: Path) -> Path:
    """Rows written with VR DA (a date) instead of US."""

    def patch(body: bytes) -> bytes:
        at = body.index(b"\x28\x00\x10\x00US\x02\x00")
        return body[:at] + b"\x28\x00\x10\x00DA\x02\x00" + body[at + 8 :]

    return _raw_file(base(), folder / "wrong_vr.dcm", patch)


def short_pixel_data(folder: Path) -> Path:
    ds = base()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return _save(ds, folder / "short_pixels.dcm")


def zero_by_zero(folder: Path) -> Path:
    ds = base()
    ds.Rows = ds.Columns = 0
    ds.PixelData = b""
    return _save(ds, folder / "zero.dcm")


def huge_20000(folder: Path) -> Path:
    """20000 x 20000 8-bit (400 MB of pixels) sent as 6 MB of RLE: runs of 128 zero bytes."""
    ds = base()
    n = 20000 * 20000
    runs, rest = divmod(n, 128)
    segment = b"\x81\x00" * runs + (bytes([257 - rest, 0]) if rest else b"")
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    ds.Rows = ds.Columns = 20000
    ds.PixelData = encapsulate([header + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return _save(ds, folder / "huge.dcm")


def ct_image(folder: Path) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        raise FileNotFoundError("pydicom's test file CT_small.dcm (pydicom-data)")
    ds = dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return _save(ds, folder / "ct.dcm")


def ct_as_secondary_capture(folder: Path) -> Path:
    ds = base()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC_CLASS
    ds.Modality = "CT"
    return _save(ds, folder / "ct_as_sc.dcm")


# -- accepted, analysed, with something awkward about them -------------------------------------


def palette_16bit(folder: Path) -> Path:
    """16-bit PALETTE COLOR: indices into 16-bit LUTs of 4096 entries (a grey ramp tinted blue)."""
    ds = base()
    gray = ds.pixel_array.astype(np.uint16) * 16  # 0..4080
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = gray.tobytes()
    ramp = (np.arange(4096, dtype=np.uint32) * 65535 // 4095).astype(np.uint16)
    for colour, lut in (("Red", ramp * 0.8), ("Green", ramp * 0.9), ("Blue", ramp)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4096, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.asarray(lut, dtype=np.uint16).tobytes())
    return _save(ds, folder / "palette16.dcm")


def cine_500_frames(folder: Path) -> Path:
    """US Multi-frame of 500 frames: the sample at a quarter of its size, RLE, one encoded frame repeated."""
    ds = base()
    frame = np.ascontiguousarray(ds.pixel_array[::4, ::4])
    ds.Rows, ds.Columns = frame.shape
    region = ds.SequenceOfUltrasoundRegions[0]
    for key in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1"):
        setattr(region, key, int(getattr(region, key)) // 4)
    region.PhysicalDeltaX = float(region.PhysicalDeltaX) * 4
    region.PhysicalDeltaY = float(region.PhysicalDeltaY) * 4
    one = deepcopy(ds)
    one.compress(RLELossless, frame)
    fragment = next(iter(_fragments(one)))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.NumberOfFrames = 500
    ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.FrameTime = 33.3
    ds.PixelData = encapsulate([fragment] * 500)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return _save(ds, folder / "cine500.dcm")


def _fragments(ds: Dataset) -> list[bytes]:
    from pydicom.encaps import generate_fragmented_frames

    return [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=1)]


def no_calibration(folder: Path) -> Path:
    ds = base()
    del ds.SequenceOfUltrasoundRegions
    return _save(ds, folder / "no_calibration.dcm")


def contradictory_calibration(folder: Path) -> Path:
    ds = base()
    other = deepcopy(ds.SequenceOfUltrasoundRegions[0])
    other.PhysicalDeltaX = float(other.PhysicalDeltaX) * 1.5
    ds.SequenceOfUltrasoundRegions.append(other)
    return _save(ds, folder / "contradictory_calibration.dcm")


def burned_in_phi(folder: Path) -> Path:
    """Patient name, birth date and ID burned into the pixels, as old modalities do."""
    ds = base()
    img = Image.fromarray(ds.pixel_array)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((10, 10), PHI_TEXT, fill=255, font=font)
    ds.PixelData = np.asarray(img).tobytes()
    ds.BurnedInAnnotation = "YES"
    return _save(ds, folder / "burned_in_phi.dcm")


# -- refused before the answer since the checks moved to the SCP: each one a decoder could never follow ---


def palette_without_lut(folder: Path) -> Path:
    """PALETTE COLOR with no lookup tables at all."""
    ds = base()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    return _save(ds, folder / "palette_no_lut.dcm")


def bits_stored_above_allocated(folder: Path) -> Path:
    ds = base()
    ds.BitsStored, ds.HighBit = 12, 11
    return _save(ds, folder / "bits_stored_12_of_8.dcm")


def photometric_samples_mismatch(folder: Path) -> Path:
    """RGB declared for a one-sample image."""
    ds = base()
    ds.PhotometricInterpretation = "RGB"
    return _save(ds, folder / "rgb_one_sample.dcm")


def native_pixels_under_jpeg(folder: Path) -> Path:
    """A JPEG Baseline transfer syntax whose Pixel Data is not encapsulated (native bytes): the sample's data
    set (Explicit VR Little Endian, as JPEG syntaxes encode it) behind a file meta naming JPEG Baseline."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import JPEGBaseline8Bit

    ds = base()
    path = _save(ds, folder / "jpeg_not_encapsulated.dcm")
    data = path.read_bytes()
    body = data[dataset_offset(data) :]
    meta = deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta)
    path.write_bytes(data[:132] + buffer.getvalue() + body)
    return path


def dataset_offset(data: bytes) -> int:
    """Where the data set of a Part 10 file starts (after its preamble, DICM and file meta group)."""
    return 132 + 12 + struct.unpack("<I", data[140:144])[0]


# -- accepted (the answer cannot know), then told plainly ---------------------------------------------


def unknown_character_set(folder: Path) -> Path:
    """A character set DICOM does not define, with a name written in ISO 8859-1 bytes."""
    ds = base()
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds["PatientName"].value = "M\xfcller^J\xf6rg".encode("latin-1")
    return _save(ds, folder / "charset_999.dcm")


def corrupt_jpeg(folder: Path) -> Path:
    """A real JPEG Baseline ultrasound cine (pydicom-data) whose every frame declares 0 components in its
    start-of-frame segment: the DICOM header is sound, no decoder can read the pixels (decoders read
    past damaged entropy-coded data, so the damage is in a JPEG header)."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_fragmented_frames

    path = get_testdata_file("examples_ybr_color.dcm")
    if not isinstance(path, str):
        raise FileNotFoundError("pydicom's test file examples_ybr_color.dcm (pydicom-data)")
    ds = dcmread(path)
    n = int(ds.NumberOfFrames)
    frames = []
    for fragments in generate_fragmented_frames(ds.PixelData, number_of_frames=n):
        frame = bytearray(b"".join(fragments))
        sof = frame.find(b"\xff\xc0")  # SOF0: marker, length, precision, rows, columns, components
        frame[sof + 9] = 0
        frames.append(bytes(frame))
    ds.PixelData = encapsulate(frames)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return _save(ds, folder / "corrupt_jpeg.dcm")


def corpus_contexts() -> list:
    """Presentation contexts a modality would propose to send this corpus (each class in two syntaxes)."""
    from pynetdicom import build_context
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        SecondaryCaptureImageStorage,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        Verification,
    )

    classes = (UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, SecondaryCaptureImageStorage, CTImageStorage)
    return [build_context(c, ts) for ts in (ExplicitVRLittleEndian, RLELossless) for c in classes] + [
        build_context(Verification)
    ]


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]
    expected: str  # C-STORE status "0x...." for refusals, or the job's final state for accepted ones
    why: str  # in the audit reason of a refusal, or in a comment of the report of an accepted one


REFUSED = [
    Case("truncated file (inside Pixel Data)", truncated_in_pixels, "0xC214", "Pixel Data has"),
    Case("truncated file (inside the header)", truncated_in_header, "0xC211", "no Pixel Data"),
    Case("wrong VR (Rows as DA)", wrong_vr, "0xC211", "malformed"),
    Case("Pixel Data shorter than Rows x Columns", short_pixel_data, "0xC214", "Pixel Data has"),
    Case("0 x 0 image", zero_by_zero, "0xC211", "at least 16x16"),
    Case("20000 x 20000 image", huge_20000, "0xC212", "above the limit"),
    Case("unsupported SOP class (CT Image)", ct_image, "0x0122", "is not analysed"),
    Case("CT modality sent as Secondary Capture", ct_as_secondary_capture, "0xC213", "not an ultrasound image"),
]

# Checks that need no pixel decoding and prove an image unanalysable: refused before the C-STORE answer.
HEADER_REFUSED = [
    Case("PALETTE COLOR without lookup tables", palette_without_lut, "0xC211", "lookup table descriptor"),
    Case("Bits Stored above Bits Allocated", bits_stored_above_allocated, "0xC211", "does not fit Bits Allocated"),
    Case("RGB with one sample per pixel", photometric_samples_mismatch, "0xC211", "sample(s) per pixel"),
    Case("JPEG syntax, Pixel Data not encapsulated", native_pixels_under_jpeg, "0xC211", "not encapsulated"),
]

ACCEPTED = [
    Case("16-bit palette colour", palette_16bit, "delivered", "Finding: "),
    Case("multi-frame, 500 frames", cine_500_frames, "delivered", "Analysed frame 251 of 500."),
    Case("no ultrasound region calibration", no_calibration, "delivered", "measurements in mm not possible"),
    Case("contradictory region calibration", contradictory_calibration, "delivered", "disagree on the pixel size"),
    Case("burned-in patient name (pixels untouched)", burned_in_phi, "delivered", "Finding: "),
]
