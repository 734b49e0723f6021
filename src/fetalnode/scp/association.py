"""The data terminal's association acceptor: pynetdicom's, guarded against hostile or careless peers.

Three guards sit where pynetdicom offers no hook of its own:

- **Every DIMSE request is screened before pynetdicom dispatches it** (:class:`NodeAssociation`). A
  C-STORE request whose command set lacks its Affected SOP Class or Instance UID, or that carries no
  data set, is answered at once with ``0xC215``; a request of a service that its presentation context
  does not carry (a C-FIND on an image storage context) with ``0x0211``; a SOP class other than the
  context's with ``0x0122`` (``0x0118`` for N-services). A request with no Message ID, or on a context
  that was not accepted, cannot be answered: the association is aborted. Left to pynetdicom, the first
  kind went unanswered until the network timeout and the second crashed its service class.
- **Association limits with eviction** (:class:`AssociationLimits`, on the A-ASSOCIATE-RQ): at most
  ``scp.maximum_associations_per_address`` from one address, at most ``scp.maximum_associations`` in
  all. When all are taken, the association idle the longest (at least ``scp.idle_eviction_seconds``) is
  aborted to make room, so silent associations never lock a modality out.
- **Peer faults are one line, with the reason kept for the audit** (:class:`PeerFaults`): pynetdicom
  logs a peer's undecodable or truncated PDU with a traceback; the log writes it as one WARNING line
  (:mod:`fetalnode.logs`) and the filter records it on the association, whose end writes the
  ``association-aborted`` event with it.

A PDU longer than the node accepts ends the association as soon as its header is read
(:class:`NodeSocket`); a PDU that stops arriving mid-way ends it after ``scp.stall_timeout`` seconds (a
read timeout on the socket); a connection that sends no A-ASSOCIATE-RQ ends after ``scp.acse_timeout``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from fetalnode.dicom_status import Status
from fetalnode.logs import PEER_LOGGERS

log = logging.getLogger(__name__)

VERIFICATION = UID("1.2.840.10008.1.1")


@dataclass(frozen=True)
class Refusal:
    """How a screened request is answered: a status with an Error Comment, or (``status`` None) an A-ABORT."""

    status: int | None
    reason: str


Screen = Callable[["NodeAssociation", Any, Refusal], None]


class NodeAssociation(Association):
    """pynetdicom's acceptor :class:`~pynetdicom.association.Association` whose DIMSE requests are screened
    (:func:`screen_request`) before its service classes see them. ``refused`` (set by the request handler)
    audits each refusal; ``fault`` holds the first peer fault pynetdicom reported; ``ended`` tells that the
    association's end was audited already (evicted, rejected, aborted by the screen)."""

    refused: Screen
    served_on: Callable[[UID, UID, Any], Refusal | None]
    finished: Callable[[NodeAssociation], None]
    fault: str
    ended: bool

    def run(self) -> None:
        """The association's thread; when it ends (the association is over, however it ended), ``finished``."""
        try:
            super().run()
        finally:
            self.finished(self)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if not self._sent_release:
            refusal = screen_request(self, msg, context_id)
            if refusal is not None:
                self.refused(self, msg, refusal)
                if refusal.status is None:
                    self.ended = True
                    self.abort()
                else:
                    _answer(self, msg, context_id, refusal)
                return
        super()._serve_request(msg, context_id)


def screen_request(assoc: NodeAssociation, msg: Any, context_id: int) -> Refusal | None:
    """Why a request cannot be served as it is, or ``None``."""
    contexts = {cx.context_id: cx for cx in assoc.accepted_contexts}
    context = contexts.get(context_id)
    if context is None:
        return Refusal(None, f"request on presentation context {context_id}, which was not accepted")
    if msg.MessageID is None:
        return Refusal(None, f"{msg.msg_type} request without a Message ID cannot be answered")
    sop_class = getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None)
    if isinstance(msg, C_STORE):
        missing = [name for name in ("AffectedSOPClassUID", "AffectedSOPInstanceUID") if not getattr(msg, name)]
        if missing:
            return Refusal(Status.INCOMPLETE_REQUEST, f"C-STORE request without {' or '.join(missing)}")
        if msg.DataSet is None or not msg.DataSet.getvalue():
            return Refusal(Status.INCOMPLETE_REQUEST, "C-STORE request without a data set")
    if not sop_class:
        return Refusal(Status.UNRECOGNIZED_OPERATION, f"{msg.msg_type} request without a SOP Class UID")
    return assoc.served_on(UID(str(context.abstract_syntax)), UID(str(sop_class)), msg)


def _answer(assoc: NodeAssociation, msg: Any, context_id: int, refusal: Refusal) -> None:
    """Send the response of ``msg`` with the refusal's status and Error Comment (as pynetdicom's service
    classes send theirs, from the association's thread)."""
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.Status = refusal.status
    for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        value = getattr(msg, keyword, None) or (
            getattr(msg, "RequestedSOPClassUID", None) if "Class" in keyword else None
        )
        if value and hasattr(rsp, keyword):
            with suppress(TypeError, ValueError):  # a malformed UID is not echoed back
                setattr(rsp, keyword, value)
    if hasattr(rsp, "ErrorComment"):
        rsp.ErrorComment = refusal.reason[:64]
    assoc.dimse.send_msg(rsp, context_id)


class NodeDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, for which a command set that does not decode is a peer's fault: one line,
    the fault kept for the audit, and an A-ABORT (pynetdicom lets the exception end its DUL thread)."""

    def receive_primitive(self, primitive: Any) -> None:
        try:
            super().receive_primitive(primitive)
        except Exception as exc:
            self.message = None
            assoc: Any = self.assoc
            assoc.fault = assoc.fault or f"a DIMSE message that does not decode ({type(exc).__name__}: {exc})"[:200]
            log.warning("%s", assoc.fault)
            self.dul.event_queue.put("Evt19")  # an invalid PDU: A-ABORT, as pynetdicom answers an invalid message


# An A-ASSOCIATE-RQ (many presentation contexts) may exceed the P-DATA limit the node declares; nothing else may.
ASSOCIATE_PDU_ALLOWANCE = 65536
UNLIMITED_PDU = 16 * 1024 * 1024


class NodeSocket(AssociationSocket):
    """pynetdicom's socket wrapper, refusing to read a PDU longer than the node accepts: pynetdicom would
    buffer whatever length a peer's PDU header claims (up to 4 GiB) before looking at it."""

    limit: int

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.limit:
            raise OSError(f"a PDU of {nr_bytes} bytes, above the {self.limit} this node accepts (scp.maximum_pdu_size)")
        return super().recv(nr_bytes)


class _NodeRequestHandler(RequestHandler):
    """pynetdicom's request handler, creating a :class:`NodeAssociation` for each connection."""

    server: NodeServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = NodeAssociation  # same layout: only run and _serve_request differ
        dimse: Any = assoc.dimse
        dimse.__class__ = NodeDimse  # same layout: only receive_primitive differs
        sock: Any = assoc.dul.socket
        sock.__class__ = NodeSocket  # same layout: only recv differs
        sock.limit = (self.ae.maximum_pdu_size or UNLIMITED_PDU) + ASSOCIATE_PDU_ALLOWANCE
        node_assoc: Any = assoc
        node_assoc.refused = self.server.refused
        node_assoc.served_on = self.server.served_on
        node_assoc.finished = self.server.finished
        node_assoc.fault = ""
        node_assoc.ended = False
        return assoc


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the node's request handler. ``refused`` audits a
    screened request; ``served_on(context, sop_class, request)`` says whether a request may use a context;
    ``finished`` is called when an association's thread ends."""

    def __init__(
        self,
        *args: Any,
        refused: Screen,
        served_on: Callable[[UID, UID, Any], Refusal | None],
        finished: Callable[[NodeAssociation], None],
        **kwargs: Any,
    ) -> None:
        self.refused = refused
        self.served_on = served_on
        self.finished = finished
        kwargs["request_handler"] = _NodeRequestHandler
        super().__init__(*args, **kwargs)


def idle_seconds(assoc: Association) -> float:
    """Seconds since the association last received a whole PDU (its DUL's network idle timer)."""
    timer = assoc.dul._idle_timer
    if timer.timeout is None:
        return 0.0
    return float(timer.timeout - timer.remaining)


def _live(assoc: Association) -> bool:
    return bool(assoc.is_alive() and not assoc.is_aborted and not assoc.is_released and not assoc._sent_abort)


