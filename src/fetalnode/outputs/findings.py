"""Recognise fetalnode's objects and read its SR back into a finding a person can read.

Used by the Orthanc plugin and the triage list; pure pydicom, importable without Orthanc, torch or
highdicom, so the plugin and the tests call the same code. Following highdicom's readers, everything is
decided by code: an object is ours when it carries this software's Device UID
(:data:`fetalnode.outputs.uids.DEVICE_UID`), and content items are found by their concept codes. Meaning
texts are only displayed.

What is common to every report (the device, the research notice, the algorithm, the comments) is read
here; the finding itself by the reader of the application that wrote it, which sits beside its writer
(``applications/<name>/findings.py``) and registers with :func:`register_reader`. An SR that is not a
readable fetalnode report gives ``{"readable": False, "error": ...}`` instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from fetalnode import RESEARCH_NOTICE
from fetalnode.outputs import codes as fc
from fetalnode.outputs.uids import DEVICE_UID
from fetalnode.registry import Registry, builtin_modules

NOTICE = RESEARCH_NOTICE

Key = tuple[str, str]  # (Code Value, Coding Scheme Designator)


def code_key(code: Code) -> Key:
    return (str(code.value), str(code.scheme_designator))


def item_key(item: Dataset) -> Key:
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    return (str(value), str(item.get("CodingSchemeDesignator", "")))


def code_text(code: Code) -> str:
    return f"{code.meaning!r} ({code.value}, {code.scheme_designator})"


@dataclass
class Content:
    """The content tree's items by concept name code (the last item of a name wins, texts accumulate)."""

    numbers: dict[Key, tuple[float, Key]] = field(default_factory=dict)  # value, unit
    codes: dict[Key, Dataset] = field(default_factory=dict)  # the value's code item
    texts: dict[Key, list[str]] = field(default_factory=dict)
    uids: dict[Key, list[str]] = field(default_factory=dict)

    def number(self, name: Code, unit: Code) -> float | None:
        value, got = self.numbers.get(code_key(name), (None, ("", "")))
        return value if got == code_key(unit) else None

    def code(self, name: Code) -> Key | None:
        """The key of the code item under ``name``, or ``None``."""
        item = self.codes.get(code_key(name))
        return item_key(item) if item is not None else None


def _walk(items: Any, out: Content) -> None:
    for item in items or []:
        names = item.get("ConceptNameCodeSequence")
        kind, name = str(item.get("ValueType", "")), item_key(names[0]) if names else ("", "")
        if kind == "NUM" and item.get("MeasuredValueSequence"):
            mv = item.MeasuredValueSequence[0]
            units = mv.get("MeasurementUnitsCodeSequence")
            out.numbers[name] = (float(mv.NumericValue), item_key(units[0]) if units else ("", ""))
        elif kind == "CODE" and item.get("ConceptCodeSequence"):
            out.codes[name] = item.ConceptCodeSequence[0]
        elif kind == "TEXT":
            out.texts.setdefault(name, []).append(str(item.TextValue))
        elif kind == "UIDREF":
            out.uids.setdefault(name, []).append(str(item.UID))
        if "ContentSequence" in item:
            _walk(item.ContentSequence, out)


@dataclass(frozen=True)
class FindingReader:
    """How one application's report reads: ``read(content)`` gives its finding as JSON-able values, ``None``
    for a report that is not the application's, and raises ``ValueError`` for one that is but is malformed.
    ``companions``: the document titles of the application's other SRs, which carry no finding of their own
    (the fetal head's OB-GYN report): the plugin indexes them with their report, not as findings."""

    read: Callable[[Content], dict[str, Any] | None]
    companions: tuple[Code, ...] = ()


# The keys every finding has for the panel and the triage list, whichever application's (a reader gives its own).
BLANK: dict[str, Any] = {
    "abnormal": False,
    "malformation_type": "",
    "type_note": "",
    "confidence_pct": None,
    "hc_mm": None,
    "bpd_mm": None,
    "ofd_mm": None,
    "ga_weeks_hadlock": None,
}

