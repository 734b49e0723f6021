"""Network definitions; their hyper-parameters come from the bundle metadata."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from monai.networks.nets import Classifier, UNet
from torch import nn


def build_segmentation_net(params: dict[str, Any]) -> nn.Module:
    """MONAI UNet: one sigmoid output channel (head vs background), or ``out_channels`` softmax classes
    (background first) for a multi-class bundle."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=int(params.get("out_channels", 1)),
        channels=tuple(params["channels"]),
        strides=tuple(params["strides"]),
        num_res_units=int(params.get("num_res_units", 2)),
        norm=params.get("norm", "BATCH"),
    )


class HeadClassifier(nn.Module):
    """A residual CNN base network extended with additional fully-connected layers.

    ``base`` is a stack of MONAI residual units (each halves the resolution); its globally pooled
    features go through ``len(fc)`` hidden FC layers (ReLU, dropout) before the class logits.
    Grad-CAM targets the last base stage, ``base.<n-1>``.
    """

    def __init__(self, channels: list[int], fc: list[int], n_classes: int, dropout: float = 0.3) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = 1
        for cout in channels:
            stages.append(
                ResidualUnit(spatial_dims=2, in_channels=cin, out_channels=cout, strides=2, subunits=2, norm="BATCH")
            )
            cin = cout
        self.base = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = []
        for width in fc:
            layers += [nn.Linear(cin, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = width
        layers.append(nn.Linear(cin, n_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.base(x)), 1))

    @property
    def cam_layer(self) -> str:
        return f"base.{len(self.base) - 1}"


def build_classifier_net(params: dict[str, Any]) -> HeadClassifier:
    return HeadClassifier(
        channels=list(params["channels"]),
        fc=list(params["fc"]),
        n_classes=int(params["n_classes"]),
        dropout=float(params.get("dropout", 0.3)),
    )


class Median(nn.Module):
    """A ``k`` x ``k`` median filter (edges replicated): thin strokes on a frame, a scanner's text and calliper
    dots, are taken out before the view model looks, the anatomy's larger structures stay."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.k // 2
        n, c, h, w = x.shape
        patches = F.unfold(F.pad(x, (pad, pad, pad, pad), mode="replicate"), self.k)  # (n, c*k*k, h*w)
        patches = patches.view(n, c, self.k * self.k, h * w)
        middle = torch.topk(patches, self.k * self.k // 2 + 1, dim=2).values[:, :, -1]
        return middle.view(n, c, h, w)


class EncoderViewNet(nn.Module):
    """A view model on a frozen segmentation encoder: the down path of a MONAI UNet (``channels``, ``strides``,
    ``num_res_units``, ``norm`` as in :func:`build_segmentation_net`, weights copied from a trained head
    segmentation by :func:`load_unet_encoder`), the feature maps of each level pooled to their mean and
    maximum per channel, standardised (``mean``, ``scale``: buffers set at training) and one linear layer to
    the class logits. ``levels``: the first levels of the encoder only (0: all of them; the deepest level has
    the most channels and costs the most). Input: the frame letterboxed as the segmentation sees it."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self, channels: list[int], strides: list[int], num_res_units: int, norm: str, n_classes: int, levels: int = 0
    ) -> None:
        super().__init__()
        self.unet_levels = len(channels)  # the levels of the UNet the weights come from
        channels = channels[: levels or None]
        stages: list[nn.Module] = []
        cin = 1
        for i, cout in enumerate(channels):
            stride = strides[i] if i < len(strides) else 1  # the last level is the UNet's bottom block
            stages.append(
                ResidualUnit(
                    spatial_dims=2, in_channels=cin, out_channels=cout, strides=stride, subunits=num_res_units, norm=norm
                )
            )
            cin = cout
        self.base = nn.Sequential(*stages)
        n_features = 2 * sum(channels)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.linear = nn.Linear(n_features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean and maximum of each channel of each encoder level, (N, 2 x sum(channels))."""
        maps = []
        for stage in self.base:
            x = stage(x)
            maps.append(x)
        return self.pooled(maps)

    @staticmethod
    def pooled(maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The features of the encoder levels' outputs ``maps`` (shallowest first): mean and maximum per channel."""
        return torch.cat([p for x in maps for p in (x.mean(dim=(2, 3)), x.amax(dim=(2, 3)))], dim=1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The class logits of :meth:`features` (standardised, then the linear layer)."""
        return self.linear((features - self.mean) / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def load_unet_encoder(net: EncoderViewNet, unet_state: dict[str, torch.Tensor]) -> int:
    """Copy a trained segmentation UNet's encoder into ``net.base``, every tensor (ValueError if one is
    missing or of another shape: the UNet was not built with the same channels and strides). Returns the
    number of tensors copied."""
    state = net.state_dict()
    copied = 0
    for key, src_key in unet_encoder_keys(state, len(net.base), net.unet_levels):
        src = unet_state.get(src_key)
        if src is None or src.shape != state[key].shape:
            raise ValueError(f"the segmentation network has no {src_key} of shape {tuple(state[key].shape)}")
        state[key] = src.clone()
        copied += 1
    net.load_state_dict(state)
    return copied


def build_view_net(params: dict[str, Any]) -> nn.Module:
    """The view model: an :class:`EncoderViewNet` when ``params`` names an ``encoder`` (the segmentation
    bundle its encoder comes from); else MONAI ``Classifier`` (strided residual units, then one linear layer
    over the flattened map). Without global pooling the layout of the image (where the sector, the head, the
    symphysis are) stays in the Classifier's features. ``median`` (odd, > 1): a :class:`Median` filter first."""
    if params.get("encoder"):
        return EncoderViewNet(
            channels=list(params["channels"]),
            strides=list(params["strides"]),
            num_res_units=int(params.get("num_res_units", 2)),
            norm=str(params.get("norm", "BATCH")),
            n_classes=int(params["n_classes"]),
            levels=int(params.get("levels", 0)),
        )
    size = int(params["size"])
    net = Classifier(
        in_shape=(1, size, size),
        classes=int(params["n_classes"]),
        channels=tuple(params["channels"]),
        strides=tuple(params["strides"]),
        num_res_units=int(params.get("num_res_units", 2)),
        dropout=float(params.get("dropout", 0.1)),
    )
    median = int(params.get("median", 0))
    return nn.Sequential(Median(median), net) if median > 1 else net


def unet_encoder_keys(state: dict[str, torch.Tensor], n_stages: int, n_levels: int) -> Iterator[tuple[str, str]]:
    """(key of ``state``, key of a UNet with ``n_levels`` channel levels) for every tensor of the stages
    ``base.0`` .. ``base.<n_stages - 1>`` of ``state``: stage ``i`` is the UNet's encoder level ``i``."""
    for i in range(n_stages):
        src_prefix, dst_prefix = unet_encoder_prefix(i, n_levels), f"base.{i}."
        for key in state:
            if key.startswith(dst_prefix):
                yield key, src_prefix + key[len(dst_prefix) :]


def unet_encoder_prefix(level: int, n_levels: int) -> str:
    """State-dict prefix of encoder ``level`` in a MONAI UNet with ``n_levels`` channel levels.

    Levels ``0 .. n_levels - 2`` are the strided down blocks, the last one is the bottom block.
    """
    nested = "model." + "1.submodule." * level
    return nested if level == n_levels - 1 else nested + "0."


def transfer_unet_encoder(classifier: HeadClassifier, unet_state: dict[str, torch.Tensor], n_levels: int) -> int:
    """Initialise the classifier's base stages from a trained segmentation UNet's encoder.

    Both are stacks of MONAI residual units with the same layout, so stage ``i`` takes the UNet's
    encoder level ``i`` tensor by tensor where the shapes agree (a stride-1 bottom block has a 1x1
    residual convolution where a stride-2 stage has 3x3; such tensors keep their random init).
    Returns the number of tensors copied.
    """
    state = classifier.state_dict()
    copied = 0
    for key, src_key in unet_encoder_keys(state, min(len(classifier.base), n_levels), n_levels):
        src = unet_state.get(src_key)
        if src is not None and src.shape == state[key].shape:
            state[key] = src.clone()
            copied += 1
    classifier.load_state_dict(state)
    return copied
