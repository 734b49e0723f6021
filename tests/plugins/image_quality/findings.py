"""The reader of the image-quality report, beside its writer (pydicom only: the Orthanc plugin loads it)."""

from __future__ import annotations

from typing import Any

from fetalnode.outputs.findings import Content, FindingReader, register_reader
from tests.plugins.image_quality import NAME
from tests.plugins.image_quality import codes as qc


def read(found: Content) -> dict[str, Any] | None:
    score = found.number(qc.CONTRAST_SCORE, qc.SCORE_UNIT)
    if score is None:
        return None
    return {"application": NAME, "assessment": f"contrast score {score:g}", "abnormal": False, "contrast_score": score}


register_reader(NAME, FindingReader(read))
