"""Destination kind ``dicom`` against real peers: DCMTK storescp (plain, uncompressed-only, TLS, refusing),
Orthanc's DICOM port, and a fetalnode terminal for C-STORE failure statuses and busy rejections."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from fetalnode.config import DestinationSettings
from fetalnode.destinations.base import Item
from fetalnode.destinations.dicom import DicomDestination
from fetalnode.errors import DeliveryError
from harness.config import NODE_AET
from harness.orthanc import OrthancProcess
from harness.pki import make_pki
from harness.ports import free_port
from harness.processes import wait_for
from harness.storescp import StorescpProcess
from tests.conftest import MODALITY, SAMPLES, dicom_testfile, need

pytestmark = [pytest.mark.network, pytest.mark.interop]
CALLING = "FETALNODE"


def destination(port: int, ae_title: str = "STORESCP", calling: str = CALLING, **keys: object) -> DicomDestination:
    keys = {"timeout": 5.0, **keys}
    settings = DestinationSettings(name="pacs", kind="dicom", ae_title=ae_title, host="127.0.0.1", port=port, **keys)  # type: ignore[arg-type]
    return DicomDestination(settings, calling)


def item(path: Path, name: str = "source") -> Item:
    return Item(name, path.read_bytes())


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StorescpProcess]]:
    need("storescp")
    started: list[StorescpProcess] = []

    def start(**fields: object) -> StorescpProcess:
        server = StorescpProcess(tmp_path / f"storescp{len(started)}", **fields).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def arrived(server: StorescpProcess, sop_uid: str) -> Path:
    return wait_for(lambda: server.received(sop_uid), 5, f"{sop_uid} in {server.folder}")


@pytest.mark.parametrize(
    "source",
    [
        SAMPLES / "hc18_104_HC.dcm",  # Explicit VR Little Endian
        SAMPLES / "hc18_316_HC.dcm",  # RLE Lossless
        dicom_testfile("US1_J2KR.dcm"),  # JPEG 2000 Lossless, YBR_RCT
    ],
    ids=lambda p: p.name,
)
def test_stores_to_storescp_in_its_own_transfer_syntax(storescp, source: Path) -> None:
    server = storescp(accept="all")
    original = dcmread(source)
    receipt = destination(server.port).store(item(source))
    uid = original.SOPInstanceUID
    assert (receipt.destination, receipt.item) == ("pacs", "source")
    assert receipt.reference == f"STORESCP@127.0.0.1:{server.port} {uid} 0x0000 Success"
    got = dcmread(arrived(server, uid))
    assert got.SOPInstanceUID == uid and got.SOPClassUID == original.SOPClassUID
    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert got.PixelData == original.PixelData  # the very bytes, compressed or not
    assert got.StudyInstanceUID == original.StudyInstanceUID


@pytest.mark.parametrize("accept", ["uncompressed", "implicit"])
@pytest.mark.parametrize("name", ["US1_J2KR.dcm", "OBXXXX1A_rle.dcm"])
def test_compressed_source_is_decompressed_for_an_uncompressed_only_peer(storescp, accept: str, name: str) -> None:
    server = storescp(accept=accept)
    source = dicom_testfile(name)
    original = dcmread(source)
    destination(server.port).store(item(source))
    got = dcmread(arrived(server, original.SOPInstanceUID))
    expected = ImplicitVRLittleEndian if accept == "implicit" else ExplicitVRLittleEndian
    assert got.file_meta.TransferSyntaxUID == expected
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)
    assert (got.Rows, got.Columns, got.SamplesPerPixel) == (original.Rows, original.Columns, original.SamplesPerPixel)


def test_uncompressed_source_converted_to_implicit_vr(storescp) -> None:
    server = storescp(accept="implicit")
    source = SAMPLES / "hc18_104_HC.dcm"
    original = dcmread(source)
    destination(server.port).store(item(source))
    got = dcmread(arrived(server, original.SOPInstanceUID))
    assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert got.PixelData == original.PixelData


def test_big_endian_source_to_a_little_endian_only_peer_is_permanent(storescp) -> None:
    server = storescp(accept="implicit")
    with pytest.raises(DeliveryError) as caught:
        destination(server.port).store(item(dicom_testfile("MR_small_bigendian.dcm")))
    assert not caught.value.transient
    assert "cannot send MR Image Storage in Explicit VR Big Endian" in str(caught.value)
    assert "accepted Implicit VR Little Endian" in str(caught.value)


def test_storescp_refusing_every_association_is_permanent(storescp) -> None:
    server = storescp(refuse=True)
    with pytest.raises(DeliveryError) as caught:
        destination(server.port).store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert not caught.value.transient
    assert "rejected the association" in str(caught.value) and "Rejected Permanent" in str(caught.value)


def test_sop_class_the_peer_does_not_accept_is_permanent(storescp, tmp_path: Path) -> None:
    server = storescp()
    ds = dcmread(SAMPLES / "hc18_104_HC.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.1"  # a private SOP class
    ds.save_as(tmp_path / "private.dcm")
    with pytest.raises(DeliveryError) as caught:
        destination(server.port).store(item(tmp_path / "private.dcm"))
    assert not caught.value.transient
    assert f"no presentation context accepted by STORESCP@127.0.0.1:{server.port}" in str(caught.value)
    assert "1.2.826.0.1.3680043.8.498.1 in Explicit VR Little Endian: Abstract Syntax Not Supported" in str(
        caught.value
    )


def test_nothing_listening_is_transient() -> None:
    port = free_port()
    with pytest.raises(DeliveryError) as caught:
        destination(port).store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert caught.value.transient
    assert f"cannot connect to 127.0.0.1:{port}" in str(caught.value) and "refused" in str(caught.value)
    probe = destination(port).probe()
    assert probe["reachable"] is False and "refused" in probe["error"]


def test_peer_that_never_answers_the_association_request_is_transient() -> None:
    with socket.socket() as hung:  # listening, never accepting: the kernel completes the handshake, nobody reads
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        slow = destination(hung.getsockname()[1], timeout=1.0)
        with pytest.raises(DeliveryError) as caught:
            slow.store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert caught.value.transient and "no answer to A-ASSOCIATE-RQ within 1 s" in str(caught.value)


def test_probe_echoes(storescp) -> None:
    server = storescp()
    assert destination(server.port).probe() == {
        "name": "pacs",
        "kind": "dicom",
        "ae_title": "STORESCP",
        "host": "127.0.0.1",
        "port": server.port,
        "reachable": True,
    }


def test_peer_aborting_during_the_store_is_transient(storescp) -> None:
    server = storescp(extra=("--abort-during",))
    with pytest.raises(DeliveryError) as caught:
        destination(server.port).store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert caught.value.transient and "aborted" in str(caught.value)


def test_no_response_within_the_timeout_is_transient(storescp) -> None:
    server = storescp(extra=("--sleep-during", "5"))
    slow = destination(server.port, timeout=1.0)
    with pytest.raises(DeliveryError) as caught:
        slow.store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert caught.value.transient and "no C-STORE response within 1 s" in str(caught.value)


def test_dicom_tls_with_client_certificate(storescp, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = storescp(tls=(pki["server_key"], pki["server_crt"], pki["ca_crt"]))
    source = SAMPLES / "hc18_669_HC.dcm"
    uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    client = {"tls_certificate": str(pki["client_crt"]), "tls_private_key": str(pki["client_key"])}
    secure = destination(server.port, tls_ca_certificates=str(pki["ca_crt"]), **client)
    assert "0x0000 Success" in secure.store(item(source)).reference
    assert dcmread(arrived(server, uid)).SOPInstanceUID == uid
    assert secure.probe()["reachable"] is True
    # The same peer without a client certificate (a TLS alert: permanent), and without TLS at all: nothing stored.
    other = SAMPLES / "hc18_104_HC.dcm"
    with pytest.raises(DeliveryError) as no_certificate:
        destination(server.port, tls_ca_certificates=str(pki["ca_crt"])).store(item(other))
    assert not no_certificate.value.transient
    assert f"TLS with 127.0.0.1:{server.port} failed" in str(no_certificate.value)
    assert "certificate required" in str(no_certificate.value)
    with pytest.raises(DeliveryError) as plain:
        destination(server.port).store(item(other))
    assert plain.value.transient and "closed the connection" in str(plain.value)
    assert server.received(dcmread(other, stop_before_pixels=True).SOPInstanceUID) is None


def test_tls_peer_certificate_not_trusted_is_permanent(storescp, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")  # a CA that did not sign the server's certificate
    server = storescp(tls=(pki["server_key"], pki["server_crt"], pki["ca_crt"]))
    client = {"tls_certificate": str(pki["client_crt"]), "tls_private_key": str(pki["client_key"])}
    with pytest.raises(DeliveryError) as caught:
        destination(server.port, tls_ca_certificates=str(other["ca_crt"]), **client).store(
            item(SAMPLES / "hc18_104_HC.dcm")
        )
    assert not caught.value.transient and "certificate verify failed" in str(caught.value)


@pytest.fixture(scope="module")
def orthanc_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """An Orthanc that knows our calling AE as a modality (its stop takes seconds: one for this module)."""
    need("Orthanc")
    server = OrthancProcess(
        tmp_path_factory.mktemp("orthanc-pacs"),
        webviewer=False,
        modalities={CALLING: (CALLING, "127.0.0.1", free_port())},
    ).start()
    yield server
    server.stop()


def test_stores_to_orthanc_dicom_port(orthanc_pacs: OrthancProcess) -> None:
    source = dicom_testfile("US1_J2KR.dcm")
    uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    pacs = destination(orthanc_pacs.dicom_port, ae_title=orthanc_pacs.aet)
    assert pacs.probe()["reachable"] is True
    assert f"{uid} 0x0000 Success" in pacs.store(item(source)).reference
    auth = (orthanc_pacs.username, orthanc_pacs.password)
    [found] = httpx.post(f"{orthanc_pacs.url}/tools/lookup", content=uid, auth=auth).json()
    assert found["Type"] == "Instance"
    tags = httpx.get(f"{orthanc_pacs.url}/instances/{found['ID']}/simplified-tags", auth=auth).json()
    assert tags["SOPInstanceUID"] == uid


def test_orthanc_wrong_called_ae_is_permanent(orthanc_pacs: OrthancProcess) -> None:
    with pytest.raises(DeliveryError) as caught:
        destination(orthanc_pacs.dicom_port, ae_title="NOT-ORTHANC").store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert not caught.value.transient
    assert "Rejected Permanent" in str(caught.value) and "Called AE title not recognised" in str(caught.value)


def test_orthanc_unknown_calling_ae_is_permanent(orthanc_pacs: OrthancProcess) -> None:
    stranger = destination(orthanc_pacs.dicom_port, ae_title=orthanc_pacs.aet, calling="STRANGER")
    with pytest.raises(DeliveryError) as caught:
        stranger.store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert not caught.value.transient and "Rejected Permanent" in str(caught.value)


# -- a fetalnode terminal as the peer: its C-STORE failure statuses and busy rejections --------------


def test_failure_status_is_permanent_with_the_error_comment(make_node, tmp_path: Path) -> None:
    node = make_node().start("--no-worker")
    peer = destination(node.port, ae_title=NODE_AET, calling=MODALITY)
    ds = dcmread(SAMPLES / "hc18_104_HC.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "no-pixels.dcm")
    with pytest.raises(DeliveryError) as caught:
        peer.store(item(tmp_path / "no-pixels.dcm"))
    message = str(caught.value)
    assert not caught.value.transient
    assert f"refused {ds.SOPInstanceUID}: status 0xC211 Cannot Understand" in message
    assert "(Error Comment: instance has no Pixel Data)" in message


def test_sop_class_not_supported_status_is_permanent(make_node) -> None:
    node = make_node().start("--no-worker")
    peer = destination(node.port, ae_title=NODE_AET, calling=MODALITY)
    with pytest.raises(DeliveryError) as caught:  # the node negotiates CT but does not analyse it
        peer.store(item(dicom_testfile("CT_small.dcm")))
    assert not caught.value.transient
    assert "status 0x0122 Refused: SOP Class Not Supported" in str(caught.value)
    assert "Error Comment: CT Image Storage is not analysed by this node" in str(caught.value)


def test_out_of_resources_is_transient(make_node) -> None:
    node = make_node(scp__min_free_bytes=2**62).start("--no-worker")
    peer = destination(node.port, ae_title=NODE_AET, calling=MODALITY)
    with pytest.raises(DeliveryError) as caught:
        peer.store(item(SAMPLES / "hc18_104_HC.dcm"))
    assert caught.value.transient and "status 0xA700 Refused: Out of Resources" in str(caught.value)


def test_busy_peer_rejecting_transiently_is_transient(make_node) -> None:
    # The held association never idles long enough to be evicted for the new one.
    node = make_node(scp__maximum_associations=1, scp__idle_eviction_seconds=600.0).start("--no-worker")
    holder = AE(ae_title=MODALITY)
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert held.is_established
    try:
        with pytest.raises(DeliveryError) as caught:
            destination(node.port, ae_title=NODE_AET, calling=MODALITY).store(item(SAMPLES / "hc18_104_HC.dcm"))
    finally:
        held.release()
    assert caught.value.transient and "Rejected Transient" in str(caught.value)
