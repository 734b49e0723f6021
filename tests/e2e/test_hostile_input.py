"""A hostile or careless modality against a node delivering to Orthanc: every request answered at once (a
status, or an A-ABORT where none can be given), each audited with its reason, no traceback in the log,
nothing of a refused object at Orthanc, and the next good image from another modality reported.

The hostile requests come from pynetdicom associations whose command sets and PDUs are written by hand
(``harness/hostile.py``: pynetdicom's own encoder would refuse them), and from bare TCP connections.
"""

from __future__ import annotations

import hashlib
import json
import time
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from harness.config import NODE_AET
from harness.corpus import HEADER_REFUSED, base, corrupt_jpeg, dataset_offset, unknown_character_set
from harness.hostile import (
    US_IMAGE,
    CaseResult,
    RawScu,
    Target,
    dataset_bytes,
    hostile_cases,
    run_case,
    store_command,
    store_contexts,
)
from harness.node import NodeProcess, prepare_node
from harness.processes import HarnessError, wait_for
from tests.conftest import MODALITY, RELIABILITY_OUTPUTS, SAMPLES, send, storescu
from tests.e2e.helpers import find, outputs_in_study, sr_content

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.filterwarnings("ignore:Unknown encoding")]

HOSTILE, GOOD = "HOSTILE-US", "GOOD-US"
STALL_S = ACSE_S = 2.0


@pytest.fixture
def node(tmp_path: Path, orthanc) -> NodeProcess:
    node = prepare_node(
        tmp_path / "node",
        orthanc,
        calling_aets=(HOSTILE, GOOD, MODALITY, "ECHOSCU"),
        source_to_orthanc=True,
        scp__stall_timeout=STALL_S,
        scp__acse_timeout=ACSE_S,
        **{**RELIABILITY_OUTPUTS, "orthanc__retry_initial": 0.5, "orthanc__retry_max": 2.0},
    )
    node.start()
    yield node
    node.stop()


def audit(node: NodeProcess) -> list[dict]:
    return [json.loads(line) for line in (node.data_dir / "audit.jsonl").read_text().splitlines()]


def table(results: list[CaseResult]) -> str:
    rows = [
        f"{r.name:62s} {r.got:9s} {r.seconds:7.3f} s  {'ok' if r.ok else 'WRONG (' + r.expected + ')'}" for r in results
    ]
    return "\n".join(rows)


def header_case(target: Target, folder: Path, case) -> CaseResult:
    """A C-STORE of a corpus object (a sound command set) on a pynetdicom association: status and time."""
    path = case.make(folder)
    ds = dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()
    syntax = str(ds.file_meta.TransferSyntaxUID)
    scu = RawScu(
        target.port,
        store_contexts(US_IMAGE, syntaxes=(syntax,)),
        calling_ae=target.calling_ae,
        called_ae=target.called_ae,
    )
    try:
        command = store_command(US_IMAGE, str(ds.SOPInstanceUID))
        answer = scu.send_store(command, data[dataset_offset(data) :], scu.context_id(US_IMAGE))
    finally:
        scu.close()
    events = [e for e in audit_of(target) if e["event"] == "store-refused" and e["sop_uid"] == ds.SOPInstanceUID]
    reason = next((str(e["reason"]) for e in events if case.why in str(e["reason"])), "")
    return CaseResult(case.name, answer.describe(), round(answer.seconds, 3), reason, case.expected, 1.0)


def audit_of(target: Target) -> list[dict]:
    return [json.loads(line) for line in target.audit.read_text().splitlines()]


