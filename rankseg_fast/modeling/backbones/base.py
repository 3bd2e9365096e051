"""What every backbone promises: named multi-scale outputs with known channels and strides."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (input pixels per output pixel) of one named backbone output."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of the image backbones.

    A backbone maps a (B, 3, H, W) float image batch to a dict of feature maps, one per name in
    `out_features` (e.g. "res2".."res5"), each of shape (B, channels, ceil(H / stride), ceil(W / stride)).
    Subclasses fill `_out_feature_channels` and `_out_feature_strides` for every feature they can produce
    and set `_out_features` to the ones `forward` returns.
    """

    _out_features: list[str]
    _out_feature_channels: dict[str, int]
    _out_feature_strides: dict[str, int]

    @property
    def size_divisibility(self) -> int:
        """Inputs padded to a multiple of this give exactly aligned outputs at every level (32)."""
        return 32

    @property
    def out_features(self) -> list[str]:
        return list(self._out_features)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Per output name (in `out_features` order): its channels and stride."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem unless x is a (B, 3, H, W) floating-point tensor."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a tensor of shape (B, 3, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name}: expected input of shape (B, 3, H, W), got {x.dim()}-d shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: expected {self.in_channels} input channels, got input of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point input, got dtype {x.dtype}")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{name}: input has an empty spatial size {tuple(x.shape)}")

    in_channels: int = 3
