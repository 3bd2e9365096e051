"""`MSDeformAttnPixelDecoder`: the Mask2Former pixel decoder (deformable encoder on res3..res5 plus an FPN
level for res2), with the parameter names of the released checkpoints
(prefix `sem_seg_head.pixel_decoder.`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rankseg_fast.modeling.backbones.base import ShapeSpec
from rankseg_fast.modeling.pixel_decoder.msdeform_encoder import MSDeformAttnTransformerEncoderOnly
from rankseg_fast.modeling.pixel_decoder.position_encoding import PositionEmbeddingSine


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2 "XavierFill" as detectron2 does it: kaiming_uniform(a=1) on the weight, bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _norm(norm: str, channels: int) -> nn.Module | None:
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "":
        return None
    raise ValueError(f"MSDeformAttnPixelDecoder: unsupported norm {norm!r}; use 'GN' or ''")


class Conv2dNorm(nn.Conv2d):
    """detectron2-style Conv2d: convolution, then the optional `norm` submodule, then the optional activation.

    The state_dict keys are `weight` (+ `bias`) and `norm.*`, as in the checkpoints (`adapter_1.norm.weight`).
    """

    def __init__(self, *args, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former pixel decoder.

    1. res5, res4, res3 (lowest resolution first) -> `input_proj.{l}` (1x1 conv with bias + GroupNorm(32)).
    2. + sine position encoding and `transformer.level_embed`; 6 deformable encoder layers over all tokens.
    3. Split back into maps /32, /16, /8; res2 -> `adapter_1` (1x1, no bias, GN) + bilinear upsample of the /8
       map (align_corners=False) -> `layer_1` (3x3, no bias, GN, ReLU) -> /4 map -> `mask_features` (1x1).

    Args:
        input_shape: {feature name: ShapeSpec(channels, stride)} of the backbone
            (e.g. `backbone.output_shape()`); names outside `in_features` are ignored.
        in_features: features the decoder reads (res2..res5).
        transformer_in_features: features the deformable encoder reads (res3..res5).
        conv_dim: channels of the decoder (CONVS_DIM 256); mask_dim: channels of mask_features (MASK_DIM 256).
        norm: "GN" (GroupNorm(32, conv_dim)) or "" for the FPN convs; input_proj always uses GroupNorm(32).
        transformer_nheads (8), transformer_enc_layers (6), transformer_dim_feedforward (1024),
        transformer_dropout (0.0), transformer_n_points (4): the encoder.
        common_stride: stride of mask_features (4).
        num_multi_scale_levels: how many encoder maps are returned as multi-scale features (3).
        fp32: run with autocast disabled, features cast to (at least) fp32 -- the reference numerics.
            False runs in the ambient dtype / autocast.

    forward(features) -> (mask_features (B, mask_dim, H/4, W/4), [maps (B, conv_dim, H/32|H/16|H/8, ...)]),
    the list lowest resolution first. Spatial sizes are those of the given features (padding-free).
    """

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_nheads: int = 8,
        transformer_enc_layers: int = 6,
        transformer_dim_feedforward: int = 1024,
        transformer_dropout: float = 0.0,
        transformer_n_points: int = 4,
        common_stride: int = 4,
        num_multi_scale_levels: int = 3,
        fp32: bool = True,
    ):
        super().__init__()
        for name in list(in_features) + list(transformer_in_features):
            if name not in input_shape:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} is not in input_shape "
                    f"({', '.join(input_shape)})"
                )
        missing = [name for name in transformer_in_features if name not in in_features]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: transformer features {missing} are not in in_features"
            )
        shapes = sorted(((name, input_shape[name]) for name in in_features), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in shapes]  # highest resolution first
        self.feature_channels = {name: spec.channels for name, spec in shapes}
        self.feature_strides = {name: spec.stride for name, spec in shapes}
        self.transformer_in_features = sorted(
            transformer_in_features, key=lambda name: input_shape[name].stride
        )
        self.fp32 = fp32
        self.conv_dim, self.mask_dim, self.common_stride = conv_dim, mask_dim, common_stride

        levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features[::-1]:  # lowest resolution first
            conv = nn.Conv2d(input_shape[name].channels, conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, nn.GroupNorm(32, conv_dim)))

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim, nhead=transformer_nheads, num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward, dropout=transformer_dropout,
            num_feature_levels=levels, enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        if num_multi_scale_levels > levels:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: num_multi_scale_levels ({num_multi_scale_levels}) exceeds the "
                f"{levels} encoder levels"
            )
        self.num_multi_scale_levels = num_multi_scale_levels

        min_stride = min(input_shape[name].stride for name in self.transformer_in_features)
        self.num_fpn_levels = int(math.log2(min_stride) - math.log2(common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for index, name in enumerate(self.in_features[: self.num_fpn_levels]):
            lateral = Conv2dNorm(self.feature_channels[name], conv_dim, kernel_size=1, bias=use_bias,
                                 norm=_norm(norm, conv_dim))
            output = Conv2dNorm(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                                norm=_norm(norm, conv_dim), activation=F.relu)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{index + 1}", lateral)
            self.add_module(f"layer_{index + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # plain lists (no extra state_dict keys), ordered from the lowest-resolution FPN level up
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    def _check_features(self, features: Mapping[str, torch.Tensor]) -> None:
        batch = None
        for name in self.in_features:
            if name not in features:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} is missing "
                    f"(got {', '.join(features) or 'none'})"
                )
            x = features[name]
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} must be (B, C, H, W), got {shape}"
                )
            if x.shape[1] != self.feature_channels[name]:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} must have "
                    f"{self.feature_channels[name]} channels, "
                    f"got shape {tuple(x.shape)}"
                )
            if x.shape[2] == 0 or x.shape[3] == 0:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} is empty, shape {tuple(x.shape)}"
                )
            if batch is not None and x.shape[0] != batch:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} has batch {x.shape[0]}, "
                    f"other features have {batch}"
                )
            batch = x.shape[0]

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.promote_types(x.dtype, torch.float32)) if self.fp32 else x

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: {name: (B, C_name, H_name, W_name)} with every name of `in_features`.
        Returns:
            mask_features: (B, mask_dim, H_res2, W_res2);
            multi_scale_features: `num_multi_scale_levels` maps (B, conv_dim, H_l, W_l),
                lowest resolution first.
        """
        self._check_features(features)
        device_type = features[self.in_features[0]].device.type
        context = torch.autocast(device_type, enabled=False) if self.fp32 else contextlib.nullcontext()
        with context:
            return self._forward(features)

    def _forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos = [], []
        for index, name in enumerate(self.transformer_in_features[::-1]):
            src = self.input_proj[index](self._input(features[name]))
            srcs.append(src)
            pos.append(self.pe_layer(src))
        memory, shapes, _ = self.transformer(srcs, pos)

        batch = memory.shape[0]
        out = [
            level.transpose(1, 2).reshape(batch, -1, height, width)
            for level, (height, width) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        for index, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[index](self._input(features[name]))
            upsampled = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            merged = lateral + upsampled
            out.append(self.output_convs[index](merged))
        return self.mask_features(out[-1]), out[: self.num_multi_scale_levels]
