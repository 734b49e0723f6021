"""A radiologist's viewer on the node's results: OHIF (npm ``@ohif/app``) served by Orthanc, in headless Chromium.

Orthanc serves the prebuilt viewer through fetalnode's plugin (``/ohif/``) and the studies through its
DICOMweb plugin. The study of an image the node analysed must open with the ultrasound image drawn
and fetalnode's report and heatmap series listed. Opened on the SR series (``initialSeriesInstanceUID``),
OHIF's SR viewport draws the report's TID 1410 regions on the ultrasound image and labels each with the
NUMs of its group. For the studies the node analysed (a calibrated head, the demo's abnormal uncalibrated
head, a labour image, and the same labour image with a calibration) the labels must read as a person would
write them, from the report's own values read back by code: HC, BPD and OFD in mm, the finding beside its
confidence, the angle of progression in degrees (and the HSD in mm when calibrated); no label may show a
code value or a UCUM annotation, no two labels may overlap and each must lie inside the viewport. OHIF
draws with WebGL: Chromium runs SwiftShader (software GL), so the first image takes tens of seconds. The
window is a full-HD reading screen (1920 x 1080). Screenshots under ``.run/test-artifacts/``:
``ohif-study.png`` (study opened) and ``ohif-sr-<study>.png`` (head, abnormal, labour, labour-calibrated).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.outputs import codes as fc
from fetalnode.wrap import wrap_png
from harness.config import TOOL_AETS
from harness.demo import OTHER_VIEWS
from harness.node import ROOT, prepare_node
from harness.orthanc import OHIF_DIST, OrthancProcess
from harness.processes import wait_for
from tests.browser.conftest import chromium
from tests.conftest import MODALITY, SAMPLES, need, send

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / ".run" / "test-artifacts"
SR_SERIES_NUMBER = 9101  # fetalnode's TID 1500 report, whatever the application
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
# The SR labels OHIF draws: one SVG text per drawn region (cornerstone's SVG layer), a tspan per line.
LABELS = """
const out = [];
for (const t of document.querySelectorAll('svg.svg-layer text')) {
  const lines = [...t.querySelectorAll('tspan')].map(s => s.textContent).filter(s => s);
  if (!lines.length) continue;
  const r = t.getBoundingClientRect();
  out.push({lines: lines, box: [r.left, r.top, r.right, r.bottom]});
}
return out;
"""
# OHIF's "investigational use" banner covers the viewport: hide it as a user does (for the session).
DISMISS = """
let clicked = 0;
for (const el of document.querySelectorAll('button, a, span, div')) {
  const t = (el.innerText || '').trim();
  if ((t === 'Skip all' || t === 'Confirm and hide') && !el.children.length) { el.click(); clicked += 1; }
}
return clicked;
"""
# OHIF's onboarding tour, marked as seen the way OHIF marks it (localStorage ``shownTours``).
TOUR_SEEN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
CODE_VALUE = "00080100"


@dataclass(frozen=True)
class Study:
    """One analysed image in Orthanc: its study and the UID of fetalnode's TID 1500 SR series."""

    name: str
    source: Path
    study_uid: str
    sr_uid: str
    sr_description: str


@dataclass
class Report:
    """The SR's content as DICOMweb gives it, read by code: NUM values (and unit code) by concept code value,
    CODE values by concept code value, and every concept code value (names and coded values)."""

    numbers: dict[str, tuple[float, str]]
    codes: dict[str, tuple[str, str]]  # concept code value -> (value code value, value meaning)
    concept_values: set[str]

    def number(self, code: Any) -> float | None:
        found = self.numbers.get(str(code.value))
        return found[0] if found else None


IMAGES = {
    "head": SAMPLES / "hc18_316_HC.dcm",  # calibrated (the ultrasound region's spacing)
    "abnormal": SAMPLES / "fba_ventriculomegaly_moderate_fba_01465.dcm",  # no calibration; the demo's abnormal sample
    "labour": OTHER_VIEWS[0],  # the demo's intrapartum transperineal image (PSFHS), wrapped without calibration
    "labour-calibrated": OTHER_VIEWS[0],  # the same, another study, with a made-up pixel size: the HSD in mm
}
LABOUR_PIXEL_MM = 0.25  # PSFHS has no calibration; this only exercises the mm label


@pytest.fixture(scope="module")
def ohif_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    need("Orthanc")
    if not (OHIF_DIST / "index.html").is_file():
        pytest.fail(f"OHIF is not installed in {OHIF_DIST}: run `make deps`")
    with OrthancProcess(tmp_path_factory.mktemp("orthanc-ohif"), ohif=True) as server:
        yield server


