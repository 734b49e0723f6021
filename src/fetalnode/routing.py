"""Routing rules at receipt: which received images are analysed, only forwarded, or ignored.

Evaluated by the SCP on the parsed header, before the analysability checks (a forwarded CT image is
accepted; an image to analyse that cannot be analysed is refused with its C-STORE status). The chosen rule and action
are recorded with the job (its ``route`` and ``action``) and in the ``instance-received`` / ``ignored`` audit events.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from fetalnode.config import RouteSettings, Settings
from fetalnode.errors import ConfigError
from fetalnode.vocab import RouteAction

DEFAULT = "default"


@dataclass(frozen=True)
class Route:
    """The rule that matched (``default`` when none did) and its action."""

    name: str
    action: RouteAction


def _action(value: str, where: str) -> RouteAction:
    try:
        return RouteAction(value)
    except ValueError:
        raise ConfigError(f"{where}: action must be one of {', '.join(RouteAction)}, not {value!r}") from None


@dataclass(frozen=True)
class Router:
    rules: tuple[tuple[RouteSettings, RouteAction], ...]
    default: RouteAction

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        names = [r.name for r in settings.routes]
        if "" in names or DEFAULT in names or len(set(names)) != len(names):
            raise ConfigError(f"[[routes]]: every rule needs a unique name other than 'default', got {names}")
        rules = tuple((r, _action(r.action, f"route {r.name}")) for r in settings.routes)
        return cls(rules, _action(settings.routing.default, "routing.default"))

    def route(self, ds: Dataset, calling_ae: str) -> Route:
        for rule, action in self.rules:
            if _matches(rule, ds, calling_ae):
                return Route(rule.name, action)
        return Route(DEFAULT, self.default)


def _matches(rule: RouteSettings, ds: Dataset, calling_ae: str) -> bool:
    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    checks = (
        (rule.modality, lambda v: v.upper() == text("Modality").upper()),
        (rule.sop_class, lambda v: v == text("SOPClassUID")),
        (rule.calling_ae, lambda v: v.strip() == calling_ae.strip()),
        (rule.body_part, lambda v: v.upper() == text("BodyPartExamined").upper()),
        (rule.study_description, lambda v: v.lower() in text("StudyDescription").lower()),
    )
    return all(any(test(value) for value in values) for values, test in checks if values)
