"""Faults during a burst from 4 concurrent senders: SIGKILL of the whole node, Orthanc restarted."""

from __future__ import annotations

import pytest

from harness.orthanc import OrthancProcess
from harness.scenarios import kill_during_burst, orthanc_restart_during_burst
from tests.conftest import MODALITY, need, sample_copies

pytestmark = pytest.mark.e2e


def test_every_acknowledged_instance_delivered_exactly_once_after_sigkill(make_node, orthanc, tmp_path) -> None:
    need("storescu")
    node = make_node()
    files = sample_copies(200, tmp_path / "images")
    report = kill_during_burst(node, orthanc, files, tmp_path, MODALITY)
    print(report)
    assert 0 < report.acked_before_kill < report.sent, "the kill must land mid-burst"
    assert report.acked_without_job == 0, "an acknowledged instance was lost"
    assert report.resent_acked == report.sent
    assert report.not_delivered == []
    assert report.jobs == report.delivered == report.sent, "one job per instance, re-sends recognised"
    assert report.sr_duplicates == 0
    assert report.sr_in_orthanc == report.sent


def test_orthanc_restarted_mid_burst_everything_delivered_once(make_node, tmp_path) -> None:
    target = OrthancProcess(tmp_path / "orthanc-restarted", webviewer=False)
    target.start()
    try:
        node = make_node(target).start()
        files = sample_copies(60, tmp_path / "images")
        report = orthanc_restart_during_burst(node, target, files, tmp_path, MODALITY)
        print(report)
        assert report.retries > 0, "Orthanc must have been down while the node delivered"
        assert report.ok, report
    finally:
        target.stop()
