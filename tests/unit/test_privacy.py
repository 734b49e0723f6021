"""Pseudonymisation at the terminal: the PHI probe on every object class the node accepts, keyed UIDs,
the kept attributes, the pixel cleaning on real scanners' files, masks, and the secret."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from fetalnode.config import MaskSettings, PrivacySettings, Settings
from fetalnode.errors import BurnedInTextNotRemoved, ConfigError
from fetalnode.privacy import Pseudonymiser, is_registered, read_secret
from fetalnode.vocab import PixelCleaning, Role
from harness import phi
from tests.conftest import dicom_testfile

pytestmark = pytest.mark.unit
SECRET = bytes.fromhex("5f2c9a0e7b41d38866c1fa20934e5d7b0c8e6a1f2d4b9073e5c6a8b1d0f2e4c6")
OTHER_SECRET = os.urandom(32)


@pytest.fixture(scope="module")
def pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(SECRET, masks=phi.MASKS)


@pytest.fixture(scope="module", params=sorted(phi.CASES))
def case(request) -> phi.PhiCase:
    return phi.CASES[request.param]()


def test_probe_finds_no_phi_and_no_pixel_outside_the_image(case: phi.PhiCase, pseudonymiser: Pseudonymiser) -> None:
    needles = case.phi + case.original_uids
    before = phi.probe(case.data, needles, case.kept)
    assert len(before.strings) >= len(case.phi) and before.nonzero_outside > 1000  # the probe sees what is there
    result = pseudonymiser.pseudonymise_bytes(case.data)
    after = phi.probe(result.data, needles, case.kept)
    assert after.strings == ()
    assert after.nonzero_outside == 0 and after.pixels_checked > 0
    # Inside the kept area the image is still there.
    ds = dcmread(__import__("io").BytesIO(result.data))
    x0, y0, x1, y1 = case.kept[0]
    inside = np.asarray(pixel_array(ds, raw=False)).reshape(-1, ds.Rows, ds.Columns, ds.SamplesPerPixel)
    assert inside[:, y0 : y1 + 1, x0 : x1 + 1].mean() > 10


def test_same_input_and_secret_give_the_same_bytes_another_secret_other_uids(case: phi.PhiCase) -> None:
    first = Pseudonymiser(SECRET, masks=phi.MASKS).pseudonymise_bytes(case.data)
    again = Pseudonymiser(SECRET, masks=phi.MASKS).pseudonymise_bytes(case.data)
    other = Pseudonymiser(OTHER_SECRET, masks=phi.MASKS).pseudonymise_bytes(case.data)
    assert first.data == again.data and first.uid_map == again.uid_map
    assert set(first.uid_map.values()) == set(other.uid_map.values()) <= set(case.original_uids)
    source = case.dataset()
    assert {source.SOPInstanceUID, source.SeriesInstanceUID, source.StudyInstanceUID} <= set(first.uid_map.values())
    assert not set(first.uid_map) & set(other.uid_map)
    for pseudonym in first.uid_map:
        assert pseudonym.startswith("2.25.") and len(pseudonym) <= 64 and UID(pseudonym).is_valid


def test_kept_attributes_are_kept_and_the_method_is_recorded(pseudonymiser: Pseudonymiser) -> None:
    case = phi.us_multiframe()
    source = case.dataset()
    source.PixelSpacing = [0.2, 0.2]
    result = pseudonymiser.pseudonymise(source)
    ds = result.dataset
    for keyword in (
        "SOPClassUID",
        "Modality",
        "Manufacturer",
        "ManufacturerModelName",
        "SequenceOfUltrasoundRegions",
        "PixelSpacing",
        "NumberOfFrames",
        "FrameTime",
        "FrameIncrementPointer",
        "Rows",
        "Columns",
        "BitsStored",
        "PhotometricInterpretation",
        "SamplesPerPixel",
    ):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert [(i.CodeValue, i.CodingSchemeDesignator) for i in ds.DeidentificationMethodCodeSequence] == [
        ("113100", "DCM"),
        ("113101", "DCM"),
    ]
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "StudyDate",
    ):
        assert ds[keyword].value in ("", None), keyword  # Type 2: present, zero length
    for keyword in (
        "InstitutionName",
        "OperatorsName",
        "StationName",
        "DeviceSerialNumber",
        "PatientAddress",
        "OtherPatientIDsSequence",
        "RequestAttributesSequence",
        "StudyDescription",
        "ImageComments",
        "ReferencedPerformedProcedureStepSequence",
        "PatientAge",
    ):
        assert keyword not in ds, keyword  # Type 3 or not in the IOD: removed
    assert not any(e.tag.is_private for e in ds.iterall())
    assert result.uid_map[ds.SOPInstanceUID] == source.SOPInstanceUID
    assert result.uid_map[ds.StudyInstanceUID] == source.StudyInstanceUID
    assert result.uid_map[ds.FrameOfReferenceUID] == source.FrameOfReferenceUID
    assert result.pixels.frames == 8 and "8 frame(s)" in result.pixels.describe()
    assert source.PatientName == phi.PATIENT.name  # the source is not changed


@pytest.mark.parametrize(
    ("name", "masks"),
    [
        ("US1_J2KR.dcm", [MaskSettings(manufacturer="g.e. medical systems ", rectangles=[[0, 40, 639, 479]])]),
        ("OBXXXX1A_rle_2frame.dcm", []),  # Philips, palette colour, RLE, tissue region + ECG trace region
        ("gdcm-US-ALOKA-16_big.dcm", []),  # Aloka, 16-bit palette, big endian, two tissue regions + grey bar
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", []),  # JPEG lossless, MONOCHROME2
        (
            "US1_UNCR.dcm",
            [
                MaskSettings(model="nope", rectangles=[[0, 0, 9, 9]]),
                MaskSettings(manufacturer="G.E. Medical Systems", rectangles=[[0, 40, 639, 479]]),
            ],
        ),
    ],
)
def test_scanners_files_keep_their_image_and_lose_the_rest(name: str, masks: list[MaskSettings]) -> None:
    source = dcmread(dicom_testfile(name))
    result = Pseudonymiser(SECRET, masks=masks).pseudonymise(source)
    ds = result.dataset
    regions = [r for r in source.get("SequenceOfUltrasoundRegions", []) if r.RegionDataType in (1, 2)]
    rects = (
        [(r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1) for r in regions]
        if regions
        else [tuple(masks[-1].rectangles[0])]
    )
    assert phi.probe(result.data, [], rects).nonzero_outside == 0
    before = np.asarray(pixel_array(source, raw=False))
    if source.PhotometricInterpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        before = np.asarray(apply_color_lut(before, source))
        if before.dtype.itemsize > 1:
            before = ((before.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    after = np.asarray(pixel_array(ds, raw=False))
    assert after.shape == before.shape
    x0, y0, x1, y1 = (int(v) for v in rects[0])
    lossy = source.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    if not lossy:  # the kept area is the decoded source, sample for sample
        assert np.array_equal(
            after[..., y0 : y1 + 1, x0 : min(x1, ds.Columns - 1) + 1, :]
            if after.ndim == 4
            else after[y0 : y1 + 1, x0 : x1 + 1],
            before[..., y0 : y1 + 1, x0 : x1 + 1, :] if before.ndim == 4 else before[y0 : y1 + 1, x0 : x1 + 1],
        )
    originals = {str(source[k].value) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")}
    assert not any(uid.encode() in result.data for uid in originals)
    assert str(ds.SOPClassUID) == str(source.SOPClassUID)


def test_regions_decide_only_with_policy_regions_and_only_tissue_or_flow_counts(pseudonymiser) -> None:
    case = phi.us_native()
    ds = case.dataset()
    with_masks = Pseudonymiser(SECRET, pixels=PixelCleaning.MASKS, masks=[MaskSettings(rectangles=[[0, 0, 99, 99]])])
    assert with_masks.pseudonymise(ds).pixels.method == "mask"
    ds.SequenceOfUltrasoundRegions[0].RegionDataType = 0x000A  # an ECG trace is not the image
    with pytest.raises(BurnedInTextNotRemoved, match="burned-in text could not be removed"):
        pseudonymiser.pseudonymise(ds)


def test_masks_match_on_manufacturer_model_and_station_first_match_wins() -> None:
    from fetalnode.privacy import matching_mask

    ds = phi.sc_without_regions().dataset()
    masks = [
        MaskSettings(name="other", manufacturer="Acme Ultrasound", model="AcmeScan 9", rectangles=[[0, 0, 1, 1]]),
        MaskSettings(name="any acme", manufacturer="  ACME ultrasound", rectangles=[[0, 0, 1, 1]]),
        MaskSettings(name="catch-all", rectangles=[[0, 0, 1, 1]]),
    ]
    assert matching_mask(ds, masks) == (2, masks[1])
    assert matching_mask(ds, masks[:1]) is None
    film = phi.printed_film().dataset()
    assert "Manufacturer" not in film  # a printed film is matched on its station
    assert matching_mask(film, phi.MASKS) == (2, phi.MASKS[1])
    assert matching_mask(film, masks) == (3, masks[2])


def test_an_image_with_neither_regions_nor_a_matching_mask_is_refused(pseudonymiser) -> None:
    ds = phi.sc_without_regions().dataset()
    ds.ManufacturerModelName = "AcmeScan 6"
    with pytest.raises(BurnedInTextNotRemoved) as err:
        pseudonymiser.pseudonymise(ds)
    assert str(err.value).startswith(BurnedInTextNotRemoved.OUTCOME)
    assert phi.PATIENT.family not in str(err.value)
    outside = Pseudonymiser(SECRET, masks=[MaskSettings(rectangles=[[5000, 5000, 6000, 6000]])])
    with pytest.raises(BurnedInTextNotRemoved, match="keeps no pixel"):
        outside.pseudonymise(ds)


def test_registered_uids_stay_and_pseudonyms_are_keyed() -> None:
    from pydicom.dataset import Dataset

    p = Pseudonymiser(SECRET, masks=phi.MASKS)
    for registered in ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"):
        assert is_registered(registered) and p.pseudonym(registered) == registered
    ds = phi.us_native().dataset()
    loinc = Dataset()
    loinc.CodingSchemeDesignator, loinc.CodingSchemeUID = "LN", "2.16.840.1.113883.6.1"  # a kind, not a patient's
    ds.CodingSchemeIdentificationSequence = [loinc]
    out = p.pseudonymise(ds).dataset
    assert out.CodingSchemeIdentificationSequence[0].CodingSchemeUID == "2.16.840.1.113883.6.1"
    assert out.SOPClassUID == ds.SOPClassUID
    assert (
        p.pseudonym("1.2.3.4")
        == Pseudonymiser(SECRET).pseudonym("1.2.3.4")
        != Pseudonymiser(OTHER_SECRET).pseudonym("1.2.3.4")
    )
    assert SECRET.hex() not in repr(p) and str(SECRET) not in repr(p)


def test_the_secret_is_refused_when_missing_short_or_repetitive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"privacy\.secret_file is not set"):
        Pseudonymiser.from_settings(PrivacySettings())
    with pytest.raises(ConfigError, match="cannot read it"):
        read_secret(str(tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_bytes(b"0123456789abcdef\n")
    with pytest.raises(ConfigError, match="16 bytes, at least 32"):
        read_secret(str(short))
    repetitive = tmp_path / "repetitive"
    repetitive.write_text("abab" * 16)
    with pytest.raises(ConfigError, match="too repetitive"):
        read_secret(str(repetitive))
    good = tmp_path / "secret"
    good.write_text(os.urandom(32).hex() + "\n")
    good.chmod(0o600)
    settings = Settings()
    settings.privacy.secret_file = str(good)
    assert read_secret(str(good)) == good.read_bytes().strip()
    assert Pseudonymiser.from_settings(settings.privacy).pseudonym("1.2.3") == Pseudonymiser(
        good.read_bytes().strip()
    ).pseudonym("1.2.3")
    assert good.read_text().strip() not in repr(settings.masked())


def test_pseudonymise_is_on_for_terminals_unless_set() -> None:
    privacy = PrivacySettings()
    assert privacy.enabled_for(Role.TERMINAL) and not privacy.enabled_for(Role.ALL)
    assert not privacy.enabled_for(Role.WORKER)
    privacy.pseudonymise = False
    assert not privacy.enabled_for(Role.TERMINAL)
    privacy.pseudonymise = True
    assert privacy.enabled_for(Role.ALL)
