"""The reader of the labour-progress report (the ``sr`` writer, :mod:`.report`): the angle of progression
and the head-symphysis distance, by code, with the literature reference they are shown beside. No head
keys carry a value (HC, type, confidence). Pydicom only (the Orthanc plugin imports it)."""

from __future__ import annotations

from typing import Any

from fetalnode.applications.labour_progress import NAME
from fetalnode.applications.labour_progress import codes as lpc
from fetalnode.outputs import codes as fc
from fetalnode.outputs.findings import Content, FindingReader, code_key, code_text, register_reader

# The values of the labour-progress assessment (FN0103).
ASSESSMENTS = {code_key(code): code for code in (lpc.LABOUR_MEASURED, lpc.LABOUR_NOT_ANALYSED)}


def read(found: Content) -> dict[str, Any] | None:
    value = found.code(lpc.LABOUR_ASSESSMENT)
    if value is None:
        return None
    assessment = ASSESSMENTS.get(value)
    if assessment is None:
        raise ValueError(f"unknown labour assessment {value}")
    analysed = assessment == lpc.LABOUR_MEASURED
    aop = found.number(lpc.ANGLE_OF_PROGRESSION, lpc.DEGREE)
    if analysed and aop is None:
        raise ValueError(f"no {code_text(lpc.ANGLE_OF_PROGRESSION)} in degrees in a measured report")
    return {
        "application": NAME,
        "assessment": assessment.meaning,
        "analysed": analysed,
        "aop_deg": aop,
        "hsd_mm": found.number(lpc.HEAD_SYMPHYSIS_DISTANCE, fc.MM),
        "hsd_px": found.number(lpc.HEAD_SYMPHYSIS_DISTANCE, lpc.PIXELS),
        "aop_reference": lpc.AOP_REFERENCE if analysed else "",
    }


register_reader(NAME, FindingReader(read))
