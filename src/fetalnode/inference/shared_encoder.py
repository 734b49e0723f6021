"""A segmentation UNet's first encoder levels, run once per frame for two models: the view model built on them
and the segmentation itself.

A view bundle trained with ``--encoder`` holds a copy of the first levels of a head segmentation's encoder
and sees the frame on that segmentation's canvas. When the router's view model and the head application's
segmentation are those two (the view bundle's ``encoder_weights_sha256`` is the segmentation bundle's
``weights_sha256``, on the same canvas), the node runs the segmentation's own ONNX graph split in two, with
``onnx.utils.Extractor``:

- the encoder part: the canvas to the outputs of the first down blocks (the tensors the UNet's skip
  connections concatenate, shallowest first);
- the rest: those outputs to the logits.

The view model pools the encoder part's outputs; the segmentation of the same canvas runs the rest only. The
two parts are the nodes of the full graph, cut between them, so the logits equal the full graph's: every
:class:`SharedEncoder` checks that bit for bit on a probe canvas when it is built, and refuses to exist
otherwise. Outputs of recent canvases are kept (``capacity``, compared by value): a cine's frames are looked
at by the view model, then segmented.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
import torch

from fetalnode.errors import BundleError
from fetalnode.inference.analyzer import seg_settings
from fetalnode.inference.bundle import Bundle, ort_options, verified_onnx

log = logging.getLogger(__name__)

Levels = tuple[np.ndarray, ...]


def unet_level_outputs(model: object) -> list[str]:
    """Names of a MONAI UNet's down-block outputs in its ONNX graph, shallowest first: the first input of
    each skip connection's ``Concat`` (``torch.cat([x, submodule(x)])``), ordered by where the graph makes it."""
    graph = model.graph  # type: ignore[attr-defined]
    made_at = {out: i for i, node in enumerate(graph.node) for out in node.output}
    firsts = [node.input[0] for node in graph.node if node.op_type == "Concat" and node.input[0] in made_at]
    return sorted(firsts, key=lambda name: made_at[name])


def probe_canvas(canvas_hw: tuple[int, int]) -> np.ndarray:
    """A fixed canvas that exercises every weight: smooth blobs and noise in [0, 1], zero padding bottom right."""
    h, w = canvas_hw
    rng = np.random.default_rng(20261207)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.25 * np.sin(9 * xx) * np.cos(7 * yy) + 0.25 * rng.random((h, w))
    img[int(0.8 * h) :, :] = 0.0
    img[:, int(0.85 * w) :] = 0.0
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class SharedEncoder:
    """The segmentation bundle ``seg``'s ONNX graph cut after its first ``levels`` down blocks.

    :meth:`levels_of` gives the encoder part's outputs of a canvas (kept for the last ``capacity`` canvases);
    :meth:`segment` is the segmentation's logits from them, a drop-in for ``seg.infer``. Raises
    :class:`BundleError` when the graph cannot be cut there or the cut graph does not give the full graph's
    logits exactly.
    """

    def __init__(self, seg: Bundle, levels: int, capacity: int = 1) -> None:
        import onnx
        import onnxruntime as ort
        from onnx.utils import Extractor

        if seg.metadata.get("runtime") != "onnxruntime":
            raise BundleError(f"bundle {seg.path}: runs in torch; only an ONNX graph is cut")
        model = onnx.shape_inference.infer_shapes(onnx.load(str(verified_onnx(seg.path, seg.metadata))))
        names = unet_level_outputs(model)
        if not 0 < levels <= len(names):
            raise BundleError(f"bundle {seg.path}: its graph has {len(names)} down blocks to share, not {levels}")
        self.levels = levels
        self.names = names[:levels]
        self.input_name = model.graph.input[0].name
        output = model.graph.output[0].name
        extractor = Extractor(model)
        encoder = extractor.extract_model([self.input_name], self.names)
        rest = extractor.extract_model(self.names, [output])
        options, providers = ort_options(), ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(encoder.SerializeToString(), options, providers=providers)
        self._rest = ort.InferenceSession(rest.SerializeToString(), options, providers=providers)
        self.canvas_hw = seg_settings(seg).canvas_hw
        self.capacity = max(1, capacity)
        self._kept: OrderedDict[bytes, tuple[np.ndarray, Levels]] = OrderedDict()
        self._lock = threading.Lock()
        self.runs = 0  # canvases the encoder part has run on (the kept ones are not run again)
        probe = probe_canvas(self.canvas_hw)
        full = seg.infer(torch.from_numpy(probe)[None, None]).numpy()
        if not np.array_equal(full, self.segment(torch.from_numpy(probe)[None, None]).numpy()):
            raise BundleError(f"bundle {seg.path}: its graph cut after {levels} down blocks gives other logits")
        # the probe's outputs stay kept: the view model's own check reuses them (share_segmentation_encoder
        # forgets them once both checks are done)

    def levels_of(self, canvas: np.ndarray) -> Levels:
        """The encoder part's outputs of one canvas (H, W), each (1, channels, h, w), shallowest first."""
        canvas = np.ascontiguousarray(canvas, dtype=np.float32)
        key = np.ascontiguousarray(canvas[::8, ::8]).tobytes()  # a cheap index; the whole canvas decides
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and np.array_equal(kept[0], canvas):
                self._kept.move_to_end(key)
                return kept[1]
        levels = tuple(self._encoder.run(self.names, {self.input_name: canvas[None, None]}))
        with self._lock:
            self.runs += 1
            self._kept[key] = (canvas.copy(), levels)
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        return levels

    def forget(self) -> None:
        """Drop the kept encoder outputs (the next canvas is computed afresh)."""
        with self._lock:
            self._kept.clear()

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The segmentation's logits of a batch of canvases (N, 1, H, W), as the full graph gives them."""
        images = x.detach().cpu().numpy().astype(np.float32)
        out = [
            self._rest.run(None, dict(zip(self.names, self.levels_of(image[0]), strict=True)))[0] for image in images
        ]
        return torch.from_numpy(np.concatenate(out))
