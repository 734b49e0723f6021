"""SIGKILL of the whole node (SCP and worker) in the middle of a 4-sender burst of 200 images."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from benchmarks.scenarios import kill_during_burst
from tests.conftest import MODALITY, SAMPLES, need

pytestmark = pytest.mark.e2e


def copies(n: int, folder) -> list:
    """``n`` distinct instances (new SOP Instance UIDs) of the bundled samples."""
    folder.mkdir()
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


def test_every_acknowledged_instance_delivered_exactly_once_after_sigkill(make_node, orthanc, tmp_path) -> None:
    need("storescu")
    node = make_node()
    files = copies(200, tmp_path / "images")
    report = kill_during_burst(node.config, node.port, node.data_dir, orthanc, files, tmp_path, MODALITY)
    print(report)
    assert 0 < report.acked_before_kill < report.sent, "the kill must land mid-burst"
    assert report.acked_without_job == 0, "an acknowledged instance was lost"
    assert report.resent_acked == report.sent
    assert report.not_delivered == []
    assert report.jobs == report.delivered == report.sent, "one job per instance, re-sends recognised"
    assert report.sr_duplicates == 0
    assert report.sr_in_orthanc == report.sent
