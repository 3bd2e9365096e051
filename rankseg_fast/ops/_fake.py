"""Fake (meta) kernels: output shapes and dtypes of every op, so the ops trace under torch.compile."""

from __future__ import annotations

import torch

from rankseg_fast.ops.reference.ms_deform_attn import check_ms_deform_attn_inputs


@torch.library.register_fake("rankseg_fast::ms_deform_attn")
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    check_ms_deform_attn_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, check_values=False
    )
    B, _, H, C = value.shape
    return value.new_empty((B, sampling_locations.shape[1], H * C))


@torch.library.register_fake("rankseg_fast::_ms_deform_attn_backward")
def _ms_deform_attn_backward_fake(
    grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    return (
        torch.empty_like(value, memory_format=torch.contiguous_format),
        torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
        torch.empty_like(attention_weights, memory_format=torch.contiguous_format),
    )



@torch.library.register_fake("rankseg_fast::masked_attention")
def _masked_attention_fake(query, key, value, mask_logits, num_heads):
    from rankseg_fast.ops.reference.masked_attention import check_masked_attention_inputs

    check_masked_attention_inputs(query, key, value, mask_logits, num_heads)
    B, Q, _ = query.shape
    stats = torch.float64 if query.dtype == torch.float64 else torch.float32
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    return out, query.new_empty((B, num_heads, Q), dtype=stats)


@torch.library.register_fake("rankseg_fast::_masked_attention_backward")
def _masked_attention_backward_fake(grad_output, query, key, value, mask_logits, out, lse, num_heads):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (query, key, value))



# ---------------------------------------------------------------- rank_logits, rank_scatter
from rankseg_fast.ops.reference.rank_logits import check_rank_logits_inputs, check_rank_scatter_inputs  # noqa: E402


def _rank_stats_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


@torch.library.register_fake("rankseg_fast::rank_logits")
def _rank_logits_fake(class_logits, scores, k, weight, bias, eps):
    check_rank_logits_inputs(class_logits, scores, k, weight, bias)
    N, B, Q, _ = class_logits.shape
    ranked = class_logits.new_empty((N, B, Q, k + 1))
    rank_index = class_logits.new_empty((B, k + 1), dtype=torch.int64)
    mean = class_logits.new_empty((N, B, Q), dtype=_rank_stats_dtype(class_logits.dtype))
    return ranked, rank_index, mean, torch.empty_like(mean)


@torch.library.register_fake("rankseg_fast::_rank_logits_backward")
def _rank_logits_backward_fake(grad_ranked, class_logits, rank_index, weight, mean, rstd):
    grad_weight = weight.new_empty(weight.shape)
    return (
        torch.empty_like(class_logits, memory_format=torch.contiguous_format),
        grad_weight,
        torch.empty_like(grad_weight),
    )


@torch.library.register_fake("rankseg_fast::rank_scatter")
def _rank_scatter_fake(ranked, rank_index, num_classes, fill):
    check_rank_scatter_inputs(ranked, rank_index, num_classes)
    return ranked.new_empty((*ranked.shape[:-1], num_classes + 1))


@torch.library.register_fake("rankseg_fast::_rank_scatter_backward")
def _rank_scatter_backward_fake(grad_output, rank_index):
    return grad_output.new_empty((*grad_output.shape[:-1], rank_index.shape[1]))



@torch.library.register_fake("rankseg_fast::linear_assignment")
def _linear_assignment_fake(cost, valid):
    # The checks of csrc/ops/linear_assignment.cpp, for the meta / fake tensors that never reach it.
    op = "linear_assignment"
    if cost.dim() != 3 or valid.dim() != 2:
        raise ValueError(f"{op}: `cost` must have 3 dimensions (problems, queries, targets) and `valid` 2 "
                         f"(problems, targets), got {tuple(cost.shape)} and {tuple(valid.shape)}")
    if cost.dtype not in (torch.float32, torch.float64) or valid.dtype != torch.bool:
        raise TypeError(f"{op}: `cost` must be float32 or float64 and `valid` bool, got {cost.dtype} and "
                        f"{valid.dtype}")
    problems, _, targets = cost.shape
    if tuple(valid.shape) != (problems, targets):
        raise ValueError(f"{op}: `valid` must have shape (problems, targets) = {(problems, targets)} to "
                         f"match `cost` {tuple(cost.shape)}, got {tuple(valid.shape)}")
    if valid.device != cost.device:
        raise ValueError(f"{op}: `valid` is on {valid.device} but `cost` is on {cost.device}; move them to "
                         "the same device")
    index = cost.new_empty((problems, targets), dtype=torch.int64)
    return index, torch.empty_like(index), cost.new_empty((problems,), dtype=torch.bool)


@torch.library.register_fake("rankseg_fast::point_mask_costs")
def _point_mask_costs_fake(pred_masks, target_masks, target_valid, coords, mask_weight, dice_weight):
    # The shape checks of csrc/ops/point_mask_costs.cpp that decide the output, for fake tensors.
    op = "point_mask_costs"
    if pred_masks.dim() != 5 or target_masks.dim() != 4 or target_valid.dim() != 2 or coords.dim() != 4:
        raise ValueError(f"{op}: expected pred_masks (L, B, Q, h, w), target_masks (B, T, H, W), target_valid "
                         f"(B, T) and coords (L, B, P, 2), got {tuple(pred_masks.shape)}, "
                         f"{tuple(target_masks.shape)}, {tuple(target_valid.shape)} and {tuple(coords.shape)}")
    L, B, Q = pred_masks.shape[:3]
    if tuple(target_valid.shape) != tuple(target_masks.shape[:2]) or target_masks.shape[0] != B:
        raise ValueError(f"{op}: `target_masks` {tuple(target_masks.shape)} and `target_valid` "
                         f"{tuple(target_valid.shape)} must share (batch={B}, targets)")
    for name, tensor in (("target_masks", target_masks), ("target_valid", target_valid), ("coords", coords)):
        if tensor.device != pred_masks.device:
            raise ValueError(f"{op}: `{name}` is on {tensor.device} but `pred_masks` is on {pred_masks.device}; "
                             "move them to the same device")
    return pred_masks.new_empty((L, B, Q, target_masks.shape[1]), dtype=torch.float32)
