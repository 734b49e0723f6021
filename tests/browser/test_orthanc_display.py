"""What a clinician sees in Orthanc: the fetalnode plugin's panel and triage list, in headless Chromium.

Chromium and chromedriver are Debian's; the Basic auth header goes through the DevTools protocol
(credentials in the URL break Orthanc Explorer's page script). Screenshots are saved under
``.run/test-artifacts/`` as test artefacts.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from fetalnode.outputs.uids import DEVICE_UID
from harness.node import ROOT
from harness.orthanc import OrthancProcess
from harness.processes import wait_for
from tests.browser.conftest import chromium
from tests.conftest import SAMPLES, need, send

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / ".run" / "test-artifacts"
# What the shipped models (hc18-headseg 0.3.0, fba-classifier 0.9.0) say about two bundled samples:
NORMAL = SAMPLES / "hc18_104_HC.dcm"  # normal, HC 85.7 mm (reference 84.4 mm)
ABNORMAL = SAMPLES / "fba_ventriculomegaly_moderate_fba_01465.dcm"  # abnormal, type not determined (model card)
NORMAL_HC = "85.7 mm"


@pytest.fixture(scope="module")
def display_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    need("Orthanc")
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc-plugin"), webviewer=True, fetalnode_plugin=True).start()
    yield server
    server.stop()


@pytest.fixture
def browser(display_orthanc: OrthancProcess, tmp_path: Path) -> Iterator[object]:
    flags = ("--disable-gpu", "--window-size=1280,1600")
    with chromium(display_orthanc, tmp_path / "chromium-profile", *flags) as driver:
        yield driver


def rest(orthanc: OrthancProcess, method: str, uri: str, **kw: object) -> object:
    r = httpx.request(method, f"{orthanc.url}{uri}", auth=(orthanc.username, orthanc.password), timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def study_id(orthanc: OrthancProcess, path: Path) -> str:
    uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    [hit] = [h for h in rest(orthanc, "POST", "/tools/lookup", content=uid) if h["Type"] == "Study"]  # type: ignore[union-attr]
    return str(hit["ID"])


def shot(driver: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))  # type: ignore[attr-defined]


def text_of(driver: object, css: str) -> str:
    return " ".join(e.text for e in driver.find_elements("css selector", css))  # type: ignore[attr-defined]


def test_panel_and_triage_in_a_real_browser(make_node, display_orthanc, browser, tmp_path) -> None:
    # A site's own Manufacturer: the plugin recognises the outputs by fetalnode's Device UID.
    node = make_node(display_orthanc, output__manufacturer="Example Hospital AI").start()
    # The abnormal image is sent first: the triage list must still put it above the newer normal one.
    for path in (ABNORMAL, NORMAL):
        assert send(node.port, path).returncode == 0
    node.wait_all(2, {"delivered"})
    wait_for(
        lambda: len(rest(display_orthanc, "GET", "/fetalnode/findings")["findings"]) >= 2,  # type: ignore[index]
        30,
        "the plugin to index both reports",
    )

    browser.get(f"{display_orthanc.url}/app/explorer.html#study?uuid={study_id(display_orthanc, NORMAL)}")  # type: ignore[attr-defined]
    wait_for(lambda: "Normal" in text_of(browser, ".fetalnode-panel .fetalnode-assessment"), 30, "the Fetal AI panel")
    assert NORMAL_HC in text_of(browser, ".fetalnode-panel .fetalnode-hc")
    assert "Research use only" in text_of(browser, ".fetalnode-panel h3")
    assert "weeks (estimate, Hadlock 1984)" in text_of(browser, ".fetalnode-panel")
    assert "hc18-headseg" in text_of(browser, ".fetalnode-panel")
    wait_for(
        lambda: browser.execute_script(  # type: ignore[attr-defined]
            "var i = document.querySelector('.fetalnode-panel img.fetalnode-heatmap');"
            "return i && i.complete && i.naturalWidth;"
        ),
        30,
        "the heatmap image to load",
    )
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", ".fetalnode-panel a")]  # type: ignore[attr-defined]
    assert any("web-viewer/app/viewer.html?series=" in (h or "") for h in links)
    shot(browser, "study-panel-normal")

    # The same panel on the SR's series and instance pages.
    finding = next(
        f
        for f in rest(display_orthanc, "GET", "/fetalnode/findings")["findings"]  # type: ignore[index]
        if f["study"] == study_id(display_orthanc, NORMAL)
    )
    for page, uuid in (("series", finding["sr_series"]), ("instance", finding["sr_instance"])):
        browser.get(f"{display_orthanc.url}/app/explorer.html#{page}?uuid={uuid}")  # type: ignore[attr-defined]
        wait_for(
            lambda p=page: NORMAL_HC in text_of(browser, f"#{p} .fetalnode-hc"), 30, f"the panel on the {page} page"
        )
    shot(browser, "instance-panel-normal")

    # The abnormal study's panel: abnormal, and no malformation type named (the shipped classifier's rule).
    browser.get(f"{display_orthanc.url}/app/explorer.html#study?uuid={study_id(display_orthanc, ABNORMAL)}")  # type: ignore[attr-defined]
    wait_for(
        lambda: "Abnormal - type not determined" in text_of(browser, ".fetalnode-panel .fetalnode-assessment"),
        30,
        "the abnormal finding's panel",
    )
    shot(browser, "study-panel-abnormal")

    browser.get(f"{display_orthanc.url}/fetalnode/triage")  # type: ignore[attr-defined]
    wait_for(lambda: len(browser.find_elements("css selector", "tr.finding")) >= 2, 30, "the triage rows")  # type: ignore[attr-defined]
    rows = browser.find_elements("css selector", "tr.finding")  # type: ignore[attr-defined]
    assert "abnormal" in rows[0].get_attribute("class") and "Abnormal" in rows[0].text
    # The shipped classifier names no malformation type: the Type column says so.
    assert rows[0].find_element("css selector", "td.type").text == "type not determined"
    assert "normal" in rows[1].get_attribute("class") and "Normal" in rows[1].text
    shot(browser, "triage")
    # A new result appears without a reload (the page keeps its JavaScript state).
    browser.execute_script("window.__notReloaded = true;")  # type: ignore[attr-defined]
    third = tmp_path / "third.dcm"
    ds = dcmread(SAMPLES / "hc18_669_HC.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(third, enforce_file_format=True)
    assert send(node.port, third).returncode == 0
    wait_for(lambda: len(browser.find_elements("css selector", "tr.finding")) >= 3, 60, "the new row")  # type: ignore[attr-defined]
    assert browser.execute_script("return window.__notReloaded === true;")  # type: ignore[attr-defined]
    browser.find_element("id", "by-confidence").click()  # type: ignore[attr-defined]
    shown = [
        float(c.text.rstrip("%"))
        for c in browser.find_elements("css selector", "tr.finding td.confidence")  # type: ignore[attr-defined]
        if c.text
    ]
    assert shown == sorted(shown, reverse=True) and len(shown) >= 3


def empty_sr(claims_fetalnode: bool) -> bytes:
    """An SR without content, in a new study; ``claims_fetalnode``: fetalnode's Device UID in its Contributing Equipment."""
    ds = dcmread(SAMPLES / "hc18_104_HC.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.Manufacturer = "fetalnode project"  # what the plugin used to trust
    if claims_fetalnode:
        equipment = Dataset()
        equipment.Manufacturer = "somebody"
        equipment.DeviceUID = DEVICE_UID
        ds.ContributingEquipmentSequence = [*ds.get("ContributingEquipmentSequence", []), equipment]
    del ds.PixelData
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_malformed_report_says_unreadable_and_orthanc_stays_healthy(display_orthanc, browser) -> None:
    # Another device's SR with fetalnode's old Manufacturer is not ours: the plugin does not index it.
    other = rest(display_orthanc, "POST", "/instances", content=empty_sr(claims_fetalnode=False))
    # An SR that claims to be fetalnode's but has no assessment in it.
    stored = rest(display_orthanc, "POST", "/instances", content=empty_sr(claims_fetalnode=True))
    study = stored["ParentStudy"]  # type: ignore[index]
    assert rest(display_orthanc, "GET", "/system")["Name"]  # type: ignore[index]
    browser.get(f"{display_orthanc.url}/app/explorer.html#study?uuid={study}")  # type: ignore[attr-defined]
    wait_for(lambda: "unreadable report" in text_of(browser, ".fetalnode-panel"), 30, "'unreadable report'")
    shot(browser, "study-panel-unreadable")
    # The rest of the page still works: Orthanc Explorer's own study information is there.
    assert browser.find_elements("css selector", "#study-info li")  # type: ignore[attr-defined]
    assert rest(display_orthanc, "GET", "/system")["Name"]  # type: ignore[index]
    # Orthanc indexes changes in order: the other SR was looked at before the one shown above.
    answer = rest(display_orthanc, "GET", "/fetalnode/findings", params={"resource": other["ParentStudy"]})  # type: ignore[index]
    assert answer["study"] == other["ParentStudy"] and answer["findings"] == []  # type: ignore[index]


def test_labour_progress_in_panel_and_triage(display_orthanc, browser, tmp_path) -> None:
    """A labour-progress image (PSFHS, wrapped as US) with its SR and SC: the panel and the triage list
    show the angle of progression and the HSD with the literature reference, and no normal/abnormal call."""
    from tests.labour import HIGH_AOP, GroundTruthLabour, build, wrapped

    built = build(wrapped(HIGH_AOP, tmp_path), GroundTruthLabour(HIGH_AOP), outputs=["sr", "sc"])
    for data in (built.src.read_bytes(), built.outcome.built["sr"], built.outcome.built["sc"]):
        rest(display_orthanc, "POST", "/instances", content=data)
    aop = f"{built.analysis.result.geometry.aop_deg:.1f}"
    study = study_id(display_orthanc, built.src)

    def labour_findings() -> list[dict]:
        answer = rest(display_orthanc, "GET", "/fetalnode/findings", params={"resource": study})
        return [f for f in answer["findings"] if f.get("application") == "labour-progress"]  # type: ignore[index]

    wait_for(lambda: any(f.get("heatmap_instance") for f in labour_findings()), 30, "the plugin to index SR and SC")
    [finding] = labour_findings()
    assert (
        f"{finding['aop_deg']:.1f}" == aop and finding["hsd_px"] is not None and "Kalache" in finding["aop_reference"]
    )

    browser.get(f"{display_orthanc.url}/app/explorer.html#study?uuid={study}")  # type: ignore[attr-defined]
    wait_for(lambda: aop in text_of(browser, ".fetalnode-panel .fetalnode-aop"), 30, "the AoP in the Fetal AI panel")
    panel = text_of(browser, ".fetalnode-panel")
    assert "Kalache et al., Ultrasound Obstet Gynecol 2009" in panel and "literature, research use only" in panel
    assert "pixels (no calibration)" in text_of(browser, ".fetalnode-panel .fetalnode-hsd")
    assert "Normal" not in panel and "Abnormal" not in panel
    wait_for(
        lambda: browser.execute_script(  # type: ignore[attr-defined]
            "var i = document.querySelector('.fetalnode-labour img.fetalnode-heatmap');"
            "return i && i.complete && i.naturalWidth;"
        ),
        30,
        "the angle of progression image to load",
    )
    shot(browser, "study-panel-labour")

    browser.get(f"{display_orthanc.url}/fetalnode/triage")  # type: ignore[attr-defined]
    wait_for(lambda: aop in text_of(browser, "tr.labour td.aop"), 30, "the AoP in the triage list")
    assert "Kalache" in text_of(browser, "#aop-reference")
    assert "Kalache" in (browser.find_element("css selector", "tr.labour").get_attribute("title") or "")  # type: ignore[attr-defined]
    shot(browser, "triage-labour")
