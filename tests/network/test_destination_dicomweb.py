"""Destination kind ``dicomweb``: STOW-RS into a real Orthanc with Debian's DICOMweb plugin, every failure classified."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import UltrasoundMultiFrameImageStorage, generate_uid

from fetalnode.config import DestinationSettings
from fetalnode.destinations.base import Item
from fetalnode.destinations.dicomweb import DicomWebDestination
from fetalnode.errors import DeliveryError
from harness.orthanc import OrthancProcess
from harness.ports import free_port
from tests.conftest import SAMPLES, need

pytestmark = [pytest.mark.network, pytest.mark.e2e]

VIEWER = "viewer"  # may read (QIDO) but not store: Orthanc answers 403


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """Orthanc + DICOMweb with Basic auth, and a read-only user refused by a Python-plugin filter."""
    need("Orthanc")
    server = OrthancProcess(
        tmp_path_factory.mktemp("orthanc-dicomweb"),
        webviewer=False,
        dicomweb=True,
        read_only_users={VIEWER: secrets.token_urlsafe(12)},
    ).start()
    yield server
    server.stop()


def stow(url: str, username: str = "", password: str = "", password_file: str = "") -> DicomWebDestination:
    return DicomWebDestination(
        DestinationSettings(
            name="pacs",
            kind="dicomweb",
            url=url,
            username=username,
            password=password,
            password_file=password_file,
            timeout=10,
        )
    )


def to(pacs: OrthancProcess, **settings: str) -> DicomWebDestination:
    return stow(pacs.dicomweb_url, **({"username": pacs.username, "password": pacs.password} | settings))


def sample(name: str = "hc18_104_HC.dcm") -> Item:
    return Item("source", (SAMPLES / name).read_bytes())


def uid_of(item: Item) -> str:
    return str(dcmread(BytesIO(item.data), stop_before_pixels=True).SOPInstanceUID)


def orthanc_ids(pacs: OrthancProcess, sop_instance_uid: str) -> list[str]:
    """Orthanc's instances with this SOP Instance UID, found over its own REST API."""
    r = httpx.post(
        f"{pacs.url}/tools/find",
        json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        auth=(pacs.username, pacs.password),
        timeout=10,
    )
    r.raise_for_status()
    return list(r.json())


def refusal(destination: DicomWebDestination, item: Item) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        destination.store(item)
    return caught.value


def stored_file(pacs: OrthancProcess, orthanc_id: str) -> bytes:
    r = httpx.get(f"{pacs.url}/instances/{orthanc_id}/file", auth=(pacs.username, pacs.password), timeout=10)
    r.raise_for_status()
    return r.content


