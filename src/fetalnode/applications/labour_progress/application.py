"""The labour-progress application: pubic symphysis + fetal head segmentation on an intrapartum
transperineal image, then the angle of progression and the head-symphysis distance (FH-PS-AOP 2023
convention, :mod:`fetalnode.inference.aop`). Research use only, not for diagnosis."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis, Recognition, Setup, run_models
from fetalnode.applications.labour_progress import NAME
from fetalnode.applications.registry import register_application
from fetalnode.config import Settings
from fetalnode.inference.labour_analyzer import LabourAnalyzer, load_labour_bundle
from fetalnode.intake import DecodedImage

log = logging.getLogger(__name__)


@dataclass
class LabourProgress:
    """Bundle ``models.labour_segmentation`` from ``models.dir``."""

    analyzer: LabourAnalyzer
    setup: Setup
    bundle: str
    name: str = NAME
    applications: tuple[str, ...] = (NAME,)

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        d = decoded = self.setup.decode(ds, decoded)
        result = run_models(lambda: self.analyzer.analyze(d.gray, d.spacing_mm, d.spacing_note, img01=d.gray01))
        return Analysis(self.name, result, decoded, (result.seg_model,))

    def recognises(self, decoded: DecodedImage) -> Recognition | None:
        """What of an intrapartum transperineal view the image shows (``None`` when nothing)."""
        found = run_models(lambda: self.analyzer.recognise(decoded.gray, decoded.gray01), f"{self.name} cross-check")
        seg = self.analyzer.bundle
        return (
            Recognition(f"{found} by the labour model {seg.name} {seg.version}", (seg.name, seg.version))
            if found
            else None
        )

    def bundle_paths(self) -> list[Path]:
        return [self.setup.models_dir / self.bundle]

    def describe(self) -> dict[str, str]:
        seg = self.analyzer.bundle
        return {"labour_segmentation": f"{seg.name} {seg.version}"}


@register_application(NAME)
def load(settings: Settings) -> LabourProgress:
    m = settings.models
    setup = Setup.of(settings)
    bundle = load_labour_bundle(setup.models_dir / m.labour_segmentation)
    return LabourProgress(LabourAnalyzer(bundle), setup, m.labour_segmentation)
