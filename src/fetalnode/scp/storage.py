"""The Verification and Storage SCP of the data terminal.

The C-STORE handler only validates, hands the object to the :class:`~fetalnode.scp.terminal.Terminal`
(written durably to the spool, its pre-notification recorded) and returns a status; it never analyses.
Handlers never raise: every failure becomes a DICOM status and an audit event. The association acceptor
itself (request screening, association limits, peer faults) is :mod:`fetalnode.scp.association`.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from fetalnode.dicom_status import RejectReason, RejectResult, RejectSource, Status
from fetalnode.errors import IntakeRejected, SpoolFull
from fetalnode.intake import check_header, read_received
from fetalnode.scp.access import AccessPolicy
from fetalnode.scp.association import AssociationLimits, NodeAssociation, Refusal, conn_open_timeout, end_reason
from fetalnode.scp.terminal import Terminal
from fetalnode.vocab import AuditEvent, RouteAction

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ diagnostics pynetdicom itself may send (source, diagnostic) -> reason for the audit.
_REJECT_REASONS: dict[tuple[int, int], str] = {
    (RejectSource.SERVICE_USER, RejectReason.CALLING_AE_NOT_RECOGNISED): "calling AE title not recognised",
    (RejectSource.SERVICE_USER, RejectReason.CALLED_AE_NOT_RECOGNISED): "called AE title not recognised",
    (
        RejectSource.SERVICE_PROVIDER_PRESENTATION,
        RejectReason.LOCAL_LIMIT_EXCEEDED,
    ): "too many associations (scp.maximum_associations)",
}


class StorageScp:
    """The Verification and Storage services, and what every association goes through: access control,
    the association limits, the audit of how it ended. Received objects go to the :class:`Terminal`."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.settings = terminal.settings
        self.audit = terminal.audit
        scp = self.settings.scp
        self.access = AccessPolicy.from_settings(scp)
        self.limits = AssociationLimits.of(
            scp.maximum_associations_per_address, scp.maximum_associations, scp.idle_eviction_seconds
        )

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_REJECTED, self.handle_rejected),
        ]

    # -- handlers ---------------------------------------------------------------------------
    def handle_conn_open(self, event: evt.Event) -> None:
        """A TCP connection is open: set its DUL reactor's idle sleep (``scp.dul_loop_delay``) and the read
        timeout within a PDU (``scp.stall_timeout``)."""
        event.assoc.dul._run_loop_delay = self.settings.scp.dul_loop_delay
        conn_open_timeout(event, self.settings.scp.stall_timeout)

    def association_ended(self, assoc: NodeAssociation) -> None:
        """An association's thread ended: one that did not end in A-RELEASE (aborted, a peer's malformed PDU,
        a stall, no A-ASSOCIATE-RQ at all) and was not audited already is audited with the reason."""
        why = end_reason(assoc)
        if why is None:
            return
        rq = assoc.requestor.primitive
        self.audit.event(
            AuditEvent.ASSOCIATION_ABORTED,
            calling_ae=str(rq.calling_ae_title).strip() if rq is not None else None,
            address=str(assoc.requestor.address),
            reason=why,
        )

    def request_refused(self, assoc: NodeAssociation, msg: Any, refusal: Refusal) -> None:
        """Audit a request the association's screen answered itself (or aborted the association for)."""
        calling = str(assoc.requestor.ae_title).strip()
        address = str(assoc.requestor.address)
        what = f"0x{refusal.status:04X}" if refusal.status is not None else "A-ABORT"
        log.warning("%s from %s at %s refused with %s: %s", msg.msg_type, calling, address, what, refusal.reason)
        if refusal.status is None:
            self.audit.event(AuditEvent.ASSOCIATION_ABORTED, calling_ae=calling, address=address, reason=refusal.reason)
            return
        kind = AuditEvent.STORE_REFUSED if isinstance(msg, C_STORE) else AuditEvent.REQUEST_REFUSED
        self.audit.event(
            kind,
            calling_ae=calling,
            address=address,
            request=msg.msg_type,
            sop_uid=str(getattr(msg, "AffectedSOPInstanceUID", None) or ""),
            status=what,
            reason=refusal.reason,
        )

    def handle_echo(self, event: evt.Event) -> int:
        return Status.SUCCESS

    def handle_requested(self, event: evt.Event) -> None:
        """Access control on the A-ASSOCIATE-RQ: refused peers get A-ASSOCIATE-RJ before any negotiation."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        assert rq is not None  # EVT_REQUESTED fires once the A-ASSOCIATE-RQ is in
        calling = str(rq.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        why = self.access.refusal(calling, address)
        diagnosis = (RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.CALLING_AE_NOT_RECOGNISED)
        if not why:
            why = self.limits.admit(assoc, self._evicted)
            diagnosis = (
                RejectResult.TRANSIENT,
                RejectSource.SERVICE_PROVIDER_PRESENTATION,
                RejectReason.LOCAL_LIMIT_EXCEEDED,
            )
        if not why:
            return
        log.warning("association from %s at %s refused: %s", calling, address, why)
        self.audit.event(
            AuditEvent.ASSOCIATION_REJECTED,
            calling_ae=calling,
            address=address,
            called_ae=str(rq.called_ae_title).strip(),
            reason=why,
        )
        assoc.acse.send_reject(*diagnosis)
        assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL send the A-ASSOCIATE-RJ first

    def _evicted(self, victim: Association, idle_s: float) -> None:
        rq = victim.requestor.primitive
        calling = str(rq.calling_ae_title).strip() if rq is not None else ""
        log.warning(
            "association from %s at %s aborted after %.1f s idle: all slots taken",
            calling,
            victim.requestor.address,
            idle_s,
        )
        self.audit.event(
            AuditEvent.ASSOCIATION_EVICTED,
            calling_ae=calling,
            address=str(victim.requestor.address),
            idle_s=round(idle_s, 1),
            reason=f"idle for {idle_s:.1f} s while scp.maximum_associations were open",
        )

    def handle_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.audit.event(
            AuditEvent.ASSOCIATION_ACCEPTED,
            calling_ae=assoc.requestor.ae_title,
            address=assoc.requestor.address,
            port=assoc.requestor.port,
            tls=isinstance(getattr(assoc.dul.socket, "socket", None), ssl.SSLSocket),
        )

    def handle_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        rj, rq = assoc.acceptor.primitive, assoc.requestor.primitive
        key = (int(getattr(rj, "result_source", 0) or 0), int(getattr(rj, "diagnostic", 0) or 0))
        self.audit.event(
            AuditEvent.ASSOCIATION_REJECTED,
            calling_ae=assoc.requestor.ae_title,
            address=assoc.requestor.address,
            called_ae=str(getattr(rq, "called_ae_title", "")).strip(),
            reason=_REJECT_REASONS.get(key, f"A-ASSOCIATE-RJ source {key[0]} diagnostic {key[1]}"),
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
            return self.refuse(calling, peer, affected, Status.OUT_OF_RESOURCES, f"{type(exc).__name__}: {exc}")

    def refuse(self, calling: str, peer: str, sop_uid: str, status: int, reason: str) -> Dataset:
        """Audit a refused C-STORE and build its response: the status plus an Error Comment a person can read."""
        log.warning("C-STORE of %s from %s refused with 0x%04X: %s", sop_uid, calling, status, reason)
        self.audit.event(
            AuditEvent.STORE_REFUSED,
            calling_ae=calling,
            address=peer,
            sop_uid=sop_uid,
            status=f"0x{status:04X}",
            reason=reason,
        )
        rsp = Dataset()
        rsp.Status = int(status)
        rsp.ErrorComment = reason[:64]  # LO: 64 characters at most
        return rsp

    def _store(self, event: evt.Event, calling: str, peer: str, affected: str) -> int | Dataset:
        try:
            self.terminal.spool.check_space()
        except SpoolFull as exc:
            return self.refuse(calling, peer, affected, Status.OUT_OF_RESOURCES, str(exc))
        data = event.encoded_dataset(include_meta=True)
        worker = self.settings.worker
        try:
            ds = read_received(data)
            sop_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
            if sop_uid != affected or sop_class != str(event.context.abstract_syntax):
                return self.refuse(
                    calling,
                    peer,
                    affected,
                    Status.DATASET_DOES_NOT_MATCH,
                    f"dataset UIDs ({sop_class}, {sop_uid}) do not match the request",
                )
            route = self.terminal.router.route(ds, calling)
            if route.action is RouteAction.ANALYSE:  # forwarded or ignored images need not be analysable
                check_header(ds, worker.max_pixels, worker.max_frames)
            self.terminal.accept_instance(
                data,
                calling=calling,
                peer=peer,
                called=str(event.assoc.acceptor.ae_title).strip(),
                sop_uid=sop_uid,
                sop_class=sop_class,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                transfer_syntax=str(event.context.transfer_syntax),
                source="c-store",
                route=route,
            )
        except IntakeRejected as exc:
            return self.refuse(calling, peer, affected, exc.status, str(exc))
        return Status.SUCCESS
