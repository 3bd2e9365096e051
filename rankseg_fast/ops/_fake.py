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
    problems, _, targets = cost.shape
    index = cost.new_empty((problems, targets), dtype=torch.int64)
    return index, torch.empty_like(index), cost.new_empty((problems,), dtype=torch.bool)
