"""What an application is to the job runner: a name, its bundles, and ``analyse(dataset) -> Analysis``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from fetalnode.config import Settings
    from fetalnode.inference.bundle import Bundle
    from fetalnode.inference.view import ViewPrediction
    from fetalnode.intake import DecodedImage


class Result(Protocol):
    """What the runner, the job store and ``fetalnode analyze`` read of any application's result; its writers
    read the rest of it as the type they know (``ctx.result_as(HeadResult)``)."""

    @property
    def analysed(self) -> bool:
        """Whether the application has something valid to say about the image (else ``reason`` says why)."""
        ...

    @property
    def reason(self) -> str: ...

    def summary(self) -> Mapping[str, Any]:
        """The result as JSON-able values."""
        ...


@dataclass(frozen=True)
class Analysis:
    """An application's answer for one image: what the output writers read."""

    application: str
    result: Result
    decoded: DecodedImage
    models: tuple[tuple[str, str], ...]
    # The view the router recognised (None when no router chose the application).
    view: ViewPrediction | None = None

    @property
    def model_version(self) -> str:
        """The model versions joined by ``+`` (part of every output UID: a new model, new objects)."""
        return "+".join(version for _, version in self.models)

    def summary(self) -> dict[str, Any]:
        """The finding as JSON-able values (job store, broker results, ``fetalnode analyze``)."""
        summary: dict[str, Any] = dict(self.result.summary())
        summary["application"] = self.application
        summary["frame_number"] = self.decoded.frame_number
        summary["n_frames"] = self.decoded.n_frames
        summary["spacing_source"] = self.decoded.spacing_source
        if self.view is not None:
            summary["view"] = self.view.summary()
        return summary


@dataclass(frozen=True)
class Setup:
    """What every application takes from the settings: the folder of its bundles and the intake limits
    of the frame it analyses."""

    models_dir: Path
    max_pixels: int
    max_frames: int

    @classmethod
    def of(cls, settings: Settings) -> Setup:
        return cls(Path(settings.models.dir), settings.worker.max_pixels, settings.worker.max_frames)

    def decode(self, ds: Dataset, decoded: DecodedImage | None = None) -> DecodedImage:
        """``decoded`` when a router has decoded the frame already, else the frame of ``ds``."""
        from fetalnode.intake import decode_for_analysis

        return decoded or decode_for_analysis(ds, self.max_pixels, self.max_frames)

    def decode_frame(self, ds: Dataset, index: int) -> DecodedImage:
        """Frame ``index`` (0-based) of a cine."""
        from fetalnode.intake import decode_for_analysis

        return decode_for_analysis(ds, self.max_pixels, self.max_frames, index)


class Application(Protocol):
    """One clinical application.

    ``analyse`` raises :class:`~fetalnode.errors.IntakeRejected` for an image it cannot take and
    :class:`~fetalnode.errors.InferenceError` when its models fail; nothing else.
    """

    name: str
    # The application names its analyses may carry (a view router answers with several): the writers
    # are checked against them at start-up.
    applications: tuple[str, ...]

    def analyse(self, ds: Dataset, decoded: DecodedImage | None = None) -> Analysis:
        """``decoded``: the frame a router has already decoded from ``ds`` (decode it here when ``None``)."""
        ...

    def bundle_paths(self) -> list[Path]:
        """The model bundles it loaded (watched for ``fetalnode models push``)."""
        ...

    def describe(self) -> dict[str, str]:
        """Its bundles as ``{role: "name version"}`` for the log and the audit."""
        ...


@runtime_checkable
class ExposesBundles(Protocol):
    """An application whose loaded bundles another model may share work with (the view router runs the head
    segmentation's encoder once per frame, for its view model and for that segmentation)."""

    def loaded_bundles(self) -> list[Bundle]: ...


@dataclass(frozen=True)
class Recognition:
    """What an application found of its own view in an image, and the model that found it (``None``: the
    check itself failed)."""

    found: str  # a clause: "a pubic symphysis (confidence 0.98) and a fetal head were found by ..."
    model: tuple[str, str] | None


@runtime_checkable
class RecognisesItsView(Protocol):
    """An application that can tell, from structures only its view shows, that an image is of its view
    (the view router asks it about images it would give another application)."""

    name: str

    def recognises(self, decoded: DecodedImage) -> Recognition | None:
        """What it found (``None``: nothing of its view); raises InferenceError when its model fails."""
        ...


@dataclass(frozen=True)
class Claim:
    """How well an application recognises its own view in one frame, by its own model: ``score`` in [0, 1]
    (the head application: the plausibility of the fitted skull, 0 when its gate refuses it) and what it
    found, in words."""

    score: float
    found: str  # a clause: "a well-fitted skull (fit 0.93) was found by the head segmentation hc18-headseg 0.3.0"
    model: tuple[str, str]
    measure: str = "score"  # what the score is, in words ("skull fit")


@runtime_checkable
class ClaimsItsView(Protocol):
    """An application whose own check can recognise its view with high confidence (the head application's gate
    on a well-fitted skull): the view router lets it claim a frame the view model is unsure about, and asks it
    which frame of a cine it recognises best."""

    name: str

    def claim(self, decoded: DecodedImage) -> Claim:
        """How well it recognises its view in ``decoded``; raises InferenceError when its model fails."""
        ...


R = TypeVar("R")


def run_models(call: Callable[[], R], what: str = "") -> R:
    """An application's model call: an :class:`~fetalnode.errors.InferenceError` passes, any other exception
    (a bug, a broken bundle) becomes one, named after ``what`` when given."""
    from fetalnode.errors import InferenceError

    try:
        return call()
    except InferenceError:
        raise
    except Exception as exc:
        prefix = f"{what}: " if what else ""
        raise InferenceError(f"{prefix}{type(exc).__name__}: {exc}") from exc
