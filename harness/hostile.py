"""A hostile or careless modality: DIMSE command sets and PDUs that pynetdicom's own SCU would never send.

``RawScu`` is a real pynetdicom association whose C-STORE requests are encoded from a command set given
as it is (a missing or empty Affected SOP Instance UID, no Priority, no data set...), sent PDU by PDU,
and whose answer is timed: a status, an A-ABORT, or nothing. ``raw_socket`` opens a bare TCP
connection for what comes before (or instead of) an association. Used by the hostile-input tests and
``benchmarks/reliability.py``; nothing here is a mock of the node.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.dimse_messages import C_FIND_RQ, C_STORE_RQ, N_CREATE_RQ
from pynetdicom.dsutils import encode

from harness.processes import HarnessError

C_STORE_RQ_FIELD = 0x0001
NO_DATASET = 0x0101
HAS_DATASET = 0x0000


@dataclass(frozen=True)
class Answer:
    """What the node did with one request: its status (``None``: none came), whether it aborted, how fast."""

    status: int | None
    aborted: bool
    seconds: float
    comment: str = ""

    def describe(self) -> str:
        if self.status is not None:
            return f"0x{self.status:04X}"
        return "A-ABORT" if self.aborted else "no answer"


def store_command(
    sop_class: str | None,
    sop_uid: str | None,
    *,
    message_id: int | None = 1,
    priority: int | None = 2,
    data: bool = True,
) -> Dataset:
    """A C-STORE-RQ command set; a ``None`` leaves that element out (``""`` sends it empty)."""
    cs = Dataset()
    if sop_class is not None:
        cs.AffectedSOPClassUID = sop_class
    cs.CommandField = C_STORE_RQ_FIELD
    if message_id is not None:
        cs.MessageID = message_id
    if priority is not None:
        cs.Priority = priority
    cs.CommandDataSetType = HAS_DATASET if data else NO_DATASET
    if sop_uid is not None:
        cs.AffectedSOPInstanceUID = sop_uid
    return cs


def _with_group_length(cs: Dataset) -> Dataset:
    body = encode(cs, True, True)
    assert body is not None
    out = Dataset()
    out.CommandGroupLength = len(body)
    out.update(cs)
    return out


def dataset_bytes(path: Path, implicit: bool = False) -> bytes:
    """The data set of a Part 10 file, encoded for an uncompressed presentation context (no file meta)."""
    encoded = encode(dcmread(path), implicit, True)
    if encoded is None:
        raise HarnessError(f"{path} cannot be encoded as a data set")
    return bytes(encoded)


class RawScu:
    """One association as requestor, sending requests built by hand. ``contexts``: pynetdicom contexts."""

    def __init__(
        self,
        port: int,
        contexts: list[Any],
        *,
        calling_ae: str,
        called_ae: str,
        bind_address: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = 10
        ae.network_timeout = 30
        self.assoc = ae.associate(host, port, contexts=contexts, ae_title=called_ae, bind_address=(bind_address, 0))
        if not self.assoc.is_established:
            raise HarnessError(f"association to {host}:{port} from {calling_ae} was not established")

    def context_id(self, abstract_syntax: str) -> int:
        for cx in self.assoc.accepted_contexts:
            if cx.abstract_syntax == abstract_syntax:
                return int(cx.context_id or 0)
        raise HarnessError(f"no accepted presentation context for {abstract_syntax}")

    def send_store(
        self, command: Dataset, data: bytes | None, context_id: int, timeout: float = 5.0, message: type = C_STORE_RQ
    ) -> Answer:
        """Send one DIMSE request (a C-STORE-RQ unless ``message`` says otherwise) as given, then wait up to
        ``timeout`` s for its response or the end of the association."""
        msg = message()
        msg.command_set = _with_group_length(command)
        msg.data_set = BytesIO(data or b"")
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()  # the reactor must not take the response off the queue
        while not assoc._is_paused:
            time.sleep(0.0001)
        started = time.perf_counter()
        try:
            for pdata in msg.encode_msg(context_id, assoc.acceptor.maximum_length or 16382):
                assoc.dul.send_pdu(pdata)
            return self._answer(started, timeout)
        finally:
            assoc._reactor_checkpoint.set()

    def _answer(self, started: float, timeout: float) -> Answer:
        assoc = self.assoc
        while time.perf_counter() - started < timeout:
            _, rsp = assoc.dimse.get_msg(block=False)
            if rsp is not None:
                status = getattr(rsp, "Status", None)
                comment = str(getattr(rsp, "ErrorComment", "") or "")
                return Answer(None if status is None else int(status), False, time.perf_counter() - started, comment)
            if assoc.is_aborted or not assoc.dul.is_alive() or assoc.acse.is_aborted():
                return Answer(None, True, time.perf_counter() - started)
            time.sleep(0.002)
        return Answer(None, False, time.perf_counter() - started)

    def send_raw(self, data: bytes, timeout: float = 5.0) -> Answer:
        """Write ``data`` to the association's socket as it is (PDUs pynetdicom would never encode), then wait."""
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        started = time.perf_counter()
        try:
            sock = assoc.dul.socket
            assert sock is not None and sock.socket is not None
            sock.socket.sendall(data)
            return self._answer(started, timeout)
        finally:
            assoc._reactor_checkpoint.set()

    def echo(self) -> int | None:
        rsp = self.assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        else:
            self.assoc.abort()


