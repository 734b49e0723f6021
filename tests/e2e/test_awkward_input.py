"""Awkward but valid inputs through the whole path: analysed, reported, and honest about what was not possible."""

from __future__ import annotations

import pytest
from pydicom import dcmread

from harness.corpus import ACCEPTED, PHI_TEXT, burned_in_phi
from tests.conftest import RELIABILITY_OUTPUTS, send
from tests.e2e.helpers import outputs_in_study, sr_content

pytestmark = pytest.mark.e2e


def test_awkward_inputs_are_analysed_and_reported(make_node, orthanc, tmp_path) -> None:
    node = make_node(**RELIABILITY_OUTPUTS).start()
    sent = {case.name: case.make(tmp_path) for case in ACCEPTED}
    for path in sent.values():
        result = send(node.port, path)
        assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr
    node.wait_all(len(sent), {"delivered", "failed", "rejected"})
    jobs = {j.sop_uid: j for j in node.jobs.jobs()}
    for case in ACCEPTED:
        src = dcmread(sent[case.name], stop_before_pixels=True)
        job = jobs[src.SOPInstanceUID]
        assert job.state == case.expected, (case.name, job.state, job.error)
        [sr], [sc] = outputs_in_study(orthanc, src.StudyInstanceUID)
        comments = sr_content(sr)["comments"]
        assert any(case.why in c for c in comments), (case.name, comments)
        assert sc.BurnedInAnnotation == "YES"
    # Burned-in text is neither removed from the stored source nor copied into any log.
    phi = dcmread(sent[next(c.name for c in ACCEPTED if c.make is burned_in_phi)])
    spooled = dcmread(jobs[phi.SOPInstanceUID].spool_path)
    assert spooled.PixelData == phi.PixelData
    logs = node.log.read_text() + (node.data_dir / "audit.jsonl").read_text()
    assert PHI_TEXT.split()[0] not in logs
