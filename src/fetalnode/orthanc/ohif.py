"""Serve a prebuilt OHIF viewer (npm ``@ohif/app``, its ``dist/``) from Orthanc, beside its DICOMweb plugin.

Used by ``plugin.py`` when Orthanc's configuration says where the viewer is
(``"Fetalnode": {"OhifRoot": ".../dist"}``); without it nothing is registered. Nothing here imports
``orthanc``: :func:`register` is handed the module, so the rest is testable in the venv.

What is served (all behind Orthanc's own HTTP server and authentication):

- ``/ohif/<file>``: the viewer's files; any other ``/ohif/...`` path answers ``index.html``
  (OHIF routes on the client: ``/ohif/viewer?StudyInstanceUIDs=...``);
- ``index.html`` with ``window.PUBLIC_URL`` and its asset paths moved under ``/ohif/``;
- ``app-config.js`` written here: one DICOMweb data source on the same server's ``/dicom-web``
  (Orthanc DICOMweb 1.7: no static WADO, ``singlepart: 'bulkdata'``), ``routerBasename: '/ohif'``;
- the same files at the server root, by their exact names (``/1602.bundle.<hash>.js``, ``/<hash>.wasm``,
  ``/assets/...``): OHIF's build fetches its code-split chunks from ``/`` whatever ``PUBLIC_URL`` says.
  Only names the build holds are registered, and never one of Orthanc's own top-level routes.
"""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path
from typing import Any

PREFIX = "/ohif"
DICOMWEB_ROOT = "/dicom-web"
# Orthanc's own top-level routes (core, Orthanc Explorer, plugins) and ours: never answered with a viewer file.
RESERVED = frozenset(
    {
        "app", "changes", "dicom-web", "exports", "fetalnode", "instances", "jobs", "modalities", "ohif",
        "patients", "peers", "plugins", "queries", "series", "statistics", "studies", "system", "tools",
        "web-viewer", "wado", "index.html", "",
    }
)  # fmt: skip
# Deployment files of the npm build (Netlify, `serve`), not part of the viewer.
NOT_SERVED = frozenset({"_headers", "_redirects", "serve.json"})
TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".map": "application/json",
}


def content_type(path: Path) -> str:
    return TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def app_config() -> str:
    """OHIF's ``app-config.js`` for Orthanc on the same origin (DICOMweb plugin 1.7 at ``/dicom-web``)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (fetalnode)",
            "name": "orthanc",
            "wadoUriRoot": DICOMWEB_ROOT,
            "qidoRoot": DICOMWEB_ROOT,
            "wadoRoot": DICOMWEB_ROOT,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "name": "fetalnode/orthanc",
        "routerBasename": PREFIX,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return "/* Written by fetalnode's Orthanc plugin (fetalnode/orthanc/ohif.py). */\nwindow.config = " + (
        json.dumps(config, indent=2) + ";\n"
    )


def patched_index(html: str) -> str:
    """``index.html`` with its public URL and root-relative asset paths under ``/ohif/``."""
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}/"')
    return re.sub(r'\b(href|src)="/(?!/)', rf'\1="{PREFIX}/', html)


class OhifSite:
    """The files of one OHIF ``dist`` folder, answered by URL path."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        index = self.root / "index.html"
        if not index.is_file():
            raise FileNotFoundError(f"no OHIF build in {self.root} (index.html missing)")
        self.generated = {
            "index.html": (patched_index(index.read_text(encoding="utf-8")).encode(), TYPES[".html"]),
            "app-config.js": (app_config().encode(), TYPES[".js"]),
        }

    def file(self, relative: str) -> tuple[bytes, str] | None:
        """The body and content type of ``relative`` (a path inside ``dist``), or None if it is not there."""
        relative = relative.lstrip("/")
        if relative in self.generated:
            return self.generated[relative]
        if relative.split("/", 1)[0] in NOT_SERVED:
            return None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path.read_bytes(), content_type(path)

    def page(self, relative: str) -> tuple[bytes, str]:
        """A ``/ohif/...`` answer: the file, or ``index.html`` for OHIF's client-side routes."""
        return self.file(relative) or self.generated["index.html"]

    def root_routes(self) -> list[str]:
        """Orthanc route patterns for the build's names at the server root (files exactly, folders below)."""
        routes = []
        for entry in sorted(self.root.iterdir()):
            if entry.name in RESERVED or entry.name in NOT_SERVED:
                continue
            name = re.escape(entry.name)
            routes.append(f"/({name}/.+)" if entry.is_dir() else f"/({name})")
        return routes


def register(orthanc: Any, root: Path) -> OhifSite:
    """Register the viewer's routes with Orthanc (``orthanc`` is the plugin's module)."""
    site = OhifSite(root)

    def answer(output: Any, found: tuple[bytes, str] | None, method: str) -> None:
        if method != "GET":
            output.SendMethodNotAllowed("GET")
        elif found is None:
            output.SendHttpStatusCode(404)
        else:
            output.AnswerBuffer(*found)

    def on_viewer(output: Any, uri: str, **request: Any) -> None:
        groups = request.get("groups") or []
        answer(output, site.page(groups[0] if groups and groups[0] else ""), str(request.get("method")))

    def on_root(output: Any, uri: str, **request: Any) -> None:
        answer(output, site.file(request["groups"][0]), str(request.get("method")))

    orthanc.RegisterRestCallback(PREFIX + "(?:/(.*))?", on_viewer)
    for route in site.root_routes():
        orthanc.RegisterRestCallback(route, on_root)
    return site
