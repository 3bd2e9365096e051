"""Image backbones (ResNet with detectron2 names and FrozenBN; Swin) and a name -> constructor registry.

`build_backbone("swin_large")` etc. gives the recipe settings of the fact sheet (§1.2); keyword arguments
override any constructor argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rankseg_fast.modeling.backbones.base import Backbone, ShapeSpec
from rankseg_fast.modeling.backbones.frozen_batch_norm import FrozenBatchNorm2d
from rankseg_fast.modeling.backbones.resnet import BasicStem, BottleneckBlock, ConvNorm, DeepLabStem, ResNet
from rankseg_fast.modeling.backbones.swin import (
    DropPath,
    PatchEmbed,
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    relative_position_index,
    shift_window_mask,
    window_partition,
    window_reverse,
)

_RESNET_RECIPE = dict(stem_type="basic", stem_out_channels=64, stride_in_1x1=False, res5_dilation=1,
                      norm="FrozenBN", freeze_at=0)
_SWIN_RECIPE = dict(patch_size=4, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                    attn_drop_rate=0.0, drop_path_rate=0.3, ape=False, patch_norm=True, use_checkpoint=False)
_SWIN_224 = dict(_SWIN_RECIPE, window_size=7, pretrain_img_size=224)
_SWIN_384 = dict(_SWIN_RECIPE, window_size=12, pretrain_img_size=384)

#: name -> (constructor, default keyword arguments)
BACKBONES: dict[str, tuple[Callable[..., Backbone], dict[str, Any]]] = {
    "R50": (ResNet, dict(_RESNET_RECIPE, depth=50)),
    "R101": (ResNet, dict(_RESNET_RECIPE, depth=101)),
    # "R-103": ResNet-101 with the DeepLab stem of three 3x3 convs, 128 stem channels.
    "R101c": (ResNet, dict(_RESNET_RECIPE, depth=101, stem_type="deeplab", stem_out_channels=128)),
    "swin_tiny": (SwinTransformer, dict(_SWIN_224, embed_dim=96, depths=(2, 2, 6, 2),
                                        num_heads=(3, 6, 12, 24))),
    "swin_small": (SwinTransformer, dict(_SWIN_224, embed_dim=96, depths=(2, 2, 18, 2),
                                         num_heads=(3, 6, 12, 24))),
    "swin_base": (SwinTransformer, dict(_SWIN_384, embed_dim=128, depths=(2, 2, 18, 2),
                                        num_heads=(4, 8, 16, 32))),
    "swin_large": (SwinTransformer, dict(_SWIN_384, embed_dim=192, depths=(2, 2, 18, 2),
                                         num_heads=(6, 12, 24, 48))),
}


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone with its recipe defaults, overridden by `kwargs`.

    Names: R50, R101, R101c, swin_tiny, swin_small, swin_base, swin_large. Note swin_base/swin_large use the
    IN-21k 384 settings (window 12) of the released Mask2Former recipes; pass window_size=7,
    pretrain_img_size=224 for the 224 variants.
    """
    if name not in BACKBONES:
        raise ValueError(f"build_backbone: unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    constructor, defaults = BACKBONES[name]
    return constructor(**{**defaults, **kwargs})


__all__ = [
    "BACKBONES",
    "Backbone",
    "BasicStem",
    "BottleneckBlock",
    "ConvNorm",
    "DeepLabStem",
    "DropPath",
    "FrozenBatchNorm2d",
    "PatchEmbed",
    "PatchMerging",
    "ResNet",
    "ShapeSpec",
    "SwinTransformer",
    "SwinTransformerBlock",
    "WindowAttention",
    "build_backbone",
    "relative_position_index",
    "shift_window_mask",
    "window_partition",
    "window_reverse",
]