@pytest.fixture(scope="module")
def studies(ohif_orthanc: OrthancProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Study]]:
    """The three images analysed by one node (default view router, the shipped models), delivered with their
    source image to the OHIF Orthanc."""
    folder = tmp_path_factory.mktemp("ohif-node")
    files = dict(IMAGES)
    for name, pixel_mm in (("labour", None), ("labour-calibrated", LABOUR_PIXEL_MM)):
        ds = wrap_png(IMAGES[name], pixel_size_mm=pixel_mm)
        if pixel_mm is not None:  # a study of its own: new study, series and instance UIDs
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                setattr(ds, keyword, generate_uid(entropy_srcs=[str(ds[keyword].value), "calibrated"]))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        files[name] = folder / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    node = prepare_node(folder / "node", ohif_orthanc, calling_aets=(MODALITY, *TOOL_AETS), source_to_orthanc=True)
    node.start()
    try:
        for path in files.values():
            assert send(node.port, path).returncode == 0
        node.wait_all(len(files), {"delivered"})
        found = {}
        for name, path in files.items():
            study_uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            [sr] = [s for s in series_of(ohif_orthanc, study_uid) if attr(s, "00200011") == SR_SERIES_NUMBER]
            found[name] = Study(name, path, study_uid, str(attr(sr, "0020000E")), str(attr(sr, "0008103E")))
        yield found
    finally:
        node.stop()


@pytest.fixture(scope="module")
def browser(ohif_orthanc: OrthancProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium for the module, as one reader's session: the tour is seen, the banner hidden once."""
    # WebGL without a GPU: SwiftShader
    flags = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1920,1080")
    with chromium(ohif_orthanc, tmp_path_factory.mktemp("chromium") / "profile", *flags, console_log=True) as driver:
        driver.get(f"{ohif_orthanc.url}/ohif/app-config.js")
        driver.execute_script(TOUR_SEEN)
        yield driver


def attr(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def series_of(orthanc: OrthancProcess, study_uid: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study_uid}/series", auth=(orthanc.username, orthanc.password), timeout=30
    )
    r.raise_for_status()
    return list(r.json())


def read_report(orthanc: OrthancProcess, study: Study) -> Report:
    """The SR through DICOMweb (what OHIF reads), by code."""
    r = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study.study_uid}/series/{study.sr_uid}/metadata",
        auth=(orthanc.username, orthanc.password),
        timeout=30,
    )
    r.raise_for_status()
    report = Report({}, {}, set())

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for x in item:
                walk(x)
            return
        if not isinstance(item, dict):
            return
        name = item.get("0040A043", {}).get("Value", [{}])[0].get(CODE_VALUE, {}).get("Value", [None])[0]
        if name:
            report.concept_values.add(str(name))
        kind = item.get("0040A040", {}).get("Value", [None])[0]
        if kind == "NUM" and "0040A300" in item:
            measured = attr(item, "0040A300")
            unit = attr(attr(measured, "004008EA"), CODE_VALUE)
            report.numbers[str(name)] = (float(attr(measured, "0040A30A")), str(unit))
        if kind == "CODE":
            value = attr(item, "0040A168")
            report.codes[str(name)] = (str(attr(value, CODE_VALUE)), str(attr(value, "00080104")))
            report.concept_values.add(str(attr(value, CODE_VALUE)))
        for key, x in item.items():
            if key != "0040A168":  # a coded value's own code is recorded above
                walk(x)

    walk(r.json())
    return report


def page_text(driver: Any) -> str:
    return str(driver.execute_script("return document.body ? document.body.innerText : '';"))


def annotation_pixels(driver: Any) -> int:
    """Pixels of OHIF's SR annotations inside the viewport of a screenshot: yellow, or green for the region
    OHIF marks as the report's active one (the ultrasound is grey)."""
    rect = driver.execute_script(VIEWPORT_RECT)
    if not rect:
        return 0
    left, top, right, bottom = (round(v) for v in rect)
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)
    view = shot[top:bottom, left:right]
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    return int((((r > 170) & (g > 170) & (b < 100)) | ((r < 100) & (g > 170) & (b < 100))).sum())


