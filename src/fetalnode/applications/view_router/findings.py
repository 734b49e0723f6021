"""The reader of the view router's report (:mod:`.report`): no application looked at the image, and why.

Also reads the reports written before the router had its own: the fetal head report with the head's
assessment (FN0006) valued "no application for this view" (FN0007). Pydicom only.
"""

from __future__ import annotations

from typing import Any

from fetalnode.applications.view_router import NAME
from fetalnode.applications.view_router import codes as vrc
from fetalnode.outputs.codes import SCHEME
from fetalnode.outputs.findings import Content, FindingReader, code_key, item_key, register_reader

ASSESSMENTS = {code_key(code): code for code in (vrc.NO_APPLICATION, vrc.VIEW_UNCERTAIN)}
HEAD_ASSESSMENT = ("FN0006", SCHEME)  # where reports written before the router's own one carry FN0007


def read(found: Content) -> dict[str, Any] | None:
    value = found.code(vrc.VIEW_ASSESSMENT)
    if value is None:
        legacy = found.codes.get(HEAD_ASSESSMENT)
        if legacy is None or item_key(legacy) != code_key(vrc.NO_APPLICATION):
            return None
        value = code_key(vrc.NO_APPLICATION)
    assessment = ASSESSMENTS.get(value)
    if assessment is None:
        raise ValueError(f"unknown view assessment {value}")
    return {
        "application": NAME,
        "assessment": assessment.meaning,
        "analysed": False,
    }


register_reader(NAME, FindingReader(read))