def test_hostile_requests_are_answered_at_once_and_audited(node: NodeProcess, orthanc, tmp_path: Path) -> None:
    target = Target(node.port, NODE_AET, HOSTILE, node.data_dir / "audit.jsonl", tmp_path)
    results = [run_case(target, case) for case in hostile_cases(STALL_S, ACSE_S)]
    results += [header_case(target, tmp_path, case) for case in HEADER_REFUSED]

    # Same SOP Instance UID, other pixels: the first object is taken, the second refused (0x0111).
    first = base()
    first_path = tmp_path / "first.dcm"
    first.save_as(first_path, enforce_file_format=True)
    assert storescu(node.port, first_path, aet=HOSTILE).returncode == 0
    other = dcmread(first_path)
    other.PixelData = bytes(255 - b for b in other.PixelData)
    other_path = tmp_path / "other.dcm"
    other.save_as(other_path, enforce_file_format=True)
    scu = target.scu()
    try:
        answer = scu.send_store(
            store_command(US_IMAGE, str(other.SOPInstanceUID)), dataset_bytes(other_path), scu.context_id(US_IMAGE)
        )
    finally:
        scu.close()
    conflict = next(
        (str(e["reason"]) for e in audit(node) if e["event"] == "store-refused" and "uid_conflict" in str(e["reason"])),
        "",
    )
    results.append(
        CaseResult(
            "same SOP Instance UID, other pixels", answer.describe(), round(answer.seconds, 3), conflict, "0x0111", 1.0
        )
    )

    # Accepted, then told plainly: an unknown character set (reported, with a note) and a corrupt JPEG stream
    # (rejected by the worker with one warning line).
    charset, broken = unknown_character_set(tmp_path), corrupt_jpeg(tmp_path)
    assert send(node.port, charset).returncode == 0
    assert send(node.port, broken).returncode == 0
    # The next good image, from another modality.
    good = tmp_path / "good.dcm"
    good_ds = dcmread(SAMPLES / "hc18_669_HC.dcm")
    good_ds.StudyInstanceUID, good_ds.SeriesInstanceUID = generate_uid(), generate_uid()  # the session's Orthanc
    good_ds.SOPInstanceUID = good_ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # holds the sample's study
    good_ds.save_as(good, enforce_file_format=True)
    assert storescu(node.port, good, aet=GOOD).returncode == 0
    node.wait_all(4, timeout=240)

    print("\n" + table(results))
    wrong = [r for r in results if not r.ok]
    assert not wrong, "\n" + table(wrong) + "\n" + "\n".join(f"{r.name}: audited {r.audited!r}" for r in wrong)

    jobs = {j.sop_uid: j for j in node.jobs.jobs()}
    assert set(jobs) == {
        str(first.SOPInstanceUID),
        str(dcmread(charset).SOPInstanceUID),
        str(dcmread(broken).SOPInstanceUID),
        str(good_ds.SOPInstanceUID),
    }, "nothing refused was recorded, so nothing of it can be delivered"
    assert jobs[str(good_ds.SOPInstanceUID)].state == "delivered"
    [sr], _ = outputs_in_study(orthanc, str(good_ds.StudyInstanceUID))
    assert any(c.startswith("Finding: ") for c in sr_content(sr)["comments"])

    # The archive holds the first object under the conflicting UID, and the one report on it.
    [held] = find(orthanc, SOPInstanceUID=str(first.SOPInstanceUID))
    md5 = httpx.get(
        f"{orthanc.url}/instances/{held['ID']}/attachments/dicom/md5", auth=(orthanc.username, orthanc.password)
    ).text.strip('"')
    spooled = Path(jobs[str(first.SOPInstanceUID)].spool_path).read_bytes()  # what the node forwarded
    assert md5 == hashlib.md5(spooled).hexdigest()
    srs, _ = outputs_in_study(orthanc, str(first.StudyInstanceUID))
    assert len(srs) == 1

    charset_job = jobs[str(dcmread(charset).SOPInstanceUID)]
    assert charset_job.state == "delivered", charset_job.error
    [charset_sr], _ = outputs_in_study(orthanc, str(dcmread(charset).StudyInstanceUID))
    assert charset_sr.SpecificCharacterSet == "ISO_IR 192" and str(charset_sr.PatientName) == "Müller^Jörg"
    assert any("'ISO_IR 999' is not a DICOM one" in c for c in sr_content(charset_sr)["comments"])

    broken_job = jobs[str(dcmread(broken).SOPInstanceUID)]
    assert broken_job.state == "rejected" and "cannot be decoded" in broken_job.error
    log = node.log.read_text(errors="replace")
    [line] = [x for x in log.splitlines() if f"job {broken_job.id} -> rejected" in x]
    assert " WARNING " in line and "cannot be decoded" in line
    assert "Traceback" not in log, log[log.index("Traceback") - 400 : log.index("Traceback") + 1500]
    assert "\x00" not in log, "a peer's control characters are escaped in the log"


def silent(port: int, address: str, n: int) -> list[RawScu]:
    """``n`` associations from ``address`` that send nothing more."""
    contexts = store_contexts(US_IMAGE)
    return [RawScu(port, contexts, calling_ae=HOSTILE, called_ae=NODE_AET, bind_address=address) for _ in range(n)]


def timed_store(port: int, path: Path) -> float:
    started = time.perf_counter()
    result = storescu(port, path, aet=GOOD)
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - started


