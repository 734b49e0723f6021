"""Malformed inputs over a real association: a clear status, an audit line, and the node keeps working."""

from __future__ import annotations

import json

import pytest
from pydicom import dcmread
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (
    UltrasoundImageStorage,
    Verification,
)

from harness.config import NODE_AET
from harness.corpus import REFUSED, SAMPLE, corpus_contexts
from tests.conftest import MODALITY, storescu

pytestmark = [pytest.mark.network, pytest.mark.interop]

MPEG2 = "1.2.840.10008.1.2.4.100"


def associate(port: int, contexts: list) -> object:
    ae = AE(ae_title=MODALITY)
    ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title=NODE_AET)
    assert assoc.is_established
    return assoc


def test_each_malformed_input_gets_its_status_and_an_audit_line(make_node, tmp_path) -> None:
    node = make_node().start("--no-worker")
    contexts = corpus_contexts()
    assoc = associate(node.port, contexts)
    answers = {}
    try:
        for case in REFUSED:
            path = case.make(tmp_path)
            rsp = assoc.send_c_store(path)  # a path is sent as its bytes, malformed or not
            answers[case.name] = (f"0x{rsp.Status:04X}", str(rsp.get("ErrorComment", "")), path)
            assert assoc.send_c_echo().Status == 0x0000, f"node stopped answering after {case.name}"
    finally:
        assoc.release()
    wrong = {
        name: got[:2] for name, got in answers.items() if got[0] != next(c for c in REFUSED if c.name == name).expected
    }
    assert not wrong, wrong
    for case in REFUSED:
        _, comment, path = answers[case.name]
        assert comment and comment in _audit_reason(node, path), (case.name, comment)
        assert case.why in _audit_reason(node, path), case.name
    events = [json.loads(line) for line in (node.data_dir / "audit.jsonl").read_text().splitlines()]
    refused = [e for e in events if e["event"] == "store-refused"]
    assert sorted(e["status"] for e in refused) == sorted(c.expected for c in REFUSED)
    assert node.jobs.jobs() == [], "nothing malformed reaches the worker"
    # A good image right after the corpus is still taken.
    assert storescu(node.port, SAMPLE).returncode == 0
    assert [j.state for j in node.jobs.jobs()] == ["queued"]


def _audit_reason(node, path) -> str:
    sop = str(dcmread(path, stop_before_pixels=True, force=True).file_meta.MediaStorageSOPInstanceUID)
    for line in (node.data_dir / "audit.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "store-refused" and event["sop_uid"] == sop:
            return str(event["reason"])
    return ""


def test_unsupported_transfer_syntax_is_not_negotiated(make_node) -> None:
    node = make_node().start("--no-worker")
    contexts = [build_context(UltrasoundImageStorage, [MPEG2]), build_context(Verification)]
    assoc = associate(node.port, contexts)
    try:
        [refused] = assoc.rejected_contexts
        assert str(refused.abstract_syntax) == UltrasoundImageStorage
        assert refused.result == 0x04  # transfer syntaxes not supported (PS3.8 9.3.3.2)
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