READERS: Registry[FindingReader] = Registry("findings reader", builtins=builtin_modules("findings"))


def register_reader(application: str, reader: FindingReader) -> FindingReader:
    """Register the reader of ``application``'s report (on import of its ``findings`` module)."""
    return READERS.add(application, reader)


def made_by_fetalnode(tags: Dataset | Mapping[str, Any]) -> bool:
    """Whether an object (our SR or SC) names this software's Device UID in its Contributing Equipment.

    ``tags`` is a pydicom dataset, or Orthanc's simplified tags of the instance
    (``/instances/{id}/tags?simplify``: Orthanc 1.10 gives a sequence as a list of objects keyed by
    attribute keyword). The Manufacturer identifies nothing: it is configurable (``output.manufacturer``).
    """
    items = tags.get("ContributingEquipmentSequence") or []
    return any(isinstance(item, Dataset | Mapping) and str(item.get("DeviceUID", "")) == DEVICE_UID for item in items)


def is_companion_report(ds: Dataset) -> bool:
    """Whether an SR is another report of an application (by its document title's code, e.g. the fetal
    head's OB-GYN Ultrasound Procedure Report, TID 5000): it repeats what the application's TID 1500 report
    says, for other systems; the finding is read from that report."""
    titles = ds.get("ConceptNameCodeSequence") or []
    if len(titles) != 1:
        return False
    title = item_key(titles[0])
    return any(title == code_key(code) for name in READERS.names() for code in _reader(name).companions)


def _reader(name: str) -> FindingReader:
    return READERS.get(name, "findings")


def read_finding(ds: Dataset) -> dict[str, Any]:
    """The finding of one fetalnode SR, as plain JSON-able values: what every report says (model, comments,
    notice), and the finding as the reader of the application that wrote it reads it."""
    try:
        if str(ds.get("Modality", "")) != "SR" or "ContentSequence" not in ds:
            raise ValueError("not a structured report with content")
        found = Content()
        _walk(ds.ContentSequence, found)
        if DEVICE_UID not in found.uids.get(code_key(fc.DEVICE_OBSERVER_UID), []):
            raise ValueError(f"no {code_text(fc.DEVICE_OBSERVER_UID)} of fetalnode in the report")
        comments = found.texts.get(code_key(fc.COMMENT), [])
        if not comments or not comments[0].startswith(NOTICE):
            raise ValueError("the research-use notice is missing")
        model = found.texts.get(code_key(fc.ALGORITHM_NAME), [""])[0].removeprefix("fetalnode ")
        version = found.texts.get(code_key(fc.ALGORITHM_VERSION), [""])[0]
        date, time = str(ds.get("ContentDate", "")), str(ds.get("ContentTime", ""))
        common = {
            "readable": True,
            "model": f"{model} {version}".strip(),
            "models": list(dict.fromkeys(found.texts.get(code_key(fc.ALGORITHM_PARAMETERS), []))),
            "analysed_at": f"{date[:4]}-{date[4:6]}-{date[6:8]} {time[:2]}:{time[2:4]}:{time[4:6]}"
            if len(date) == 8
            else "",
            "comments": comments,
            "notice": NOTICE,
        }
        errors: list[str] = []
        for name in READERS.names():
            try:
                finding = _reader(name).read(found)
            except ValueError as exc:  # the application's report, malformed; another reader may still read it
                errors.append(str(exc))
                continue
            if finding is not None:
                return {**BLANK, **finding, **common}
        raise ValueError(errors[0] if errors else f"no finding that any application reads ({', '.join(READERS.names())})")
    except Exception as exc:  # any malformed SR: the panel says "unreadable report"
        return {"readable": False, "error": f"{type(exc).__name__}: {exc}", "notice": NOTICE}
