"""DCMTK ``storescp`` as a plain PACS on loopback: the peer of the ``dicom`` destination in tests and demos.

It writes each received object into ``workdir/received`` named after its SOP Instance UID
(``<modality>.<SOPInstanceUID>.dcm``, storescp's ``-uf``). Modes: which transfer syntaxes it accepts
(``all``, ``uncompressed``: storescp's default, ``implicit``: Implicit VR Little Endian only), DICOM TLS
with required client certificates, refusing every association, and any further storescp flags
(``--abort-during``, ``--sleep-during 5``...).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.ports import free_port, listening
from harness.processes import HarnessError, spawn, stop_process, tail, wait_for

ACCEPT = {"all": "+xa", "uncompressed": "+x=", "implicit": "+xi"}


@dataclass
class StorescpProcess:
    """``storescp`` as ``aet`` on a free port of 127.0.0.1.

    ``tls``: ``(private key, certificate, CA certificate)``; clients then need a certificate signed by that CA.
    """

    workdir: Path
    aet: str = "STORESCP"
    port: int = 0
    accept: str = "all"
    tls: tuple[Path, Path, Path] | None = None
    refuse: bool = False
    extra: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        return self.workdir / "received"

    @property
    def log(self) -> Path:
        return self.workdir / "storescp.log"

    def args(self) -> list[str]:
        binary = shutil.which("storescp")
        if binary is None:
            raise HarnessError("storescp is not installed (Debian package 'dcmtk'); run `make deps`")
        if self.accept not in ACCEPT:
            raise HarnessError(f"storescp accept mode {self.accept!r} is not one of {', '.join(ACCEPT)}")
        args = [binary, "-v", "-aet", self.aet, "-od", str(self.folder), "-uf", "-fe", ".dcm", ACCEPT[self.accept]]
        if self.tls:
            key, cert, ca = self.tls
            args += ["+tls", str(key), str(cert), "+cf", str(ca), "--require-peer-cert"]
        if self.refuse:
            args.append("--refuse")
        return [*args, *self.extra, str(self.port)]

    def start(self, timeout: float = 10.0) -> StorescpProcess:
        """Start and wait until it listens (seen in ``/proc/net``: a test connection would count as an association)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        # Delayed ACKs cost DCMTK receivers ~45 ms per object without it (docs/field notes).
        self._proc = spawn(self.args(), self.log, env={"TCP_NODELAY": "1"})
        try:
            wait_for(self._listening, timeout, f"storescp on port {self.port}", interval=0.05)
        except TimeoutError as exc:
            self.stop()
            raise HarnessError(f"{exc}; storescp log:\n{tail(self.log)}") from exc
        return self

    def _listening(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"storescp exited with {self._proc.returncode}:\n{tail(self.log)}")
        return listening(self.port)

    def received(self, sop_instance_uid: str) -> Path | None:
        """The file storescp wrote for this SOP Instance UID, if any."""
        return next(iter(self.folder.glob(f"*.{sop_instance_uid}.dcm")), None)

    def stop(self) -> None:
        stop_process(self._proc, timeout=10)
        self._proc = None

    def __enter__(self) -> StorescpProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
