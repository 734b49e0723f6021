"""The fetal head application: head segmentation, biometry in mm, malformation classifier, Grad-CAM."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis
from fetalnode.applications.registry import register_application
from fetalnode.config import Settings
from fetalnode.errors import InferenceError
from fetalnode.inference import Analyzer
from fetalnode.intake import decode_for_analysis

log = logging.getLogger(__name__)
NAME = "fetal-head"


@dataclass
class FetalHead:
    """Bundles ``models.segmentation`` + ``models.classifier`` from ``models.dir``."""

    analyzer: Analyzer
    models_dir: Path
    bundles: tuple[str, str]
    max_pixels: int
    max_frames: int
    name: str = NAME
    applications: tuple[str, ...] = (NAME,)

    def analyse(self, ds: Dataset) -> Analysis:
        decoded = decode_for_analysis(ds, self.max_pixels, self.max_frames)
        try:
            result = self.analyzer.analyze(decoded.gray, decoded.spacing_mm, decoded.display_rgb, decoded.spacing_note)
        except InferenceError:
            raise
        except Exception as exc:
            raise InferenceError(f"{type(exc).__name__}: {exc}") from exc
        return Analysis(self.name, result, decoded, (result.seg_model, result.cls_model))

    def bundle_paths(self) -> list[Path]:
        return [self.models_dir / name for name in self.bundles]

    def describe(self) -> dict[str, str]:
        seg, cls = self.analyzer.seg, self.analyzer.cls
        return {"segmentation": f"{seg.name} {seg.version}", "classifier": f"{cls.name} {cls.version}"}


@register_application(NAME)
def load(settings: Settings) -> FetalHead:
    m = settings.models
    analyzer = Analyzer.from_dir(m.dir, m.segmentation, m.classifier, settings.output.heatmap_alpha)
    return FetalHead(
        analyzer, Path(m.dir), (m.segmentation, m.classifier), settings.worker.max_pixels, settings.worker.max_frames
    )
