"""Recognise fetalnode's objects and read its SR back into a finding a person can read.

Used by the Orthanc plugin; pure pydicom, importable without Orthanc, torch or highdicom, so the
plugin and the tests call the same code. Following highdicom's readers, everything is decided by
code: an object is ours when it carries this software's Device UID
(:data:`fetalnode.outputs.uids.DEVICE_UID`), and content items are found by their concept codes
(:mod:`fetalnode.outputs.codes`). Meaning texts are only displayed. An SR that is not a readable
fetalnode report gives ``{"readable": False, "error": ...}`` instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE
from fetalnode.outputs import codes as fc
from fetalnode.outputs.uids import DEVICE_UID
from fetalnode.vocab import TypeNote

NOTICE = RESEARCH_NOTICE

Key = tuple[str, str]  # (Code Value, Coding Scheme Designator)


def _key(code: Code) -> Key:
    return (str(code.value), str(code.scheme_designator))


def _item_key(item: Dataset) -> Key:
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    return (str(value), str(item.get("CodingSchemeDesignator", "")))


# The values of the AI assessment (FN0006) and how they are displayed.
_ASSESSMENTS = {_key(code): code for code in (fc.NORMAL, fc.ABNORMAL, fc.NOT_ANALYSED, fc.NO_APPLICATION)}
# The values of the labour-progress assessment (FN0103).
_LABOUR_ASSESSMENTS = {_key(code): code for code in (fc.LABOUR_MEASURED, fc.LABOUR_NOT_ANALYSED)}


def made_by_fetalnode(tags: Dataset | Mapping[str, Any]) -> bool:
    """Whether an object (our SR or SC) names this software's Device UID in its Contributing Equipment.

    ``tags`` is a pydicom dataset, or Orthanc's simplified tags of the instance
    (``/instances/{id}/tags?simplify``: Orthanc 1.10 gives a sequence as a list of objects keyed by
    attribute keyword). The Manufacturer identifies nothing: it is configurable (``output.manufacturer``).
    """
    items = tags.get("ContributingEquipmentSequence") or []
    return any(isinstance(item, Dataset | Mapping) and str(item.get("DeviceUID", "")) == DEVICE_UID for item in items)


def hadlock_ga_weeks(hc_mm: float) -> float:
    """Gestational age (weeks) from head circumference by Hadlock et al., Radiology 1984;152:497-501.

    GA = 8.96 + 0.540 * HC + 0.0003 * HC^3, HC in cm. An estimate; valid for about 14-40 weeks.
    """
    hc = hc_mm / 10.0
    return 8.96 + 0.540 * hc + 0.0003 * hc**3


@dataclass
class _Content:
    """The content tree's items by concept name code (the last item of a name wins, texts accumulate)."""

    numbers: dict[Key, tuple[float, Key]] = field(default_factory=dict)  # value, unit
    codes: dict[Key, Dataset] = field(default_factory=dict)  # the value's code item
    texts: dict[Key, list[str]] = field(default_factory=dict)
    uids: dict[Key, list[str]] = field(default_factory=dict)

    def number(self, name: Code, unit: Code) -> float | None:
        value, got = self.numbers.get(_key(name), (None, ("", "")))
        return value if got == _key(unit) else None


def _walk(items: Any, out: _Content) -> None:
    for item in items or []:
        names = item.get("ConceptNameCodeSequence")
        kind, name = str(item.get("ValueType", "")), _item_key(names[0]) if names else ("", "")
        if kind == "NUM" and item.get("MeasuredValueSequence"):
            mv = item.MeasuredValueSequence[0]
            units = mv.get("MeasurementUnitsCodeSequence")
            out.numbers[name] = (float(mv.NumericValue), _item_key(units[0]) if units else ("", ""))
        elif kind == "CODE" and item.get("ConceptCodeSequence"):
            out.codes[name] = item.ConceptCodeSequence[0]
        elif kind == "TEXT":
            out.texts.setdefault(name, []).append(str(item.TextValue))
        elif kind == "UIDREF":
            out.uids.setdefault(name, []).append(str(item.UID))
        if "ContentSequence" in item:
            _walk(item.ContentSequence, out)


def _code_text(code: Code) -> str:
    return f"{code.meaning!r} ({code.value}, {code.scheme_designator})"


def is_obgyn_report(ds: Dataset) -> bool:
    """Whether an SR is an OB-GYN Ultrasound Procedure Report (TID 5000, by its document title's code):
    fetalnode's carries the biometry again for OB reporting systems; the finding is read from the TID 1500
    report, and any other SR of ours is read (or shown as unreadable)."""
    titles = ds.get("ConceptNameCodeSequence") or []
    return len(titles) == 1 and _item_key(titles[0]) == _key(fc.OBGYN_REPORT)


