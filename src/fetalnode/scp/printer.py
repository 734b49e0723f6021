"""Virtual DICOM printer: Basic Grayscale and Basic Color Print Management SCP (PS3.4 Annex H).

Ultrasound machines that can only "print" send a film session, film boxes and image boxes. On
N-ACTION (print) every image box that holds pixels becomes a Secondary Capture instance that goes
through :meth:`Terminal.accept_instance`, exactly like a received C-STORE: spooled atomically,
pre-notified, analysed, delivered. A print job carries no patient or study: one film session
becomes one study, identified by the calling AE, its station name and the film session label.
Handlers never raise; each failure is a DIMSE status and an audit event.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt

from fetalnode import __version__, dicomio
from fetalnode.dicom_status import Status
from fetalnode.intake import SECONDARY_CAPTURE
from fetalnode.jobs import Printed
from fetalnode.outputs.uids import derive_uid
from fetalnode.routing import Route
from fetalnode.scp.contexts import (
    ANNOTATION_BOX,
    COLOR_IMAGE_BOX,
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    META_COLOR,
    PRESENTATION_LUT,
    PRINTER,
    PRINTER_INSTANCE,
)
from fetalnode.scp.terminal import Terminal
from fetalnode.vocab import AuditEvent, RouteAction

log = logging.getLogger(__name__)
# A printed film is analysed: the routing rules are for C-STORE (a film has no modality header to match).
PRINTED = Route("print", RouteAction.ANALYSE)


_FORMAT = re.compile(r"^STANDARD\\(\d+),(\d+)$")


@dataclass
class ImageBox:
    uid: str
    position: int
    pixels: np.ndarray | None = None
    photometric: str = ""
    bits_stored: int = 8
    lut_uid: str = ""


@dataclass
class FilmBox:
    uid: str
    number: int
    display_format: str
    boxes: list[ImageBox]
    annotations: dict[int, str] = field(default_factory=dict)
    annotation_uids: dict[str, int] = field(default_factory=dict)
    lut_uid: str = ""
    printed: bool = False


@dataclass
class FilmSession:
    uid: str
    label: str
    owner: str
    film_boxes: dict[str, FilmBox] = field(default_factory=dict)
    lut_uid: str = ""


@dataclass
class AssociationState:
    calling: str
    peer: str
    session: FilmSession | None = None
    luts: dict[str, str] = field(default_factory=dict)
    image_boxes: dict[str, tuple[str, int]] = field(default_factory=dict)


class PrintScp:
    """Film-session state machine, one state per association (a film session lives that long)."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.settings = terminal.settings.print
        self._states: dict[int, AssociationState] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_N_GET, self._guard(self.handle_n_get)),
            (evt.EVT_N_CREATE, self._guard(self.handle_n_create)),
            (evt.EVT_N_SET, self._guard(self.handle_n_set)),
            (evt.EVT_N_ACTION, self._guard(self.handle_n_action)),
            (evt.EVT_N_DELETE, self._guard(self.handle_n_delete, status_only=True)),
            (evt.EVT_RELEASED, self.forget),
            (evt.EVT_ABORTED, self.forget),
        ]

    def _guard(self, handler: Any, status_only: bool = False) -> Any:
        """Answer every request: exceptions become 0x0110. N-DELETE handlers return a bare status."""

        def run(event: evt.Event) -> Any:
            try:
                answer = handler(event)
                return answer[0] if status_only else answer
            except Exception as exc:  # never raise into pynetdicom: answer and audit
                log.exception("print %s failed", event.event.name)
                self.terminal.audit.event(
                    AuditEvent.PRINT_FAILED,
                    calling_ae=str(event.assoc.requestor.ae_title),
                    operation=event.event.name,
                    reason=f"{type(exc).__name__}: {exc}",
                )
                return Status.PROCESSING_FAILURE if status_only else (Status.PROCESSING_FAILURE, None)

        return run

    def state(self, event: evt.Event) -> AssociationState:
        with self._lock:
            key = id(event.assoc)
            if key not in self._states:
                req = event.assoc.requestor
                self._states[key] = AssociationState(str(req.ae_title).strip(), f"{req.address}:{req.port}")
            return self._states[key]

    def forget(self, event: evt.Event) -> None:
        with self._lock:
            self._states.pop(id(event.assoc), None)

    def target(self, event: evt.Event) -> tuple[str, str, AssociationState]:
        """The request's Requested SOP Class and Instance UIDs, and the association's print state."""
        req: Any = event.request
        return str(req.RequestedSOPClassUID), str(req.RequestedSOPInstanceUID), self.state(event)

    def _refuse(self, event: evt.Event, status: int, reason: str) -> tuple[int, None]:
        self.terminal.audit.event(
            AuditEvent.PRINT_REFUSED,
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            operation=event.event.name,
            status=f"0x{status:04X}",
            reason=reason,
        )
        return (status, None)

    # -- N-GET -----------------------------------------------------------------------------
    def handle_n_get(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req: Any = event.request
        if str(req.RequestedSOPClassUID) != PRINTER or str(req.RequestedSOPInstanceUID) != PRINTER_INSTANCE:
            return self._refuse(event, Status.NO_SUCH_INSTANCE, f"N-GET of {req.RequestedSOPInstanceUID} not supported")
        ds = Dataset()
        ds.PrinterStatus = "NORMAL"
        ds.PrinterStatusInfo = "NORMAL"
        ds.PrinterName = self.settings.printer_name[:64]
        ds.Manufacturer = "fetalnode project"
        ds.ManufacturerModelName = "fetalnode"
        ds.SoftwareVersions = __version__
        return (Status.SUCCESS, ds)

    # -- N-CREATE --------------------------------------------------------------------------
    def handle_n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req: Any = event.request
        sop_class = str(req.AffectedSOPClassUID)
        attrs = event.attribute_list
        uid = str(req.AffectedSOPInstanceUID or generate_uid())
        state = self.state(event)
        reply = Dataset()
        reply.update(attrs)
        if req.AffectedSOPInstanceUID is None:
            reply.AffectedSOPInstanceUID = uid
        if sop_class == FILM_SESSION:
            if state.session is not None:
                return self._refuse(
                    event, Status.DUPLICATE_INSTANCE, "a film session already exists on this association"
                )
            state.session = FilmSession(uid, str(attrs.get("FilmSessionLabel", "")), str(attrs.get("OwnerID", "")))
            state.session.lut_uid = _lut_ref(attrs)
            self.terminal.audit.event(
                AuditEvent.PRINT_SESSION, calling_ae=state.calling, address=state.peer, film_session=uid
            )
            return (Status.SUCCESS, reply)
        if sop_class == FILM_BOX:
            return self._create_film_box(event, state, uid, attrs, reply)
        if sop_class == str(PRESENTATION_LUT):
            shape = str(attrs.get("PresentationLUTShape", ""))
            if shape not in {"IDENTITY", "INVERSE", "LIN OD"}:
                return self._refuse(
                    event,
                    Status.INVALID_ATTRIBUTE_VALUE,
                    f"Presentation LUT shape {shape or '(explicit LUT)'} not supported",
                )
            state.luts[uid] = shape
            return (Status.SUCCESS, reply)
        return self._refuse(event, Status.NO_SUCH_SOP_CLASS, f"N-CREATE of SOP class {sop_class} not supported")

    def _create_film_box(
        self, event: evt.Event, state: AssociationState, uid: str, attrs: Dataset, reply: Dataset
    ) -> tuple[int, Dataset | None]:
        if state.session is None:
            return self._refuse(event, Status.INVALID_ATTRIBUTE_VALUE, "film box without a film session")
        fmt = str(attrs.get("ImageDisplayFormat", ""))
        match = _FORMAT.match(fmt)
        if not match or not (1 <= int(match[1]) <= 8 and 1 <= int(match[2]) <= 8):
            return self._refuse(
                event,
                Status.INVALID_ATTRIBUTE_VALUE,
                f"image display format {fmt!r} not supported (STANDARD\\C,R with 1..8 columns and rows)",
            )
        columns, rows = int(match[1]), int(match[2])
        color = str(event.context.abstract_syntax) == META_COLOR
        box_class = COLOR_IMAGE_BOX if color else GRAYSCALE_IMAGE_BOX
        boxes = [ImageBox(derive_uid("image-box", uid, str(i + 1)), i + 1) for i in range(columns * rows)]
        film = FilmBox(uid, len(state.session.film_boxes) + 1, fmt, boxes, lut_uid=_lut_ref(attrs))
        state.session.film_boxes[uid] = film
        refs = []
        for box in boxes:
            state.image_boxes[box.uid] = (uid, box.position)
            item = Dataset()
            item.ReferencedSOPClassUID = box_class
            item.ReferencedSOPInstanceUID = box.uid
            refs.append(item)
        reply.ReferencedImageBoxSequence = refs
        if attrs.get("AnnotationDisplayFormatID"):
            annotation_refs = []
            for position in (1, 2):
                ann_uid = derive_uid("annotation-box", uid, str(position))
                film.annotation_uids[ann_uid] = position
                item = Dataset()
                item.ReferencedSOPClassUID = ANNOTATION_BOX
                item.ReferencedSOPInstanceUID = ann_uid
                annotation_refs.append(item)
            reply.ReferencedBasicAnnotationBoxSequence = annotation_refs
        return (Status.SUCCESS, reply)

    # -- N-SET -----------------------------------------------------------------------------
    def handle_n_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        sop_class, uid, state = self.target(event)
        mods = event.modification_list
        session = state.session
        if sop_class in {GRAYSCALE_IMAGE_BOX, COLOR_IMAGE_BOX}:
            if uid not in state.image_boxes or session is None:
                return self._refuse(event, Status.NO_SUCH_INSTANCE, f"no image box {uid}")
            film_uid, position = state.image_boxes[uid]
            box = session.film_boxes[film_uid].boxes[position - 1]
            keyword = "BasicColorImageSequence" if sop_class == COLOR_IMAGE_BOX else "BasicGrayscaleImageSequence"
            if keyword not in mods or not mods[keyword].value:
                return self._refuse(event, Status.MISSING_ATTRIBUTE, f"N-SET of an image box without {keyword}")
            item = mods[keyword].value[0]
            rows, cols = int(item.get("Rows", 0)), int(item.get("Columns", 0))
            if rows * cols > self.settings.max_image_pixels:
                return self._refuse(event, Status.IMAGE_LARGER_THAN_BOX, f"image {cols}x{rows} exceeds the image box")
            try:
                box.pixels = _pixels(item)
            except ValueError as exc:
                return self._refuse(event, Status.INVALID_ATTRIBUTE_VALUE, str(exc))
            box.photometric = str(item.get("PhotometricInterpretation", "MONOCHROME2"))
            box.bits_stored = int(item.get("BitsStored", item.get("BitsAllocated", 8)))
            box.lut_uid = _lut_ref(mods)
            return (Status.SUCCESS, None)
        if session is not None and sop_class == FILM_BOX and uid in session.film_boxes:
            session.film_boxes[uid].lut_uid = _lut_ref(mods) or session.film_boxes[uid].lut_uid
            return (Status.SUCCESS, None)
        if session is not None and sop_class == FILM_SESSION and uid == session.uid:
            session.label = str(mods.get("FilmSessionLabel", session.label))
            session.lut_uid = _lut_ref(mods) or session.lut_uid
            return (Status.SUCCESS, None)
        if session is not None and sop_class == str(ANNOTATION_BOX):
            for film in session.film_boxes.values():
                if uid in film.annotation_uids:
                    film.annotations[film.annotation_uids[uid]] = str(mods.get("TextString", ""))
                    return (Status.SUCCESS, None)
        return self._refuse(event, Status.NO_SUCH_INSTANCE, f"N-SET of unknown {sop_class} instance {uid}")

    # -- N-ACTION (print) ------------------------------------------------------------------
    def handle_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req: Any = event.request
        sop_class, uid, state = self.target(event)
        session = state.session
        if int(req.ActionTypeID or 0) != 1:
            return self._refuse(event, Status.NO_SUCH_ACTION, f"action type {req.ActionTypeID}")
        if session is None:
            return self._refuse(event, Status.NO_SUCH_INSTANCE, "no film session on this association")
        if sop_class == FILM_SESSION and uid == session.uid:
            if not session.film_boxes:
                return self._refuse(event, Status.SESSION_HAS_NO_FILM_BOX, "film session has no film box")
            captured = sum(self._capture(event, state, film) for film in session.film_boxes.values())
            if not captured:
                return self._refuse(event, Status.SESSION_EMPTY_PAGE, "empty film session")
            return (Status.SUCCESS, None)
        if sop_class == FILM_BOX and uid in session.film_boxes:
            captured = self._capture(event, state, session.film_boxes[uid])
            if not captured:
                return self._refuse(event, Status.FILM_BOX_EMPTY_PAGE, "film box has no image")
            return (Status.SUCCESS, None)
        return self._refuse(event, Status.NO_SUCH_INSTANCE, f"N-ACTION on unknown instance {uid}")

    # -- N-DELETE --------------------------------------------------------------------------
    def handle_n_delete(self, event: evt.Event) -> tuple[int, Dataset | None]:
        sop_class, uid, state = self.target(event)
        session = state.session
        if session is not None and sop_class == FILM_SESSION and uid == session.uid:
            # Printed images are already spooled and queued: deleting the session loses nothing.
            state.session = None
            state.image_boxes.clear()
            return (Status.SUCCESS, None)
        if session is not None and sop_class == FILM_BOX and uid in session.film_boxes:
            film = session.film_boxes.pop(uid)
            for box in film.boxes:
                state.image_boxes.pop(box.uid, None)
            return (Status.SUCCESS, None)
        if sop_class == str(PRESENTATION_LUT) and uid in state.luts:
            del state.luts[uid]
            return (Status.SUCCESS, None)
        return self._refuse(event, Status.NO_SUCH_INSTANCE, f"N-DELETE of unknown instance {uid}")

    # -- capture ---------------------------------------------------------------------------
    def _capture(self, event: evt.Event, state: AssociationState, film: FilmBox) -> int:
        """Turn the film box's filled image boxes into instances on the C-STORE path; returns how many."""
        assert state.session is not None
        session = state.session
        count = 0
        for box in film.boxes:
            if box.pixels is None:
                continue
            shape = state.luts.get(box.lut_uid or film.lut_uid or session.lut_uid, "IDENTITY")
            ds = capture_dataset(self.terminal, state, session, film, box, shape)
            self.terminal.accept_instance(
                dicomio.encode(ds),
                calling=state.calling,
                peer=state.peer,
                called=str(event.assoc.acceptor.ae_title).strip(),
                sop_uid=str(ds.SOPInstanceUID),
                sop_class=str(ds.SOPClassUID),
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                transfer_syntax=str(ExplicitVRLittleEndian),
                source="print",
                route=PRINTED,
                printed=Printed(session.uid, film.uid, box.position, session.label),
            )
            count += 1
        film.printed = True
        return count


def _lut_ref(ds: Dataset) -> str:
    seq = ds.get("ReferencedPresentationLUTSequence")
    return str(seq[0].ReferencedSOPInstanceUID) if seq else ""


def _pixels(item: Dataset) -> np.ndarray:
    """Pixels of a Basic Grayscale/Color Image Sequence item (uncompressed, little endian)."""
    rows, cols = int(item.Rows), int(item.Columns)
    samples = int(item.get("SamplesPerPixel", 1))
    bits = int(item.get("BitsAllocated", 8))
    if bits not in (8, 16) or samples not in (1, 3):
        raise ValueError(f"{bits}-bit, {samples}-sample image boxes are not supported")
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    raw = bytes(item.PixelData)
    need = rows * cols * samples * (bits // 8)
    if len(raw) < need:
        raise ValueError(f"pixel data has {len(raw)} bytes, {need} expected for {cols}x{rows}")
    arr = np.frombuffer(raw[:need], dtype=dtype)
    if samples == 3:
        if int(item.get("PlanarConfiguration", 0)) == 1:
            return arr.reshape(3, rows, cols).transpose(1, 2, 0).copy()
        return arr.reshape(rows, cols, 3).copy()
    return arr.reshape(rows, cols).copy()


def capture_dataset(
    terminal: Terminal, state: AssociationState, session: FilmSession, film: FilmBox, box: ImageBox, lut_shape: str
) -> Dataset:
    """A Secondary Capture of one printed image box, in the study of its film session.

    MONOCHROME1 and the INVERSE Presentation LUT are applied, so the stored image is MONOCHROME2 as
    the sonographer saw it.
    """
    assert box.pixels is not None
    pixels = box.pixels
    if pixels.ndim == 2:
        top = (1 << box.bits_stored) - 1
        if (box.photometric == "MONOCHROME1") != (lut_shape == "INVERSE"):
            pixels = (top - pixels.astype(np.int64)).astype(pixels.dtype)
    now = datetime.now()
    station = terminal.station_for(state.calling)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = UID(derive_uid("print-capture", film.uid, str(box.position)))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = derive_uid("print-study", state.calling, session.uid)
    ds.SeriesInstanceUID = derive_uid("print-series", film.uid)
    ds.PatientName = f"PRINT^{station}"[:64]
    ds.PatientID = f"PRINT-{state.calling}"[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = session.label[:16]
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Print capture {session.label}".strip()[:64]
    ds.SeriesDescription = f"film box {film.number} {film.display_format}"[:64]
    ds.SeriesNumber = film.number
    ds.InstanceNumber = box.position
    ds.Modality = "US"
    ds.ConversionType = "WSD"
    ds.StationName = station[:16]
    ds.OperatorsName = session.owner[:64]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES"
    comments = [
        f"captured from DICOM print by {state.calling}",
        f"film session {session.label}".strip(),
        *film.annotations.values(),
    ]
    ds.ImageComments = " | ".join(c for c in comments if c)[:10240]
    ds.Rows, ds.Columns = pixels.shape[:2]
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    stored = min(box.bits_stored, bits) if pixels.ndim == 2 else 8
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds
