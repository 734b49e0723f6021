import numpy as np
import pytest
from pydicom import dcmread

from fetalnode.dicom_status import Status
from fetalnode.errors import IntakeRejected
from fetalnode.intake import decode_for_analysis, physical_spacing, read_received
from tests.conftest import dicom_testfile

pytestmark = pytest.mark.unit
LIMITS = (40_000_000, 2000)


@pytest.mark.parametrize(
    ("name", "frame", "spacing"),
    [
        ("OBXXXX1A.dcm", None, 0.26229),  # Philips, palette colour, explicit VR
        ("OBXXXX1A_rle_2frame.dcm", 2, 0.26229),  # US multi-frame, RLE
        ("US1_J2KR.dcm", None, None),  # GE, JPEG 2000 lossless YBR_RCT, no calibration
        ("color3d_jpeg_baseline.dcm", 61, 0.5105),  # JPEG baseline YBR_FULL_422, 120 frames
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", None, 0.25477),  # JPEG lossless SV1
        ("gdcm-US-ALOKA-16.dcm", None, 0.38265),  # 16-bit palette colour, implicit VR
    ],
)
def test_real_us_files_decode(name: str, frame: int | None, spacing: float | None) -> None:
    d = decode_for_analysis(dcmread(dicom_testfile(name)), *LIMITS)
    assert d.gray.ndim == 2 and d.gray.shape == d.display_rgb.shape[:2]
    assert d.display_rgb.dtype == np.uint8 and d.gray.std() > 1.0
    assert d.frame_number == frame
    if spacing is None:
        assert d.spacing_mm is None and "no Pixel Spacing" in d.spacing_note
    else:
        assert d.spacing_mm == pytest.approx((spacing, spacing), abs=1e-4)
        assert d.spacing_source == "SequenceOfUltrasoundRegions"


def test_jpeg2000_equals_uncompressed() -> None:
    a = decode_for_analysis(dcmread(dicom_testfile("US1_J2KR.dcm")), *LIMITS)
    b = decode_for_analysis(dcmread(dicom_testfile("US1_UNCR.dcm")), *LIMITS)
    assert np.array_equal(a.display_rgb, b.display_rgb)


def test_rejections_are_explained() -> None:
    # Each status is a member of the one table, with the value on the wire.
    with pytest.raises(IntakeRejected, match="Segmentation Storage") as unsupported:
        decode_for_analysis(dcmread(dicom_testfile("liver.dcm")), *LIMITS)
    assert unsupported.value.status is Status.SOP_CLASS_NOT_SUPPORTED and unsupported.value.status == 0x0122
    ds = dcmread(dicom_testfile("OBXXXX1A.dcm"))
    with pytest.raises(IntakeRejected, match="above the limit") as large:
        decode_for_analysis(ds, 1000, 10)
    assert large.value.status is Status.ABOVE_LIMITS and large.value.status == 0xC212
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    with pytest.raises(IntakeRejected, match="Pixel Data has 160000 bytes") as short:
        decode_for_analysis(ds, *LIMITS)
    assert short.value.status is Status.PIXEL_DATA_TOO_SHORT and short.value.status == 0xC214
    with pytest.raises(IntakeRejected, match="cannot parse") as garbage:
        read_received(b"not DICOM")
    assert garbage.value.status is Status.CANNOT_UNDERSTAND and garbage.value.status == 0xC210
    j2k = dcmread(dicom_testfile("US1_J2KR.dcm"))
    j2k.PixelData = j2k.PixelData[: len(j2k.PixelData) // 2]
    with pytest.raises(IntakeRejected, match="cannot be decoded"):
        decode_for_analysis(j2k, *LIMITS)


def test_contradictory_regions_give_no_spacing() -> None:
    ds = dcmread(dicom_testfile("gdcm-US-ALOKA-16.dcm"))
    regions = [r for r in ds.SequenceOfUltrasoundRegions if int(r.RegionSpatialFormat) == 1]
    assert len(regions) == 2
    regions[1].PhysicalDeltaX = float(regions[0].PhysicalDeltaX) * 1.5
    spacing, _, note = physical_spacing(ds)
    assert spacing is None and "disagree" in note
