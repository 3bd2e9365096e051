"""Reference multi-scale deformable attention, built on `F.grid_sample` (bilinear, zero padding,
align_corners=False), as the Deformable-DETR / Mask2Former reference defines it."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rankseg_fast.ops.reference._errors import fail

_OP = "ms_deform_attn"
_VALUE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_fail = functools.partial(fail, _OP)


def check_ms_deform_attn_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    check_values: bool = True,
) -> None:
    """Raises ValueError naming the offending tensor when the inputs do not form a valid call.

    Shapes: value (B, S, H, C), spatial_shapes (L, 2), level_start_index (L,),
    sampling_locations (B, Q, H, L, P, 2), attention_weights (B, Q, H, L, P).
    `check_values` also reads spatial_shapes and level_start_index (a host copy when they are on a GPU)
    and checks them against the value length; fake tensors skip it.
    """
    ranks = {
        "value": (value, 4, "(batch, keys, heads, channels)"),
        "spatial_shapes": (spatial_shapes, 2, "(levels, 2)"),
        "level_start_index": (level_start_index, 1, "(levels,)"),
        "sampling_locations": (sampling_locations, 6, "(batch, queries, heads, levels, points, 2)"),
        "attention_weights": (attention_weights, 5, "(batch, queries, heads, levels, points)"),
    }
    for name, (tensor, rank, layout) in ranks.items():
        if not isinstance(tensor, torch.Tensor):
            _fail(f"`{name}` must be a tensor, got {type(tensor).__name__}", TypeError)
        if tensor.dim() != rank:
            _fail(f"`{name}` must have {rank} dimensions {layout}, got shape {tuple(tensor.shape)}")
    B, S, H, _ = value.shape
    L = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        _fail(f"`spatial_shapes` must have shape (levels, 2), got {tuple(spatial_shapes.shape)}")
    if level_start_index.shape[0] != L:
        _fail(f"`level_start_index` has {level_start_index.shape[0]} entries but `spatial_shapes` has {L} levels")
    Q, P = sampling_locations.shape[1], sampling_locations.shape[4]
    if tuple(sampling_locations.shape) != (B, Q, H, L, P, 2):
        _fail(
            f"`sampling_locations` must have shape (batch={B}, queries, heads={H}, levels={L}, points, 2) "
            f"to match `value` {tuple(value.shape)} and `spatial_shapes`, got {tuple(sampling_locations.shape)}"
        )
    if tuple(attention_weights.shape) != (B, Q, H, L, P):
        _fail(
            f"`attention_weights` must have shape (batch, queries, heads, levels, points) = {(B, Q, H, L, P)} "
            f"to match `sampling_locations` {tuple(sampling_locations.shape)}, got {tuple(attention_weights.shape)}"
        )
    for name, tensor in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if tensor.device != value.device:
            _fail(f"`{name}` is on {tensor.device} but `value` is on {value.device}; move them to the same device")
    for name, tensor in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if tensor.device.type != "cpu" and tensor.device != value.device:
            _fail(f"`{name}` is on {tensor.device} but `value` is on {value.device}")
        if tensor.dtype not in (torch.int64, torch.int32):
            _fail(f"`{name}` must be int64 (or int32), got {tensor.dtype}", TypeError)
    if value.dtype not in _VALUE_DTYPES:
        _fail(f"`value` must be float32, float64, float16 or bfloat16, got {value.dtype}", TypeError)
    if sampling_locations.dtype != attention_weights.dtype:
        _fail(
            f"`sampling_locations` ({sampling_locations.dtype}) and `attention_weights` "
            f"({attention_weights.dtype}) must share one dtype",
            TypeError,
        )
    if sampling_locations.dtype not in (value.dtype, torch.float32):
        _fail(
            f"`sampling_locations` and `attention_weights` must be float32 or the dtype of `value` "
            f"({value.dtype}), got {sampling_locations.dtype}",
            TypeError,
        )
    if not check_values:
        return
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    total = 0
    for level, ((height, width), start) in enumerate(zip(shapes, starts)):
        if height <= 0 or width <= 0:
            _fail(f"`spatial_shapes` level {level} has size ({height}, {width}); every level needs a positive size")
        if start != total:
            _fail(
                f"`level_start_index` does not match `spatial_shapes`: level {level} starts at {start} "
                f"but the levels before it hold {total} tokens"
            )
        total += height * width
    if total != S:
        _fail(f"`spatial_shapes` describe {total} tokens (sum of H_l * W_l) but `value` has {S} (its dimension 1)")


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention by grid sampling each level.

    value (B, S, H, C); spatial_shapes (L, 2) as (H_l, W_l); level_start_index (L,);
    sampling_locations (B, Q, H, L, P, 2) as (x, y) in [0, 1]; attention_weights (B, Q, H, L, P)
    -> (B, Q, H * C) in value's dtype. Computes in at least fp32 (fp64 stays fp64).
    """
    check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), torch.float32)
    shapes = [tuple(hw) for hw in spatial_shapes.tolist()]
    levels = value.to(dtype).split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations.to(dtype) - 1  # grid_sample's [-1, 1] convention
    samples = []
    for level, (height, width) in enumerate(shapes):
        # (B, h*w, H, C) -> (B*H, C, h, w)
        level_value = levels[level].permute(0, 2, 3, 1).reshape(B * H, C, height, width)
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(B * H, Q, P, 2)
        samples.append(
            F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*H, C, Q, P)
    sampled = torch.stack(samples, dim=-2).flatten(-2)  # (B*H, C, Q, L*P)
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(B * H, 1, Q, L * P)
    output = (sampled * weights).sum(-1).view(B, H * C, Q)
    return output.transpose(1, 2).contiguous().to(value.dtype)
