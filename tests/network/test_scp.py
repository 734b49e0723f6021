"""The data terminal over real associations on 127.0.0.1 (receive only: no worker, no models)."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, UltrasoundImageStorage, Verification

from harness.config import NODE_AET
from harness.node import MODELS, cli
from tests.conftest import MODALITY, dicom_testfile, storescu

pytestmark = [pytest.mark.network, pytest.mark.interop]


def audit(node) -> list[dict]:
    path = node.data_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def terminal(make_node):
    return make_node().start("--no-worker")


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("OBXXXX1A.dcm", ()),
        ("OBXXXX1A_rle.dcm", ("-xr",)),
        ("OBXXXX1A_rle_2frame.dcm", ("-xr",)),
        ("US1_J2KR.dcm", ("-xv",)),
        ("examples_ybr_color.dcm", ("-xy",)),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", ("-xs",)),
        ("gdcm-US-ALOKA-16.dcm", ()),
    ],
)
def test_storescu_stores_and_prenotifies(terminal, name: str, flags: tuple[str, ...]) -> None:
    src = dicom_testfile(name)
    result = storescu(terminal.port, src, flags=flags)
    assert result.returncode == 0, result.stderr
    [job] = terminal.jobs.jobs()
    ds = dcmread(src, stop_before_pixels=True)
    assert job.state == "queued"
    assert job.calling_ae == MODALITY and job.peer.startswith("127.0.0.1:")
    assert job.sop_uid == ds.SOPInstanceUID and job.study_uid == ds.StudyInstanceUID
    spooled = Path(job.spool_path).read_bytes()
    assert hashlib.sha256(spooled).hexdigest() == job.sha256
    assert dcmread(job.spool_path).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert [e["event"] for e in audit(terminal)].count("instance-received") == 1


# Two different real objects (800x600 and 800x350) that carry the same SOP Instance UID.
SAME_UID = ("OBXXXX1A.dcm", "examples_palette.dcm")


def test_same_uid_different_object_refused_identical_resend_deduplicated(terminal) -> None:
    first, other = (dicom_testfile(name) for name in SAME_UID)
    assert dcmread(first).SOPInstanceUID == dcmread(other).SOPInstanceUID
    assert storescu(terminal.port, first).returncode == 0
    assert storescu(terminal.port, other).returncode != 0, "storescu reports the failure status"
    assert storescu(terminal.port, first).returncode == 0
    [job] = terminal.jobs.jobs()
    assert not job.replaces
    assert len(list((terminal.data_dir / "spool").rglob("*.dcm"))) == 1, "nothing of the refused object is kept"
    events = audit(terminal)
    [refused] = [e for e in events if e["event"] == "store-refused"]
    assert refused["status"] == "0x0111" and "scp.uid_conflict" in refused["reason"]
    assert any(e["event"] == "instance-duplicate" for e in events)


def test_same_uid_different_object_replaces_when_configured(make_node) -> None:
    terminal = make_node(scp__uid_conflict="replace").start("--no-worker")
    first, other = (dicom_testfile(name) for name in SAME_UID)
    assert storescu(terminal.port, first).returncode == 0
    assert storescu(terminal.port, other).returncode == 0
    jobs = terminal.jobs.jobs()
    assert len(jobs) == 2 and jobs[0].spool_path != jobs[1].spool_path
    assert all(Path(j.spool_path).is_file() for j in jobs)
    assert [j.replaces for j in jobs] == [False, True]


def test_echo_and_unknown_calling_ae_rejected(terminal) -> None:
    ok = subprocess.run(["echoscu", "-aet", MODALITY, "-aec", NODE_AET, "127.0.0.1", str(terminal.port)])
    assert ok.returncode == 0
    bad = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", NODE_AET, "127.0.0.1", str(terminal.port)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr + bad.stdout
    rejected = [e for e in audit(terminal) if e["event"] == "association-rejected"]
    assert rejected and rejected[-1]["calling_ae"] == "INTRUDER"


def test_unsupported_sop_class_gets_0122_and_private_context_is_refused(terminal) -> None:
    ae = AE(ae_title=MODALITY)
    philips_private = "1.3.46.670589.2.5.1.1"
    contexts = [build_context(philips_private), build_context(CTImageStorage), build_context(UltrasoundImageStorage)]
    assoc = ae.associate("127.0.0.1", terminal.port, contexts=contexts, ae_title=NODE_AET)
    try:
        assert assoc.is_established
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
        # Storage classes are negotiated so that the modality gets a per-image status, not a silent refusal.
        assert accepted == {str(UltrasoundImageStorage), str(CTImageStorage)}
        assert rejected == {philips_private}
        ct = assoc.send_c_store(dcmread(dicom_testfile("CT_small.dcm")))
        assert ct.Status == 0x0122
        assert "is not analysed by this node" in ct.ErrorComment
        status = assoc.send_c_store(dcmread(dicom_testfile("OBXXXX1A.dcm")))
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert len(terminal.jobs.jobs()) == 1
    refused = [e for e in audit(terminal) if e["event"] == "store-refused"]
    assert [e["status"] for e in refused] == ["0x0122"]


def test_dataset_without_study_uid_gets_c210(terminal) -> None:
    ds = dcmread(dicom_testfile("OBXXXX1A.dcm"))
    del ds.StudyInstanceUID
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(UltrasoundImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", terminal.port, ae_title=NODE_AET)
    try:
        status = assoc.send_c_store(ds)
        assert status.Status == 0xC210
    finally:
        assoc.release()
    assert terminal.jobs.jobs() == []
    refused = [e for e in audit(terminal) if e["event"] == "store-refused"]
    assert refused and refused[0]["status"] == "0xC210"


def test_spool_full_answers_a700_and_recovers_when_space_returns(make_node, tmp_path) -> None:
    # The node's real free-space check on the real file system: the minimum is set just below what
    # is free now, then a 400 MB file takes the space away and gives it back.
    margin = 200_000_000
    node = make_node(scp__min_free_bytes=shutil.disk_usage(tmp_path).free - margin).start("--no-worker")
    filler = tmp_path / "filler"
    ds = dcmread(dicom_testfile("OBXXXX1A.dcm"))
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(UltrasoundImageStorage, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    try:
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 2 * margin)
        full = assoc.send_c_store(ds)
        assert full.Status == 0xA700 and full.ErrorComment.startswith("spool full")
        assert assoc.send_c_echo().Status == 0x0000, "the node keeps answering"
        filler.unlink()
        assert assoc.send_c_store(ds).Status == 0x0000, "space is back: the same instance is taken"
    finally:
        filler.unlink(missing_ok=True)
        assoc.release()
    assert [j.state for j in node.jobs.jobs()] == ["queued"]
    refused = [e for e in audit(node) if e["event"] == "store-refused"]
    assert [e["status"] for e in refused] == ["0xA700"]


def test_node_refuses_to_start_with_a_corrupt_bundle(make_node, tmp_path) -> None:
    models = tmp_path / "models"
    for name in ("hc18-headseg", "fba-classifier", "fetal-view", "psfhs-seg"):
        shutil.copytree(MODELS / name, models / name)
    weights = models / "fba-classifier" / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    node = make_node(models__dir=str(models))
    result = cli("serve", "--config", str(node.config), env={"FETALNODE__MODELS__DIR": str(models)})
    assert result.returncode == 2
    assert "BundleError" in result.stderr and "checksum" in result.stderr


def test_status_lists_announced_images_missing_from_the_spool(terminal) -> None:
    assert storescu(terminal.port, dicom_testfile("OBXXXX1A.dcm")).returncode == 0
    [job] = terminal.jobs.jobs()
    Path(job.spool_path).unlink()  # e.g. a disk fault after the pre-notification
    out = json.loads(cli("status", "--config", str(terminal.config), check=True).stdout)
    assert out["announced_not_received"] == [{"id": job.id, "sop_uid": job.sop_uid, "state": "queued"}]
