"""The answer a site terminal gives, without models, for an image it keeps on site: "not analysed", and why.

A terminal that pseudonymises sends no image whose burned-in text it cannot remove (no ultrasound region
and no ``[[privacy.masks]]`` entry for its scanner). The image still gets its report, capture and
presentation state, saying so, built at the terminal by the writers of the view router's "not analysed"
answer: the same objects a clinician sees for an image no application looks at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from fetalnode import __version__
from fetalnode.applications.base import Analysis, Setup
from fetalnode.applications.view_router import NAME as ROUTER
from fetalnode.applications.view_router.result import NoApplication
from fetalnode.errors import InferenceError
from fetalnode.intake import DecodedImage

# What answered: this software at the terminal, no model.
TERMINAL = ("site-terminal", __version__)


@dataclass
class Withheld:
    """An application whose every answer is "not analysed: ``reason``" (as the view router words it)."""

    reason: str
    setup: Setup
    name: str = "withheld"
    applications: tuple[str, ...] = (ROUTER,)

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        decoded = self.setup.decode(ds, decoded)
        return Analysis(ROUTER, NoApplication(self.reason, TERMINAL, decoded.display_rgb), decoded, (TERMINAL,))

    def bundle_paths(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, str]:
        return {"answer": self.reason}


@dataclass
class DeliveryOnly:
    """The application of a terminal's own delivery worker: it delivers what the cloud built, and analyses
    nothing (a job whose objects are not in the outbox fails, and ``fetalnode resend`` sends it again)."""

    name: str = "delivery-only"
    applications: tuple[str, ...] = ()

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        raise InferenceError(
            "this terminal analyses nothing and the job's objects are not in its outbox: fetalnode resend sends "
            "the job to the cloud again"
        )

    def bundle_paths(self) -> list[Path]:
        return []

    def describe(self) -> dict[str, str]:
        return {}
