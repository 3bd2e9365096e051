"""Masked multi-head attention: the public op of Mask2Former's masked cross-attention.

Runs the fused C++/CUDA kernel `torch.ops.rankseg_fast.masked_attention` when `use_kernel` says so (the
per-(batch, query) mask is passed once as logits, shared by all heads, thresholded inside the kernel),
else the pure-PyTorch reference. fp64 on CUDA has no kernel and runs the reference.
"""

from __future__ import annotations

import torch

from rankseg_fast.ops._impl import use_kernel
from rankseg_fast.ops.reference.masked_attention import (
    check_masked_attention_inputs,
    mask_logits_at_level,
    masked_attention_reference,
)

__all__ = ["masked_attention", "mask_logits_at_level"]


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask_logits: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """Multi-head attention of Q queries over L keys, where query q may attend key j only if
    mask_logits[b, q, j] >= 0 (sigmoid >= 0.5); a query whose row blocks every key attends to all keys.

    Inputs are already projected (the in/out projections live in the calling module); scaling 1/sqrt(D).

    Args:
        query: (B, Q, E) with E = num_heads * D; head h uses channels [h*D, (h+1)*D). fp32/fp64/fp16/bf16.
        key: (B, L, E), same dtype and device as query.
        value: (B, L, E), same dtype and device as query.
        mask_logits: (B, Q, L) floating, any of those dtypes; never repeated per head. Not differentiated.
        num_heads: H.

    Returns:
        (B, Q, E) in query's dtype, heads concatenated along channels. Differentiable w.r.t. query, key, value.
    """
    check_masked_attention_inputs(query, key, value, mask_logits, num_heads)
    fp64_on_cuda = query.device.type == "cuda" and query.dtype == torch.float64
    if not fp64_on_cuda and use_kernel(query):
        out, _ = torch.ops.rankseg_fast.masked_attention(query, key, value, mask_logits.detach(), num_heads)
        return out
    return masked_attention_reference(query, key, value, mask_logits, num_heads)
