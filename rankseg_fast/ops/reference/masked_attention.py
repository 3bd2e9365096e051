"""Reference masked multi-head attention (the Mask2Former masked cross-attention core) and the helper that
turns predicted mask logits into a level's per-key attention-mask logits.

Visibility rule (the op contract): query q of image b may attend key j iff mask_logits[b, q, j] >= 0,
i.e. sigmoid >= 0.5 (Mask2Former blocks where sigmoid < 0.5, so a logit of exactly 0 is visible); a query
whose row blocks every key attends to all keys. The mask is given once per (b, q) and shared by all heads.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from rankseg_fast.ops.reference._errors import fail

_OP = "masked_attention"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


_fail = functools.partial(fail, _OP)


def check_masked_attention_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask_logits: torch.Tensor,
    num_heads: int,
) -> None:
    """Raises TypeError/ValueError naming the offending tensor when the inputs do not form a valid call.

    Shapes: query (B, Q, E), key (B, L, E), value (B, L, E), mask_logits (B, Q, L), E divisible by num_heads.
    """
    layouts = {
        "query": (query, "(batch, queries, channels)"),
        "key": (key, "(batch, keys, channels)"),
        "value": (value, "(batch, keys, channels)"),
        "mask_logits": (mask_logits, "(batch, queries, keys)"),
    }
    for name, (tensor, layout) in layouts.items():
        if not isinstance(tensor, torch.Tensor):
            _fail(f"`{name}` must be a tensor, got {type(tensor).__name__}", TypeError)
        if tensor.dim() != 3:
            _fail(f"`{name}` must have 3 dimensions {layout}, got shape {tuple(tensor.shape)}")
        if tensor.dtype not in _DTYPES:
            _fail(f"`{name}` must be a floating tensor ({', '.join(map(str, _DTYPES))}), got {tensor.dtype}", TypeError)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        _fail(f"`num_heads` must be a positive int, got {num_heads!r}")
    B, Q, E = query.shape
    L = key.shape[1]
    if E % num_heads != 0:
        _fail(f"`query` channels ({E}) must be divisible by num_heads ({num_heads})")
    if key.shape[0] != B or key.shape[2] != E:
        _fail(f"`key` must have shape (batch={B}, keys, channels={E}) to match `query` {tuple(query.shape)}, "
              f"got {tuple(key.shape)}")
    if tuple(value.shape) != (B, L, E):
        _fail(f"`value` must have shape {(B, L, E)} to match `key` {tuple(key.shape)}, got {tuple(value.shape)}")
    if tuple(mask_logits.shape) != (B, Q, L):
        _fail(f"`mask_logits` must have shape (batch, queries, keys) = {(B, Q, L)} to match `query` "
              f"{tuple(query.shape)} and `key` {tuple(key.shape)}, got {tuple(mask_logits.shape)}")
    if L == 0:
        _fail(f"`key` must have at least one key, got shape {tuple(key.shape)}")
    for name, tensor in (("key", key), ("value", value)):
        if tensor.dtype != query.dtype:
            _fail(f"`{name}` dtype {tensor.dtype} differs from `query` dtype {query.dtype}", TypeError)
    for name, tensor in (("key", key), ("value", value), ("mask_logits", mask_logits)):
        if tensor.device != query.device:
            _fail(f"`{name}` is on {tensor.device} but `query` is on {query.device}")


def blocked_keys(mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, Q, L) mask logits -> (B, Q, L) bool, True where the key is blocked, with the all-blocked-row rule
    applied (such rows become all False)."""
    blocked = mask_logits < 0  # NaN compares False: visible, as sigmoid(NaN) < 0.5 is False in the reference
    return blocked & ~blocked.all(dim=-1, keepdim=True)


def masked_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask_logits: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """Masked multi-head attention on already projected q, k, v (no input or output projection).

    Args:
        query: (B, Q, E), E = num_heads * D, head h in channels [h*D, (h+1)*D).
        key, value: (B, L, E), same dtype as query.
        mask_logits: (B, Q, L); key j visible to query q iff >= 0; rows blocking every key see all keys.
        num_heads: H.

    Returns:
        (B, Q, E): per head softmax(q k^T / sqrt(D) + mask) v, heads concatenated along channels.
        Computed as an explicit additive -inf mask with a softmax in the input dtype (fp32 for fp16/bf16).
    """
    check_masked_attention_inputs(query, key, value, mask_logits, num_heads)
    B, Q, E = query.shape
    L, H = key.shape[1], num_heads
    D = E // H
    compute = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
    q = query.to(compute).view(B, Q, H, D).transpose(1, 2)  # (B, H, Q, D)
    k = key.to(compute).view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
    v = value.to(compute).view(B, L, H, D).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # (B, H, Q, L)
    bias = torch.zeros((B, Q, L), dtype=compute, device=query.device)
    bias = bias.masked_fill(blocked_keys(mask_logits), float("-inf"))
    weights = torch.softmax(scores + bias[:, None], dim=-1)
    out = torch.matmul(weights, v)  # (B, H, Q, D)
    return out.transpose(1, 2).reshape(B, Q, E).to(query.dtype)


def mask_logits_at_level(pred_masks: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Predicted mask logits (B, Q, h, w) -> the level's per-key mask logits (B, Q, H_l * W_l), detached.

    Bilinear resize with align_corners=False (as Mask2Former), then flattened row-major to match the
    flattened memory of a (H_l, W_l) level. No gradient flows into an attention mask.
    """
    if not isinstance(pred_masks, torch.Tensor) or pred_masks.dim() != 4:
        shape = tuple(pred_masks.shape) if isinstance(pred_masks, torch.Tensor) else type(pred_masks).__name__
        raise ValueError(f"mask_logits_at_level: `pred_masks` must have shape (batch, queries, h, w), got {shape}")
    if len(size) != 2:
        raise ValueError(f"mask_logits_at_level: `size` must be (height, width), got {tuple(size)}")
    resized = F.interpolate(pred_masks.detach(), size=tuple(int(s) for s in size), mode="bilinear",
                            align_corners=False)
    return resized.flatten(2)
