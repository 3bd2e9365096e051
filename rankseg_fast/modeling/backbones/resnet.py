"""ResNet backbone with detectron2 module names (so detectron2 / Mask2Former checkpoints load verbatim).

State-dict layout (no `backbone.` prefix; the meta-architecture adds it):
    stem.conv1.weight, stem.conv1.norm.{weight,bias,running_mean,running_var}      (basic stem)
    stem.conv{1,2,3}.weight, stem.conv{1,2,3}.norm.*                             (deeplab stem)
    res{2..5}.{b}.conv{1,2,3}.weight, res{s}.{b}.conv{1,2,3}.norm.*
    res{s}.0.shortcut.weight, res{s}.0.shortcut.norm.*                           (block 0 only)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rankseg_fast.modeling.backbones.base import Backbone
from rankseg_fast.modeling.backbones.frozen_batch_norm import FrozenBatchNorm2d

RESNET_BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def make_norm(norm: str, channels: int) -> nn.Module:
    """Norm layer by detectron2 name: "FrozenBN" (default of every recipe), "BN", "SyncBN", or "" (none)."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm in ("", "none", None):
        return nn.Identity()
    raise ValueError(f"ResNet: unknown norm {norm!r}; expected 'FrozenBN', 'BN', 'SyncBN' or ''")


