"""The image-quality application: decode the frame as every application does, score its contrast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis, Setup
from fetalnode.applications.registry import register_application
from fetalnode.config import Settings
from fetalnode.intake import DecodedImage
from tests.plugins.image_quality import NAME

MODEL = ("contrast-score", "1")  # no model: a formula, named as the algorithm of its report


def contrast_score(gray01: np.ndarray) -> float:
    """The standard deviation of the grey levels (0-1), in percent, to two decimals."""
    return round(100.0 * float(np.std(np.asarray(gray01, dtype=np.float64))), 2)


@dataclass(frozen=True)
class QualityResult:
    score: float
    analysed: bool = True
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        return {"analysed": True, "reason": "", "finding": "", "contrast_score": self.score}


@dataclass
class ImageQuality:
    setup: Setup
    name: str = NAME
    applications: tuple[str, ...] = (NAME,)

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        decoded = self.setup.decode(ds, decoded)
        return Analysis(NAME, QualityResult(contrast_score(decoded.gray01)), decoded, (MODEL,))

    def bundle_paths(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, str]:
        return {"score": " ".join(MODEL)}


@register_application(NAME)
def load(settings: Settings) -> ImageQuality:
    return ImageQuality(Setup.of(settings))
