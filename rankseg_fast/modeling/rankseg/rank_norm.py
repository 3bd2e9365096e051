"""The rank-wise LayerNorm of RankSeg (`ml_norm`, fact sheet §4.1, §4.3).

The meta-architecture holds a plain `nn.LayerNorm(k + 1)` (eps 1e-5, weight 1, bias 0 at init) as
`ml_norm`, so checkpoints carry `ml_norm.weight` / `ml_norm.bias` of shape (k+1,). It is never called as a
module: its parameters are handed to `rankseg_fast.ops.rank_logits`, which gathers the class logits of
all decoder predictions into rank order and normalises them in one op:

    ranked, rank_index = rank_logits(class_logits, ml_scores, k, ml_norm.weight, ml_norm.bias, ml_norm.eps)

It belongs to the base-lr parameter group (not the `ml_head` multiplier) with weight decay 0.
"""

from __future__ import annotations

from torch import nn

__all__ = ["build_rank_norm"]


def build_rank_norm(k: int) -> nn.LayerNorm:
    """`nn.LayerNorm(k + 1)` for TOPK = k (1 <= k <= K; k = K in every released recipe)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"build_rank_norm: `k` (RANKSEG.TOPK) must be a positive int, got {k!r}")
    return nn.LayerNorm(k + 1, eps=1e-5)