def _labour_finding(found: _Content) -> dict[str, Any]:
    """The angle of progression and head-symphysis distance of a labour-progress report (by code), with
    the literature reference they are shown beside. No head keys carry a value (HC, type, confidence)."""
    value = _item_key(found.codes[_key(fc.LABOUR_ASSESSMENT)])
    assessment = _LABOUR_ASSESSMENTS.get(value)
    if assessment is None:
        raise ValueError(f"unknown labour assessment {value}")
    analysed = assessment == fc.LABOUR_MEASURED
    aop = found.number(fc.ANGLE_OF_PROGRESSION, fc.DEGREE)
    if analysed and aop is None:
        raise ValueError(f"no {_code_text(fc.ANGLE_OF_PROGRESSION)} in degrees in a measured report")
    return {
        "application": "labour-progress",
        "assessment": assessment.meaning,
        "analysed": analysed,
        "abnormal": False,
        "malformation_type": "",
        "type_note": "",
        "confidence_pct": None,
        "hc_mm": None,
        "bpd_mm": None,
        "ofd_mm": None,
        "ga_weeks_hadlock": None,
        "aop_deg": aop,
        "hsd_mm": found.number(fc.HEAD_SYMPHYSIS_DISTANCE, fc.MM),
        "hsd_px": found.number(fc.HEAD_SYMPHYSIS_DISTANCE, fc.PIXELS),
        "aop_reference": fc.AOP_REFERENCE if analysed else "",
    }


def read_finding(ds: Dataset) -> dict[str, Any]:
    """The finding of one fetalnode SR, as plain JSON-able values: a fetal head report (AI assessment
    FN0006) or a labour-progress report (FN0103), told apart by code."""
    try:
        if str(ds.get("Modality", "")) != "SR" or "ContentSequence" not in ds:
            raise ValueError("not a structured report with content")
        found = _Content()
        _walk(ds.ContentSequence, found)
        if DEVICE_UID not in found.uids.get(_key(fc.DEVICE_OBSERVER_UID), []):
            raise ValueError(f"no {_code_text(fc.DEVICE_OBSERVER_UID)} of fetalnode in the report")
        comments = found.texts.get(_key(fc.COMMENT), [])
        if not comments or not comments[0].startswith(NOTICE):
            raise ValueError("the research-use notice is missing")
        model = found.texts.get(_key(fc.ALGORITHM_NAME), [""])[0].removeprefix("fetalnode ")
        version = found.texts.get(_key(fc.ALGORITHM_VERSION), [""])[0]
        date, time = str(ds.get("ContentDate", "")), str(ds.get("ContentTime", ""))
        common = {
            "readable": True,
            "model": f"{model} {version}".strip(),
            "models": list(dict.fromkeys(found.texts.get(_key(fc.ALGORITHM_PARAMETERS), []))),
            "analysed_at": f"{date[:4]}-{date[4:6]}-{date[6:8]} {time[:2]}:{time[2:4]}:{time[4:6]}"
            if len(date) == 8
            else "",
            "comments": comments,
            "notice": NOTICE,
        }
        if _key(fc.LABOUR_ASSESSMENT) in found.codes:
            return {**_labour_finding(found), **common}
        value = found.codes.get(_key(fc.AI_ASSESSMENT))
        if value is None:
            raise ValueError(f"no {_code_text(fc.AI_ASSESSMENT)} or {_code_text(fc.LABOUR_ASSESSMENT)} in the report")
        assessment = _ASSESSMENTS.get(_item_key(value))
        if assessment is None:
            raise ValueError(f"unknown AI assessment {_item_key(value)}")
        malformation = found.codes.get(_key(fc.MALFORMATION_TYPE))
        # "Undetermined" as the malformation type: abnormal, and the node names no type.
        undetermined = malformation is not None and _item_key(malformation) == _key(fc.TYPE_NOT_DETERMINED)
        if undetermined:
            malformation = None
        hc = found.number(fc.HEAD_CIRCUMFERENCE, fc.MM)
        return {
            # "no application for this view": the view router answered, no application looked at the image
            "application": "view-router" if assessment == fc.NO_APPLICATION else "fetal-head",
            "assessment": assessment.meaning,
            "abnormal": assessment == fc.ABNORMAL,
            "malformation_type": str(malformation.get("CodeMeaning", "")) if malformation is not None else "",
            "type_note": TypeNote.NOT_DETERMINED.value if undetermined else "",
            "confidence_pct": next(
                (v for c in fc.FINDING_CONFIDENCES if (v := found.number(c, fc.PERCENT)) is not None), None
            ),
            "hc_mm": hc,
            "bpd_mm": found.number(fc.BIPARIETAL_DIAMETER, fc.MM),
            "ofd_mm": found.number(fc.OCCIPITAL_FRONTAL_DIAMETER, fc.MM),
            "ga_weeks_hadlock": round(hadlock_ga_weeks(hc), 1) if hc else None,
            **common,
        }
    except Exception as exc:  # any malformed SR: the panel says "unreadable report"
        return {"readable": False, "error": f"{type(exc).__name__}: {exc}", "notice": NOTICE}
