"""One runner in every role, on real peers (DCMTK, Orthanc, RabbitMQ): an output writer registered through
``node.plugins`` is built and delivered by the embedded worker and through the cloud path (built by a cloud
worker from the pseudonymised image, re-identified and delivered by the site's terminal), and the same
input gives the same objects (UIDs and content, apart from timestamps) in both and in ``analyze``."""

from __future__ import annotations

import json

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from fetalnode.privacy import patient_and_study_keywords
from harness.cloud import prepare_terminal, prepare_worker
from harness.node import cli
from harness.orthanc import OrthancProcess
from harness.rabbitmq import RabbitMQProcess
from tests.conftest import MODALITY, SAMPLES, send
from tests.e2e.helpers import download, find

pytestmark = pytest.mark.e2e
KEY_OBJECT_SELECTION = UID("1.2.840.10008.5.1.4.1.1.88.59")
OUTPUTS = {"sr", "sc", "ko"}
# The extra writer, and one station name for every role (a modality's station is in each object).
FIELDS = {
    "node__plugins": ["tests.plugins.key_object"],
    "output__enabled": ["sr", "sc", "ko"],
    "node__station_name": "fetalnode-test",
    "scp__station_names": [f"{MODALITY}=fetalnode-test"],
}


def timeless(ds: Dataset) -> Dataset:
    """``ds`` without its dates and times (DA, TM, DT at any depth): what differs between two runs."""
    for elem in list(ds):
        if elem.VR in ("DA", "TM", "DT"):
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                timeless(item)
    return ds


def from_orthanc(orthanc: OrthancProcess, uids: dict[str, str]) -> dict[str, Dataset]:
    out = {}
    for name, uid in uids.items():
        [hit] = find(orthanc, SOPInstanceUID=uid)
        out[name] = download(orthanc, hit["ID"])
    return out


def test_extra_output_delivered_and_objects_identical_in_every_role(make_node, own_orthanc, tmp_path) -> None:
    sample = SAMPLES / "hc18_104_HC.dcm"
    embedded_orthanc = OrthancProcess(tmp_path / "orthanc-embedded", webviewer=False).start()
    broker = RabbitMQProcess(tmp_path / "rabbitmq", tls=True, sites=("site-a",)).start()
    terminal = prepare_terminal(
        tmp_path / "site-a", own_orthanc, broker, "site-a", calling_aets=(MODALITY, "ECHOSCU"), **FIELDS
    )
    worker = prepare_worker(tmp_path / "worker", broker, node__plugins=FIELDS["node__plugins"])
    try:
        embedded = make_node(embedded_orthanc, **FIELDS).start()
        assert send(embedded.port, sample).returncode == 0
        embedded.wait_all(1, {"delivered"})
        [job] = embedded.jobs.jobs()
        assert set(job.result["outputs"]) == set(job.receipts["orthanc"]) == OUTPUTS

        terminal.start()
        worker.start_broker_worker()
        assert send(terminal.port, sample).returncode == 0
        terminal.wait_all(1, {"delivered"})
        [remote] = terminal.jobs.jobs()
        assert remote.result["outputs"] == job.result["outputs"], "same UIDs whichever worker ran it"
        assert set(remote.receipts["orthanc"]) == OUTPUTS | {"source"}  # a site terminal forwards the source too

        out = tmp_path / "analyze"
        cli("analyze", str(sample), "--out", str(out), "--config", str(embedded.config), check=True)
        roles = {
            "embedded": from_orthanc(embedded_orthanc, job.result["outputs"]),
            "cloud": from_orthanc(own_orthanc, remote.result["outputs"]),
            "analyze": {name: dcmread(out / f"{name}.dcm") for name in OUTPUTS},
        }
        summary = json.loads((out / "summary.json").read_text())
        assert summary["outputs"] == {name: roles["analyze"][name].SOPInstanceUID for name in OUTPUTS}
        assert set(summary["files"]) == {str(out / f"{n}.dcm") for n in OUTPUTS} | {
            str(out / "heatmap.png"),
            str(out / "summary.json"),
        }
    finally:
        worker.stop()
        terminal.stop()
        broker.stop()
        embedded_orthanc.stop()
    ko = roles["embedded"]["ko"]
    assert ko.SOPClassUID == KEY_OBJECT_SELECTION
    source = dcmread(sample, stop_before_pixels=True)
    assert ko.StudyInstanceUID == source.StudyInstanceUID
    assert (
        ko.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == source.SOPInstanceUID
    )
    # The cloud's objects get the source's patient and study modules whole at the terminal: a writer that
    # copies only part of them (Study Description is left out of the SC and the KO) gains the rest.
    whole = set(patient_and_study_keywords(str(source.SOPClassUID)))
    full_source = dcmread(sample)
    for name in sorted(OUTPUTS):
        reference = roles["embedded"][name]
        for role in ("cloud", "analyze"):
            other = roles[role][name]
            assert other.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID
            gained = {e.keyword for e in other} - {e.keyword for e in reference}
            if role == "cloud":
                assert gained <= whole, (name, gained - whole)
                assert all(other[k] == full_source[k] for k in gained), name
                for keyword in gained:
                    del other[keyword]
            assert timeless(other) == timeless(reference), f"{name} from {role} differs from the embedded worker's"
