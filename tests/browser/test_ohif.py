"""A radiologist's viewer on the node's results: OHIF (npm ``@ohif/app``) served by Orthanc, in headless Chromium.

Orthanc serves the prebuilt viewer through fetalnode's plugin (``/ohif/``) and the studies through its
DICOMweb plugin. The study of an image the node analysed must open with the ultrasound image drawn
and fetalnode's report and heatmap series listed. Opened on the SR series (``initialSeriesInstanceUID``),
OHIF's SR viewport must draw the report's head contour and BPD/OFD callipers (TID 1410 POLYLINE SCOORDs,
yellow, read-only) on the ultrasound image, with the calliper measurements as labels. OHIF draws with
WebGL: Chromium runs SwiftShader (software GL), so the first image takes tens of seconds. Screenshots:
``.run/test-artifacts/ohif-study.png`` (study opened) and ``ohif-sr.png`` (SR opened).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
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
# The main viewport's rectangle in CSS pixels (the screenshot's pixels: device scale 1).
VIEWPORT_RECT = """
const c = [...document.querySelectorAll('canvas.cornerstone-canvas')].filter(c => c.width && c.height)[0];
if (!c) return null;
const r = c.getBoundingClientRect();
return [r.left, r.top, r.right, r.bottom];
"""
# OHIF's onboarding tour and "investigational use" banner cover the viewport: dismiss them.
DISMISS = """
for (const el of document.querySelectorAll('button, a, span, div')) {
  const t = (el.innerText || '').trim();
  if ((t === 'Skip all' || t === 'Confirm and hide') && !el.children.length) el.click();
}
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


def overlay_pixels(driver: Any) -> tuple[int, tuple[float, float] | None]:
    """Yellow pixels (OHIF's SR annotations; the ultrasound is grey) inside the viewport of a screenshot,
    and their centroid relative to the viewport (0..1, 0..1)."""
    rect = driver.execute_script(VIEWPORT_RECT)
    if not rect:
        return 0, None
    left, top, right, bottom = (round(v) for v in rect)
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)
    view = shot[top:bottom, left:right]
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    rows, cols = np.nonzero((r > 170) & (g > 170) & (b < 100))
    if not rows.size:
        return 0, None
    return int(rows.size), (float(cols.mean()) / view.shape[1], float(rows.mean()) / view.shape[0])


def sr_measurements(orthanc: OrthancProcess, study_uid: str, series_uid: str) -> dict[str, float]:
    """NUM values of the SR by concept name (code meaning), read back through DICOMweb."""
    metadata = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{series_uid}/metadata",
        auth=(orthanc.username, orthanc.password),
        timeout=30,
    ).json()
    found: dict[str, float] = {}

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for x in item:
                walk(x)
        elif isinstance(item, dict):
            if item.get("0040A040", {}).get("Value") == ["NUM"]:
                name = item["0040A043"]["Value"][0]["00080104"]["Value"][0]
                value = item["0040A300"]["Value"][0]["0040A30A"]["Value"][0]
                found[name] = float(value)
            for x in item.values():
                walk(x)

    walk(metadata)
    return found


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
    # What OHIF will list: the image, the heatmap SC, the TID 1500 and OB-GYN SRs, the GSPS and the SEG.
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["OT", "PR", "SEG", "SR", "SR", "US"]
    sr_uid = next(s["0020000E"]["Value"][0] for s in series if s["0008103E"]["Value"][0].startswith(SR_SERIES))

    browser.get(ohif_orthanc.ohif_study_url(study_uid))  # type: ignore[attr-defined]
    try:
        # The study browser lists each series by its description; thumbnails are drawn from WADO-RS
        # frames (DICOMweb 1.7 has no /rendered).
        wait_for(lambda: SR_SERIES in page_text(browser) and SC_SERIES in page_text(browser), 45, "our series")
        wait_for(lambda: browser.execute_script(LIT_PIXELS)[1] > 5000, 45, "the ultrasound image drawn")  # type: ignore[attr-defined]
        browser.execute_script(DISMISS)  # type: ignore[attr-defined]
        bare, _ = overlay_pixels(browser)
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "ohif-study.png"))  # type: ignore[attr-defined]
        console = browser.get_log("browser")  # type: ignore[attr-defined]
        (ARTIFACTS / "ohif-console.txt").write_text("\n".join(e["message"] for e in console) + "\n")
    text = page_text(browser)
    assert "104_HC.png" in text  # the ultrasound series (its description) is the one displayed
    assert f"SR\n{SR_SERIES}" in text  # the report is listed as an SR series
    assert bare < 50, f"{bare} yellow pixels on the bare image"

    # The SR opened: OHIF's SR viewport loads the referenced image and draws the TID 1410 SCOORDs.
    values = sr_measurements(ohif_orthanc, study_uid, sr_uid)
    bpd, ofd = values["Biparietal Diameter"], values["Occipital-Frontal Diameter"]
    browser.get(ohif_orthanc.ohif_study_url(study_uid, sr_uid))  # type: ignore[attr-defined]
    drawn: list[tuple[int, tuple[float, float] | None]] = []
    try:
        wait_for(lambda: "Biparietal Diameter" in page_text(browser), 45, "the SR's calliper labels")
        browser.execute_script(DISMISS)  # type: ignore[attr-defined]
        wait_for(lambda: drawn.append(overlay_pixels(browser)) or drawn[-1][0] > 2000, 30, "the head contour drawn")
    finally:
        browser.save_screenshot(str(ARTIFACTS / "ohif-sr.png"))  # type: ignore[attr-defined]
        console = browser.get_log("browser")  # type: ignore[attr-defined]
        (ARTIFACTS / "ohif-sr-console.txt").write_text("\n".join(e["message"] for e in console) + "\n")
    text = page_text(browser)
    assert f"Biparietal Diameter: {bpd:.2f} mm" in text
    assert f"Occipital-Frontal Diameter: {ofd:.2f} mm" in text
    assert "104_HC.png" in text  # drawn on the ultrasound image the SR references
    _, centre = drawn[-1]
    assert centre is not None
    # the head of hc18_104 lies right of the middle of the image, the contour around it
    assert 0.3 < centre[0] < 0.8 and 0.3 < centre[1] < 0.8, centre
