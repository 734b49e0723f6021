"""The cloud path on real parts: Debian's RabbitMQ with a TLS listener only and a user per site, site terminals
each delivering to its own Orthanc, cloud workers serving every site.

- what a worker receives holds no patient data: no PHI string in the message's bytes or in its decoded
  DICOM, no non-zero pixel outside the ultrasound regions or the site's masks, for every object class;
- every image's objects land in its own site's Orthanc, re-identified, once, with the output UIDs the
  embedded mode derives from the real image, valid for dciodvfy; nothing at the other site;
- a result for a job the terminal never published is dropped and audited; a terminal without its secret
  does not start.
"""

from __future__ import annotations

import json
import subprocess
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from fetalnode.broker import SiteTopology, connect, declare_site, publish_result
from fetalnode.runner import Outcome, Verdict
from fetalnode.vocab import Stage
from harness import phi
from harness.cloud import prepare_terminal, prepare_worker
from harness.node import NodeProcess, cli, fetalnode_command
from harness.orthanc import OrthancProcess
from harness.processes import wait_for
from harness.rabbitmq import WORKER, RabbitMQProcess
from tests.conftest import MODALITY, SAMPLES, need, send
from tests.e2e.helpers import find

pytestmark = pytest.mark.e2e
AETS = (MODALITY, "ECHOSCU")
HEADS = [SAMPLES / "hc18_104_HC.dcm", SAMPLES / "hc18_669_HC.dcm", SAMPLES / "hc18_316_HC.dcm"]


@pytest.fixture
def rabbit(tmp_path: Path):
    need("rabbitmq-server")
    broker = RabbitMQProcess(tmp_path / "rabbitmq", tls=True, sites=("site-a", "site-b")).start()
    yield broker
    broker.stop()


def orthanc_objects(orthanc: OrthancProcess) -> list[bytes]:
    found = find(orthanc)
    return [
        httpx.get(
            f"{orthanc.url}/instances/{i['ID']}/file", auth=(orthanc.username, orthanc.password), timeout=30
        ).content
        for i in found
    ]


