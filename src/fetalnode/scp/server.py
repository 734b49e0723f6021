"""pynetdicom Application Entity of the data terminal.

The C-STORE handler only validates, writes the object durably to the spool, records the
pre-notification and returns a status; it never analyses. Handlers never raise: every failure
becomes a DICOM status and an audit event.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.intake import ANALYSABLE_SOP_CLASSES
from fetalnode.jobs import JobStore, PreNotification
from fetalnode.scp.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]

# C-STORE statuses (PS3.4 B.2.3 and pynetdicom's storage service class).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210


@dataclass
class Terminal:
    """The state shared by the SCP's handlers."""

    settings: Settings
    spool: Spool
    jobs: JobStore
    audit: AuditLog
    on_queued: Callable[[], None] | None = None

    def station_for(self, calling_ae: str) -> str:
        """Station name of a calling AE from ``scp.station_names`` ("AE=Name" items), else the AE title."""
        for item in self.settings.scp.station_names:
            ae, _, name = item.partition("=")
            if ae.strip() == calling_ae.strip() and name.strip():
                return name.strip()
        return calling_ae.strip()

    # -- handlers ---------------------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.audit.event(
            "association-accepted",
            calling_ae=assoc.requestor.ae_title,
            address=assoc.requestor.address,
            port=assoc.requestor.port,
        )

    def handle_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.audit.event(
            "association-rejected",
            calling_ae=assoc.requestor.ae_title,
            address=assoc.requestor.address,
            called_ae=assoc.acceptor.ae_title,
        )

    def handle_store(self, event: evt.Event) -> int | Dataset:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        affected = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        try:
            return self._store(event, calling, peer, affected)
        except Exception as exc:  # a handler must answer, whatever happened
            log.exception("C-STORE of %s from %s failed", affected, calling)
            self.audit.event(
                "store-failed",
                calling_ae=calling,
                address=peer,
                sop_uid=affected,
                status="0xA700",
                reason=f"{type(exc).__name__}: {exc}",
            )
            return OUT_OF_RESOURCES

    def _store(self, event: evt.Event, calling: str, peer: str, affected: str) -> int:
        try:
            self.spool.check_space()
        except SpoolFull as exc:
            self.audit.event(
                "store-refused", calling_ae=calling, address=peer, sop_uid=affected, status="0xA700", reason=str(exc)
            )
            return OUT_OF_RESOURCES
        data = event.encoded_dataset(include_meta=True)
        try:
            ds = dcmread(BytesIO(data), stop_before_pixels=True)
            sop_uid = str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
            study_uid = str(ds.StudyInstanceUID)
            series_uid = str(ds.SeriesInstanceUID)
        except Exception as exc:
            self.audit.event(
                "store-refused",
                calling_ae=calling,
                address=peer,
                sop_uid=affected,
                status="0xC210",
                reason=f"cannot parse dataset: {exc}",
            )
            return CANNOT_UNDERSTAND
        context_class = str(event.context.abstract_syntax)
        if sop_uid != affected or sop_class != context_class:
            self.audit.event(
                "store-refused",
                calling_ae=calling,
                address=peer,
                sop_uid=affected,
                status="0xA900",
                reason=f"dataset UIDs ({sop_class}, {sop_uid}) do not match the request",
            )
            return DATASET_DOES_NOT_MATCH
        if not (UID(study_uid).is_valid and UID(sop_uid).is_valid):
            self.audit.event(
                "store-refused",
                calling_ae=calling,
                address=peer,
                sop_uid=affected,
                status="0xC210",
                reason="invalid Study/SOP Instance UID",
            )
            return CANNOT_UNDERSTAND
        status, _ = self.accept_instance(
            data,
            calling=calling,
            peer=peer,
            called=str(event.assoc.acceptor.ae_title).strip(),
            sop_uid=sop_uid,
            sop_class=sop_class,
            study_uid=study_uid,
            series_uid=series_uid,
            transfer_syntax=str(event.context.transfer_syntax),
            source="c-store",
            extra={},
        )
        return status

    def accept_instance(
        self,
        data: bytes,
        *,
        calling: str,
        peer: str,
        called: str,
        sop_uid: str,
        sop_class: str,
        study_uid: str,
        series_uid: str,
        transfer_syntax: str,
        source: str,
        extra: dict[str, Any],
    ) -> tuple[int, int | None]:
        """Spool an encoded object and record its pre-notification: the one way in for C-STORE and print.

        Returns the DICOM status and the job id (``None`` for a duplicate or a refusal).
        """
        digest = hashlib.sha256(data).hexdigest()
        same = self.jobs.find_same(sop_uid, digest)
        if same is not None:
            self.audit.event(
                "instance-duplicate", calling_ae=calling, address=peer, sop_uid=sop_uid, job=same.id, state=same.state
            )
            return SUCCESS, None
        conflicts = self.jobs.conflicting(sop_uid, digest)
        try:
            path, digest, _ = self.spool.store(data, sop_uid, digest)
        except SpoolFull as exc:
            self.audit.event(
                "store-refused", calling_ae=calling, address=peer, sop_uid=sop_uid, status="0xA700", reason=str(exc)
            )
            return OUT_OF_RESOURCES, None
        extra = dict(extra)
        if conflicts:
            extra["uid_conflict"] = f"{conflicts} different object(s) already received with this SOP Instance UID"
        job_id = self.jobs.prenotify(
            PreNotification(
                source=source,
                spool_path=str(path),
                sha256=digest,
                size=len(data),
                calling_ae=calling,
                called_ae=called,
                peer=peer,
                station_name=self.station_for(calling),
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                sop_class_uid=sop_class,
                transfer_syntax=transfer_syntax,
                extra=extra,
            )
        )
        self.jobs.mark_queued(job_id)
        if self.on_queued is not None:
            self.on_queued()
        self.audit.event(
            "instance-received",
            job=job_id,
            source=source,
            calling_ae=calling,
            address=peer,
            sop_uid=sop_uid,
            sop_class=sop_class,
            transfer_syntax=transfer_syntax,
            bytes=len(data),
            sha256=digest,
            **({"flag": extra["uid_conflict"]} if "uid_conflict" in extra else {}),
        )
        return SUCCESS, job_id