def test_silent_associations_never_lock_a_modality_out(tmp_path: Path, orthanc) -> None:
    node = prepare_node(tmp_path / "node", orthanc, calling_aets=(HOSTILE, GOOD, "ECHOSCU")).start("--no-worker")
    scp = node.settings.scp
    held: list[RawScu] = []
    try:
        # One address holds as many as it may; one more is refused (A-ASSOCIATE-RJ, transient).
        held += silent(node.port, "127.0.0.2", scp.maximum_associations_per_address)
        with pytest.raises(HarnessError):
            silent(node.port, "127.0.0.2", 1)
        sample = tmp_path / "a.dcm"
        base().save_as(sample, enforce_file_format=True)
        per_address_s = timed_store(node.port, sample)
        # Other addresses fill every slot; once they have been silent for the eviction time, a modality gets in.
        address = 3
        while len(held) < scp.maximum_associations:
            n = min(scp.maximum_associations_per_address, scp.maximum_associations - len(held))
            held += silent(node.port, f"127.0.0.{address}", n)
            address += 1
        assert all(a.alive for a in held)
        time.sleep(scp.idle_eviction_seconds + 0.5)  # the hostile associations' silence, not a wait for the node
        base().save_as(sample, enforce_file_format=True)
        full_s = timed_store(node.port, sample)
        print(
            f"\nstore with {scp.maximum_associations_per_address} silent from one address: {per_address_s:.2f} s; "
            f"with all {scp.maximum_associations} slots silent: {full_s:.2f} s"
        )
        assert per_address_s < 5.0 and full_s < 5.0
        wait_for(lambda: sum(not a.alive for a in held) == 1, 10, "exactly one silent association evicted")
        events = audit(node)
        assert [e["event"] for e in events].count("association-evicted") == 1
        rejected = [e for e in events if e["event"] == "association-rejected"]
        assert len(rejected) == 1 and "maximum_associations_per_address" in rejected[0]["reason"]
        assert [j.state for j in node.jobs.jobs()] == ["queued", "queued"]
    finally:
        for a in held:
            a.close()
        node.stop()


def test_replace_policy_delivers_outputs_only_where_the_archive_replaced_the_image(tmp_path: Path) -> None:
    """``scp.uid_conflict = "replace"``: an Orthanc that keeps the first object gets nothing of the second (a
    dead letter: it holds other pixels); one that overwrites gets the new image and its new reports under
    the same UIDs (replaced, not added)."""
    from fetalnode.config import DestinationSettings
    from harness.orthanc import OrthancProcess

    node: NodeProcess | None = None
    keeps = OrthancProcess(tmp_path / "keeps", webviewer=False).start()
    replaces = OrthancProcess(tmp_path / "replaces", webviewer=False, options={"OverwriteInstances": True}).start()
    try:
        tables = [
            DestinationSettings(
                name=name,
                kind="orthanc",
                url=o.url,
                username=o.username,
                password_file=str(o.write_password_file(tmp_path / f"{name}-pw")),
                send=["source", "outputs"],
                retry_initial=0.5,
                retry_max=1.0,
            )
            for name, o in (("keeps", keeps), ("replaces", replaces))
        ]
        node = prepare_node(
            tmp_path / "node",
            keeps,
            calling_aets=(MODALITY, "ECHOSCU"),
            scp__uid_conflict="replace",
            destinations=tables,
            **RELIABILITY_OUTPUTS,
        ).start()
        first = base()
        first_path, other_path = tmp_path / "first.dcm", tmp_path / "other.dcm"
        first.save_as(first_path, enforce_file_format=True)
        other = dcmread(first_path)
        other.PixelData = bytes(255 - b for b in other.PixelData)
        other.save_as(other_path, enforce_file_format=True)
        assert send(node.port, first_path).returncode == 0
        node.wait_all(1)
        assert send(node.port, other_path).returncode == 0
        node.wait_all(2)
        one, two = node.jobs.jobs()
        assert one.state == "delivered" and two.replaces
        assert two.deliveries["keeps"].status == "dead" and "OverwriteInstances" in two.deliveries["keeps"].error
        assert two.deliveries["replaces"].status == "delivered"
        study = str(first.StudyInstanceUID)

        def held(o: OrthancProcess) -> dict[str, bytes]:
            found = find(o, StudyInstanceUID=study)
            out = {}
            for item in found:
                r = httpx.get(f"{o.url}/instances/{item['ID']}/file", auth=(o.username, o.password), timeout=30)
                out[str(dcmread(BytesIO(r.content)).SOPInstanceUID)] = r.content
            return out

        at_keeps, at_replaces = held(keeps), held(replaces)
        assert set(at_keeps) == set(at_replaces) and len(at_keeps) == 3, "source, sr, sc: replaced, never added"
        sop = str(first.SOPInstanceUID)
        assert (
            at_keeps[sop] == Path(one.spool_path).read_bytes() and at_replaces[sop] == Path(two.spool_path).read_bytes()
        )
        sc_uid = two.result["outputs"]["sc"]
        assert at_keeps[sc_uid] != at_replaces[sc_uid], "the archive that replaced the image holds the new capture"
    finally:
        if node is not None:
            node.stop()
        keeps.stop()
        replaces.stop()
