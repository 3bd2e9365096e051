"""Autograd of every differentiable op: the backward of each is its own op `_<op>_backward`."""

from __future__ import annotations

import torch


def _ms_deform_attn_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _ms_deform_attn_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = torch.ops.rankseg_fast._ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    needs = ctx.needs_input_grad
    return (
        grad_value if needs[0] else None,
        None,
        None,
        grad_locations if needs[3] else None,
        grad_weights if needs[4] else None,
    )


torch.library.register_autograd(
    "rankseg_fast::ms_deform_attn", _ms_deform_attn_backward, setup_context=_ms_deform_attn_setup_context
)
