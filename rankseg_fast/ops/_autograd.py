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



def _masked_attention_setup_context(ctx, inputs, output):
    query, key, value, mask_logits, num_heads = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.num_heads = num_heads
    ctx.save_for_backward(query, key, value, mask_logits, out, lse)


def _masked_attention_backward(ctx, grad_output, grad_lse):
    query, key, value, mask_logits, out, lse = ctx.saved_tensors
    grad_query, grad_key, grad_value = torch.ops.rankseg_fast._masked_attention_backward(
        grad_output, query, key, value, mask_logits, out, lse, ctx.num_heads
    )
    needs = ctx.needs_input_grad
    return (
        grad_query if needs[0] else None,
        grad_key if needs[1] else None,
        grad_value if needs[2] else None,
        None,
        None,
    )


torch.library.register_autograd(
    "rankseg_fast::masked_attention", _masked_attention_backward, setup_context=_masked_attention_setup_context
)



# ---------------------------------------------------------------- rank_logits, rank_scatter
def _rank_logits_setup_context(ctx, inputs, output):
    class_logits, _scores, _k, weight, bias, _eps = inputs
    _ranked, rank_index, mean, rstd = output
    ctx.mark_non_differentiable(rank_index, mean, rstd)
    ctx.save_for_backward(class_logits, rank_index, weight, mean, rstd)
    ctx.bias_dtype = bias.dtype


def _rank_logits_backward(ctx, grad_ranked, _grad_index, _grad_mean, _grad_rstd):
    class_logits, rank_index, weight, mean, rstd = ctx.saved_tensors
    grad_logits, grad_weight, grad_bias = torch.ops.rankseg_fast._rank_logits_backward(
        grad_ranked, class_logits, rank_index, weight, mean, rstd
    )
    needs = ctx.needs_input_grad
    return (
        grad_logits if needs[0] else None,
        None,
        None,
        grad_weight if needs[3] else None,
        grad_bias.to(ctx.bias_dtype) if needs[4] else None,
        None,
    )


torch.library.register_autograd(
    "rankseg_fast::rank_logits", _rank_logits_backward, setup_context=_rank_logits_setup_context
)


def _rank_scatter_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _rank_scatter_backward(ctx, grad_output):
    (rank_index,) = ctx.saved_tensors
    return torch.ops.rankseg_fast._rank_scatter_backward(grad_output, rank_index), None, None, None


torch.library.register_autograd(
    "rankseg_fast::rank_scatter", _rank_scatter_backward, setup_context=_rank_scatter_setup_context
)
