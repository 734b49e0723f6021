"""Run a local Orthanc (Debian package) locked down to loopback, for the demo and the tests.

Orthanc 1.10 binds its ports on all interfaces and has no bind option, so this configuration
closes what it can: HTTP refuses remote clients (``RemoteAccessAllowed: false``) and asks for a
password; DICOM stores are accepted only from registered modalities on 127.0.0.1 calling the
right AE title (``DicomAlwaysAllowStore: false``, ``DicomCheckModalityHost``, ``DicomCheckCalledAet``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fetalnode.errors import NodeError
from fetalnode.process import stop_process

PLUGIN_DIR = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plugin_sys_path() -> list[str]:
    """Folders holding ``fetalnode`` (its ``src``) and pydicom (this interpreter's site-packages)."""
    import pydicom

    return [str(Path(__file__).resolve().parents[2]), str(Path(pydicom.__file__).resolve().parents[1])]


def orthanc_binary() -> str:
    for candidate in ("Orthanc", "/usr/sbin/Orthanc"):
        found = shutil.which(candidate)
        if found:
            return found
    raise NodeError("Orthanc is not installed (Debian package 'orthanc'); run `make deps`")


@dataclass
class OrthancProcess:
    """An Orthanc server with its own storage folder, random password and free ports."""

    workdir: Path
    http_port: int = 0
    dicom_port: int = 0
    aet: str = "ORTHANC"
    username: str = "fetalnode"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    webviewer: bool = True
    fetalnode_plugin: bool = False
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, object]:
        plugins = []
        if self.webviewer and (PLUGIN_DIR / "libOrthancWebViewer.so").exists():
            plugins.append(str(PLUGIN_DIR / "libOrthancWebViewer.so"))
        extra: dict[str, object] = {}
        if self.fetalnode_plugin:
            python = PLUGIN_DIR / "libOrthancPython.so"
            if not python.exists():
                raise NodeError(
                    "Orthanc's Python plugin is not installed (Debian package 'orthanc-python'); run `make deps`"
                )
            plugins.append(str(python))
            extra = {
                "PythonScript": str(Path(__file__).resolve().parent / "plugin.py"),
                "PythonVerbose": False,
                # The plugin runs in Debian's embedded Python: where to find fetalnode and pydicom.
                "Fetalnode": {"SysPath": plugin_sys_path()},
            }
        return {
            **extra,
            "Name": "fetalnode-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomModalities": {name: list(spec) for name, spec in self.modalities.items()},
            "OverwriteInstances": False,
            "StableAge": 2,
            "HttpTimeout": 30,
            "Plugins": plugins,
            "ExecuteLuaEnabled": False,
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        os.chmod(cfg, 0o600)
        log = open(self.workdir / "orthanc.log", "ab")
        self._proc = subprocess.Popen(
            [orthanc_binary(), str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NodeError(f"Orthanc exited with {self._proc.returncode}; see {self.workdir / 'orthanc.log'}")
            try:
                r = httpx.get(f"{self.url}/system", auth=(self.username, self.password), timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise NodeError(f"Orthanc did not answer within {timeout:.0f} s ({last})")

    def stop(self) -> None:
        stop_process(self._proc, timeout=15)
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
