"""The fetal head application: head segmentation, biometry in mm, malformation classifier, Grad-CAM."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from fetalnode.applications.base import Analysis, Claim, Setup, run_models
from fetalnode.applications.fetal_head import NAME
from fetalnode.applications.registry import register_application
from fetalnode.config import Settings
from fetalnode.inference import Analyzer
from fetalnode.inference.analyzer import HeadLocation
from fetalnode.inference.bundle import Bundle
from fetalnode.intake import DecodedImage

log = logging.getLogger(__name__)


@dataclass
class FetalHead:
    """Bundles ``models.segmentation`` + ``models.classifier`` from ``models.dir``."""

    analyzer: Analyzer
    setup: Setup
    bundles: tuple[str, str]
    name: str = NAME
    applications: tuple[str, ...] = (NAME,)

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        d = decoded = self.setup.decode(ds, decoded)
        head = d.found.get(self.name)  # the skull the router asked about (claim), located once
        result = run_models(
            lambda: self.analyzer.analyze(
                d.gray, d.spacing_mm, d.display_rgb, d.spacing_note, img01=d.gray01, head=head
            )
        )
        return Analysis(self.name, result, decoded, (result.seg_model, result.cls_model))

    def locate(self, decoded: DecodedImage) -> HeadLocation:
        """The gated skull of a frame, located once per frame (kept in ``decoded.found``)."""
        if self.name not in decoded.found:
            decoded.found[self.name] = run_models(lambda: self.analyzer.locate(decoded.gray01), self.name)
        head = decoded.found[self.name]
        assert isinstance(head, HeadLocation)
        return head

    def claim(self, decoded: DecodedImage) -> Claim:
        """How well the head segmentation's gate recognises a skull in the frame: its plausibility score (the
        lowest of the ellipse fit, the segmentation confidence and the part inside the frame), 0 when refused."""
        head = self.locate(decoded)
        seg = self.analyzer.seg
        by = f"the head segmentation {seg.name} {seg.version}"
        model = (seg.name, seg.version)
        if head.reason:
            return Claim(0.0, f"no plausible skull ({head.reason}) was found by {by}", model, "skull fit")
        return Claim(head.score, f"a well-fitted skull (fit {head.score:.2f}) was found by {by}", model, "skull fit")

    def loaded_bundles(self) -> list[Bundle]:
        return [self.analyzer.seg, self.analyzer.cls]

    def bundle_paths(self) -> list[Path]:
        return [self.setup.models_dir / name for name in self.bundles]

    def describe(self) -> dict[str, str]:
        seg, cls = self.analyzer.seg, self.analyzer.cls
        return {"segmentation": f"{seg.name} {seg.version}", "classifier": f"{cls.name} {cls.version}"}


@register_application(NAME)
def load(settings: Settings) -> FetalHead:
    m = settings.models
    analyzer = Analyzer.from_dir(m.dir, m.segmentation, m.classifier, settings.output.heatmap_alpha)
    return FetalHead(analyzer, Setup.of(settings), (m.segmentation, m.classifier))
