"""A radiologist's viewer on the node's results: OHIF (npm ``@ohif/app``) served by Orthanc, in headless Chromium.

Orthanc serves the prebuilt viewer through fetalnode's plugin (``/ohif/``) and the studies through its
DICOMweb plugin. The study of an image the node analysed must open with the ultrasound image drawn
and fetalnode's report and heatmap series listed. OHIF draws with WebGL: Chromium runs SwiftShader
(software GL), so the first image takes tens of seconds. Screenshot: ``.run/test-artifacts/ohif-study.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from harness.node import ROOT
from harness.orthanc import OHIF_DIST, OrthancProcess
from harness.processes import wait_for
from tests.browser.conftest import chromium
from tests.conftest import SAMPLES, need, send

pytestmark = pytest.mark.e2e
ARTIFACTS = ROOT / ".run" / "test-artifacts"
IMAGE = SAMPLES / "hc18_104_HC.dcm"
SR_SERIES = "fetalnode AI report"
SC_SERIES = "fetalnode AI heatmap"
# Pixels of OHIF's viewport canvases (cornerstone copies each rendered image into a 2D canvas) brighter
# than the black background.
LIT_PIXELS = """
var lit = 0, seen = 0;
for (const c of document.querySelectorAll('canvas.cornerstone-canvas')) {
  if (!c.width || !c.height) continue;
  seen += 1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) lit += 1;
}
return [seen, lit];
"""


@pytest.fixture(scope="module")
def ohif_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    need("Orthanc")
    if not (OHIF_DIST / "index.html").is_file():
        pytest.fail(f"OHIF is not installed in {OHIF_DIST}: run `make deps`")
    with OrthancProcess(tmp_path_factory.mktemp("orthanc-ohif"), ohif=True) as server:
        yield server


@pytest.fixture
def browser(ohif_orthanc: OrthancProcess, tmp_path: Path) -> Iterator[object]:
    # WebGL without a GPU: SwiftShader
    flags = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1400,900")
    with chromium(ohif_orthanc, tmp_path / "chromium-profile", *flags, console_log=True) as driver:
        yield driver


def page_text(driver: object) -> str:
    return str(driver.execute_script("return document.body ? document.body.innerText : '';"))  # type: ignore[attr-defined]


def test_ohif_shows_the_image_and_lists_fetalnode_series(make_node, ohif_orthanc, browser) -> None:
    node = make_node(ohif_orthanc, source_to_orthanc=True).start()
    assert send(node.port, IMAGE).returncode == 0
    node.wait_all(1, {"delivered"})
    study_uid = str(dcmread(IMAGE, stop_before_pixels=True).StudyInstanceUID)
    series = httpx.get(
        f"{ohif_orthanc.dicomweb_url}/studies/{study_uid}/series",
        auth=(ohif_orthanc.username, ohif_orthanc.password),
        timeout=30,
    ).json()
    assert {s["00080060"]["Value"][0] for s in series} == {"US", "SR", "OT"}  # what OHIF will list

    browser.get(ohif_orthanc.ohif_study_url(study_uid))  # type: ignore[attr-defined]
    try:
        # The study browser lists each series by its description; thumbnails are drawn from WADO-RS
        # frames (DICOMweb 1.7 has no /rendered).
        wait_for(lambda: SR_SERIES in page_text(browser) and SC_SERIES in page_text(browser), 45, "our series")
        wait_for(lambda: browser.execute_script(LIT_PIXELS)[1] > 5000, 45, "the ultrasound image drawn")  # type: ignore[attr-defined]
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "ohif-study.png"))  # type: ignore[attr-defined]
        console = browser.get_log("browser")  # type: ignore[attr-defined]
        (ARTIFACTS / "ohif-console.txt").write_text("\n".join(e["message"] for e in console) + "\n")
    text = page_text(browser)
    assert "104_HC.png" in text  # the ultrasound series (its description) is the one displayed
    assert f"SR\n{SR_SERIES}" in text  # the report is listed as an SR series