def save_artifacts(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    console = driver.get_log("browser")
    (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(e["message"] for e in console) + "\n")


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_ohif_shows_the_image_and_lists_fetalnode_series(ohif_orthanc, studies, browser) -> None:
    head = studies["head"]
    series = series_of(ohif_orthanc, head.study_uid)
    # What OHIF will list: the image, the heatmap SC, the TID 1500 and OB-GYN SRs, the GSPS and the SEG.
    assert sorted(attr(s, "00080060") for s in series) == ["OT", "PR", "SEG", "SR", "SR", "US"]
    browser.get(ohif_orthanc.ohif_study_url(head.study_uid))
    try:
        # The study browser lists each series by its description; thumbnails are drawn from WADO-RS
        # frames (DICOMweb 1.7 has no /rendered).
        wait_for(lambda: SR_SERIES in page_text(browser) and SC_SERIES in page_text(browser), 45, "our series")
        wait_for(lambda: browser.execute_script(LIT_PIXELS)[1] > 5000, 45, "the ultrasound image drawn")
        wait_for(lambda: browser.execute_script(DISMISS) == 0, 15, "OHIF's banner hidden")
        bare = annotation_pixels(browser)
    finally:
        save_artifacts(browser, "ohif-study")
    text = page_text(browser)
    assert "316_HC.png" in text  # the ultrasound series (its description) is the one displayed
    assert f"SR\n{SR_SERIES}" in text  # the report is listed as an SR series
    assert bare < 50, f"{bare} annotation-coloured pixels on the bare image"


def expected_labels(name: str, report: Report) -> list[list[str]]:
    """What OHIF must write, from the report's own values: one label box, its lines."""
    if name.startswith("labour"):
        aop = report.number(lpc.ANGLE_OF_PROGRESSION)
        hsd, unit = report.numbers[str(lpc.HEAD_SYMPHYSIS_DISTANCE.value)]
        assert aop is not None and unit == (fc.MM.value if name == "labour-calibrated" else lpc.PIXELS.value)
        if unit == lpc.PIXELS.value:  # the HSD in pixels is not a label
            return [[f"Angle of progression: {aop:.2f} deg"]]
        return [[f"Angle of progression: {aop:.2f} deg", f"Head-symphysis distance: {hsd:.2f} mm"]]
    finding = report.codes[str(fhc.AI_ASSESSMENT.value)][1]  # "Normal" / "Abnormal", as coded
    if report.codes.get(str(fhc.MALFORMATION_TYPE.value), ("", ""))[0] == fhc.TYPE_NOT_DETERMINED.value:
        finding += ", type not determined"
    [confidence] = [v for c in fhc.FINDING_CONFIDENCES if (v := report.number(c)) is not None]
    lines = [f"{finding} (AI): {confidence:.2f} %"]
    hc = report.number(fhc.HEAD_CIRCUMFERENCE)
    if hc is not None:
        bpd, ofd = report.number(fhc.BIPARIETAL_DIAMETER), report.number(fhc.OCCIPITAL_FRONTAL_DIAMETER)
        lines = [
            f"Head Circumference: {hc:.2f} mm",
            f"Biparietal Diameter: {bpd:.2f} mm",
            f"Occipital-Frontal Diameter: {ofd:.2f} mm",
            *lines,
        ]
    return [lines]


@pytest.mark.parametrize("name", list(IMAGES))
def test_ohif_labels_the_report_as_a_reader_writes_it(name, ohif_orthanc, studies, browser) -> None:
    study = studies[name]
    report = read_report(ohif_orthanc, study)
    expected = expected_labels(name, report)
    browser.get(ohif_orthanc.ohif_study_url(study.study_uid, study.sr_uid))
    try:
        wait_for(lambda: bool(browser.execute_script(LABELS)), 60, "the SR's labels")
        wait_for(lambda: browser.execute_script(DISMISS) == 0, 15, "OHIF's banner hidden")
        wait_for(lambda: annotation_pixels(browser) > 1500, 30, "the SR's regions drawn")
        labels = browser.execute_script(LABELS)
        rect = browser.execute_script(VIEWPORT_RECT)
    finally:
        save_artifacts(browser, f"ohif-sr-{name}")
    shown = [label["lines"] for label in labels]
    words = {w for lines in shown for line in lines for w in re.split(r"[\s:,()]+", line)}
    assert not words & report.concept_values, f"code values in the labels: {words & report.concept_values}"
    assert not [line for lines in shown for line in lines if "{" in line], shown
    boxes = [label["box"] for label in labels]
    for i, a in enumerate(boxes):
        assert rect[0] <= a[0] and a[2] <= rect[2] and rect[1] <= a[1] and a[3] <= rect[3], (shown[i], a, rect)
        assert not [b for b in boxes[i + 1 :] if overlaps(a, b)], (shown, boxes)
    assert shown == expected
    if name == "head":
        assert re.fullmatch(r"Head Circumference: \d+\.\d\d mm", shown[0][0])
    if name.startswith("labour"):
        assert re.fullmatch(r"Angle of progression: \d+\.\d\d deg", shown[0][0])
    # The research-use notice is one click from the report: its series, as the study browser lists it.
    assert "research use only" in study.sr_description and study.sr_description in page_text(browser)