def raw_socket(port: int, bind_address: str = "127.0.0.1", host: str = "127.0.0.1") -> socket.socket:
    """A bare TCP connection to the node (no A-ASSOCIATE-RQ yet)."""
    sock = socket.create_connection((host, port), timeout=10, source_address=(bind_address, 0))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the node closes ``sock`` (reads until EOF or reset), or ``None`` if it stays open."""
    sock.settimeout(0.2)
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if not sock.recv(4096):
                return time.perf_counter() - started
        except TimeoutError:
            continue
        except OSError:
            return time.perf_counter() - started
    return None


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6-byte header of a PDU of ``length`` bytes (PS3.8 9.3)."""
    return struct.pack(">BBI", pdu_type, 0, length)


def p_data_pdu(context_id: int, payload: bytes, control: int = 0x03) -> bytes:
    """A P-DATA-TF PDU of one PDV (PS3.8 9.3.5): ``control`` 0x03 = last fragment of a command."""
    item = struct.pack(">BB", context_id, control) + payload
    return pdu_header(0x04, 4 + len(item)) + struct.pack(">I", len(item)) + item


def store_contexts(*sop_classes: str, syntaxes: tuple[str, ...] = ("1.2.840.10008.1.2.1",)) -> list[Any]:
    return [build_context(c, list(syntaxes)) for c in sop_classes] + [build_context("1.2.840.10008.1.1")]


# -- the hostile-input cases: each sent on its own association, answered, timed and audited ------------

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
FILM_SESSION = "1.2.840.10008.5.1.1.1"


@dataclass
class Target:
    """The node under test: where it listens, who calls it, where its audit log is, a folder for files."""

    port: int
    called_ae: str
    calling_ae: str
    audit: Path
    folder: Path
    bind_address: str = "127.0.0.1"

    def scu(self, *sop_classes: str) -> RawScu:
        return RawScu(
            self.port,
            store_contexts(*(sop_classes or (US_IMAGE,))),
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
            bind_address=self.bind_address,
        )

    def sample(self) -> tuple[str, bytes]:
        """A fresh sample (new UIDs) as (SOP Instance UID, data set bytes)."""
        from harness.corpus import base

        ds = base()
        path = self.folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return str(ds.SOPInstanceUID), dataset_bytes(path)


@dataclass(frozen=True)
class HostileCase:
    """One hostile request: ``send`` answers it, ``expected`` is its status ("0xC215"), "A-ABORT", or
    "closed" (the node ends the connection within ``within`` seconds); ``event`` and ``why``: the audit
    event kind and a phrase of its reason."""

    name: str
    send: Any  # Callable[[Target], Answer]
    expected: str
    event: str
    why: str
    within: float = 1.0


def _store(command: Any, with_data: bool = True, message: type = C_STORE_RQ) -> Any:
    def send(t: Target) -> Answer:
        uid, data = t.sample()
        scu = t.scu()
        try:
            return scu.send_store(command(uid), data if with_data else None, scu.context_id(US_IMAGE), message=message)
        finally:
            scu.close()

    return send


def _raw(make: Any, timeout: float = 5.0) -> Any:
    def send(t: Target) -> Answer:
        scu = t.scu()
        try:
            return scu.send_raw(make(scu.context_id(US_IMAGE)), timeout)
        finally:
            scu.close()

    return send


def _on_context(context_id: int) -> Any:
    def send(t: Target) -> Answer:
        uid, data = t.sample()
        scu = t.scu()
        try:
            return scu.send_store(store_command(US_IMAGE, uid), data, context_id)
        finally:
            scu.close()

    return send


def _bare(payload: bytes, timeout: float) -> Any:
    """A bare TCP connection that sends ``payload`` (maybe nothing): how long until the node closes it."""

    def send(t: Target) -> Answer:
        started = time.perf_counter()
        sock = raw_socket(t.port, t.bind_address)
        try:
            if payload:
                sock.sendall(payload)
            closed = closed_by_peer(sock, timeout)
        finally:
            sock.close()
        seconds = closed if closed is not None else time.perf_counter() - started
        return Answer(None, closed is not None, seconds)

    return send


def _command(**fields: Any) -> Any:
    def make(uid: str) -> Dataset:
        cs = Dataset()
        for keyword, value in fields.items():
            setattr(cs, keyword, uid if value is _UID else value)
        return cs

    return make


_UID = object()  # in a _command: the sample's SOP Instance UID
_ASSOCIATE_RQ_NUL_AE = pdu_header(0x01, 68) + bytes(68)  # an A-ASSOCIATE-RQ whose AE titles are NUL bytes


def hostile_cases(stall_timeout: float, acse_timeout: float) -> list[HostileCase]:
    """The command sets, PDUs and connections a careless or hostile modality may send (the node's
    ``scp.stall_timeout`` and ``scp.acse_timeout`` bound the two cases that send nothing to answer)."""
    return [
        HostileCase(
            "C-STORE, Affected SOP Instance UID empty",
            _store(lambda uid: store_command(US_IMAGE, "")),
            "0xC215",
            "store-refused",
            "without AffectedSOPInstanceUID",
        ),
        HostileCase(
            "C-STORE, Affected SOP Instance UID missing",
            _store(lambda uid: store_command(US_IMAGE, None)),
            "0xC215",
            "store-refused",
            "without AffectedSOPInstanceUID",
        ),
        HostileCase(
            "C-STORE, Affected SOP Class UID missing",
            _store(lambda uid: store_command(None, uid)),
            "0xC215",
            "store-refused",
            "without AffectedSOPClassUID",
        ),
        HostileCase(
            "C-STORE without a data set",
            _store(lambda uid: store_command(US_IMAGE, uid, data=False), with_data=False),
            "0xC215",
            "store-refused",
            "without a data set",
        ),
        HostileCase(
            "C-STORE without a Message ID",
            _store(lambda uid: store_command(US_IMAGE, uid, message_id=None)),
            "A-ABORT",
            "association-aborted",
            "without a Message ID",
        ),
        HostileCase(
            "C-STORE on a presentation context never accepted",
            _on_context(99),
            "A-ABORT",
            "association-aborted",
            "presentation context 99",
        ),
        HostileCase(
            "C-STORE of a CT image on the ultrasound context",
            _store(lambda uid: store_command(CT_IMAGE, uid)),
            "0x0122",
            "store-refused",
            "on the Ultrasound Image Storage context",
        ),
        HostileCase(
            "C-FIND on the ultrasound storage context",
            _store(
                _command(
                    AffectedSOPClassUID=US_IMAGE, CommandField=0x0020, MessageID=3, Priority=2, CommandDataSetType=0
                ),
                message=C_FIND_RQ,
            ),
            "0x0211",
            "request-refused",
            "C-FIND on the",
        ),
        HostileCase(
            "N-CREATE of a film session on the ultrasound storage context",
            _store(
                _command(AffectedSOPClassUID=FILM_SESSION, CommandField=0x0140, MessageID=4, CommandDataSetType=0x0101),
                with_data=False,
                message=N_CREATE_RQ,
            ),
            "0x0211",
            "request-refused",
            "N-CREATE on the",
        ),
        HostileCase(
            "command set that does not decode",
            _raw(lambda cx: p_data_pdu(cx, b"\xff" * 9)),
            "A-ABORT",
            "association-aborted",
            "does not decode",
        ),
        HostileCase(
            "unknown PDU type",
            _raw(lambda cx: pdu_header(0x09, 4) + b"abcd"),
            "A-ABORT",
            "association-aborted",
            "Unknown PDU type",
        ),
        HostileCase(
            "PDU header claiming 50 MB (above the maximum PDU length)",
            _raw(lambda cx: pdu_header(0x04, 50_000_000) + b"x" * 100),
            "A-ABORT",
            "association-aborted",
            "above the",
        ),
        HostileCase(
            "A-ASSOCIATE-RQ with NUL AE titles",
            _bare(_ASSOCIATE_RQ_NUL_AE, 5.0),
            "closed",
            "association-aborted",
            "AE Title",
        ),
        HostileCase(
            "PDU that stops half-way",
            _raw(lambda cx: pdu_header(0x04, 1000) + b"x" * 10, stall_timeout + 3),
            "A-ABORT",
            "association-aborted",
            "PDU",
            within=stall_timeout + 1.5,
        ),
        HostileCase(
            "TCP connection that never sends an A-ASSOCIATE-RQ",
            _bare(b"", acse_timeout + 3),
            "closed",
            "association-aborted",
            "A-ASSOCIATE-RQ",
            within=acse_timeout + 1.5,
        ),
    ]


@dataclass(frozen=True)
class CaseResult:
    name: str
    got: str
    seconds: float
    audited: str  # the audit event's reason ("" when none came)
    expected: str
    within: float

    @property
    def ok(self) -> bool:
        return self.got == self.expected and self.seconds <= self.within and bool(self.audited)


def run_case(target: Target, case: HostileCase, audit_wait: float = 3.0) -> CaseResult:
    """Send ``case`` to ``target``, then wait for its audit line (an association's end is audited when its
    connection closes)."""
    before = target.audit.read_text().count("\n") if target.audit.exists() else 0
    answer = case.send(target)
    got = answer.describe()
    if case.expected == "closed" and answer.aborted:
        got = "closed"
    deadline = time.monotonic() + audit_wait
    audited = ""
    while not audited and time.monotonic() < deadline:
        lines = target.audit.read_text().splitlines()[before:] if target.audit.exists() else []
        events = [json.loads(line) for line in lines]
        audited = next(
            (str(e["reason"]) for e in events if e["event"] == case.event and case.why in str(e.get("reason", ""))), ""
        )
        if not audited:
            time.sleep(0.05)
    return CaseResult(case.name, got, round(answer.seconds, 3), audited, case.expected, case.within)
