"""RankSeg rank-space ops: the public `rank_logits`, `rank_scatter` and `relabel_targets`.

There is no compiled kernel yet, so they always run the pure-PyTorch references; a fused `rank_logits`
kernel will take exactly these inputs.
"""

from __future__ import annotations

import torch

from rankseg_fast.ops.reference.rank_logits import (
    rank_logits_reference,
    rank_scatter_reference,
    relabel_targets_reference,
)

__all__ = ["rank_logits", "rank_scatter", "relabel_targets"]


def rank_logits(
    class_logits: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks each image's classes by its multi-label scores and moves the class logits of all decoder
    predictions into rank order, normalised over the ranks (the RankSeg "rank-adaptive temperature").

    rank_index[b] = the k classes with the highest scores[b] in descending order (equal scores: lower class
    index first), then the no-object index K. ranked[n, b, q] = LayerNorm over the k+1 values
    class_logits[n, b, q, rank_index[b]] (biased variance + eps) times weight plus bias, per rank.

    Args:
        class_logits: (N, B, Q, K+1) floating, N = decoder predictions stacked (aux layers + final).
        scores: (B, K) floating multi-label scores (e.g. `MultiLabelHead` logits); not differentiated.
        k: 1 <= k <= K (TOPK; equal to K in every released recipe).
        weight: (k+1,) and bias: (k+1,), the `ml_norm` LayerNorm affine.
        eps: LayerNorm epsilon (1e-5 as `nn.LayerNorm`).

    Returns:
        ranked: (N, B, Q, k+1) in class_logits' dtype; differentiable w.r.t. class_logits, weight, bias.
        rank_index: (B, k+1) int64.
    """
    # No kernel yet: `use_kernel` is not consulted, the reference is the implementation for every impl.
    return rank_logits_reference(class_logits, scores, k, weight, bias, eps)


def rank_scatter(
    ranked: torch.Tensor, rank_index: torch.Tensor, num_classes: int, fill: float = -100.0
) -> torch.Tensor:
    """Rank-space logits back to class order: (..., B, Q, k+1) -> (..., B, Q, K+1) with
    out[..., b, q, rank_index[b, r]] = ranked[..., b, q, r] and `fill` (-100) at the K - k classes outside
    the top-k. rank_index: (B, k+1) int64 from `rank_logits`. Differentiable w.r.t. ranked."""
    return rank_scatter_reference(ranked, rank_index, num_classes, fill)


def relabel_targets(
    labels: list[torch.Tensor], rank_index: torch.Tensor, num_classes: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Set-criterion targets from class ids to ranks: per image, class l -> its position in rank_index[b]
    (the no-object / dummy class K -> k); targets whose class is outside the top-k are dropped.

    Args:
        labels: B tensors (n_i,) int64 with values in [0, K].
        rank_index: (B, k+1) int64 from `rank_logits`.
        num_classes: K (read from rank_index[0, -1] when None).

    Returns:
        (new_labels, keep): B tensors (m_i,) int64 of ranks, and B bool tensors (n_i,) selecting the kept
        targets (index the target masks with them).
    """
    return relabel_targets_reference(labels, rank_index, num_classes)
