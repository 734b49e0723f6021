"""A local Orthanc (Debian package) locked down to loopback, for the demo, the tests and the benchmarks.

Orthanc 1.10 binds its ports on all interfaces and has no bind option, so this configuration
closes what it can: HTTP refuses remote clients (``RemoteAccessAllowed: false``) and asks for a
password; DICOM stores are accepted only from registered modalities on 127.0.0.1 calling the
right AE title (``DicomAlwaysAllowStore: false``, ``DicomCheckModalityHost``, ``DicomCheckCalledAet``).

fetalnode's Orthanc Python plugin stays in the package (``src/fetalnode/orthanc/plugin.py``); it is
located here by import spec, without importing anything of fetalnode beyond its package markers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.ports import free_port
from harness.processes import HarnessError, spawn, stop_process

PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
DICOMWEB_ROOT = "/dicom-web/"
READ_ONLY_SCRIPT = Path(__file__).resolve().parent / "orthanc_read_only.py"
# The prebuilt OHIF viewer `make deps` unpacks from npm (@ohif/app; never committed).
OHIF_DIST = Path(__file__).resolve().parents[1] / ".ohif" / "package" / "dist"


def fetalnode_orthanc_dir() -> Path:
    """The folder of the ``fetalnode.orthanc`` package (holds ``plugin.py``)."""
    spec = importlib.util.find_spec("fetalnode.orthanc")
    if spec is None or spec.origin is None:
        raise HarnessError("fetalnode is not importable: run `make deps`")
    return Path(spec.origin).resolve().parent


def plugin_script() -> Path:
    """fetalnode's Orthanc Python plugin script."""
    return fetalnode_orthanc_dir() / "plugin.py"


def plugin_sys_path() -> list[str]:
    """Folders holding ``fetalnode`` (its ``src``) and pydicom (this interpreter's site-packages)."""
    pydicom = importlib.util.find_spec("pydicom")
    if pydicom is None or pydicom.origin is None:
        raise HarnessError("pydicom is not importable: run `make deps`")
    return [str(fetalnode_orthanc_dir().parents[1]), str(Path(pydicom.origin).resolve().parents[1])]


def orthanc_binary() -> str:
    for candidate in ("Orthanc", "/usr/sbin/Orthanc"):
        found = shutil.which(candidate)
        if found:
            return found
    raise HarnessError("Orthanc is not installed (Debian package 'orthanc'); run `make deps`")


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
    dicomweb: bool = False
    ohif: bool = False  # the OHIF viewer at /ohif/ (implies dicomweb and fetalnode_plugin)
    read_only_users: dict[str, str] = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)  # further Orthanc settings, over the harness's
    # Modules the fetalnode plugin imports (an application's findings reader from outside the source tree, as
    # the node's ``node.plugins``), importable from the repository root.
    plugins: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (STOW-RS ``/studies``, QIDO-RS, WADO-RS) when ``dicomweb`` is on."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

    def __post_init__(self) -> None:
        if self.ohif:
            self.dicomweb = self.fetalnode_plugin = True

    def ohif_study_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """OHIF's viewer on one study (OHIF 3: ``/viewer?StudyInstanceUIDs=``); with ``series_uid``, that
        series opens in the viewport (``initialSeriesInstanceUID``): for an SR, OHIF's SR viewport draws
        its SCOORDs on the referenced image."""
        url = f"{self.url}/ohif/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&initialSeriesInstanceUID={series_uid}" if series_uid else "")

    def instance_tags(self, instance_id: str) -> dict[str, str]:
        """An instance's main tags (``/instances/{id}/simplified-tags``, pixel data left out)."""
        r = httpx.get(
            f"{self.url}/instances/{instance_id}/simplified-tags", auth=(self.username, self.password), timeout=10
        )
        r.raise_for_status()
        return {k: v for k, v in r.json().items() if isinstance(v, str)}

    def write_password_file(self, path: Path) -> Path:
        """Write the password (mode 600) for a node's ``orthanc.password_file``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.password + "\n", encoding="utf-8")
        os.chmod(path, 0o600)
        return path

    def config(self) -> dict[str, object]:
        """Orthanc's configuration. ``read_only_users`` (user -> password) may only GET: Orthanc answers
        anything else from them with 403 (a Python-plugin filter, so not with ``fetalnode_plugin``:
        Orthanc runs one Python script)."""
        plugins = []
        if self.webviewer and (PLUGIN_DIR / "libOrthancWebViewer.so").exists():
            plugins.append(str(PLUGIN_DIR / "libOrthancWebViewer.so"))
        extra: dict[str, object] = {}
        if self.fetalnode_plugin and self.read_only_users:
            raise HarnessError("Orthanc runs one Python script: fetalnode_plugin or read_only_users, not both")
        if self.fetalnode_plugin or self.read_only_users:
            python = PLUGIN_DIR / "libOrthancPython.so"
            if not python.exists():
                raise HarnessError(
                    "Orthanc's Python plugin is not installed (Debian package 'orthanc-python'); run `make deps`"
                )
            plugins.append(str(python))
        if self.fetalnode_plugin:
            # The plugin runs in Debian's embedded Python: where to find fetalnode and pydicom.
            fetalnode: dict[str, object] = {"SysPath": plugin_sys_path()}
            if self.plugins:
                fetalnode["SysPath"] = [*plugin_sys_path(), str(Path(__file__).resolve().parents[1])]
                fetalnode["Plugins"] = list(self.plugins)
            if self.ohif:
                if not (OHIF_DIST / "index.html").is_file():
                    raise HarnessError(f"the OHIF viewer is not installed in {OHIF_DIST}; run `make deps`")
                fetalnode["OhifRoot"] = str(OHIF_DIST)
            extra = {"PythonScript": str(plugin_script()), "PythonVerbose": False, "Fetalnode": fetalnode}
        if self.read_only_users:
            extra = {
                "PythonScript": str(READ_ONLY_SCRIPT),
                "PythonVerbose": False,
                "Harness": {"ReadOnlyUsers": sorted(self.read_only_users)},
            }
        if self.dicomweb:
            dicomweb = PLUGIN_DIR / "libOrthancDicomWeb.so"
            if not dicomweb.exists():
                raise HarnessError(
                    f"Orthanc's DICOMweb plugin ({dicomweb}) is not installed "
                    "(Debian package 'orthanc-dicomweb'); run `make deps`"
                )
            plugins.append(str(dicomweb))
            extra["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_ROOT}
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
            "RegisteredUsers": {**self.read_only_users, self.username: self.password},
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
            **self.options,
        }

    def start(self, timeout: float = 30.0) -> OrthancProcess:
        """Start (or restart: same ports, password and storage) and wait until the REST API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        os.chmod(cfg, 0o600)
        # Orthanc's C-STORE SCP waits for delayed ACKs (~45 ms an object) unless TCP_NODELAY is set (field notes).
        self._proc = spawn([orthanc_binary(), str(cfg)], self.workdir / "orthanc.log", env={"TCP_NODELAY": "1"})
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise HarnessError(f"Orthanc exited with {self._proc.returncode}; see {self.workdir / 'orthanc.log'}")
            try:
                r = httpx.get(f"{self.url}/system", auth=(self.username, self.password), timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise HarnessError(f"Orthanc did not answer within {timeout:.0f} s ({last})")

    def stop(self) -> None:
        stop_process(self._proc, timeout=15)
        self._proc = None

    def __enter__(self) -> OrthancProcess:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
