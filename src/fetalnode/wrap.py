"""Wrap a dataset image (PNG) as an Ultrasound Image Storage instance, as a scanner would send it.

Used to put HC18 / FETAL_PLANES images through the real DICOM path (samples, tests, benchmarks).
The calibration goes into a Sequence of Ultrasound Regions (PhysicalDeltaX/Y in cm), as real
scanners write it; pixel sizes come from the dataset's labels.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from fetalnode.intake import US_IMAGE


def wrap_png(
    png: str | Path,
    *,
    pixel_size_mm: float | None,
    patient_id: str = "FETALNODE-DEMO",
    patient_name: str = "Demo^Fetalnode",
    study_uid: str | None = None,
    accession: str = "",
    compress_rle: bool = False,
) -> Dataset:
    """A US Image Storage dataset holding the PNG's grayscale pixels (UIDs derived from its bytes)."""
    data = Path(png).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    rows, cols = pixels.shape
    now = datetime.now(UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[digest, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = US_IMAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[digest, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.StudyInstanceUID, "series"])
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "US"
    ds.Manufacturer = "fetalnode wrap"
    ds.StudyDescription = "OB ultrasound (dataset image)"
    ds.SeriesDescription = Path(png).name[:64]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OBSTETRICAL"]
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    if pixel_size_mm is not None:
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.RegionDataType = 1
        region.RegionFlags = 0
        region.RegionLocationMinX0 = 0
        region.RegionLocationMinY0 = 0
        region.RegionLocationMaxX1 = cols - 1
        region.RegionLocationMaxY1 = rows - 1
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = pixel_size_mm / 10.0
        region.PhysicalDeltaY = pixel_size_mm / 10.0
        ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = pixels.tobytes()
    if compress_rle:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds
