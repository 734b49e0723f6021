"""pynetdicom Application Entity of the data terminal.

The C-STORE handler only validates, writes the object durably to the spool, records the
pre-notification and returns a status; it never analyses. Handlers never raise: every failure
becomes a DICOM status and an audit event. The association acceptor itself (request screening,
association limits, peer faults) is :mod:`fetalnode.scp.association`.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
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
from pynetdicom import AE, StoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fetalnode.audit import AuditLog
from fetalnode.config import Settings
from fetalnode.dicom_status import RejectReason, RejectResult, RejectSource, Status
from fetalnode.errors import IntakeRejected, SpoolFull
from fetalnode.intake import check_header, read_received
from fetalnode.jobs import JobStore, PreNotification
from fetalnode.routing import Router
from fetalnode.scp.access import AccessPolicy, server_tls_context
from fetalnode.scp.association import (
    AssociationLimits,
    NodeAssociation,
    NodeServer,
    Refusal,
    conn_open_timeout,
    end_reason,
    install_peer_faults,
)
from fetalnode.scp.contexts import ANNOTATION_BOX, META_COLOR, META_GRAYSCALE, PRESENTATION_LUT, served_on
from fetalnode.scp.spool import Spool
from fetalnode.vocab import AuditEvent, RouteAction, UidConflict

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

# A-ASSOCIATE-RJ diagnostics pynetdicom itself may send (source, diagnostic) -> reason for the audit.
_REJECT_REASONS: dict[tuple[int, int], str] = {
    (RejectSource.SERVICE_USER, RejectReason.CALLING_AE_NOT_RECOGNISED): "calling AE title not recognised",
    (RejectSource.SERVICE_USER, RejectReason.CALLED_AE_NOT_RECOGNISED): "called AE title not recognised",
    (
        RejectSource.SERVICE_PROVIDER_PRESENTATION,
        RejectReason.LOCAL_LIMIT_EXCEEDED,
    ): "too many associations (scp.maximum_associations)",
}


@dataclass
class Terminal:
    """The state shared by the SCP's handlers."""

    settings: Settings
    spool: Spool
    jobs: JobStore
    audit: AuditLog
    on_queued: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        scp = self.settings.scp
        self.access = AccessPolicy.from_settings(scp)
        self.router = Router.from_settings(self.settings)
        self.limits = AssociationLimits.of(
            scp.maximum_associations_per_address, scp.maximum_associations, scp.idle_eviction_seconds
        )

    def station_for(self, calling_ae: str) -> str:
        """Station name of a calling AE from ``scp.station_names`` ("AE=Name" items), else the AE title."""
        for item in self.settings.scp.station_names:
            ae, _, name = item.partition("=")
            if ae.strip() == calling_ae.strip() and name.strip():
                return name.strip()
        return calling_ae.strip()

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
        log.warning("association from %s at %s aborted after %.1f s idle: all slots taken", calling, victim.requestor.address, idle_s)
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
            self.spool.check_space()
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
            route = self.router.route(ds, calling)
            if route.action is RouteAction.ANALYSE:  # forwarded or ignored images need not be analysable
                check_header(ds, worker.max_pixels, worker.max_frames)
            self.accept_instance(
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
                extra={"route": route.name, "action": str(route.action)},
            )
        except IntakeRejected as exc:
            return self.refuse(calling, peer, affected, exc.status, str(exc))
        return Status.SUCCESS

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
    ) -> int | None:
        """Spool an encoded object and record its pre-notification: the one way in for C-STORE and print.

        Returns the job id (``None`` for an identical re-send, answered but not recorded again); raises
        :class:`IntakeRejected` with the status to answer when the spool is full (0xA700) or the SOP Instance
        UID holds another object already and ``scp.uid_conflict`` is ``refuse`` (0x0111).
        """
        digest = hashlib.sha256(data).hexdigest()
        if self.jobs.find_duplicate(sop_uid, digest, calling, peer) is not None:
            return None  # an identical re-send: answered, not recorded again
        policy = UidConflict(self.settings.scp.uid_conflict)
        if policy is UidConflict.REFUSE:
            self._refuse_conflict(self.jobs.conflicting(sop_uid, digest))
        try:
            path, digest, already = self.spool.store(data, sop_uid, digest)
        except SpoolFull as exc:
            raise IntakeRejected(str(exc), Status.OUT_OF_RESOURCES) from exc
        note = PreNotification(
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
            extra=dict(extra),
        )
        action = RouteAction(extra.get("action", RouteAction.ANALYSE))
        fields: dict[str, Any] = {"calling_ae": calling, "address": peer, "sop_uid": sop_uid}
        if action is RouteAction.IGNORE:
            fields["route"] = extra["route"]
        else:
            fields.update(source=source, sop_class=sop_class, transfer_syntax=transfer_syntax, bytes=len(data))
            fields.update(sha256=digest, **{k: extra[k] for k in ("route", "action") if k in extra})
        # One transaction: the duplicate check again (a concurrent identical send), the pre-notification and
        # received -> queued (or ignored) with its audit event, durable at its commit.
        receipt = self.jobs.receive(note, action, policy, **fields)
        if receipt.conflicts:  # another object under this UID came in concurrently: this one is refused
            if not already:
                path.unlink(missing_ok=True)
            self._refuse_conflict(receipt.conflicts)
        if receipt.job_id is not None and action is not RouteAction.IGNORE and self.on_queued is not None:
            self.on_queued()
        return receipt.job_id

    @staticmethod
    def _refuse_conflict(conflicts: int) -> None:
        if conflicts:
            raise IntakeRejected(
                f"SOP Instance UID already used by {conflicts} other object(s); scp.uid_conflict = refuse",
                Status.DUPLICATE_INSTANCE,
            )


def build_ae(settings: Settings) -> AE:
    """The AE with its presentation contexts, timeouts and access rules.

    Every Storage SOP class is accepted at negotiation so that an unsupported one gets a clear
    C-STORE status (0x0122) rather than a silent "no presentation context" at the modality.
    """
    scp = settings.scp
    ae = AE(ae_title=settings.node.ae_title)
    ae.acse_timeout = scp.acse_timeout
    ae.dimse_timeout = scp.dimse_timeout
    ae.network_timeout = scp.network_timeout
    # pynetdicom's own limit counts every open connection, negotiated or not: it is the hard cap behind the
    # node's limits (AssociationLimits), which count negotiated associations only and evict idle ones.
    ae.maximum_associations = AssociationLimits.of(
        scp.maximum_associations_per_address, scp.maximum_associations, scp.idle_eviction_seconds
    ).hard_limit
    ae.maximum_pdu_size = scp.maximum_pdu_size
    ae.require_called_aet = scp.check_called_aet
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for context in StoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    if settings.print.enabled:
        for sop_class in (META_GRAYSCALE, META_COLOR, PRESENTATION_LUT, ANNOTATION_BOX):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def start_scp(settings: Settings, terminal: Terminal) -> list[NodeServer]:
    """Start listening (non-blocking) on the DICOM port, and the TLS port if configured.

    Returns the servers to ``shutdown()``.
    """
    ae = build_ae(settings)
    install_peer_faults()
    # pynetdicom's standard handlers only log (at DEBUG), and raise on a malformed command set.
    _config.LOG_HANDLER_LEVEL = "standard" if settings.logging.third_party.upper() == "DEBUG" else "none"
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, terminal.handle_conn_open),
        (evt.EVT_REQUESTED, terminal.handle_requested),
        (evt.EVT_C_ECHO, terminal.handle_echo),
        (evt.EVT_C_STORE, terminal.handle_store),
        (evt.EVT_ACCEPTED, terminal.handle_accepted),
        (evt.EVT_REJECTED, terminal.handle_rejected),
    ]
    if settings.print.enabled:
        from fetalnode.scp.printer import PrintScp

        handlers += PrintScp(terminal).handlers()
    host, scp = settings.node.host, settings.scp
    tls = server_tls_context(scp) if scp.tls_port else None
    servers = [_serve(ae, (host, settings.node.port), handlers, terminal, None)]
    log.info("SCP %s listening on %s:%d", settings.node.ae_title, host, settings.node.port)
    if tls is not None:
        servers.append(_serve(ae, (host, scp.tls_port), handlers, terminal, tls))
        log.info(
            "SCP %s listening with DICOM TLS on %s:%d (client certificates %s)",
            settings.node.ae_title,
            host,
            scp.tls_port,
            "required" if scp.tls_ca_certificates else "not required",
        )
    return servers


def _serve(
    ae: AE, address: tuple[str, int], handlers: list[Any], terminal: Terminal, tls: ssl.SSLContext | None
) -> NodeServer:
    """What ``AE.start_server(block=False)`` does, with the node's server class (:class:`NodeServer`)."""
    server: Any = ae.make_server(
        address,
        ssl_context=tls,
        evt_handlers=handlers,
        server_class=NodeServer,
        refused=terminal.request_refused,
        served_on=served_on,
        finished=terminal.association_ended,
    )
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)
    assert isinstance(server, NodeServer)
    return server
