"""The view router: recognise what an image shows, then run the application registered for that view.

The view model (``models.view``, a ``task: view`` bundle from ``fetalnode train view``) names the view
of every image; ``[router] applications`` maps views to application names of the registry. A view
without an application, an application that is not registered, and the model's abstention
(:attr:`View.UNKNOWN`) all end the same way: an :class:`Analysis` of this application that says
"not analysed: <view>, no application for this view", with no finding and no measurement. The routed
application keeps its own checks (the fetal head's plausibility gate).

Cross-check: before an image goes to its application, each other routed application that recognises its
own view from structures only that view shows (:class:`RecognisesItsView`: labour-progress finds a pubic
symphysis and a fetal head passing its gate) looks at it, when the view model gives that view at least
``router.cross_check_probability``. If it recognises the image, the two models disagree: the view is
uncertain (:attr:`View.UNKNOWN`, the view's ``conflict`` says what was found) and no application answers.
A transperineal image shows a whole fetal head; a view model may call it an axial head, and the head
application's gate would then find a skull in it.

Claim: when the view model abstains, an application whose own check recognises its view with high
confidence (:class:`ClaimsItsView`: the head application's gate on a well-fitted skull) may claim the image,
under the view bundle's ``claims`` rule (chosen on validation groups): the model gives that view at least the
rule's probability, no other view reaches its own routing threshold (a confident other view is never
overridden), and the application's score reaches the rule's. A claimed image still goes through the
cross-check.

Cine: of a multi-frame image the router looks at up to ``router.cine_frames`` evenly spaced frames, and the
application analyses the frame it recognises best (its claim score, else the view model's probability); the
view line of every output and the summary say which frame and why, and the outputs reference that frame.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from fetalnode.applications.base import (
    Analysis,
    Application,
    ClaimsItsView,
    ExposesBundles,
    RecognisesItsView,
    Recognition,
    Setup,
    run_models,
)
from fetalnode.applications.registry import APPLICATIONS, register_application
from fetalnode.applications.view_router import NAME
from fetalnode.applications.view_router.result import NO_APPLICATION, NoApplication, not_analysed_reason
from fetalnode.config import Settings
from fetalnode.errors import ConfigError, InferenceError
from fetalnode.inference.bundle import load_bundle
from fetalnode.inference.view import ViewModel, ViewPrediction, share_segmentation_encoder
from fetalnode.intake import DecodedImage, check_header
from fetalnode.vocab import RENAMED_VIEWS, View

log = logging.getLogger(__name__)
__all__ = ["NAME", "NO_APPLICATION", "ViewRouter", "load", "not_analysed_reason", "router_routes"]


@dataclass
class ViewRouter:
    """The view model and one application per routed view (views absent from ``routes`` have none)."""

    view_model: ViewModel
    routes: dict[View, Application]
    setup: Setup
    cross_check_probability: float = 0.01
    cine_frames: int = 1
    name: str = NAME
    # This one and every routed application's names (the writers are checked against them at start-up).
    applications: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = [NAME]
        for application in self.routes.values():
            names += [a for a in application.applications if a not in names]
        self.applications = tuple(names)

    def classify(self, decoded: DecodedImage) -> ViewPrediction:
        """The view model's answer, with the cross-check of the applications that recognise their view.

        Each other routed application that recognises its view is asked once, when the view model gives
        one of its views at least ``cross_check_probability``. A check that fails (its model raised) makes
        the view uncertain too: the image was not shown to be free of that view.
        """
        view = run_models(lambda: self.view_model.predict(decoded.gray, decoded.gray01), "view model")
        if view.label is View.UNKNOWN:
            view = self._claim(view, decoded)
        routed = self.routes.get(view.label)
        if routed is None:
            return view
        for application in self._distinct():
            if application is routed or not isinstance(application, RecognisesItsView):
                continue
            views = [v for v, a in self.routes.items() if a is application]
            if max(view.probability_of(v) for v in views) < self.cross_check_probability:
                continue
            try:
                recognition = application.recognises(decoded)
            except InferenceError as exc:
                log.error(
                    "view router: the cross-check by %s failed (%s); the view is uncertain", application.name, exc
                )
                recognition = Recognition(f"the cross-check by {application.name} failed ({exc})", None)
            if recognition is not None:
                log.info("view uncertain: the view model says %s, but %s", view.label, recognition.found)
                return dataclasses.replace(
                    view, label=View.UNKNOWN, conflict=recognition.found, conflict_model=recognition.model
                )
        return view

    def _claim(self, view: ViewPrediction, decoded: DecodedImage) -> ViewPrediction:
        """The view model abstained: the first application whose claim rule the frame meets claims it."""
        confident = [v for v in self.view_model.labels if view.probability_of(v) >= self.view_model.threshold_of(v)]
        for target, rule in self.view_model.claims.items():
            application = self.routes.get(target)
            if not isinstance(application, ClaimsItsView) or view.probability_of(target) < rule.min_probability:
                continue
            if any(v is not target for v in confident):
                continue  # never override a confident other view
            claim = run_models(lambda app=application: app.claim(decoded), f"{application.name} claim")
            if claim.score >= rule.min_score:
                log.info("view claimed by %s: %s (view model: %s)", application.name, claim.found, view.top)
                return dataclasses.replace(view, label=target, claimed=claim.found)
        return view

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        if decoded is None and self.cine_frames > 1:
            n_frames = check_header(ds, self.setup.max_pixels, self.setup.max_frames).n_frames
            if n_frames > 1:
                decoded, view = self._best_frame(ds, n_frames)
                return self._route(ds, decoded, view)
        decoded = self.setup.decode(ds, decoded)
        return self._route(ds, decoded, self.classify(decoded))

    def _best_frame(self, ds: Dataset, n_frames: int) -> tuple[DecodedImage, ViewPrediction]:
        """The frame of a cine to analyse and its view: of up to ``cine_frames`` evenly spaced frames, the one
        routed to an application that this application recognises best (its claim score, else the view
        probability; ties: the frame nearest the middle). The application is that of the frame with the highest
        view probability. No frame routed: the middle frame's answer."""
        indices = frame_indices(n_frames, self.cine_frames)
        middle = n_frames // 2
        looked: list[tuple[int, DecodedImage, ViewPrediction]] = []
        for index in indices:
            frame = self.setup.decode_frame(ds, index)
            looked.append((index, frame, self.classify(frame)))
        routed = [item for item in looked if item[2].label in self.routes]
        listed = ", ".join(str(i + 1) for i in indices)
        if not routed:
            index, frame, view = min(looked, key=lambda item: abs(item[0] - middle))
            why = (
                f"Frame {index + 1} of {n_frames} analysed: none of the {len(looked)} frames looked at ({listed}) "
                "shows a view an application handles."
            )
            return frame, dataclasses.replace(view, frame_choice=why)
        lead = max(routed, key=lambda item: item[2].probability_of(item[2].label))
        application = self.routes[lead[2].label]
        mine = [item for item in routed if self.routes[item[2].label] is application]

        def score(item: tuple[int, DecodedImage, ViewPrediction]) -> tuple[float, str]:
            if isinstance(application, ClaimsItsView):
                claim = run_models(lambda: application.claim(item[1]), f"{application.name} claim")
                return claim.score, claim.measure
            return item[2].probability_of(item[2].label), "view probability"

        scores = {item[0]: score(item) for item in mine}
        index, frame, view = max(mine, key=lambda item: (scores[item[0]][0], -abs(item[0] - middle)))
        value, measure = scores[index]
        why = (
            f"Frame {index + 1} of {n_frames} analysed: of the {len(looked)} frames looked at ({listed}), "
            f"{len(mine)} showed the {view.words} and {application.name} recognised frame {index + 1} best "
            f"({measure} {value:.2f})"
        )
        if middle != index:
            mid = next((item for item in looked if item[0] == middle), None)
            if mid is not None:
                why += f"; the middle frame {middle + 1}: {mid[2].words}"
        return frame, dataclasses.replace(view, frame_choice=why + ".")

    def _route(self, ds: Dataset, decoded: DecodedImage, view: ViewPrediction) -> Analysis:
        model = view.model
        application = self.routes.get(view.label)
        if application is None:
            result = NoApplication.of(view.label, bool(view.conflict), model, decoded.display_rgb)
            # A cross-check's model decided too: it is one of the models behind every output.
            models = (model, view.conflict_model) if view.conflict_model else (model,)
            return Analysis(NAME, result, decoded, models, view=view)
        analysis = application.analyse(ds, decoded)  # decoded once for the view model and the application
        # The view model decided which application ran: it is one of the models behind every output.
        return dataclasses.replace(analysis, view=view, models=(*analysis.models, model))

    def _distinct(self) -> list[Application]:
        """Each routed application once (several views may share one)."""
        out: list[Application] = []
        for application in self.routes.values():
            if not any(application is a for a in out):
                out.append(application)
        return out

    def bundle_paths(self) -> list[Path]:
        paths = [self.view_model.bundle.path]
        for application in self._distinct():
            paths += application.bundle_paths()
        return paths

    def describe(self) -> dict[str, str]:
        out = {"view": f"{self.view_model.name} {self.view_model.version}"}
        out["routes"] = ", ".join(f"{view} -> {app.name}" for view, app in self.routes.items()) or "none"
        for application in self._distinct():
            for role, bundle in application.describe().items():
                out[role if role not in out else f"{application.name} {role}"] = bundle
        return out


