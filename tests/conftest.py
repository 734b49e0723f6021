"""Shared fixtures: real files, a real Orthanc process, real fetalnode processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread

from fetalnode.demo import write_node_config
from fetalnode.jobs import JobStore
from fetalnode.orthanc.server import OrthancProcess, free_port
from fetalnode.process import stop_process

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "samples"
MODELS = ROOT / "models"
SHARED = ROOT.parent / "shared" / "datasets"
MODALITY = "TEST-US"
NODE_AET = "FETALNODE"


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def dicom_testfile(name: str) -> Path:
    """A file of pydicom's test data (pydicom wheel or the pydicom-data package, both local)."""
    return Path(pydicom.data.get_testdata_file(name))


def sample_copies(n: int, folder: Path) -> list[Path]:
    """``n`` distinct instances (new SOP Instance UIDs, uncompressed) of the bundled samples."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    samples = sorted(SAMPLES.glob("*.dcm"))
    out = []
    for i in range(n):
        ds = dcmread(samples[i % len(samples)])
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()  # storescu sends as it is proposed: plain Explicit VR here
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"img{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: `make test` installs it (Debian package)")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """A real Orthanc (Debian package) with authentication, temp storage and free loopback ports."""
    need("Orthanc")
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), webviewer=False)
    server.start()
    yield server
    server.stop()


@dataclass
class NodeProcess:
    """A ``fetalnode serve`` (or ``worker``) subprocess with its own data folder."""

    config: Path
    port: int
    data_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    broker_workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.data_dir / "jobs.sqlite")

    def start(self, *extra: str) -> NodeProcess:
        self.proc = _spawn(["serve", "--config", str(self.config), *extra], self.log, self.env)
        wait_for(self._echo, 120, "fetalnode to answer C-ECHO")
        return self

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.worker = _spawn(["worker", "--config", str(self.config)], self.log, self.env)
        return self.worker

    def start_broker_worker(self) -> subprocess.Popen[bytes]:
        """A ``serve --role worker`` process (Celery worker on the broker) with this node's config."""
        proc = _spawn(["serve", "--config", str(self.config), "--role", "worker"], self.log, self.env)
        self.broker_workers.append(proc)
        return proc

    def _echo(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"fetalnode exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return (
            subprocess.run(
                ["echoscu", "-aet", MODALITY, "-aec", NODE_AET, "127.0.0.1", str(self.port)], capture_output=True
            ).returncode
            == 0
        )

    def wait_all(self, n: int, states: set[str], timeout: float = 240) -> None:
        def done() -> bool:
            jobs = self.jobs.jobs()
            return len(jobs) >= n and all(j.state in states for j in jobs)

        try:
            wait_for(done, timeout, f"{n} jobs in {states}")
        except AssertionError:
            print(self.log.read_text()[-4000:])
            raise AssertionError(f"jobs: {[(j.id, j.state, j.error) for j in self.jobs.jobs()]}") from None

    def stop(self) -> None:
        for proc in self.broker_workers:
            stop_process(proc)
        stop_process(self.worker)
        stop_process(self.proc)


def cli(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``fetalnode ARGS`` as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "fetalnode.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=check,
        timeout=120,
    )


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fetalnode.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
    finally:
        out.close()


@pytest.fixture
def make_node(tmp_path: Path, orthanc: OrthancProcess) -> Iterator[Callable[..., NodeProcess]]:
    """Factory of node processes delivering to the session Orthanc (or another one)."""
    nodes: list[NodeProcess] = []

    def factory(target: OrthancProcess | None = None, **env: str) -> NodeProcess:
        """``env``: settings as ``section__key=value`` (passed as FETALNODE__SECTION__KEY)."""
        target = target or orthanc
        folder = tmp_path / f"node{len(nodes)}"
        folder.mkdir()
        pw = folder / "orthanc-password"
        pw.write_text(target.password)
        port = free_port()
        cfg = folder / "node.toml"
        write_node_config(cfg, port=port, data_dir=folder / "data", orthanc=target, password_file=pw, models_dir=MODELS)
        text = cfg.read_text().replace('"DEMO-US"', f'"{MODALITY}"')
        text = text.replace("[orthanc]", "[orthanc]\nretry_initial = 0.5\nretry_max = 2.0")
        cfg.write_text(text)
        node = NodeProcess(
            config=cfg,
            port=port,
            data_dir=folder / "data",
            log=folder / "node.log",
            env={f"FETALNODE__{k.upper()}": v for k, v in env.items()},
        )
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop()


# storescu's option that proposes a file's own (compressed) transfer syntax.
STORESCU_FLAG = {
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def send(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    """storescu proposing the file's own transfer syntax, as a modality would."""
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return storescu(port, path, flags=(STORESCU_FLAG[ts],) if ts in STORESCU_FLAG else ())


def storescu(
    port: int, *files: Path, flags: tuple[str, ...] = (), aet: str = MODALITY
) -> subprocess.CompletedProcess[str]:
    need("storescu")
    return subprocess.run(
        ["storescu", "-aet", aet, "-aec", NODE_AET, *flags, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
