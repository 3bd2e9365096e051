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
