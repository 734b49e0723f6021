"""The virtual printer with real print SCUs: DCMTK dcmpsprt + dcmprscu, and a pynetdicom colour SCU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from fetalnode.scp.contexts import (
    COLOR_IMAGE_BOX,
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    META_COLOR,
    META_GRAYSCALE,
    PRESENTATION_LUT,
)
from harness.config import NODE_AET
from tests.conftest import SAMPLES, need
from tests.e2e.helpers import download, find

pytestmark = [pytest.mark.interop, pytest.mark.e2e]
SOURCES = [SAMPLES / "hc18_104_HC.dcm", SAMPLES / "hc18_669_HC.dcm", SAMPLES / "hc18_316_HC.dcm"]


def dcmtk_print(node, tmp_path: Path, files: list[Path], *options: str, layout: tuple[int, int] = (1, 1)) -> str:
    """Prepare a print job with dcmpsprt and send it with dcmprscu; returns dcmprscu's output."""
    need("dcmprscu")
    work = tmp_path / "dcmtk"
    for sub in ("db", "spool", "lut"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    cfg = work / "print.cfg"
    cfg.write_text(f"""[[GENERAL]]
[PRINT]
Spooler = dcmprscu
Directory = {work / "spool"}
DeletePrintJobs = false
[DATABASE]
Directory = {work / "db"}
[LUT]
Directory = {work / "lut"}
[NETWORK]
Aetitle = PRINTSCU
[[COMMUNICATION]]
[FETALNODE]
Aetitle = {NODE_AET}
Description = fetalnode virtual printer
Hostname = 127.0.0.1
Port = {node.port}
Type = PRINTER
DisplayFormat = 1,1\\2,1\\3,2
FilmSizeID = 8INX10IN\\14INX17IN
MediumType = PAPER\\BLUE FILM
MaxPDU = 32768
SupportsPresentationLUT = true
""")
    for old in (work / "db").glob("*.dcm"):
        old.unlink()
    subprocess.run(
        [
            "dcmpsprt",
            "-c",
            str(cfg),
            "--printer",
            "FETALNODE",
            "--layout",
            *map(str, layout),
            *options,
            *map(str, files),
        ],
        check=True,
        capture_output=True,
    )
    [job] = (work / "db").glob("SP_*.dcm")
    out = subprocess.run(
        [
            "dcmprscu",
            "-c",
            str(cfg),
            "--printer",
            "FETALNODE",
            "--label",
            "OB clinic 3",
            "--owner",
            "sono1",
            "-v",
            str(job),
        ],
        capture_output=True,
        text=True,
    )
    assert "communication failed" not in out.stderr, out.stderr
    return out.stderr


@pytest.fixture
def printer(make_node):
    return make_node(
        scp__station_names=["PRINTSCU=Voluson room 3", "COLORSCU=Color cart"],
        scp__allowed_calling_aets=["TEST-US", "ECHOSCU", "PRINTSCU", "COLORSCU"],
    ).start()


def captured(node, n: int) -> list:
    node.wait_all(n, {"delivered"})
    return sorted(node.jobs.jobs(), key=lambda j: (j.printed.film_box, j.printed.image_box_position))


def test_dcmtk_prints_1up_and_2x1_reach_orthanc_with_source_pixels(printer, orthanc, tmp_path) -> None:
    dcmtk_print(printer, tmp_path, SOURCES[:1])
    dcmtk_print(printer, tmp_path, [SOURCES[1], SOURCES[0]], layout=(2, 1))  # dcmpsprt reads no RLE
    jobs = captured(printer, 3)
    by_box = {j.printed.film_box for j in jobs}
    assert len(by_box) == 2
    two_up = [j for j in jobs if sum(x.printed.film_box == j.printed.film_box for x in jobs) == 2]
    assert [j.printed.image_box_position for j in two_up] == [1, 2]
    for job in jobs:
        ds = dcmread(job.spool_path)
        assert job.source == "print" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.StationName == "Voluson room 3" and "OB clinic 3" in ds.StudyDescription
        assert ds.OperatorsName == "sono1"
        pixels = ds.pixel_array.astype(float) / ((1 << ds.BitsStored) - 1) * 255
        diffs = [
            np.abs(pixels - dcmread(s).pixel_array).max()
            for s in SOURCES
            if dcmread(s).pixel_array.shape == pixels.shape
        ]
        assert min(diffs) <= 2, "captured pixels equal one of the printed sources"
        srs = find(orthanc, StudyInstanceUID=ds.StudyInstanceUID, Modality="SR")
        assert job.result["outputs"]["sr"] in {s["MainDicomTags"]["SOPInstanceUID"] for s in srs}
    assert len({dcmread(j.spool_path).StudyInstanceUID for j in two_up}) == 1, "one film session, one study"
    sc = [i for i in find(orthanc, SOPInstanceUID=jobs[0].result["outputs"]["sc"])]
    assert download(orthanc, sc[0]["ID"]).SamplesPerPixel == 3


def test_dcmtk_lin_od_capture_is_what_the_film_shows(printer, tmp_path) -> None:
    # dcmpsprt renders LIN OD into the pixel values and sends an IDENTITY Presentation LUT: the printer
    # cannot tell, so the capture keeps what was sent (what the film would show).
    dcmtk_print(printer, tmp_path, SOURCES[:1], "--lin-od")
    printer.wait_all(1, {"delivered"})
    [job] = printer.jobs.jobs()
    ds = dcmread(job.spool_path)
    captured_values = ds.pixel_array.astype(float).ravel()
    source = dcmread(SOURCES[0]).pixel_array.astype(float).ravel()
    # An optical-density curve, not a linear flip: the capture falls monotonically as the source rises.
    means = [captured_values[source == v].mean() for v in np.unique(source)]
    assert np.all(np.diff(means) <= 1e-9)
    assert np.corrcoef(source, captured_values)[0, 1] < -0.9


def _session(assoc, meta: str) -> str:
    attrs = Dataset()
    attrs.NumberOfCopies = 1
    attrs.FilmSessionLabel = "colour test"
    uid = generate_uid()
    status, _ = assoc.send_n_create(attrs, FILM_SESSION, uid, meta_uid=meta)
    assert status.Status == 0x0000
    return uid


def _film_box(assoc, session_uid: str, fmt: str, meta: str, lut: str | None = None) -> tuple[int, Dataset, str]:
    """N-CREATE a film box with an SCU-chosen UID; returns (status, reply, film box UID)."""
    attrs = Dataset()
    attrs.ImageDisplayFormat = fmt
    attrs.FilmOrientation = "PORTRAIT"
    attrs.FilmSizeID = "8INX10IN"
    ref = Dataset()
    ref.ReferencedSOPClassUID = FILM_SESSION
    ref.ReferencedSOPInstanceUID = session_uid
    attrs.ReferencedFilmSessionSequence = [ref]
    if lut:
        lref = Dataset()
        lref.ReferencedSOPClassUID = PRESENTATION_LUT
        lref.ReferencedSOPInstanceUID = lut
        attrs.ReferencedPresentationLUTSequence = [lref]
    uid = generate_uid()
    status, reply = assoc.send_n_create(attrs, FILM_BOX, uid, meta_uid=meta)
    return status.Status, reply, uid


def _image(rgb: np.ndarray | None = None, gray: np.ndarray | None = None) -> Dataset:
    item = Dataset()
    arr = rgb if rgb is not None else gray
    assert arr is not None
    item.Rows, item.Columns = arr.shape[:2]
    item.SamplesPerPixel = 3 if rgb is not None else 1
    item.PhotometricInterpretation = "RGB" if rgb is not None else "MONOCHROME2"
    if rgb is not None:
        item.PlanarConfiguration = 0
    item.BitsAllocated = item.BitsStored = 8
    item.HighBit = 7
    item.PixelRepresentation = 0
    item.PixelData = arr.tobytes()
    return item


def _set_box(assoc, box_class: str, box_uid: str, item: Dataset, keyword: str, meta: str):
    mods = Dataset()
    mods.ImageBoxPosition = 1
    setattr(mods, keyword, [item])
    return assoc.send_n_set(mods, box_class, box_uid, meta_uid=meta)


def _associate(node, meta: str, aet: str):
    ae = AE(ae_title=aet)
    ae.add_requested_context(meta)
    ae.add_requested_context(PRESENTATION_LUT)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    return assoc


def test_colour_print_with_pynetdicom_scu_pixels_identical(printer) -> None:
    rgb = dcmread(SAMPLES / "hc18_316_HC.dcm").pixel_array
    rgb = np.stack([rgb, np.flipud(rgb), 255 - rgb], axis=2).astype(np.uint8)
    assoc = _associate(printer, META_COLOR, "COLORSCU")
    try:
        session = _session(assoc, META_COLOR)
        code, reply, film = _film_box(assoc, session, "STANDARD\\1,1", META_COLOR)
        assert code == 0x0000
        box = reply.ReferencedImageBoxSequence[0]
        assert box.ReferencedSOPClassUID == COLOR_IMAGE_BOX
        status, _ = _set_box(
            assoc, COLOR_IMAGE_BOX, box.ReferencedSOPInstanceUID, _image(rgb=rgb), "BasicColorImageSequence", META_COLOR
        )
        assert status.Status == 0x0000
        assert assoc.send_n_action(None, 1, FILM_BOX, film, meta_uid=META_COLOR)[0].Status == 0x0000
    finally:
        assoc.release()
    printer.wait_all(1, {"delivered"})
    [job] = printer.jobs.jobs()
    ds = dcmread(job.spool_path)
    assert ds.PhotometricInterpretation == "RGB" and ds.StationName == "Color cart"
    assert np.array_equal(ds.pixel_array, rgb)


def test_inverse_presentation_lut_is_honoured(printer) -> None:
    gray = dcmread(SOURCES[0]).pixel_array.astype(np.uint8)
    assoc = _associate(printer, META_GRAYSCALE, "PRINTSCU")
    try:
        session = _session(assoc, META_GRAYSCALE)
        lut = Dataset()
        lut.PresentationLUTShape = "INVERSE"
        lut_uid = generate_uid()
        assert assoc.send_n_create(lut, PRESENTATION_LUT, lut_uid)[0].Status == 0x0000
        code, reply, film = _film_box(assoc, session, "STANDARD\\1,1", META_GRAYSCALE, lut_uid)
        assert code == 0x0000
        box = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
        status, _ = _set_box(
            assoc,
            GRAYSCALE_IMAGE_BOX,
            box,
            _image(gray=(255 - gray).astype(np.uint8)),
            "BasicGrayscaleImageSequence",
            META_GRAYSCALE,
        )
        assert status.Status == 0x0000
        assert assoc.send_n_action(None, 1, FILM_BOX, film, meta_uid=META_GRAYSCALE)[0].Status == 0x0000
    finally:
        assoc.release()
    printer.wait_all(1, {"delivered"})
    assert np.array_equal(dcmread(printer.jobs.jobs()[0].spool_path).pixel_array, gray)


def test_bad_print_requests_get_dimse_failures_and_nothing_printed_is_lost(printer) -> None:
    gray = dcmread(SOURCES[0]).pixel_array.astype(np.uint8)
    assoc = _associate(printer, META_GRAYSCALE, "PRINTSCU")
    try:
        session = _session(assoc, META_GRAYSCALE)
        assert _film_box(assoc, session, "STANDARD\\12,1", META_GRAYSCALE)[0] == 0x0106, "unsupported format"
        assert _film_box(assoc, session, "SLIDE", META_GRAYSCALE)[0] == 0x0106
        code, reply, film = _film_box(assoc, session, "STANDARD\\2,1", META_GRAYSCALE)
        assert code == 0x0000
        boxes = [r.ReferencedSOPInstanceUID for r in reply.ReferencedImageBoxSequence]
        assert len(boxes) == 2
        status, _ = assoc.send_n_action(None, 1, FILM_BOX, film, meta_uid=META_GRAYSCALE)
        assert status.Status == 0xB603, "print before any image: empty page"
        status, _ = _set_box(
            assoc, GRAYSCALE_IMAGE_BOX, "1.2.3.4.5.6", _image(gray=gray), "BasicGrayscaleImageSequence", META_GRAYSCALE
        )
        assert status.Status == 0x0112, "unknown image box"
        assert (
            _set_box(
                assoc, GRAYSCALE_IMAGE_BOX, boxes[0], _image(gray=gray), "BasicGrayscaleImageSequence", META_GRAYSCALE
            )[0].Status
            == 0x0000
        )
        assert assoc.send_n_action(None, 1, FILM_BOX, film, meta_uid=META_GRAYSCALE)[0].Status == 0x0000
        assert assoc.send_n_delete(FILM_SESSION, session, meta_uid=META_GRAYSCALE).Status == 0x0000
        status, _ = _set_box(
            assoc, GRAYSCALE_IMAGE_BOX, boxes[1], _image(gray=gray), "BasicGrayscaleImageSequence", META_GRAYSCALE
        )
        assert status.Status == 0x0112, "the session and its boxes are gone"
    finally:
        assoc.release()
    printer.wait_all(1, {"delivered"})
    [job] = printer.jobs.jobs()
    assert np.array_equal(dcmread(job.spool_path).pixel_array, gray), "printed before the delete: kept"
    refused = [
        json.loads(x) for x in (printer.data_dir / "audit.jsonl").read_text().splitlines() if '"print-refused"' in x
    ]
    assert {e["status"] for e in refused} >= {"0x0106", "0xB603", "0x0112"}


def test_3x2_film_printed_at_session_level_gives_six_instances_in_box_order(printer) -> None:
    base = dcmread(SOURCES[0]).pixel_array.astype(np.uint8)
    images = [np.roll(base, 37 * k, axis=1) for k in range(6)]
    assoc = _associate(printer, META_GRAYSCALE, "PRINTSCU")
    try:
        session = _session(assoc, META_GRAYSCALE)
        code, reply, _ = _film_box(assoc, session, "STANDARD\\3,2", META_GRAYSCALE)
        assert code == 0x0000
        boxes = [r.ReferencedSOPInstanceUID for r in reply.ReferencedImageBoxSequence]
        assert len(boxes) == 6
        for box, img in zip(boxes, images, strict=True):
            status, _ = _set_box(
                assoc, GRAYSCALE_IMAGE_BOX, box, _image(gray=img), "BasicGrayscaleImageSequence", META_GRAYSCALE
            )
            assert status.Status == 0x0000
        assert assoc.send_n_action(None, 1, FILM_SESSION, session, meta_uid=META_GRAYSCALE)[0].Status == 0x0000
    finally:
        assoc.release()
    jobs = captured(printer, 6)
    assert [j.printed.image_box_position for j in jobs] == [1, 2, 3, 4, 5, 6]
    for job, img in zip(jobs, images, strict=True):
        ds = dcmread(job.spool_path)
        assert ds.InstanceNumber == job.printed.image_box_position
        assert np.array_equal(ds.pixel_array, img)
    assert len({dcmread(j.spool_path).SeriesInstanceUID for j in jobs}) == 1, "one film box, one series"
