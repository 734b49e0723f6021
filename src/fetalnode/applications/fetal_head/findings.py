"""The reader of the fetal head report (the ``sr`` writer, :mod:`.report`): its finding, by code.

Pydicom only (the Orthanc plugin imports it): the AI assessment (FN0006), the malformation type and the
confidences, HC / BPD / OFD in mm and the gestational age they give (Hadlock 1984).
"""

from __future__ import annotations

from typing import Any

from fetalnode.applications.fetal_head import NAME
from fetalnode.applications.fetal_head import codes as fhc
from fetalnode.applications.fetal_head.gestation import hadlock_ga_weeks
from fetalnode.outputs import codes as fc
from fetalnode.outputs.findings import Content, FindingReader, code_key, item_key, register_reader
from fetalnode.vocab import TypeNote

# The values of the AI assessment (FN0006) and how they are displayed.
ASSESSMENTS = {code_key(code): code for code in (fhc.NORMAL, fhc.ABNORMAL, fhc.NOT_ANALYSED)}


def read(found: Content) -> dict[str, Any] | None:
    value = found.code(fhc.AI_ASSESSMENT)
    if value is None:
        return None
    assessment = ASSESSMENTS.get(value)
    if assessment is None:
        raise ValueError(f"unknown AI assessment {value}")
    malformation = found.codes.get(code_key(fhc.MALFORMATION_TYPE))
    # "Undetermined" as the malformation type: abnormal, and the node names no type.
    undetermined = malformation is not None and item_key(malformation) == code_key(fhc.TYPE_NOT_DETERMINED)
    if undetermined:
        malformation = None
    hc = found.number(fhc.HEAD_CIRCUMFERENCE, fc.MM)
    return {
        "application": NAME,
        "assessment": assessment.meaning,
        "abnormal": assessment == fhc.ABNORMAL,
        "malformation_type": str(malformation.get("CodeMeaning", "")) if malformation is not None else "",
        "type_note": TypeNote.NOT_DETERMINED.value if undetermined else "",
        "confidence_pct": next(
            (v for c in fhc.FINDING_CONFIDENCES if (v := found.number(c, fc.PERCENT)) is not None), None
        ),
        "hc_mm": hc,
        "bpd_mm": found.number(fhc.BIPARIETAL_DIAMETER, fc.MM),
        "ofd_mm": found.number(fhc.OCCIPITAL_FRONTAL_DIAMETER, fc.MM),
        "ga_weeks_hadlock": round(hadlock_ga_weeks(hc), 1) if hc else None,
    }


register_reader(NAME, FindingReader(read, companions=(fhc.OBGYN_REPORT,)))
