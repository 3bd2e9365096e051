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
