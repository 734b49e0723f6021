"""An application that lives only in tests/plugins (``image-quality``), added without editing the source
tree: registered through ``node.plugins``, routed to by the view router for first-trimester mid-sagittal
images, its SR delivered to Orthanc and its finding shown by the fetalnode plugin's findings JSON."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from fetalnode.intake import decode_for_analysis
from fetalnode.wrap import wrap_png
from harness.orthanc import OrthancProcess
from harness.processes import wait_for
from tests.conftest import DATA, send
from tests.e2e.helpers import download, find
from tests.plugins.image_quality import NAME
from tests.plugins.image_quality.application import contrast_score

pytestmark = pytest.mark.e2e
FIRST_TRIMESTER = DATA / "view_mini" / "first_trimester_sagittal" / "images" / "ff_0060.png"
ROUTES = {
    "axial_fetal_head": "fetal-head",
    "intrapartum_transperineal": "labour-progress",
    "first_trimester_midsagittal": NAME,
}


def findings(orthanc: OrthancProcess) -> list[dict[str, object]]:
    r = httpx.get(f"{orthanc.url}/fetalnode/findings", auth=(orthanc.username, orthanc.password), timeout=10)
    r.raise_for_status()
    return list(r.json()["findings"])


def test_an_application_from_a_plugin_is_routed_delivered_and_shown(make_node, tmp_path: Path) -> None:
    orthanc = OrthancProcess(
        tmp_path / "orthanc", webviewer=False, fetalnode_plugin=True, plugins=("tests.plugins.image_quality.findings",)
    ).start()
    try:
        node = make_node(
            orthanc,
            node__plugins=["tests.plugins.image_quality.register"],
            router__applications=ROUTES,
            output__enabled=["sr", "sc", "gsps"],
        ).start()
        image = tmp_path / "first_trimester.dcm"
        ds = wrap_png(FIRST_TRIMESTER, pixel_size_mm=None)
        ds.save_as(image, enforce_file_format=True)
        assert send(node.port, image).returncode == 0
        node.wait_all(1, {"delivered"})
        [job] = node.jobs.jobs()
        assert job.result["application"] == NAME and job.result["view"]["label"] == "first_trimester_midsagittal"
        assert set(job.result["outputs"]) == {"sr"}, "the head and router writers write nothing for it"
        expected = contrast_score(decode_for_analysis(dcmread(image), 10**8, 1000).gray01)
        assert job.result["contrast_score"] == expected

        [hit] = find(orthanc, SOPInstanceUID=job.result["outputs"]["sr"])
        sr = download(orthanc, hit["ID"])
        assert sr.Modality == "SR" and sr.SeriesDescription.endswith("research use only")
        shown = wait_for(lambda: [f for f in findings(orthanc) if f.get("application") == NAME], 30, "the finding")
        [finding] = shown
        assert finding["readable"] is True and finding["contrast_score"] == expected
        assert finding["model"] == "contrast-score 1" and str(finding["notice"]).lower().startswith("research use")
    finally:
        orthanc.stop()
