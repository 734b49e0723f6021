"""The view router's own answer, for an image no application answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fetalnode.vocab import View

NO_APPLICATION = "no application for this view"


def not_analysed_reason(view: View, uncertain: bool = False) -> str:
    """Why an image got no application: its view, or "view uncertain" when the cross-check disagreed."""
    return f"not analysed: {'view uncertain' if uncertain else view.words}, {NO_APPLICATION}"


@dataclass(frozen=True)
class NoApplication:
    """No application looked at the image: its view has none (or none of this build), the view model
    abstained, or the view is uncertain (``uncertain``: a cross-check disagreed). ``reason`` is the
    sentence every object carries; ``model`` the model that decided (``name, version``); ``display_rgb``
    the image as shown, for the capture."""

    reason: str
    model: tuple[str, str]
    display_rgb: np.ndarray
    uncertain: bool = False
    analysed: bool = False

    @classmethod
    def of(cls, view: View, uncertain: bool, model: tuple[str, str], display_rgb: np.ndarray) -> NoApplication:
        return cls(not_analysed_reason(view, uncertain), model, display_rgb, uncertain)

    def summary(self) -> dict[str, Any]:
        return {"analysed": False, "reason": self.reason, "finding": "", "models": {"view": "/".join(self.model)}}