def frame_indices(n_frames: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced 0-based frame indices of a cine: the middle of each of ``k`` equal stretches
    (``k`` = 1: the middle frame, as a single-frame look takes it)."""
    k = max(1, min(k, n_frames))
    return sorted({(2 * i + 1) * n_frames // (2 * k) for i in range(k)})


def router_routes(settings: Settings) -> dict[View, str]:
    """``[router] applications`` as views -> application names (empty names dropped), checked.

    A view's earlier name (``second_trimester_head``) still works, with a deprecation warning; given beside
    its new name, the new name wins.
    """
    routes: dict[View, str] = {}
    renamed: dict[View, str] = {}
    for key, name in settings.router.applications.items():
        try:
            view = View.named(key)
        except ValueError:
            known = ", ".join(v for v in View if v is not View.UNKNOWN)
            raise ConfigError(f"router.applications: unknown view {key!r} (views: {known})") from None
        if view is View.UNKNOWN:
            raise ConfigError("router.applications: 'unknown' is the view model's abstention; it has no application")
        if name == NAME:
            raise ConfigError(f"router.applications: {key} cannot be routed to the router itself")
        if key in RENAMED_VIEWS:
            log.warning("router.applications: %r is deprecated, the view is now %r; rename the key", key, str(view))
            renamed[view] = name
            continue
        if name:
            routes[view] = name
    for view, name in renamed.items():
        if name and view not in routes and str(view) not in settings.router.applications:
            routes[view] = name
    return routes


@register_application(NAME)
def load(settings: Settings) -> ViewRouter:
    """Load the view bundle and build each routed application once by its registered name.

    A route to an application that is not registered (another build's ``labour-progress``, a plugin
    not installed) is dropped with a warning: those images get "no application for this view".
    """
    setup = Setup.of(settings)
    view_model = ViewModel(load_bundle(setup.models_dir / settings.models.view, "view"))
    built: dict[str, Application] = {}
    routes: dict[View, Application] = {}
    for view, name in router_routes(settings).items():
        factory = APPLICATIONS.find(name)
        if factory is None:
            log.warning(
                "router: application %r for %s is not registered (known: %s); those images get %r",
                name,
                view.words,
                ", ".join(n for n in APPLICATIONS.names() if n != NAME),
                not_analysed_reason(view),
            )
            continue
        if name not in built:
            built[name] = factory(settings)
        routes[view] = built[name]
    if settings.router.share_encoder:
        loaded = [b for a in built.values() if isinstance(a, ExposesBundles) for b in a.loaded_bundles()]
        share_segmentation_encoder(view_model, loaded, settings.router.cine_frames)
    unrouted = [v.words for v in view_model.labels if v not in routes]
    log.info("router: %s; no application for: %s", ", ".join(f"{v} -> {routes[v].name}" for v in routes), unrouted)
    return ViewRouter(view_model, routes, setup, settings.router.cross_check_probability, settings.router.cine_frames)