class ConvNorm(nn.Conv2d):
    """Bias-free Conv2d followed by its own norm, kept as the sub-module `norm` (detectron2's `Conv2d`
    wrapper), so keys read `<name>.weight` and `<name>.norm.*`. No activation: callers apply ReLU.

    Shapes: (B, C_in, H, W) -> (B, C_out, H', W') with the usual convolution arithmetic.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, norm: str = "FrozenBN"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=False)
        self.norm = make_norm(norm, out_channels)
        # detectron2's c2_msra_fill: He-normal on fan_out.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of `module` and turn its BatchNorms into FrozenBatchNorm2d."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class BasicStem(nn.Module):
    """7x7/2 conv (pad 3) + norm + ReLU, then 3x3/2 max-pool (pad 1): (B, 3, H, W) -> (B, C, H/4, W/4)."""

    stride = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv1 = ConvNorm(in_channels, out_channels, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """Deep stem of R101c / "R-103": three 3x3 convs (stride 2, 1, 1; widths C/2, C/2, C), each with norm
    and ReLU, then 3x3/2 max-pool (pad 1): (B, 3, H, W) -> (B, C, H/4, W/4). C = 128 for R-103."""

    stride = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm: str = "FrozenBN"):
        super().__init__()
        if out_channels % 2 != 0:
            raise ValueError(f"DeepLabStem: out_channels must be even, got {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        half = out_channels // 2
        self.conv1 = ConvNorm(in_channels, half, 3, stride=2, padding=1, norm=norm)
        self.conv2 = ConvNorm(half, half, 3, stride=1, padding=1, norm=norm)
        self.conv3 = ConvNorm(half, out_channels, 3, stride=1, padding=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """ResNet bottleneck: 1x1 -> 3x3 -> 1x1 convs (each with norm; ReLU after the first two), plus the
    shortcut (1x1 conv + norm with the block's stride when in != out channels, else identity), then ReLU.

    Args:
        in_channels, out_channels, bottleneck_channels: widths (e.g. 256, 256, 64 in res2).
        stride: spatial stride of the block (1 or 2).
        num_groups: groups of the 3x3 conv (1 = plain ResNet).
        norm: see `make_norm`.
        stride_in_1x1: put the stride on conv1 (MSRA/caffe style) instead of conv2 (torchvision style,
            False: what every in-scope recipe uses).
        dilation: dilation (and padding) of the 3x3 conv.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 num_groups: int = 1, norm: str = "FrozenBN", stride_in_1x1: bool = False,
                 dilation: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
        else:
            if stride != 1:
                raise ValueError(
                    f"BottleneckBlock: an identity shortcut needs stride 1, got stride {stride} with "
                    f"in_channels == out_channels == {in_channels}"
                )
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, norm=norm)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3,
                              padding=dilation, dilation=dilation, groups=num_groups, norm=norm)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNet(Backbone):
    """Bottleneck ResNet (50/101/152) returning a dict of stage outputs, detectron2-compatible.

    Args:
        depth: 50, 101 or 152.
        out_features: subset of ("stem", "res2", "res3", "res4", "res5"); stages after the deepest one
            are not built.
        stem_type: "basic" (7x7 stem, every in-scope recipe) or "deeplab" (three 3x3 convs, R101c).
        stem_out_channels: stem width (64 basic; 128 for R101c).
        res2_out_channels: res2 output width (256); doubles per stage.
        num_groups, width_per_group: 3x3 conv groups and bottleneck width per group (1, 64).
        stride_in_1x1: see `BottleneckBlock` (False).
        res4_dilation: 1 or 2; with 2, res4 keeps stride 8 and res5 must use dilation 4.
        res5_dilation: 1, 2 or 4; > 1 keeps the res5 stride equal to res4's.
        res5_multi_grid: per-block multipliers of the res5 dilation (DeepLab), default all 1.
        norm: "FrozenBN" (default), "BN", "SyncBN".
        freeze_at: 0 = nothing frozen, 1 = stem, k >= 2 = stem and res2..res{k} (no grads; BN -> FrozenBN).
        in_channels: image channels (3).

    Input (B, 3, H, W) float; output {name: (B, C_name, ceil(H / s), ceil(W / s))} with C = 256, 512, 1024,
    2048 and s = 4, 8, 16, 32 for res2..res5 (no dilation). See `output_shape()`.
    """

    def __init__(self, depth: int = 50, *, out_features: Sequence[str] = STAGE_NAMES,
                 stem_type: str = "basic", stem_out_channels: int = 64, res2_out_channels: int = 256,
                 num_groups: int = 1, width_per_group: int = 64, stride_in_1x1: bool = False,
                 res4_dilation: int = 1, res5_dilation: int = 1,
                 res5_multi_grid: Sequence[int] | None = None, norm: str = "FrozenBN",
                 freeze_at: int = 0, in_channels: int = 3):
        super().__init__()
        if depth not in RESNET_BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet: depth must be one of {sorted(RESNET_BLOCKS_PER_STAGE)}, got {depth}")
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in ("stem",) + STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"ResNet: out_features must be a non-empty subset of {('stem',) + STAGE_NAMES}, "
                f"got {out_features}"
            )
        if res4_dilation not in (1, 2):
            raise ValueError(f"ResNet: res4_dilation must be 1 or 2, got {res4_dilation}")
        if res5_dilation not in (1, 2, 4):
            raise ValueError(f"ResNet: res5_dilation must be 1, 2 or 4, got {res5_dilation}")
        if res4_dilation == 2 and res5_dilation != 4:
            raise ValueError("ResNet: res4_dilation 2 requires res5_dilation 4")
        blocks_per_stage = RESNET_BLOCKS_PER_STAGE[depth]
        multi_grid = list(res5_multi_grid) if res5_multi_grid is not None else [1] * blocks_per_stage[3]
        if len(multi_grid) != blocks_per_stage[3]:
            raise ValueError(
                f"ResNet: res5_multi_grid needs {blocks_per_stage[3]} entries (one per res5 block), "
                f"got {multi_grid}"
            )

        self.depth, self.in_channels = depth, in_channels
        if stem_type == "basic":
            self.stem = BasicStem(in_channels, stem_out_channels, norm=norm)
        elif stem_type == "deeplab":
            self.stem = DeepLabStem(in_channels, stem_out_channels, norm=norm)
        else:
            raise ValueError(f"ResNet: stem_type must be 'basic' or 'deeplab', got {stem_type!r}")

        self._out_features = out_features
        self._out_feature_channels: dict[str, int] = {"stem": stem_out_channels}
        self._out_feature_strides: dict[str, int] = {"stem": self.stem.stride}
        self.stage_names: list[str] = []
        max_stage = max((STAGE_NAMES.index(f) for f in out_features if f != "stem"), default=-1)
        stride = self.stem.stride
        c_in, c_out, c_mid = stem_out_channels, res2_out_channels, num_groups * width_per_group
        for idx in range(max_stage + 1):
            name = STAGE_NAMES[idx]
            dilation = {2: res4_dilation, 3: res5_dilation}.get(idx, 1)
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            dilations = [dilation * m for m in multi_grid] if idx == 3 else [dilation] * blocks_per_stage[idx]
            blocks = []
            for b in range(blocks_per_stage[idx]):
                blocks.append(BottleneckBlock(
                    c_in if b == 0 else c_out, c_out, bottleneck_channels=c_mid,
                    stride=first_stride if b == 0 else 1, num_groups=num_groups, norm=norm,
                    stride_in_1x1=stride_in_1x1, dilation=dilations[b],
                ))
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            stride *= first_stride
            self._out_feature_channels[name] = c_out
            self._out_feature_strides[name] = stride
            c_in, c_out, c_mid = c_out, c_out * 2, c_mid * 2
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the stem (freeze_at >= 1) and res2..res{freeze_at} (freeze_at >= 2). Returns self."""
        if freeze_at < 0:
            raise ValueError(f"ResNet: freeze_at must be >= 0, got {freeze_at}")
        if freeze_at >= 1:
            self.stem = freeze_module(self.stem)
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                self.add_module(name, freeze_module(getattr(self, name)))
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) float -> {name: (B, C, H', W')} for each name in `out_features`."""
        self._check_input(x)
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs
