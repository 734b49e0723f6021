"""Destination kind ``dicom``: C-STORE SCU with pynetdicom, optionally over DICOM TLS (PS3.15 B.1).

One association per object. For the object's SOP class three presentation contexts are proposed, each
with one transfer syntax: the object's own, Explicit VR Little Endian and Implicit VR Little Endian, so
the peer picks. A compressed object whose syntax the peer declines is decompressed and sent uncompressed.

Every failure is a :class:`~fetalnode.errors.DeliveryError`: transient when a later attempt may succeed
(no connection, timeouts, aborts, A-ASSOCIATE-RJ "rejected-transient", status ``0xA7xx`` out of
resources), permanent otherwise (A-ASSOCIATE-RJ "rejected-permanent", no acceptable presentation
context, TLS handshake or certificate failures, every other C-STORE failure status).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from weakref import WeakKeyDictionary

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fetalnode.config import DestinationSettings, Settings
from fetalnode.destinations.base import Destination, Item, Receipt, destination_kind
from fetalnode.dicom_status import RejectResult, category, meaning
from fetalnode.errors import ConfigError, DeliveryError

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class _PeerErrors(logging.Handler):
    """What went wrong on the wire (connection refused, TLS alerts, connection closed), per association.

    pynetdicom logs these from the association's own threads and keeps no other record of them; this
    handler, on the ``pynetdicom`` logger, files each ERROR record under the association whose thread
    emitted it, so concurrent stores each get their own reason.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        # The exception's type only: its traceback would hold the association and keep the weak key alive.
        self._seen: WeakKeyDictionary[Association, list[tuple[str, type[BaseException] | None]]] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        thread = threading.current_thread()
        assoc = thread.assoc if isinstance(thread, DULServiceProvider) else thread
        if not isinstance(assoc, Association):
            return
        exc = record.exc_info[1] if record.exc_info else None
        message = str(exc) if exc is not None else record.getMessage().removeprefix("TCP Initialisation Error: ")
        with self._lock:
            self._seen.setdefault(assoc, []).append((message, type(exc) if exc is not None else None))

    def pop(self, assoc: Association) -> tuple[str, type[BaseException] | None]:
        """The messages logged for ``assoc`` so far, and the type of the first exception among them."""
        with self._lock:
            seen = self._seen.pop(assoc, [])
        text = "; ".join(dict.fromkeys(m for m, _ in seen if not m.startswith("Association request failed")))
        return text, next((e for _, e in seen if e is not None), None)


_PEER_ERRORS = _PeerErrors()
logging.getLogger("pynetdicom").addHandler(_PEER_ERRORS)


def _tls_refused(exc: type[BaseException] | None) -> bool:
    """A TLS handshake or certificate failure: a configuration on one side must change first."""
    return (
        exc is not None
        and issubclass(exc, ssl.SSLError)
        and not issubclass(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    )


def client_tls_context(destination: DestinationSettings) -> ssl.SSLContext:
    """TLS 1.2+ client context: the peer verified against ``tls_ca_certificates`` (else the system's CAs)
    and its certificate matched to ``host``; with ``tls_certificate``/``tls_private_key`` a client certificate."""
    if bool(destination.tls_certificate) != bool(destination.tls_private_key):
        raise ConfigError(f"destination {destination.name}: tls_certificate and tls_private_key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if destination.tls_ca_certificates:
            ctx.load_verify_locations(destination.tls_ca_certificates)
        else:
            ctx.load_default_certs()
        if destination.tls_certificate:
            ctx.load_cert_chain(destination.tls_certificate, destination.tls_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"destination {destination.name}: cannot load the TLS certificate, key or CA: {exc}") from exc
    return ctx


def _syntax_names(syntaxes: list[UID]) -> str:
    return ", ".join(s.name for s in syntaxes) or "none"


@dataclass
class DicomDestination:
    """C-STORE to ``ae_title`` at ``host``:``port`` as ``calling_ae_title``, over TLS when any ``tls_*`` is set."""

    settings: DestinationSettings
    calling_ae_title: str
    _ae: AE = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        if not (s.ae_title and s.host and s.port):
            raise ConfigError(f"destination {s.name}: kind dicom needs ae_title, host and port")
        try:
            self._ae = AE(ae_title=self.calling_ae_title)
        except ValueError as exc:
            raise ConfigError(f"destination {s.name}: calling AE title: {exc}") from exc
        self._ae.connection_timeout = s.timeout
        self._ae.acse_timeout = s.timeout
        self._ae.dimse_timeout = s.timeout
        self._ae.network_timeout = s.timeout
        if self.tls:
            client_tls_context(s)  # a wrong path or key stops start-up, not the first delivery

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def tls(self) -> bool:
        s = self.settings
        return bool(s.tls_certificate or s.tls_private_key or s.tls_ca_certificates)

    @property
    def address(self) -> str:
        s = self.settings
        return f"{s.ae_title}@{s.host}:{s.port}"

    # -- store ---------------------------------------------------------------------------------
    def store(self, item: Item) -> Receipt:
        """C-STORE one object; Success and Warning statuses are stored, the receipt names the status."""
        try:
            ds = dcmread(BytesIO(item.data))
            sop_class, sop_uid = UID(ds.SOPClassUID), str(ds.SOPInstanceUID)
            syntax = UID(ds.file_meta.TransferSyntaxUID)
            proposed = [syntax, *(s for s in UNCOMPRESSED if s != syntax)]
            contexts = [build_context(sop_class, s) for s in proposed]
        except (InvalidDicomError, AttributeError, ValueError, TypeError) as exc:
            raise DeliveryError(f"{item.name} is not a DICOM object we can send: {exc}", transient=False) from exc
        assoc = self._associate(contexts)
        try:
            sendable, sent = self._fit(ds, sop_class, syntax, assoc)
            code, comment = self._c_store(assoc, sendable, sop_uid)
        finally:
            if assoc.is_established:
                assoc.release()
        text = f"0x{code:04X} {meaning(code)}" + (f": {comment}" if comment else "")
        if category(code) == "Warning":
            log.warning("%s: stored %s with warning %s", self.address, sop_uid, text)
        log.info("%s: stored %s (%s) as %s", self.address, sop_uid, item.name, sent.name)
        return Receipt(self.name, item.name, f"{self.address} {sop_uid} {text}")

    def _fit(self, ds: Dataset, sop_class: UID, syntax: UID, assoc: Association) -> tuple[Dataset, UID]:
        """The dataset in a transfer syntax the peer accepted for its SOP class, and that syntax.

        pynetdicom converts between the uncompressed little endian syntaxes itself; a compressed
        object goes uncompressed when the peer declined its own syntax.
        """
        accepted = [UID(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        if syntax in accepted:
            return ds, syntax
        plain = [s for s in accepted if s in UNCOMPRESSED]
        if plain and not syntax.is_compressed and syntax.is_little_endian:
            return ds, plain[0]
        what = f"{sop_class.name} in {syntax.name}: {self.address} accepted {_syntax_names(accepted)}"
        if not plain or not syntax.is_compressed:  # e.g. Explicit VR Big Endian: pynetdicom keeps the byte order
            raise DeliveryError(f"cannot send {what}", transient=False)
        try:
            ds.decompress(generate_instance_uid=False)  # same instance, another encoding
        except Exception as exc:  # the codec plugins raise assorted types; none of them will succeed later
            raise DeliveryError(f"cannot decompress {what}: {type(exc).__name__}: {exc}", transient=False) from exc
        log.info("%s: decompressed %s from %s", self.address, ds.SOPInstanceUID, syntax.name)
        return ds, plain[0]

    def _c_store(self, assoc: Association, ds: Dataset, sop_uid: str) -> tuple[int, str]:
        """Send and classify the answer: (status, Error Comment) for Success and Warning, else raise."""
        started = time.monotonic()
        try:
            rsp = assoc.send_c_store(ds)
        except (ValueError, AttributeError) as exc:  # pynetdicom could not encode it in the agreed syntax
            raise DeliveryError(f"cannot encode {sop_uid} for {self.address}: {exc}", transient=False) from exc
        code = rsp.get("Status")
        if code is None:
            elapsed = time.monotonic() - started
            error, _ = _PEER_ERRORS.pop(assoc)
            why = (
                f"no C-STORE response within {self.settings.timeout:g} s"
                if elapsed >= 0.9 * self.settings.timeout
                else "association aborted or connection closed before the C-STORE response"
            )
            raise DeliveryError(
                f"{self.address}: {why} for {sop_uid}" + (f" ({error})" if error else ""), transient=True
            )
        code = int(code)
        comment = str(rsp.get("ErrorComment", "") or "").strip()
        if category(code) in {"Success", "Warning"}:
            return code, comment
        text = f"{self.address} refused {sop_uid}: status 0x{code:04X} {meaning(code)}"
        if comment:
            text += f" (Error Comment: {comment})"
        raise DeliveryError(text, transient=(code & 0xFF00) == 0xA700)

    # -- association ---------------------------------------------------------------------------
    def _associate(self, contexts: list[PresentationContext]) -> Association:
        """An established association, or the DeliveryError that says why there is none."""
        s = self.settings
        tls_args = None
        if self.tls:
            try:
                tls_args = (client_tls_context(s), s.host)
            except ConfigError as exc:
                raise DeliveryError(str(exc), transient=False) from exc
        connected, accepted = threading.Event(), threading.Event()
        started = time.monotonic()
        assoc = self._ae.associate(
            s.host,
            s.port,
            contexts=contexts,
            ae_title=s.ae_title,
            tls_args=tls_args,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, lambda event: connected.set()),
                (evt.EVT_ACCEPTED, lambda event: accepted.set()),
            ],
        )
        error, cause = _PEER_ERRORS.pop(assoc)
        if assoc.is_established:
            return assoc
        if accepted.is_set():  # an A-ASSOCIATE-AC that accepts no context: pynetdicom aborts it
            status = {cx.context_id: cx.status for cx in assoc.rejected_contexts}
            rejected = "; ".join(
                f"{UID(cx.abstract_syntax or '').name} in {UID(cx.transfer_syntax[0]).name}: {status.get(cx.context_id)}"
                for cx in assoc.requestor.requested_contexts
            )
            raise DeliveryError(
                f"no presentation context accepted by {self.address} ({rejected or 'none proposed'})", transient=False
            )
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            result = int(getattr(rj, "result", 0) or 0)
            words = f"{rj.result_str}, source {rj.source_str}: {rj.reason_str}" if rj is not None else "no details"
            raise DeliveryError(
                f"{self.address} rejected the association from {self.calling_ae_title} ({words})",
                transient=result != RejectResult.PERMANENT,
            )
        if _tls_refused(cause):
            raise DeliveryError(f"TLS with {s.host}:{s.port} failed: {error}", transient=False)
        if not connected.is_set():
            where = f"{s.host}:{s.port}" + (" over TLS" if self.tls else "")
            raise DeliveryError(f"cannot connect to {where}: {error or 'no reason given'}", transient=True)
        if time.monotonic() - started >= 0.9 * s.timeout:
            raise DeliveryError(f"{self.address}: no answer to A-ASSOCIATE-RQ within {s.timeout:g} s", transient=True)
        raise DeliveryError(
            f"{self.address} aborted the association or closed the connection" + (f": {error}" if error else ""),
            transient=True,
        )

    def probe(self) -> dict[str, Any]:
        """C-ECHO (never raises)."""
        s = self.settings
        answer: dict[str, Any] = {
            "name": self.name,
            "kind": s.kind,
            "ae_title": s.ae_title,
            "host": s.host,
            "port": s.port,
            "reachable": False,
        }
        try:
            assoc = self._associate([build_context(Verification)])
            try:
                rsp = assoc.send_c_echo()
            finally:
                if assoc.is_established:
                    assoc.release()
            code = rsp.get("Status")
            if code is None:
                answer["error"] = f"{self.address}: no C-ECHO response"
            elif category(int(code)) != "Success":
                answer["error"] = f"{self.address}: C-ECHO status 0x{int(code):04X} {meaning(int(code))}"
            else:
                answer["reachable"] = True
        except DeliveryError as exc:
            answer["error"] = str(exc)
        except Exception as exc:  # probe never raises: whatever happened is the answer
            answer["error"] = f"{type(exc).__name__}: {exc}"
        return answer


@destination_kind("dicom")
def from_settings(destination: DestinationSettings, settings: Settings) -> Destination:
    return DicomDestination(destination, destination.calling_ae_title or settings.node.ae_title)
