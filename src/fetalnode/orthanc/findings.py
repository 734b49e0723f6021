"""Read a fetalnode SR back into a finding a person can read (used by the Orthanc plugin).

Pure pydicom, no Orthanc: the plugin and the tests call the same code. An SR that is not a
readable fetalnode report gives ``{"readable": False, "error": ...}`` instead of raising.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

NOTICE = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
MANUFACTURER = "fetalnode project"


def hadlock_ga_weeks(hc_mm: float) -> float:
    """Gestational age (weeks) from head circumference by Hadlock et al., Radiology 1984;152:497-501.

    GA = 8.96 + 0.540 * HC + 0.0003 * HC^3, HC in cm. An estimate; valid for about 14-40 weeks.
    """
    hc = hc_mm / 10.0
    return 8.96 + 0.540 * hc + 0.0003 * hc**3


def _name(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeMeaning) if seq else ""


def _walk(items: Any, out: dict[str, Any]) -> None:
    for item in items or []:
        kind, name = str(item.get("ValueType", "")), _name(item)
        if kind == "NUM" and "MeasuredValueSequence" in item and item.MeasuredValueSequence:
            mv = item.MeasuredValueSequence[0]
            unit = str(mv.MeasurementUnitsCodeSequence[0].CodeValue) if "MeasurementUnitsCodeSequence" in mv else ""
            out["numbers"][name] = (float(mv.NumericValue), unit)
        elif kind == "CODE" and item.get("ConceptCodeSequence"):
            out["codes"][name] = str(item.ConceptCodeSequence[0].CodeMeaning)
        elif kind == "TEXT":
            out["texts"].setdefault(name, []).append(str(item.TextValue))
        elif kind == "SCOORD":
            out["region"] = str(item.get("GraphicType", ""))
        if "ContentSequence" in item:
            _walk(item.ContentSequence, out)


def read_finding(ds: Dataset) -> dict[str, Any]:
    """The finding of one fetalnode SR, as plain JSON-able values."""
    try:
        if str(ds.get("Modality", "")) != "SR" or "ContentSequence" not in ds:
            raise ValueError("not a structured report with content")
        found: dict[str, Any] = {"numbers": {}, "codes": {}, "texts": {}, "region": ""}
        _walk(ds.ContentSequence, found)
        assessment = found["codes"].get("AI assessment of fetal head")
        if assessment is None:
            raise ValueError("no 'AI assessment of fetal head' in the report")
        comments = found["texts"].get("Comment", [])
        if not comments or not comments[0].startswith(NOTICE):
            raise ValueError("the research-use notice is missing")
        numbers = found["numbers"]
        hc = numbers.get("Head Circumference", (None, ""))[0]
        model = found["texts"].get("Algorithm Name", [""])[0].removeprefix("fetalnode ")
        version = found["texts"].get("Algorithm Version", [""])[0]
        params = list(dict.fromkeys(found["texts"].get("Algorithm Parameters", [])))
        date, time = str(ds.get("ContentDate", "")), str(ds.get("ContentTime", ""))
        when = f"{date[:4]}-{date[4:6]}-{date[6:8]} {time[:2]}:{time[2:4]}:{time[4:6]}" if len(date) == 8 else ""
        return {
            "readable": True,
            "assessment": assessment,
            "abnormal": assessment.lower() == "abnormal",
            "malformation_type": found["codes"].get("Malformation type", ""),
            "confidence_pct": numbers.get("Classifier confidence of finding", (None, ""))[0],
            "hc_mm": hc,
            "bpd_mm": numbers.get("Biparietal Diameter", (None, ""))[0],
            "ofd_mm": numbers.get("Occipital-Frontal Diameter", (None, ""))[0],
            "ga_weeks_hadlock": round(hadlock_ga_weeks(hc), 1) if hc else None,
            "model": f"{model} {version}".strip(),
            "models": params,
            "analysed_at": when,
            "comments": comments,
            "notice": NOTICE,
        }
    except Exception as exc:  # any malformed SR: the panel says "unreadable report"
        return {"readable": False, "error": f"{type(exc).__name__}: {exc}", "notice": NOTICE}
