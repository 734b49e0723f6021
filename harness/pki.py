"""A throw-away PKI for DICOM TLS tests: a CA that signs a server and a client certificate (openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.processes import HarnessError


def make_pki(folder: Path) -> dict[str, Path]:
    """Write ``ca``, ``server`` and ``client`` keys and certificates (for 127.0.0.1, valid two days) into ``folder``.

    Returns every file by name with ``_`` for the dot: ``ca_crt``, ``server_key``, ``client_crt``...
    """
    if shutil.which("openssl") is None:
        raise HarnessError("openssl is not installed (Debian package 'openssl'); run `make deps`")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=fetalnode test CA")  # fmt: skip
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=fetalnode test {name}")  # fmt: skip
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}
