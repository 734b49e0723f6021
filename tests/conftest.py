"""Shared fixtures: real files, a real Orthanc process, real fetalnode processes on free loopback ports.

Orthanc and the nodes are started by the development harness (``harness/``), as in the demo and the benchmarks.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import dcmread

from harness.config import NODE_AET, TOOL_AETS
from harness.node import ROOT, NodeProcess, prepare_node
from harness.orthanc import OrthancProcess

DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared" / "datasets"
MODALITY = "TEST-US"


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


@pytest.fixture(autouse=True)
def _registries() -> Iterator[None]:
    """What a test registers (an application, an output writer, a destination kind) is forgotten after it."""
    from fetalnode.applications.registry import APPLICATIONS
    from fetalnode.destinations.base import DESTINATION_KINDS
    from fetalnode.outputs.registry import OUTPUTS

    with APPLICATIONS.scoped(), OUTPUTS.scoped(), DESTINATION_KINDS.scoped():
        yield


# Each test folder is a lane: its tests carry its marker (``pytest -m unit`` runs tests/unit and nothing else).
LANES = ("unit", "process", "network", "interop", "e2e", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        folder = item.path.parent.name
        marks = {mark.name for mark in item.iter_markers()}
        if folder not in LANES:
            continue
        if folder not in marks or (folder == "unit" and marks & set(LANES[1:])):
            wrong.append(f"{item.nodeid} (marked {sorted(marks & set(LANES)) or 'none'})")
    if wrong:
        raise pytest.UsageError("tests outside their folder's lane:\n  " + "\n  ".join(wrong))


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: `make test` installs it (Debian package)")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """A real Orthanc (Debian package) with authentication, temp storage and free loopback ports."""
    need("Orthanc")
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), webviewer=False).start()
    yield server
    server.stop()


@pytest.fixture
def own_orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    """An Orthanc of this test's own (the session one holds other tests' objects)."""
    server = OrthancProcess(tmp_path / "orthanc-own", webviewer=False).start()
    yield server
    server.stop()


# The delivery, fault and scale-out tests count objects per job: they run with the two outputs they count
# (every output's validity is tested in tests/interop, every default output end to end in test_ohif).
RELIABILITY_OUTPUTS: dict[str, object] = {"output__enabled": ["sr", "sc"]}


@pytest.fixture
def make_node(tmp_path: Path, orthanc: OrthancProcess) -> Iterator[Callable[..., NodeProcess]]:
    """Factory of node processes (not started) delivering to the session Orthanc (or another one)."""
    nodes: list[NodeProcess] = []

    def factory(target: OrthancProcess | None = None, **fields: Any) -> NodeProcess:
        """``fields``: typed settings as ``section__key=value`` (``scp__tls_port=11113``)."""
        node = prepare_node(
            tmp_path / f"node{len(nodes)}",
            target or orthanc,
            calling_aets=(MODALITY, *TOOL_AETS),
            **{"orthanc__retry_initial": 0.5, "orthanc__retry_max": 2.0, **fields},
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
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
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
