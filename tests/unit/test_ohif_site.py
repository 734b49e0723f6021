"""The OHIF routes of the Orthanc plugin (``fetalnode.orthanc.ohif``) on a made-up ``dist`` folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fetalnode.orthanc.ohif import OhifSite, app_config, register
from harness.orthanc import OrthancProcess
from harness.processes import HarnessError

pytestmark = pytest.mark.unit

INDEX = (
    '<script>window.PUBLIC_URL="/"</script><link href="/app.bundle.css">'
    '<script src="/app-config.js"></script><a href="//example.org/x">'
)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "app-config.js").write_text("window.config = {demo: true};")
    (root / "12.bundle.abc.js").write_text("chunk")
    (root / "0ddf.wasm").write_bytes(b"\0asm")
    (root / "assets" / "icon.svg").write_text("<svg/>")
    (root / "_redirects").write_text("/* /index.html 200")
    (root / "app").mkdir()  # would shadow Orthanc Explorer
    (tmp_path / "secret.txt").write_text("not served")
    return root


def test_index_is_moved_under_ohif_and_the_config_is_ours(dist: Path) -> None:
    site = OhifSite(dist)
    html = site.page("viewer")[0].decode()  # a client-side route answers index.html
    assert 'window.PUBLIC_URL="/ohif/"' in html
    assert 'href="/ohif/app.bundle.css"' in html and 'src="/ohif/app-config.js"' in html
    assert 'href="//example.org/x"' in html  # protocol-relative URLs untouched
    for name in ("app-config.js", "/app-config.js"):
        body, kind = site.file(name)  # type: ignore[misc]
        assert body.decode() == app_config() and kind == "application/javascript"
    config = app_config()
    assert 'routerBasename": "/ohif"' in config and '"staticWado": false' in config
    assert '"singlepart": "bulkdata"' in config
    assert len(re.findall(r'"(?:qido|wado|wadoUri)Root": "/dicom-web"', config)) == 3


def test_files_types_and_what_is_refused(dist: Path) -> None:
    site = OhifSite(dist)
    assert site.file("0ddf.wasm") == (b"\0asm", "application/wasm")
    assert site.file("assets/icon.svg") == (b"<svg/>", "image/svg+xml")
    assert site.file("../secret.txt") is None
    assert site.file("assets/../../secret.txt") is None
    assert site.file("_redirects") is None
    assert site.file("missing.js") is None


def test_root_routes_are_the_builds_names_never_orthancs(dist: Path) -> None:
    routes = OhifSite(dist).root_routes()
    assert routes == [r"/(0ddf\.wasm)", r"/(12\.bundle\.abc\.js)", r"/(app\-config\.js)", r"/(assets/.+)"]


class FakeOrthanc:
    """Records routes as Orthanc's Python plugin would (regex matched against the whole URI)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, Any]] = []

    def RegisterRestCallback(self, pattern: str, callback: Any) -> None:
        self.routes.append((pattern, callback))

    def get(self, uri: str) -> tuple[int, bytes]:
        for pattern, callback in self.routes:
            m = re.fullmatch(pattern, uri)
            if m:
                out = Output()
                callback(out, uri, method="GET", groups=[g or "" for g in m.groups()])
                return out.status, out.body
        return 0, b""  # Orthanc's own routes


class Output:
    status, body = 0, b""

    def AnswerBuffer(self, body: bytes, kind: str) -> None:
        self.status, self.body = 200, body

    def SendHttpStatusCode(self, code: int) -> None:
        self.status = code

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.status = 405


def test_registered_routes_answer_viewer_paths_and_leave_orthancs_alone(dist: Path) -> None:
    orthanc = FakeOrthanc()
    register(orthanc, dist)
    assert orthanc.get("/ohif")[0] == 200 and b'PUBLIC_URL="/ohif/"' in orthanc.get("/ohif")[1]
    assert orthanc.get("/ohif/viewer/x")[1] == orthanc.get("/ohif")[1]
    assert orthanc.get("/12.bundle.abc.js") == (200, b"chunk")
    assert orthanc.get("/ohif/12.bundle.abc.js") == (200, b"chunk")
    assert orthanc.get("/assets/icon.svg") == (200, b"<svg/>")
    for own in ("/app/explorer.html", "/instances", "/dicom-web/studies", "/", "/index.html", "/ohifx"):
        assert orthanc.get(own)[0] == 0, own


def test_harness_needs_ohif_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harness.orthanc.OHIF_DIST", tmp_path / "nothing")
    server = OrthancProcess(tmp_path, ohif=True)
    assert server.dicomweb and server.fetalnode_plugin
    with pytest.raises(HarnessError, match="make deps"):
        server.config()