@dataclass
class AssociationLimits:
    """At most ``per_address`` associations from one address and ``total`` in all; when all are taken the one
    idle the longest, for at least ``evict_after`` seconds, is aborted to make room.

    Only associations whose A-ASSOCIATE-RQ arrived count: a connection that sends none is closed after the
    ACSE timeout, and pynetdicom's own limit (``hard_limit``) bounds how many may wait that long.
    """

    per_address: int
    total: int
    evict_after: float
    _lock: threading.Lock

    @classmethod
    def of(cls, per_address: int, total: int, evict_after: float) -> AssociationLimits:
        return cls(per_address, total, evict_after, threading.Lock())

    @property
    def hard_limit(self) -> int:
        """pynetdicom's ``maximum_associations``: every open connection counts there, negotiated or not."""
        return 4 * self.total + 8

    @staticmethod
    def _others(assoc: Association) -> Iterator[Association]:
        for other in assoc.ae.active_associations:
            if other is not assoc and other.is_acceptor and other.requestor.primitive is not None and _live(other):
                yield other

    def admit(self, assoc: Association, evicted: Callable[[Association, float], None]) -> str:
        """``""`` when ``assoc`` may proceed (having evicted an idle one if needed), else why not."""
        address = str(assoc.requestor.address)
        with self._lock:
            others = list(self._others(assoc))
            same = sum(1 for other in others if str(other.requestor.address) == address)
            if same >= self.per_address:
                return f"{same} associations already open from {address} (scp.maximum_associations_per_address)"
            if len(others) < self.total:
                return ""
            idle = max(((idle_seconds(o), o) for o in others), key=lambda pair: pair[0], default=None)
            if idle is None or idle[0] < self.evict_after:
                return (
                    f"{len(others)} associations open, none idle for {self.evict_after:g} s (scp.maximum_associations)"
                )
            evict(idle[1])
        evicted(idle[1], idle[0])
        return ""


def evict(assoc: Association) -> None:
    """Abort ``assoc`` from another thread: an A-ABORT if its reactor is free, and its socket shut down
    shortly after in case its DUL is stuck inside a stalled PDU."""
    node_assoc: Any = assoc
    node_assoc.ended = True
    assoc.abort(block=False)

    def shut() -> None:
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None and assoc.is_alive():
            with suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(0.5, shut)
    timer.daemon = True
    timer.start()


class PeerFaults(logging.Filter):
    """Keeps pynetdicom's first record of a peer's malformed PDU or message on the :class:`NodeAssociation`
    as the reason its end is audited with (and the exception behind it). It changes no record: other
    handlers read them as pynetdicom wrote them (the DICOM destination classifies its failures so);
    the log writes them as one line (:class:`fetalnode.logs.PeerFaultLines`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        detail = str(exc) if exc is not None else ""
        thread = threading.current_thread()
        assoc = thread if isinstance(thread, NodeAssociation) else getattr(thread, "assoc", None)
        if isinstance(assoc, NodeAssociation):
            if not assoc.fault:
                assoc.fault = record.getMessage()[:200]
            elif detail and detail not in assoc.fault:  # the exception behind the first message: the reason itself
                assoc.fault = f"{assoc.fault}: {detail}"[:300]
        return True


_FILTER = PeerFaults()


def install_peer_faults() -> None:
    """Put :class:`PeerFaults` on pynetdicom's loggers (once)."""
    for name in PEER_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def end_reason(assoc: NodeAssociation) -> str | None:
    """Why an association ended abnormally (for the audit), or ``None`` for a normal release or an end
    already audited."""
    if assoc.ended or assoc.is_rejected:
        return None
    if assoc.requestor.primitive is None:
        return assoc.fault or "connection closed before an A-ASSOCIATE-RQ (or none within scp.acse_timeout)"
    if assoc.is_released and not assoc.fault:
        return None
    if assoc.fault:
        return assoc.fault
    if assoc.acse.is_aborted("a-abort"):
        return "the peer sent A-ABORT"
    return "connection closed without A-RELEASE"


def conn_open_timeout(event: evt.Event, stall_timeout: float) -> None:
    """A read timeout on a new connection's socket: a PDU that stops arriving mid-way ends the association."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None and stall_timeout > 0:
        sock.settimeout(stall_timeout)
