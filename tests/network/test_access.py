"""Who may talk to the node: per-AE source addresses and DICOM TLS, with DCMTK as the peer."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.config import NODE_AET
from harness.pki import make_pki
from harness.ports import free_port
from tests.conftest import MODALITY, SAMPLES

pytestmark = [pytest.mark.network, pytest.mark.interop]
SAMPLE = SAMPLES / "hc18_104_HC.dcm"


def echo(port: int, aet: str, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", NODE_AET, *tls, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def audit(node) -> list[dict]:
    return [json.loads(line) for line in (node.data_dir / "audit.jsonl").read_text().splitlines()]


def test_ae_only_from_its_allowed_addresses(make_node) -> None:
    # STORESCU may call only from 10.20.0.0/16; ECHOSCU only from loopback; the others listed from anywhere.
    node = make_node(scp__allowed_sources=["STORESCU=10.20.0.0/16", "ECHOSCU=127.0.0.1"]).start("--no-worker")
    refused = echo(node.port, "STORESCU")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    assert echo(node.port, "ECHOSCU").returncode == 0
    assert echo(node.port, MODALITY).returncode == 0
    [event] = [e for e in audit(node) if e["event"] == "association-rejected"]
    assert event["calling_ae"] == "STORESCU" and event["address"] == "127.0.0.1"
    assert "not allowed from 127.0.0.1" in event["reason"]


def test_dicom_tls_with_client_certificates(make_node, tmp_path) -> None:
    pki = make_pki(tmp_path)
    tls_port = free_port()
    node = make_node(
        scp__tls_port=tls_port,
        scp__tls_certificate=str(pki["server_crt"]),
        scp__tls_private_key=str(pki["server_key"]),
        scp__tls_ca_certificates=str(pki["ca_crt"]),
    ).start("--no-worker")
    client = ("+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca_crt"]))
    stored = subprocess.run(
        ["storescu", "-aet", MODALITY, "-aec", NODE_AET, *client, "127.0.0.1", str(tls_port), str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stored.returncode == 0, stored.stderr
    assert [j.state for j in node.jobs.jobs()] == ["queued"]
    assert any(e["event"] == "association-accepted" and e["tls"] for e in audit(node))
    # No client certificate, or no TLS at all, on the TLS port: no association.
    assert echo(tls_port, MODALITY, "+tla", "+cf", str(pki["ca_crt"])).returncode != 0
    assert echo(tls_port, MODALITY).returncode != 0
    # The plain port still works alongside.
    assert echo(node.port, MODALITY).returncode == 0
    assert node.proc is not None and node.proc.poll() is None