def multiframe(frames: int) -> Item:
    """A US Multi-frame image over 1 MB (dicomweb-client sends those with chunked transfer encoding)."""
    ds = dcmread(SAMPLES / "hc18_104_HC.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return Item("sc", out.getvalue())


def test_stow_rs_stores_the_instance_once_and_again(pacs: OrthancProcess) -> None:
    item = sample()
    uid = uid_of(item)
    destination = to(pacs)
    receipt = destination.store(item)
    assert (receipt.destination, receipt.item) == ("pacs", "source")
    assert receipt.reference.startswith(pacs.dicomweb_url + "/studies/"), "a Retrieve URL of this server"
    assert receipt.reference.endswith(f"/instances/{uid}"), receipt.reference
    [orthanc_id] = orthanc_ids(pacs, uid)
    assert stored_file(pacs, orthanc_id) == item.data, "forwarded unchanged"

    assert destination.store(item) == receipt, "the same object again: stored, same receipt"
    assert orthanc_ids(pacs, uid) == [orthanc_id], "no duplicate"


def test_an_object_over_the_chunk_size_is_stored_whole(pacs: OrthancProcess) -> None:
    item = multiframe(5)
    assert len(item.data) > 10**6
    receipt = to(pacs).store(item)
    assert receipt.reference.startswith(pacs.dicomweb_url + "/studies/")
    [orthanc_id] = orthanc_ids(pacs, uid_of(item))
    assert stored_file(pacs, orthanc_id) == item.data


def test_wrong_password_is_permanent_and_a_rotated_password_file_is_read_again(
    pacs: OrthancProcess, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-the-password\n", encoding="utf-8")
    destination = to(pacs, password="", password_file=str(secret))
    item = sample("hc18_316_HC.dcm")
    error = refusal(destination, item)
    assert not error.transient
    assert "HTTP 401" in str(error)
    assert orthanc_ids(pacs, uid_of(item)) == []

    pacs.write_password_file(secret)
    assert destination.store(item).reference.endswith(uid_of(item))
    assert len(orthanc_ids(pacs, uid_of(item))) == 1


def test_nothing_listening_is_transient() -> None:
    error = refusal(stow(f"http://127.0.0.1:{free_port()}/dicom-web", "u", "p"), sample())
    assert error.transient
    assert "ConnectionError" in str(error)


def test_a_path_that_does_not_exist_is_permanent(pacs: OrthancProcess) -> None:
    error = refusal(stow(f"{pacs.url}/no-such-dicom-web", pacs.username, pacs.password), sample())
    assert not error.transient
    assert "HTTP 404" in str(error)


def test_a_user_without_the_right_to_store_is_refused_permanently(pacs: OrthancProcess) -> None:
    viewer = to(pacs, username=VIEWER, password=pacs.read_only_users[VIEWER])
    assert viewer.probe()["reachable"], "the viewer may search (QIDO-RS)"
    item = sample("fba_normal_fba_00786.dcm")
    error = refusal(viewer, item)
    assert not error.transient
    assert "HTTP 403" in str(error)
    assert orthanc_ids(pacs, uid_of(item)) == []


def test_an_instance_the_server_cannot_understand_is_refused_permanently_with_its_failure_reason(
    pacs: OrthancProcess,
) -> None:
    ds = dcmread(SAMPLES / "hc18_669_HC.dcm")
    del ds.StudyInstanceUID
    out = BytesIO()
    ds.save_as(out)
    error = refusal(to(pacs), Item("sr", out.getvalue()))
    assert not error.transient
    assert "HTTP 400 Bad Request: Failure Reason 0xC000 Error: Cannot understand" in str(error)


def test_probe_tells_and_never_raises(pacs: OrthancProcess) -> None:
    assert to(pacs).probe() == {"name": "pacs", "kind": "dicomweb", "url": pacs.dicomweb_url, "reachable": True}
    wrong = to(pacs, password="wrong").probe()
    assert not wrong["reachable"] and "401" in wrong["error"]
    nowhere = stow(f"http://127.0.0.1:{free_port()}/dicom-web").probe()
    assert not nowhere["reachable"] and "ConnectionError" in nowhere["error"]


def test_full_storage_is_transient(tmp_path: Path) -> None:
    """Orthanc that may keep one patient, who is protected: its DICOMweb plugin 1.7 answers STOW-RS of
    another patient with 200 listing the instance nowhere; once room is made, the next attempt stores it."""
    need("Orthanc")
    full = OrthancProcess(
        tmp_path / "orthanc-full", webviewer=False, dicomweb=True, options={"MaximumPatientCount": 1}
    ).start()
    try:
        auth = (full.username, full.password)
        destination = to(full)
        first, second = sample("hc18_104_HC.dcm"), sample("fba_normal_fba_00786.dcm")
        destination.store(first)
        [patient] = httpx.get(f"{full.url}/patients", auth=auth, timeout=10).json()
        httpx.put(f"{full.url}/patients/{patient}/protected", content="1", auth=auth, timeout=10).raise_for_status()

        error = refusal(destination, second)
        assert error.transient
        assert "neither as stored nor as failed" in str(error)
        assert orthanc_ids(full, uid_of(second)) == []

        httpx.delete(f"{full.url}/patients/{patient}", auth=auth, timeout=10).raise_for_status()
        assert destination.store(second).reference.endswith(uid_of(second))
    finally:
        full.stop()
