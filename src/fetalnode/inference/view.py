"""The view classifier: which kind of ultrasound image this is, so the router can pick an application.

One code path for training and inference: :class:`ViewInputSpec` turns any grayscale frame into the
network's input (a centred square, or the head segmentation's letterbox canvas for a model on its encoder),
:class:`ViewModel` runs a ``task: view`` bundle and applies its abstain
threshold (a top probability below it, or below the stricter threshold of the head view, answers
:attr:`View.UNKNOWN`). No pydicom in here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fetalnode.errors import BundleError
from fetalnode.inference.bundle import Bundle
from fetalnode.inference.networks import EncoderViewNet
from fetalnode.inference.preprocess import frame01, letterbox, resize
from fetalnode.inference.shared_encoder import SharedEncoder, probe_canvas
from fetalnode.vocab import View

log = logging.getLogger(__name__)


def view_input(gray: np.ndarray, size: int, img01: np.ndarray | None = None) -> np.ndarray:
    """The whole image, scaled to [0, 1] by its percentiles, centred on a zero square, ``size`` x ``size``.

    The aspect ratio is kept (a letterbox centred on both sides), so no view is told by where the
    padding is.
    """
    img = frame01(gray, img01)
    h, w = img.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    square[y0 : y0 + h, x0 : x0 + w] = img
    return resize(square, (size, size))


@dataclass(frozen=True)
class ViewInputSpec:
    """The view network's input: the frame centred on a zero square of ``size`` (:func:`view_input`), or,
    with ``canvas_hw``, letterboxed into that canvas (top left, zero padding bottom and right) exactly as the
    head segmentation sees it (a model on the segmentation's encoder)."""

    size: int = 112
    canvas_hw: tuple[int, int] | None = None

    @classmethod
    def of(cls, meta_input: Mapping[str, Any]) -> ViewInputSpec:
        """The spec of a view bundle's ``input`` metadata."""
        canvas = meta_input.get("canvas_hw")
        if canvas:
            return cls(canvas_hw=(int(canvas[0]), int(canvas[1])))
        return cls(size=int(meta_input["size"]))

    @property
    def shape(self) -> tuple[int, int]:
        return self.canvas_hw if self.canvas_hw is not None else (self.size, self.size)

    def __call__(self, gray: np.ndarray, img01: np.ndarray | None = None) -> np.ndarray:
        """The network input of one frame (``img01``: its :func:`to_unit_range`, when already computed)."""
        if self.canvas_hw is None:
            return view_input(gray, self.size, img01)
        return letterbox(frame01(gray, img01), self.canvas_hw)[0]


@dataclass(frozen=True)
class ViewPrediction:
    """What the view model says about one image.

    ``label`` is the routed view: the most probable class, or :attr:`View.UNKNOWN` when its
    probability is below the bundle's abstain threshold (``top`` then says what it would have been) or
    when another application recognised its own view in the image (``conflict`` says what it found).
    ``claimed``: the view model was unsure, and the application of ``label`` recognised its view with high
    confidence by its own model (what it found). ``frame_choice``: which frame of a cine was analysed, and why.
    """

    label: View
    probability: float
    top: View
    model: tuple[str, str]
    probabilities: dict[str, float]
    conflict: str = ""
    conflict_model: tuple[str, str] | None = None  # the model that found it (a cross-check's)
    claimed: str = ""
    frame_choice: str = ""

    def probability_of(self, view: View) -> float:
        return self.probabilities.get(str(view), 0.0)

    @property
    def words(self) -> str:
        return self.label.words

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "label": str(self.label),
            "probability": round(self.probability, 4),
            "top": str(self.top),
            "model": "/".join(self.model),
        }
        if self.conflict:
            out["conflict"] = self.conflict
        if self.claimed:
            out["claimed"] = self.claimed
        if self.frame_choice:
            out["frame_choice"] = self.frame_choice
        return out

    def line(self) -> str:
        """One sentence for the reports: the recognised view, its probability and the model (and, for a cine,
        which frame was analysed and why)."""
        return f"{self._view_sentence()}{' ' + self.frame_choice if self.frame_choice else ''}"

    def _view_sentence(self) -> str:
        model = f"view model {self.model[0]} {self.model[1]}"
        if self.conflict:
            return (
                f"View uncertain: the view model says {self.top.words} ({100 * self.probability:.0f}%; {model}), "
                f"but {self.conflict}."
            )
        if self.label is View.UNKNOWN:
            return f"View not recognised (most probable: {self.top.words}, {100 * self.probability:.0f}%; {model})."
        if self.claimed:
            return (
                f"Recognised view: {self.words}, claimed by its application: the view model was unsure "
                f"({100 * self.probability_of(self.label):.0f}%, most probable {self.top.words}; {model}), "
                f"and {self.claimed}."
            )
        return f"Recognised view: {self.words} ({100 * self.probability:.0f}%; {model})."