def build_ae(settings: Settings) -> AE:
    """The AE with its presentation contexts, timeouts and access rules."""
    scp = settings.scp
    ae = AE(ae_title=settings.node.ae_title)
    ae.acse_timeout = scp.acse_timeout
    ae.dimse_timeout = scp.dimse_timeout
    ae.network_timeout = scp.network_timeout
    ae.maximum_associations = scp.maximum_associations
    ae.require_called_aet = scp.check_called_aet
    if scp.allowed_calling_aets:
        ae.require_calling_aet = list(scp.allowed_calling_aets)
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class in sorted(ANALYSABLE_SOP_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    if settings.print.enabled:
        from fetalnode.scp.printer import ANNOTATION_BOX, META_COLOR, META_GRAYSCALE, PRESENTATION_LUT

        for sop_class in (META_GRAYSCALE, META_COLOR, PRESENTATION_LUT, ANNOTATION_BOX):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def start_scp(settings: Settings, terminal: Terminal) -> ThreadedAssociationServer:
    """Start listening (non-blocking); returns the server to ``shutdown()``."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, terminal.handle_echo),
        (evt.EVT_C_STORE, terminal.handle_store),
        (evt.EVT_ACCEPTED, terminal.handle_accepted),
        (evt.EVT_REJECTED, terminal.handle_rejected),
    ]
    if settings.print.enabled:
        from fetalnode.scp.printer import PrintScp

        handlers += PrintScp(terminal).handlers()
    server = ae.start_server((settings.node.host, settings.node.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False always returns the server
    log.info("SCP %s listening on %s:%d", settings.node.ae_title, settings.node.host, settings.node.port)
    return server
