"""Deliver anywhere, on real peers: DCMTK storescp as a plain PACS (C-STORE), Orthanc with DICOMweb as a
VNA (STOW-RS), Orthanc by REST; routing rules; dead letters; a destination down; the node SIGKILLed."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from pydicom import dcmread

from fetalnode.config import DestinationSettings, RouteSettings
from fetalnode.vocab import DeliveryStatus, JobState
from harness.node import NodeProcess, cli
from harness.orthanc import OrthancProcess
from harness.ports import free_port
from harness.processes import wait_for
from harness.storescp import StorescpProcess
from tests.conftest import MODALITY, RELIABILITY_OUTPUTS, SAMPLES, dicom_testfile, need, send
from tests.e2e.helpers import find

pytestmark = pytest.mark.e2e
US = [SAMPLES / "hc18_104_HC.dcm", SAMPLES / "fba_ventriculomegaly_moderate_fba_01465.dcm", SAMPLES / "hc18_316_HC.dcm"]
FAST = {"retry_initial": 0.5, "retry_max": 1.0, "timeout": 5.0}


def pacs(port: int, send_: tuple[str, ...] = ("source", "sr", "sc"), **keys: object) -> DestinationSettings:
    keys = {**FAST, **keys}
    return DestinationSettings(
        name="pacs",
        kind="dicom",
        ae_title="STORESCP",
        host="127.0.0.1",
        port=port,
        send=list(send_),
        **keys,  # type: ignore[arg-type]
    )


def rest(orthanc: OrthancProcess, folder: Path, send_: tuple[str, ...] = ("source", "sr", "sc")) -> DestinationSettings:
    pw = orthanc.write_password_file(folder / "orthanc-pw")
    return DestinationSettings(
        name="orthanc",
        kind="orthanc",
        url=orthanc.url,
        username=orthanc.username,
        password_file=str(pw),
        send=list(send_),
        **FAST,  # type: ignore[arg-type]
    )


def stow(vna: OrthancProcess, folder: Path, user: str = "", password: str = "") -> DestinationSettings:
    pw = folder / "vna-pw"
    pw.write_text(password or vna.password)
    return DestinationSettings(
        name="vna",
        kind="dicomweb",
        url=vna.dicomweb_url,
        username=user or vna.username,
        password_file=str(pw),
        send=["sr", "sc"],
        **FAST,  # type: ignore[arg-type]
    )


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def at_pacs(pacs_: StorescpProcess) -> set[str]:
    """The SOP Instance UIDs storescp holds (one file per UID: a second store of one overwrites it)."""
    return {path.name.split(".", 1)[1].removesuffix(".dcm") for path in pacs_.folder.glob("*.dcm")}


def store_requests(pacs_: StorescpProcess) -> int:
    """How many C-STORE requests storescp answered (its verbose log)."""
    return pacs_.log.read_text().count("Received Store Request")


def in_orthanc(orthanc: OrthancProcess, sop_uid: str) -> int:
    return len(find(orthanc, SOPInstanceUID=sop_uid))


def status(node: NodeProcess) -> dict:
    return json.loads(cli("status", "--config", str(node.config), check=True).stdout)


def audit(node: NodeProcess) -> list[dict]:
    return [json.loads(line) for line in (node.data_dir / "audit.jsonl").read_text().splitlines()]


def test_source_and_outputs_reach_a_pacs_a_vna_and_orthanc_and_rules_route(make_node, own_orthanc, tmp_path) -> None:
    need("storescp")
    with (
        StorescpProcess(tmp_path / "pacs") as store,
        OrthancProcess(tmp_path / "vna", webviewer=False, dicomweb=True).start() as vna,
    ):
        node = make_node(
            own_orthanc,
            **RELIABILITY_OUTPUTS,
            destinations=[pacs(store.port), stow(vna, tmp_path), rest(own_orthanc, tmp_path)],
            routes=[
                RouteSettings(name="ct-archive", action="forward", modality=["CT"]),
                RouteSettings(name="no-mr", action="ignore", modality=["MR"]),
            ],
        ).start()
        ct, mr = dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")
        for path in [*US[:2], ct, mr]:
            assert send(node.port, path).returncode == 0
        node.wait_all(4)
        jobs = {j.sop_uid: j for j in node.jobs.jobs()}
        assert [jobs[uid(p)].state for p in [*US[:2], ct, mr]] == ["delivered", "delivered", "delivered", "ignored"]
        for path in US[:2]:
            job = jobs[uid(path)]
            outputs = job.result["outputs"]
            assert set(job.receipts) == {"pacs", "vna", "orthanc"}
            for sop in (uid(path), outputs["sr"], outputs["sc"]):
                assert store.received(sop) is not None, f"{sop} not at the PACS"
                assert in_orthanc(own_orthanc, sop) == 1
            assert in_orthanc(vna, outputs["sr"]) == in_orthanc(vna, outputs["sc"]) == 1
            assert in_orthanc(vna, uid(path)) == 0, "the VNA's send has no source"
            got = dcmread(store.received(uid(path)))  # type: ignore[arg-type]
            assert got.PixelData == dcmread(path).PixelData, "the source is forwarded unchanged"
        assert store.received(uid(ct)) is not None and jobs[uid(ct)].result == {}, "forwarded, not analysed"
        assert store.received(uid(mr)) is None and in_orthanc(own_orthanc, uid(mr)) == 0
        events = audit(node)
        [ct_in] = [e for e in events if e["event"] == "instance-received" and e["sop_uid"] == uid(ct)]
        assert (ct_in["route"], ct_in["action"]) == ("ct-archive", "forward")
        [ignored] = [e for e in events if e["event"] == "ignored"]
        assert (ignored["sop_uid"], ignored["route"]) == (uid(mr), "no-mr")
        counts = {d["name"]: d["jobs"] for d in status(node)["destinations"]}
        assert counts["pacs"] == {"pending": 0, "delivered": 3, "dead": 0}
        assert counts["vna"]["delivered"] == counts["orthanc"]["delivered"] == 3
        assert store_requests(store) == len(at_pacs(store)) == 7, "2 x (source, SR, SC) + the CT, each once"


def test_one_destination_down_does_not_delay_the_other_then_everything_arrives_once(
    make_node, own_orthanc, tmp_path
) -> None:
    need("storescp")
    port = free_port()
    node = make_node(own_orthanc, **RELIABILITY_OUTPUTS, destinations=[pacs(port), rest(own_orthanc, tmp_path)]).start()
    for path in US:
        assert send(node.port, path).returncode == 0
    # every job analysed and waiting for the PACS only: Orthanc already holds its source, SR and SC
    wait_for(
        lambda: [j.state for j in node.jobs.jobs()] == [JobState.DELIVERING] * 3, 120, "3 jobs waiting for the PACS"
    )
    for job in node.jobs.jobs():
        assert job.deliveries["orthanc"].status is DeliveryStatus.DELIVERED
        assert job.deliveries["pacs"].status is DeliveryStatus.PENDING
        assert all(in_orthanc(own_orthanc, sop) == 1 for sop in (job.sop_uid, *job.result["outputs"].values()))
    assert {d["name"]: d["jobs"]["pending"] for d in status(node)["destinations"]}["pacs"] == 3
    with StorescpProcess(tmp_path / "pacs", port=port) as store:
        node.wait_all(3, {"delivered"}, timeout=120)
        expected = {uid(p) for p in US} | {o for j in node.jobs.jobs() for o in j.result["outputs"].values()}
        assert at_pacs(store) == expected and store_requests(store) == len(expected), "each object once"
    assert all(in_orthanc(own_orthanc, sop) == 1 for sop in expected), "Orthanc got each object once"
    retries = [e for e in audit(node) if e["event"] == "delivery-retry"]
    assert retries and all(set(e["pending"]) == {"pacs"} for e in retries)


def test_permanent_refusals_are_dead_letters_in_one_attempt_and_resend_replays_one_destination(
    make_node, own_orthanc, tmp_path
) -> None:
    need("storescp")
    refusing = StorescpProcess(tmp_path / "refusing", refuse=True).start()
    vna = OrthancProcess(tmp_path / "vna", webviewer=False, dicomweb=True, read_only_users={"viewer": "look"}).start()
    try:
        node = make_node(
            own_orthanc,
            **RELIABILITY_OUTPUTS,
            destinations=[pacs(refusing.port), stow(vna, tmp_path, "viewer", "look"), rest(own_orthanc, tmp_path)],
        ).start()
        assert send(node.port, US[0]).returncode == 0
        node.wait_all(1, {"failed"}, timeout=120)
        [job] = node.jobs.jobs()
        assert job.deliveries["pacs"].status is DeliveryStatus.DEAD and job.deliveries["pacs"].attempts == 1
        assert "Rejected Permanent" in job.deliveries["pacs"].error
        assert job.deliveries["vna"].status is DeliveryStatus.DEAD and "403" in job.deliveries["vna"].error
        assert job.deliveries["orthanc"].status is DeliveryStatus.DELIVERED
        dead = {e["destination"]: e for e in audit(node) if e["event"] == "dead-letter"}
        assert set(dead) == {"pacs", "vna"} and "403" in dead["vna"]["reason"]
        refusing.stop()
        with StorescpProcess(tmp_path / "pacs", port=refusing.port) as store:
            out = cli("resend", "--config", str(node.config), "--destination", "pacs", check=True)
            assert json.loads(out.stdout) == {"requeued": 1}
            wait_for(lambda: node.jobs.jobs()[0].deliveries["pacs"].status is DeliveryStatus.DELIVERED, 120, "pacs")
            node.wait_all(1, {"failed"})  # the VNA's refusal stands
            assert len(at_pacs(store)) == store_requests(store) == 3
        counts = {d["name"]: d["jobs"] for d in status(node)["destinations"]}
        assert counts == {
            "pacs": {"pending": 0, "delivered": 1, "dead": 0},
            "vna": {"pending": 0, "delivered": 0, "dead": 1},
            "orthanc": {"pending": 0, "delivered": 1, "dead": 0},
        }
    finally:
        refusing.stop()
        vna.stop()


def test_node_killed_mid_delivery_every_object_arrives_once_per_destination(make_node, own_orthanc, tmp_path) -> None:
    need("storescp")
    with StorescpProcess(tmp_path / "pacs") as store:
        node = make_node(
            own_orthanc, **RELIABILITY_OUTPUTS, destinations=[pacs(store.port), rest(own_orthanc, tmp_path)]
        ).start()
        for path in US:
            assert send(node.port, path).returncode == 0
        # killed as soon as the PACS has the first object: the first job's other objects are still to go
        wait_for(lambda: store_requests(store) >= 1, 120, "the first store at the PACS", interval=0.02)
        node.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        node.proc.wait()  # type: ignore[union-attr]
        node.proc = None
        node.start()
        node.wait_all(3, {"delivered"}, timeout=180)
        expected = {uid(p) for p in US} | {o for j in node.jobs.jobs() for o in j.result["outputs"].values()}
        assert at_pacs(store) == expected, "every object reached the PACS, one file each"
        assert all(in_orthanc(own_orthanc, sop) == 1 for sop in expected), "one instance each in Orthanc"
        # at-least-once: an object whose store was under way at the kill may be sent again (same UID)
        print(f"PACS: {len(expected)} objects, {store_requests(store)} C-STORE requests")


def test_a_site_terminal_delivers_the_clouds_objects_to_its_destinations(own_orthanc, tmp_path) -> None:
    """The cloud path: the site's terminal, not the worker, delivers to the site's destinations."""
    from harness.cloud import prepare_terminal, prepare_worker
    from harness.rabbitmq import RabbitMQProcess

    need("storescp")
    broker = RabbitMQProcess(tmp_path / "rabbitmq", tls=True, sites=("site-a",)).start()
    with StorescpProcess(tmp_path / "pacs") as store:
        node = prepare_terminal(
            tmp_path / "site-a",
            own_orthanc,
            broker,
            "site-a",
            calling_aets=(MODALITY, "ECHOSCU"),
            destinations=[pacs(store.port), rest(own_orthanc, tmp_path, ("sr", "sc"))],
            **RELIABILITY_OUTPUTS,
        )
        worker = prepare_worker(tmp_path / "worker", broker)
        try:
            node.start()
            worker.start_broker_worker()
            for path in US[:2]:
                assert send(node.port, path).returncode == 0
            node.wait_all(2, {"delivered"})
            for job in node.jobs.jobs():
                assert set(job.receipts["pacs"]) == {"source", "sr", "sc"}
                assert set(job.receipts["orthanc"]) == {"sr", "sc"}
                assert store.received(job.sop_uid) is not None and in_orthanc(own_orthanc, job.sop_uid) == 0
        finally:
            worker.stop()
            node.stop()
            broker.stop()


def test_folder_destination_keeps_one_file_per_object(make_node, tmp_path: Path) -> None:
    """An archive drop folder: 20 images, every output and the source in its own file, none overwritten."""
    from tests.conftest import sample_copies

    drop = tmp_path / "drop"
    folder = DestinationSettings(name="archive", kind="folder", folder=str(drop), send=["source", "outputs"])
    node = make_node(destinations=[folder], **RELIABILITY_OUTPUTS).start()
    images = sample_copies(20, tmp_path / "in")
    for path in images:
        assert send(node.port, path).returncode == 0
    node.wait_all(20, timeout=300)
    assert [j.state for j in node.jobs.jobs()] == ["delivered"] * 20
    files = sorted(drop.rglob("*.dcm"))
    assert len(files) == 20 * (1 + len(RELIABILITY_OUTPUTS["output__enabled"]))  # type: ignore[arg-type]
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        assert path.relative_to(drop).parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
    sources = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in images}
    assert sources <= {p.stem for p in files}
    assert not list(drop.rglob("*.tmp*")), "every file written atomically (no temporary left)"
