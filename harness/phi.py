"""Images that carry patient data everywhere a scanner puts it, and the probe that looks for it.

Each case is a real object the node accepts (US, US compressed, US multi-frame, a Secondary Capture
without regions, a film from the virtual printer), built from a bundled sample with PHI in the
patient module, institution, operator, device serial number, accession, station, private
attributes, nested sequences and a burned-in banner at the top, outside the ultrasound region.
:func:`probe` searches an object (as bytes and decoded) for every PHI string and counts the non-zero
pixels outside the area that may be kept; the unit tests run it on the pseudonymiser's output and a
broker-level test can run it on the messages a worker receives.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid

from fetalnode.config import MaskSettings, Settings
from harness.corpus import SAMPLE, SC_CLASS, US_MULTIFRAME

BANNER = 64  # rows of the burned-in banner above the image
Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class Patient:
    """The identity a case carries. Values are distinctive, so a hit is never a coincidence."""

    family: str = "Marlowe"
    given: str = "Quentina"
    patient_id: str = "PHI4711X"
    birth_date: str = "19790102"
    accession: str = "ACC90210Q"
    institution: str = "St Elsewhere Maternity"
    address: str = "12 Quillfeather Lane"
    operator: str = "Sonographer^Sallyanne"
    referring: str = "Refferton^Roberta"
    serial: str = "SN55512345"
    station: str = "USROOM3EAST"
    study_id: str = "STY88172"
    other_id: str = "OTH31337Z"
    phone: str = "0161496077"

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"

    def strings(self) -> tuple[str, ...]:
        """Every PHI string, as it may be written anywhere (names by component, dates in the banner's forms)."""
        d = self.birth_date
        return (
            self.family,
            self.given,
            self.patient_id,
            d,
            f"{d[6:]}.{d[4:6]}.{d[:4]}",
            f"{d[:4]}-{d[4:6]}-{d[6:]}",
            self.accession,
            self.institution,
            "Quillfeather",
            *self.operator.split("^"),
            *self.referring.split("^"),
            self.serial,
            self.station,
            self.study_id,
            self.other_id,
            self.phone,
        )

    def banner(self) -> str:
        d = self.birth_date
        return (
            f"{self.family.upper()}, {self.given}   ID {self.patient_id}   DOB {d[6:]}.{d[4:6]}.{d[:4]}\n"
            f"{self.institution}   {self.station}   ACC {self.accession}"
        )


PATIENT = Patient()


@dataclass(frozen=True)
class PhiCase:
    """One object with PHI; ``kept`` is the only area whose pixels may stay non-zero after cleaning."""

    name: str
    data: bytes
    kept: tuple[Rect, ...]
    phi: tuple[str, ...]
    original_uids: tuple[str, ...]

    def dataset(self) -> Dataset:
        return dcmread(io.BytesIO(self.data))


def masks(sc_kept: Rect, film_kept: Rect) -> list[MaskSettings]:
    """The ``[[privacy.masks]]`` of a site with the corpus's capture device and printing scanner."""
    return [
        MaskSettings(
            name="acme capture", manufacturer="Acme Ultrasound", model="AcmeScan 5", rectangles=[list(sc_kept)]
        ),
        MaskSettings(name="room 3 printer", station="Voluson room 3", rectangles=[list(film_kept)]),
    ]


def _burn(pixels: np.ndarray, text: str) -> np.ndarray:
    """``pixels`` under a black banner of :data:`BANNER` rows with ``text`` written in white."""
    rows, cols = pixels.shape[:2]
    canvas = np.zeros((rows + BANNER, cols, *pixels.shape[2:]), dtype=pixels.dtype)
    canvas[BANNER:] = pixels
    mode = "RGB" if pixels.ndim == 3 else "L"
    image = Image.fromarray(canvas[:BANNER].astype(np.uint8), mode)
    ImageDraw.Draw(image).multiline_text(
        (6, 8), text, fill=(255,) * (3 if mode == "RGB" else 1), font=ImageFont.load_default(size=16), spacing=8
    )
    canvas[:BANNER] = np.asarray(image).astype(pixels.dtype)
    return canvas


def _item(**values: object) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _identify(ds: Dataset, p: Patient) -> None:
    """Header PHI where scanners write it: patient, study, equipment, operator, private and nested."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = "046Y"
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    ds.OtherPatientIDsSequence = [_item(PatientID=p.other_id, TypeOfPatientID="TEXT")]
    ds.AccessionNumber = p.accession
    ds.StudyID = p.study_id
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240611"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101530"
    ds.StudyDescription = f"OB second trimester {p.family}"
    ds.SeriesDescription = f"biometry {p.given}"
    ds.ReferringPhysicianName = p.referring
    ds.InstitutionName = p.institution
    ds.InstitutionAddress = p.address
    ds.OperatorsName = p.operator
    ds.PerformingPhysicianName = p.referring
    ds.StationName = p.station
    ds.DeviceSerialNumber = p.serial
    ds.ImageComments = f"{p.family} {p.patient_id}"
    ds.RequestAttributesSequence = [
        _item(RequestedProcedureID=p.accession, ScheduledProcedureStepID=p.study_id, AccessionNumber=p.accession)
    ]
    ds.ReferencedPerformedProcedureStepSequence = [
        _item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3", ReferencedSOPInstanceUID=generate_uid())
    ]
    ds.FrameOfReferenceUID = generate_uid()
    block = ds.private_block(0x0009, "ACME_PRIVATE", create=True)
    block.add_new(0x01, "LO", p.name.replace("^", " "))
    block.add_new(0x02, "UI", generate_uid())


def _us(pixels: np.ndarray, p: Patient, sop_class: str = "1.2.840.10008.5.1.4.1.1.6.1") -> tuple[Dataset, Rect]:
    """A calibrated US image from the bundled sample: banner above, one tissue region below it."""
    ds = dcmread(SAMPLE)
    rows, cols = pixels.shape[-2:] if pixels.ndim == 2 else pixels.shape[:2]
    region = ds.SequenceOfUltrasoundRegions[0]
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, BANNER
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, BANNER + rows - 1
    region.RegionDataType = 1
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Manufacturer, ds.ManufacturerModelName = "Voluson-like", "E10-like"
    _identify(ds, p)
    return ds, (0, BANNER, cols - 1, BANNER + rows - 1)


def _sample_pixels() -> np.ndarray:
    return np.asarray(dcmread(SAMPLE).pixel_array)


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _uids(ds: Dataset) -> tuple[str, ...]:
    from fetalnode.privacy import is_registered

    found: list[str] = []

    def visit(_: Dataset, element: object) -> None:
        if getattr(element, "VR", "") == "UI" and getattr(element, "value", ""):
            value = str(element.value)  # type: ignore[attr-defined]
            if not is_registered(value):
                found.append(value)

    ds.walk(visit)
    return tuple(dict.fromkeys(found))


def _case(name: str, ds: Dataset, kept: Rect, p: Patient) -> PhiCase:
    return PhiCase(name, _encode(ds), (kept,), p.strings(), _uids(ds))


def us_native(p: Patient = PATIENT) -> PhiCase:
    """US Image, 8-bit MONOCHROME2, Explicit VR Little Endian."""
    pixels = _burn(_sample_pixels(), p.banner())
    ds, kept = _us(_sample_pixels(), p)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return _case("US, uncompressed", ds, kept, p)


def us_jpeg_ls(p: Patient = PATIENT) -> PhiCase:
    """US Image, JPEG-LS Lossless."""
    pixels = _burn(_sample_pixels(), p.banner())
    ds, kept = _us(_sample_pixels(), p)
    ds.Rows, ds.Columns = pixels.shape
    ds.compress(JPEGLSLossless, pixels)
    return _case("US, JPEG-LS lossless", ds, kept, p)


def us_rgb_jpeg_baseline(p: Patient = PATIENT) -> PhiCase:
    """US Image, colour (YBR_FULL_422) JPEG Baseline, as most scanners send colour."""
    gray = _sample_pixels()
    rgb = np.stack([gray, gray, (gray * 0.8).astype(np.uint8)], axis=-1)
    pixels = _burn(rgb, p.banner())
    ds, kept = _us(rgb, p)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90, subsampling=2)  # 4:2:0 YCbCr
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return _case("US, colour JPEG baseline", ds, kept, p)


def us_multiframe(p: Patient = PATIENT, frames: int = 8) -> PhiCase:
    """US Multi-frame, RLE Lossless, the banner in every frame (the image moves, the banner stays)."""
    base = _sample_pixels()
    stack = np.stack([_burn(np.roll(base, 4 * i, axis=1), p.banner()) for i in range(frames)])
    ds, kept = _us(base, p, US_MULTIFRAME)
    ds.Rows, ds.Columns = stack.shape[1:]
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.FrameTime = 33.3
    ds.compress(RLELossless, stack)
    return _case("US multi-frame, RLE", ds, kept, p)


def sc_without_regions(p: Patient = PATIENT) -> PhiCase:
    """Secondary Capture of a screen (RGB, no regions) from a capture device a site mask names."""
    gray = _sample_pixels()
    pixels = _burn(np.stack([gray] * 3, axis=-1), p.banner())
    ds, _ = _us(gray, p, SC_CLASS)
    del ds.SequenceOfUltrasoundRegions
    ds.Manufacturer, ds.ManufacturerModelName = "Acme Ultrasound", "AcmeScan 5"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = pixels.tobytes()
    return _case("Secondary Capture, mask", ds, SC_KEPT, p)


def printed_film(p: Patient = PATIENT) -> PhiCase:
    """The Secondary Capture the virtual printer makes of a printed film (its own builder), from a
    scanner at station "Voluson room 3" that prints its banner and labels the session with the name."""
    from fetalnode.audit import AuditLog
    from fetalnode.jobs import JobStore
    from fetalnode.scp.printer import AssociationState, FilmBox, FilmSession, ImageBox, capture_dataset
    from fetalnode.scp.spool import Spool
    from fetalnode.scp.terminal import Terminal

    pixels = _burn(_sample_pixels(), p.banner())
    settings = Settings()
    settings.scp.station_names = ["PRINTSCU=Voluson room 3"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audit = AuditLog(root / "audit.jsonl")
        terminal = Terminal(settings, Spool(root / "spool", 0), JobStore(root / "jobs.sqlite", audit), audit)
        session = FilmSession(generate_uid(), label=f"{p.family} {p.patient_id}", owner=p.operator)
        box = ImageBox(generate_uid(), 1, pixels, "MONOCHROME2", 8)
        film = FilmBox(generate_uid(), 1, "STANDARD\\1,1", [box], annotations={1: f"{p.given} {p.family}"})
        ds = capture_dataset(terminal, AssociationState("PRINTSCU", "127.0.0.1", session), session, film, box, "")
    return _case("printed film (print SCP)", ds, FILM_KEPT, p)


# The areas the masks keep: below the banner (the corpus's images are 640 wide, the banner is on top).
SC_KEPT: Rect = (0, BANNER, 639, BANNER + 431)
FILM_KEPT: Rect = (0, BANNER, 639, BANNER + 431)
MASKS = masks(SC_KEPT, FILM_KEPT)
CASES: dict[str, Callable[[], PhiCase]] = {
    "us": us_native,
    "us-jpeg-ls": us_jpeg_ls,
    "us-jpeg-baseline": us_rgb_jpeg_baseline,
    "us-multiframe": us_multiframe,
    "sc": sc_without_regions,
    "film": printed_film,
}


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`probe` found: PHI strings (where), and non-zero pixels outside the kept area."""

    strings: tuple[str, ...]
    nonzero_outside: int
    pixels_checked: int

    @property
    def clean(self) -> bool:
        return not self.strings and self.nonzero_outside == 0


def _variants(text: str) -> set[str]:
    forms = {text, text.replace("^", " "), text.replace(" ", "^")}
    return {f for form in forms for f in (form, form.casefold(), form.upper())}


def probe(data: bytes, phi: Iterable[str], kept: Sequence[Rect]) -> ProbeResult:
    """Look for every PHI string in ``data`` (a Part 10 object) and for pixels outside ``kept``.

    Strings: in the bytes (UTF-8, Latin-1, UTF-16 LE/BE, case-insensitive, ``^`` or space between
    name components) and in every decoded element, nested sequences and the file meta included.
    Pixels: every frame decoded (``raw=False``: what a viewer shows), each non-zero sample outside
    the union of ``kept`` (``(x0, y0, x1, y1)``, corners included) counted.
    """
    found: list[str] = []
    lowered = data.lower()
    needles = [n for text in phi for n in sorted(_variants(text))]
    for needle in needles:
        for encoding in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
            try:
                encoded = needle.encode(encoding)
            except UnicodeEncodeError:
                continue
            if encoded in data or encoded.lower() in lowered:
                found.append(f"bytes ({encoding}): {needle!r}")
    ds = dcmread(io.BytesIO(data))
    folded = {n.casefold() for n in needles}

    def visit(_: Dataset, element: object) -> None:
        value = getattr(element, "value", None)
        if value is None or isinstance(value, bytes | DicomSequence):
            return
        text = str(value).casefold()
        for needle in folded:
            if needle in text:
                found.append(f"element {getattr(element, 'keyword', '') or getattr(element, 'tag', '')}: {needle!r}")

    ds.walk(visit)
    ds.file_meta.walk(visit)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = np.asarray(pixel_array(ds, raw=False))
    rows, cols = int(ds.Rows), int(ds.Columns)
    arr = arr.reshape(frames, rows, cols, -1)
    keep = np.zeros((rows, cols), dtype=bool)
    for x0, y0, x1, y1 in kept:
        keep[y0 : y1 + 1, x0 : x1 + 1] = True
    outside = arr[:, ~keep, :]
    return ProbeResult(tuple(dict.fromkeys(found)), int(np.count_nonzero(outside)), int(outside.size))


@dataclass(frozen=True)
class RoundTrip:
    """One image through both paths: the embedded outputs from the real image, and the cloud outputs
    (built from the pseudonymised image) re-identified against it."""

    source: Dataset
    pseudonymised: Dataset
    uid_map: dict[str, str]
    embedded: dict[str, Dataset]
    cloud: dict[str, Dataset]
    reidentified: dict[str, Dataset]


def _outputs(runtime: Any, data: bytes) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """Every enabled output of ``data``, as the job runner builds them (no destination), and what their UIDs
    were derived from."""
    import hashlib

    from fetalnode.outcomes import Received, Verdict
    from fetalnode.runner import run_job

    outcome = run_job(Received(0, "", hashlib.sha256(data).hexdigest(), lambda: data, "TEST"), runtime)
    if outcome.verdict is not Verdict.DELIVERED:
        raise RuntimeError(f"the job was not analysed: {outcome.verdict} at {outcome.stage}: {outcome.reason}")
    return {name: dcmread(io.BytesIO(encoded)) for name, encoded in outcome.built.items()}, outcome.derivation


def round_trip(runtime: Any, pseudonymiser: Any, data: bytes) -> RoundTrip:
    """Analyse ``data`` embedded, and pseudonymised then re-identified (``runtime``: a
    :class:`fetalnode.runner.Runtime` without destinations).

    The UID map is extended as a terminal extends it: every UID each output derives from the source,
    derived again from the real source (:func:`fetalnode.outputs.uids.output_uid_map`).
    """
    from fetalnode.outputs.uids import output_uid_map
    from fetalnode.privacy import reidentify

    source = dcmread(io.BytesIO(data))
    result = pseudonymiser.pseudonymise(source)
    (embedded, _), (cloud, derivation) = _outputs(runtime, data), _outputs(runtime, result.data)
    sop, series = str(source.SOPInstanceUID), str(source.SeriesInstanceUID)
    pseudonym = pseudonymiser.pseudonym
    _, derived = output_uid_map(cloud, (pseudonym(sop), sop), (pseudonym(series), series), derivation)
    uid_map = {**result.uid_map, **derived}
    reidentified = {name: reidentify(obj, source, uid_map) for name, obj in cloud.items()}
    return RoundTrip(source, result.dataset, uid_map, embedded, cloud, reidentified)