@dataclass(frozen=True)
class ClaimRule:
    """When the application of a view may claim a frame the view model abstained on: the model gives the view
    at least ``min_probability``, no other view reaches its own routing threshold, and the application's own
    recognition scores at least ``min_score`` (both chosen on validation groups at training)."""

    min_probability: float
    min_score: float

    @classmethod
    def of(cls, meta: dict[str, object]) -> ClaimRule:
        return cls(float(meta["min_probability"]), float(meta["min_score"]))  # type: ignore[arg-type]


class ViewModel:
    """A loaded ``task: view`` bundle with its labels, input size and abstain threshold."""

    def __init__(self, bundle: Bundle) -> None:
        if bundle.task != "view":
            raise BundleError(f"bundle {bundle.path}: task is {bundle.task!r}, expected 'view'")
        meta = bundle.metadata
        try:
            self.labels = [View.named(v) for v in meta["labels"]]
            self.input = ViewInputSpec.of(meta["input"])
            self.threshold = float(meta["abstain_threshold"])
            # A stricter threshold for some views (the head: the application that measures).
            self.class_thresholds = {View.named(k): float(v) for k, v in meta.get("class_thresholds", {}).items()}
            # When the application of a view may claim a frame the model is unsure about (chosen on validation).
            self.claims = {View.named(k): ClaimRule.of(v) for k, v in meta.get("claims", {}).items()}
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"bundle {bundle.path}: view metadata is incomplete: {exc}") from exc
        if View.UNKNOWN in self.labels:
            raise BundleError(f"bundle {bundle.path}: 'unknown' is the abstention, not a class")
        self.bundle = bundle
        self.encoder: SharedEncoder | None = None

    @property
    def encoder_weights(self) -> str:
        """The SHA-256 of the segmentation weights this model's encoder was copied from ("" if none)."""
        return str(self.bundle.params.get("encoder_weights_sha256") or "")

    @property
    def encoder_levels(self) -> int:
        """The segmentation encoder levels this model stands on (0: its own network)."""
        net = self.bundle.net
        return len(net.base) if isinstance(net, EncoderViewNet) and self.encoder_weights else 0

    def share_encoder(self, encoder: SharedEncoder) -> None:
        """Take the encoder levels from ``encoder`` (the segmentation this model's encoder was copied from, run
        once per frame for both) instead of this bundle's own copy. Raises :class:`BundleError` when that is not
        this model's encoder, its canvas, or when its logits on a probe canvas differ from the bundle's own by
        more than 1e-4."""
        net = self.bundle.net
        if not isinstance(net, EncoderViewNet) or self.encoder_levels != encoder.levels:
            raise BundleError(f"bundle {self.bundle.path}: not a view model on {encoder.levels} encoder levels")
        if self.input.canvas_hw != encoder.canvas_hw:
            raise BundleError(f"bundle {self.bundle.path}: its canvas is not the segmentation's {encoder.canvas_hw}")
        probe = probe_canvas(encoder.canvas_hw)
        with torch.no_grad():
            own = self.bundle.infer(torch.from_numpy(probe)[None, None])
        diff = float((own - self._shared_logits(encoder, probe)).abs().max())
        if diff > 1e-4:
            raise BundleError(f"bundle {self.bundle.path}: the shared encoder's logits differ by {diff:.2g}")
        self.encoder = encoder

    def _shared_logits(self, encoder: SharedEncoder, canvas: np.ndarray) -> torch.Tensor:
        """The class logits of one canvas from ``encoder``'s levels (this bundle's pooling and linear layer)."""
        net = self.bundle.net
        assert isinstance(net, EncoderViewNet)
        with torch.no_grad():
            return net.classify(net.pooled([torch.from_numpy(m) for m in encoder.levels_of(canvas)]))

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of network inputs (:attr:`input`), (N, H, W) -> (N, classes)."""
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 64):
                logits = self.bundle.infer(torch.from_numpy(np.ascontiguousarray(x[i : i + 64]))[:, None])
                out.append(torch.softmax(logits, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def threshold_of(self, view: View) -> float:
        """The probability ``view`` needs to be routed: the abstain threshold, or its own when stricter."""
        return max(self.threshold, self.class_thresholds.get(view, 0.0))

    def decide(self, probs: np.ndarray) -> ViewPrediction:
        """The routed view of one probability vector."""
        top = int(np.argmax(probs))
        p = float(probs[top])
        return ViewPrediction(
            label=self.labels[top] if p >= self.threshold_of(self.labels[top]) else View.UNKNOWN,
            probability=p,
            top=self.labels[top],
            model=(self.name, self.version),
            probabilities={str(v): float(q) for v, q in zip(self.labels, probs, strict=True)},
        )

    def predict(self, gray: np.ndarray, img01: np.ndarray | None = None) -> ViewPrediction:
        """The view of one frame (``img01``: its :func:`to_unit_range`, when already computed); through the
        shared encoder when one is set (:meth:`share_encoder`)."""
        x = self.input(gray, frame01(gray, img01))
        if self.encoder is None:
            return self.decide(self.probabilities(x[None])[0])
        return self.decide(torch.softmax(self._shared_logits(self.encoder, x), dim=1)[0].numpy())


def share_segmentation_encoder(
    view_model: ViewModel, bundles: Iterable[Bundle], capacity: int = 1
) -> SharedEncoder | None:
    """Run the view model's encoder once per frame with the segmentation it was copied from, when ``bundles``
    (the applications' loaded bundles) hold that segmentation (same weights, by SHA-256): the view model takes
    the encoder levels from the segmentation's own graph, and the segmentation runs only the rest of it on the
    same canvas.

    That segmentation bundle's ``infer`` becomes :meth:`SharedEncoder.segment`, whose logits equal the full
    graph's (checked when it is built). Nothing is shared, and no model changes, when no bundle is that
    segmentation or the graph cannot be cut (a warning says why). ``capacity``: the canvases whose encoder
    outputs are kept (a cine's frames looked at).
    """
    if not view_model.encoder_levels:
        return None
    for bundle in bundles:
        if bundle.task != "segmentation" or bundle.metadata.get("weights_sha256") != view_model.encoder_weights:
            continue
        try:
            encoder = SharedEncoder(bundle, view_model.encoder_levels, capacity)
            view_model.share_encoder(encoder)  # on the probe canvas the encoder ran for its own check
        except BundleError as exc:
            log.warning("the view model and the segmentation %s run the encoder each (%s)", bundle.name, exc)
            return None
        encoder.forget()  # the probe is not a frame
        bundle.infer = encoder.segment
        log.info(
            "the view model %s %s and the segmentation %s %s run their %d encoder levels once per frame",
            view_model.name,
            view_model.version,
            bundle.name,
            bundle.version,
            encoder.levels,
        )
        return encoder
    return None