def dciodvfy_errors(data: bytes, folder: Path) -> list[str]:
    path = folder / "check.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_what_a_worker_receives_holds_no_patient_data(rabbit, tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc", webviewer=False).start()
    terminal = prepare_terminal(tmp_path / "a", orthanc, rabbit, "site-a", masks=phi.MASKS, calling_aets=AETS).start()
    worker = prepare_worker(tmp_path / "worker", rabbit)
    try:
        with connect(rabbit.settings(WORKER)) as conn:
            declare_site(conn, "site-a")  # the queues a worker declares: the terminal publishes into them
        cases = {name: make() for name, make in phi.CASES.items()}
        by_uid = {}
        for name, case in cases.items():
            path = tmp_path / f"{name}.dcm"
            path.write_bytes(case.data)
            assert send(terminal.port, path).returncode == 0, name
            by_uid[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = case
        wait_for(lambda: terminal.jobs.counts()["published"] == len(cases), 120, "every image published")
        # Read each job as a worker gets it, then give it back to the queue.
        received = {}
        with connect(rabbit.settings(WORKER)) as conn:
            channel = conn.channel()
            for _ in cases:
                message = channel.basic_get(SiteTopology("site-a").jobs_queue, no_ack=False)
                assert message is not None
                received[int(message.headers["job"])] = (bytes(message.body), dict(message.headers))
            for tag in range(1, len(cases) + 1):
                channel.basic_reject(tag, requeue=True)
        jobs = {j.id: j for j in terminal.jobs.jobs()}
        for job_id, (body, headers) in received.items():
            case = by_uid[jobs[job_id].sop_uid]
            result = phi.probe(body, case.phi + case.original_uids, case.kept)
            assert result.clean, (case.name, result.strings[:5], result.nonzero_outside)
            assert result.pixels_checked > 0
            assert not any(uid in json.dumps(headers) for uid in case.original_uids), case.name
        assert set(received) == set(jobs)
        # The worker analyses them; the site's Orthanc gets them re-identified.
        worker.start_broker_worker()
        terminal.wait_all(len(cases), timeout=300)
        assert {j.state for j in terminal.jobs.jobs()} == {"delivered"}
        outputs = [dcmread(BytesIO(d)) for d in orthanc_objects(orthanc)]
        ours = [d for d in outputs if d.SOPInstanceUID not in by_uid]
        assert len(ours) >= 5 * len(cases) - 2 * 2, (
            "sr, sc, gsps, seg, obsr (seg and obsr only where a head was analysed)"
        )
        sources = {str(s.StudyInstanceUID): s for s in (dcmread(BytesIO(c.data)) for c in cases.values())}
        for ds in ours:
            source = sources[str(ds.StudyInstanceUID)]
            assert (ds.PatientName, ds.PatientID) == (source.PatientName, source.PatientID), ds.SOPClassUID
            errors = dciodvfy_errors(ds_bytes(ds), tmp_path)
            assert not errors, (ds.SOPClassUID, errors)
        assert not any(terminal.jobs.pseudonyms(j) for j in jobs), "the pseudonym maps are gone with the jobs"
    finally:
        worker.stop()
        terminal.stop()
        orthanc.stop()


def ds_bytes(ds) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_two_sites_one_worker_each_site_gets_its_own_reidentified_objects_once(rabbit, tmp_path: Path) -> None:
    orthancs = {s: OrthancProcess(tmp_path / f"orthanc-{s}", webviewer=False).start() for s in ("site-a", "site-b")}
    terminals = {s: prepare_terminal(tmp_path / s, o, rabbit, s, calling_aets=AETS).start() for s, o in orthancs.items()}
    worker = prepare_worker(tmp_path / "worker", rabbit)
    try:
        worker.start_broker_worker()
        sent: dict[str, list[Path]] = {"site-a": HEADS[:2], "site-b": HEADS[2:]}
        for site, files in sent.items():
            for path in files:
                assert send(terminals[site].port, path).returncode == 0
        for site, terminal in terminals.items():
            terminal.wait_all(len(sent[site]), timeout=300)
            assert [j.state for j in terminal.jobs.jobs()] == ["delivered"] * len(sent[site]), terminal.jobs.jobs()
        for site, orthanc in orthancs.items():
            other = "site-b" if site == "site-a" else "site-a"
            held = [dcmread(BytesIO(d), stop_before_pixels=True) for d in orthanc_objects(orthanc)]
            studies = {str(d.StudyInstanceUID) for d in held}
            mine = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sent[site]}
            theirs = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sent[other]}
            assert studies == mine and not studies & theirs, "each site's Orthanc holds its own studies only"
            uids = [str(d.SOPInstanceUID) for d in held]
            assert len(uids) == len(set(uids)), "no object twice"
            for job in terminals[site].jobs.jobs():
                source = dcmread(job.spool_path, stop_before_pixels=True)
                for name, uid in job.result["outputs"].items():
                    [obj] = [d for d in held if str(d.SOPInstanceUID) == uid]
                    assert obj.PatientName == source.PatientName and obj.PatientID == source.PatientID, name
                    assert obj.StudyInstanceUID == source.StudyInstanceUID, name
        held_a = len(orthanc_objects(orthancs["site-a"]))
        # The same image analysed embedded (fetalnode analyze) gets the same output UIDs.
        folder = tmp_path / "embedded"
        first = terminals["site-a"].jobs.jobs()[0]
        out = cli("analyze", first.spool_path, "--out", str(folder), "--models-dir", str(SAMPLES.parent / "models"))
        assert out.returncode == 0, out.stderr
        embedded = json.loads((folder / "summary.json").read_text())["outputs"]
        assert embedded == first.result["outputs"]
        # A result for a job the terminal never published: dropped and audited.
        with connect(rabbit.settings(WORKER)) as conn:
            forged = Outcome(Verdict.DELIVERED, Stage.DELIVER).to_message()
            publish_result(conn, "site-a", {"job": 99999, "sop_uid": "2.25.1", "worker": "x", "outcome": forged})
            publish_result(conn, "site-a", {"job": "x"})
        audit = terminals["site-a"].data_dir / "audit.jsonl"

        def dropped() -> list[dict]:
            events = [json.loads(line) for line in audit.read_text().splitlines()]
            return [e for e in events if e["event"] == "result-unknown-job"]

        wait_for(lambda: len(dropped()) == 2, 30, "both results dropped and audited")
        assert [e["reason"][:13] for e in dropped()] == ["no such job", "unreadable: V"]
        assert len(orthanc_objects(orthancs["site-a"])) == held_a, "nothing of them delivered"
    finally:
        worker.stop()
        for terminal in terminals.values():
            terminal.stop()
        for orthanc in orthancs.values():
            orthanc.stop()


def test_a_terminal_without_its_secret_does_not_start(rabbit, tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc", webviewer=False).start()
    try:
        terminal: NodeProcess = prepare_terminal(tmp_path / "a", orthanc, rabbit, "site-a")
        Path(terminal.settings.privacy.secret_file).unlink()
        proc = subprocess.run(
            fetalnode_command("serve", "--config", str(terminal.config)), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2
        assert "privacy.secret_file" in proc.stderr and "ConfigError" in proc.stderr, proc.stderr[-2000:]
    finally:
        orthanc.stop()
