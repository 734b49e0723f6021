"""fetalnode's Orthanc plugin (Orthanc's Python plugin, Debian package ``orthanc-python``).

Loaded by Orthanc through its configuration (``"PythonScript": ".../fetalnode/orthanc/plugin.py"``);
``"Fetalnode": {"SysPath": [...]}`` lists the folders that hold ``fetalnode`` and ``pydicom``
(the project's ``src`` and the venv's site-packages), because the plugin runs in Debian's embedded
Python, not in the venv. What it adds, all under Orthanc's own HTTP server and authentication:

- ``GET /fetalnode/findings[?since=ISO][&resource=ORTHANC_ID][&limit=N]``: the fetalnode reports
  Orthanc holds, newest first, as JSON (documented in docs/operations.md);
- ``GET /fetalnode/triage``: the triage list page (abnormal first when sorted by finding, sortable
  by confidence, refreshes itself);
- a "Fetal AI" panel on the study, series and instance pages of Orthanc Explorer;
- the OHIF viewer at ``/ohif/`` when ``"Fetalnode": {"OhifRoot": ".../@ohif/app/dist"}`` names a
  prebuilt OHIF (``ohif.py``; it reads studies through the DICOMweb plugin).

fetalnode's SR and SC are recognised by the Device UID this software writes in their Contributing
Equipment Sequence (``findings.made_by_fetalnode``), never by the configurable Manufacturer; the
SR is read by code (``findings.read_finding``).

Research use only, not for diagnosis: the panel, the page and every JSON answer say so.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import orthanc  # type: ignore[import-not-found]  # provided by Orthanc's Python plugin

HERE = Path(__file__).resolve().parent
CONFIG = json.loads(orthanc.GetConfiguration()).get("Fetalnode", {})
for entry in reversed(CONFIG.get("SysPath", [])):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from pydicom import dcmread  # noqa: E402

from fetalnode.orthanc import ohif  # noqa: E402
from fetalnode.outputs.findings import NOTICE, is_companion_report, made_by_fetalnode, read_finding  # noqa: E402

# Modules that register the findings reader of an application from outside the source tree (the node's
# ``node.plugins``, as far as their readers go); the built-in readers load on the first report.
for _module in CONFIG.get("Plugins", []):
    try:
        importlib.import_module(_module)
    except Exception as _exc:
        orthanc.LogError(f"fetalnode: plugin module {_module!r} not loaded: {type(_exc).__name__}: {_exc}")

_lock = threading.Lock()
_findings: dict[str, dict[str, Any]] = {}  # SR Orthanc ID -> finding
_heatmaps: dict[str, dict[str, str]] = {}  # source SOP Instance UID -> {"instance", "series"} of the SC


def _get_json(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _index_instance(instance_id: str) -> None:
    """Remember a fetalnode SR (its finding) or SC (the heatmap of a source image).

    Ours are those whose Contributing Equipment Sequence names fetalnode's Device UID; Orthanc's
    simplified tags hold the whole sequence (a list of objects), so the file is read only for ours.
    """
    try:
        tags = _get_json(f"/instances/{instance_id}/tags?simplify")
    except Exception:
        return  # deleted meanwhile
    if not made_by_fetalnode(tags):
        return
    if tags.get("Modality") == "SR":
        try:
            ds = dcmread(BytesIO(orthanc.RestApiGet(f"/instances/{instance_id}/file")))
            if is_companion_report(ds):
                return  # our OB-GYN report (TID 5000): the finding is read from the TID 1500 report
            finding = read_finding(ds)
            evidence = [
                r.ReferencedSOPInstanceUID
                for s in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for se in s.ReferencedSeriesSequence
                for r in se.ReferencedSOPSequence
            ]
        except Exception as exc:
            finding, evidence = {"readable": False, "error": f"{type(exc).__name__}: {exc}", "notice": NOTICE}, []
        info = _get_json(f"/instances/{instance_id}")
        series = _get_json(f"/series/{info['ParentSeries']}")
        study = _get_json(f"/studies/{series['ParentStudy']}")
        source = evidence[0] if evidence else ""
        source_ids = _lookup(source)
        finding.update(
            {
                "sr_instance": instance_id,
                "study": series["ParentStudy"],
                "sr_series": info["ParentSeries"],
                "source_sop_uid": source,
                "source_instance": source_ids.get("instance", ""),
                "source_series": source_ids.get("series", ""),
                "patient_name": study.get("PatientMainDicomTags", {}).get("PatientName", ""),
                "patient_id": study.get("PatientMainDicomTags", {}).get("PatientID", ""),
                "study_description": study.get("MainDicomTags", {}).get("StudyDescription", ""),
                "indexed_at": _now(),
            }
        )
        with _lock:
            _findings[instance_id] = finding
    elif tags.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.7":
        try:
            ds = dcmread(BytesIO(orthanc.RestApiGet(f"/instances/{instance_id}/file")), stop_before_pixels=True)
            source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        except Exception:
            return
        info = _get_json(f"/instances/{instance_id}")
        with _lock:
            _heatmaps[source] = {"instance": instance_id, "series": info["ParentSeries"]}


def _lookup(sop_uid: str) -> dict[str, str]:
    if not sop_uid:
        return {}
    try:
        hits = json.loads(orthanc.RestApiPost("/tools/lookup", sop_uid))
    except Exception:
        return {}
    for hit in hits:
        if hit.get("Type") == "Instance":
            info = _get_json(f"/instances/{hit['ID']}")
            return {"instance": hit["ID"], "series": info["ParentSeries"]}
    return {}


def _index_all() -> None:
    for instance_id in _get_json("/instances"):
        _index_instance(instance_id)


def _study_of(resource: str) -> str:
    """The Orthanc study ID of a study, series or instance ID ("" if Orthanc has none of them)."""
    for level in ("studies", "series", "instances"):
        try:
            info = _get_json(f"/{level}/{resource}")
        except Exception:
            continue
        if level == "studies":
            return resource
        if level == "series":
            return str(info["ParentStudy"])
        return str(_get_json(f"/series/{info['ParentSeries']}")["ParentStudy"])
    return ""


def _with_heatmap(finding: dict[str, Any]) -> dict[str, Any]:
    out = dict(finding)
    heat = _heatmaps.get(finding.get("source_sop_uid", ""), {})
    out["heatmap_instance"] = heat.get("instance", "")
    out["heatmap_series"] = heat.get("series", "")
    return out


def on_findings(output: Any, uri: str, **request: Any) -> None:
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    args = request.get("get", {})
    since, resource = args.get("since", ""), args.get("resource", "")
    try:
        limit = max(1, min(1000, int(args.get("limit", "200"))))
    except ValueError:
        limit = 200
    study = _study_of(resource) if resource else ""
    with _lock:
        rows = [_with_heatmap(f) for f in _findings.values()]
    rows = [r for r in rows if r["indexed_at"] > since and (not study or r.get("study") == study)]
    rows.sort(key=lambda r: r["indexed_at"], reverse=True)
    latest = max((r["indexed_at"] for r in rows), default=since)
    body = {"notice": NOTICE, "study": study, "latest": latest, "findings": rows[:limit]}
    output.AnswerBuffer(json.dumps(body), "application/json")


def on_triage(output: Any, uri: str, **request: Any) -> None:
    output.AnswerBuffer((HERE / "triage.html").read_text(encoding="utf-8"), "text/html; charset=utf-8")


def on_change(change_type: int, level: int, resource: str) -> None:
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        _index_instance(resource)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        threading.Thread(target=_index_all, daemon=True).start()
    elif change_type == orthanc.ChangeType.DELETED:
        with _lock:
            _findings.pop(resource, None)


orthanc.RegisterRestCallback("/fetalnode/findings", on_findings)
orthanc.RegisterRestCallback("/fetalnode/triage", on_triage)
orthanc.RegisterOnChangeCallback(on_change)
orthanc.ExtendOrthancExplorer((HERE / "explorer.js").read_text(encoding="utf-8"))
routes = "/fetalnode/findings, /fetalnode/triage, Orthanc Explorer panel"
if CONFIG.get("OhifRoot"):
    ohif.register(orthanc, Path(CONFIG["OhifRoot"]))
    routes += f", OHIF at {ohif.PREFIX}/ from {CONFIG['OhifRoot']}"
orthanc.LogWarning(f"fetalnode plugin loaded: {routes}")
