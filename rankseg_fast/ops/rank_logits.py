"""RankSeg rank-space ops: the public `rank_logits`, `rank_scatter` and `relabel_targets`.

`rank_logits` and `rank_scatter` run the fused C++/CUDA kernels when `use_kernel` says so, else the
pure-PyTorch references; `relabel_targets` then runs a vectorised form (one gather for the whole batch,
one host sync) instead of the reference's per-image loop.
"""

from __future__ import annotations

import torch

from rankseg_fast.ops._impl import use_kernel
from rankseg_fast.ops.host_copy import host_ints_to
from rankseg_fast.ops.reference._errors import fail as _fail
from rankseg_fast.ops.reference.rank_logits import (
    check_relabel_targets_inputs,
    rank_logits_reference,
    rank_scatter_reference,
    relabel_targets_reference,
)

__all__ = ["rank_logits", "rank_scatter", "relabel_targets"]


def _check_types(op: str, tensors: dict, ints: dict) -> None:
    """TypeError naming the argument for what the op schema cannot take (the kernels check the rest)."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            _fail(op, f"`{name}` must be a tensor, got {type(value).__name__}", TypeError)
    for name, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(op, f"`{name}` must be an int, got {type(value).__name__}", TypeError)


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
    index first; NaN ranks above every number, as torch.sort), then the no-object index K.
    ranked[n, b, q] = LayerNorm over the k+1 values class_logits[n, b, q, rank_index[b]] (biased variance
    + eps) times weight plus bias, per rank.

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
    if isinstance(class_logits, torch.Tensor) and use_kernel(class_logits):
        _check_types("rank_logits", {"class_logits": class_logits, "scores": scores, "weight": weight,
                                     "bias": bias}, {"k": k})
        ranked, rank_index, _, _ = torch.ops.rankseg_fast.rank_logits(
            class_logits, scores, k, weight, bias, float(eps)
        )
        return ranked, rank_index
    return rank_logits_reference(class_logits, scores, k, weight, bias, eps)


def rank_scatter(
    ranked: torch.Tensor, rank_index: torch.Tensor, num_classes: int, fill: float = -100.0
) -> torch.Tensor:
    """Rank-space logits back to class order: (..., B, Q, k+1) -> (..., B, Q, K+1) with
    out[..., b, q, rank_index[b, r]] = ranked[..., b, q, r] and `fill` (-100) at the K - k classes outside
    the top-k. rank_index: (B, k+1) int64 from `rank_logits` (distinct classes in [0, K]). Differentiable
    w.r.t. ranked."""
    if isinstance(ranked, torch.Tensor) and use_kernel(ranked):
        _check_types("rank_scatter", {"ranked": ranked, "rank_index": rank_index}, {"num_classes": num_classes})
        return torch.ops.rankseg_fast.rank_scatter(ranked, rank_index, num_classes, float(fill))
    return rank_scatter_reference(ranked, rank_index, num_classes, fill)


def relabel_targets(
    labels: list[torch.Tensor], rank_index: torch.Tensor, num_classes: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Set-criterion targets from class ids to ranks: per image, class l -> its position in rank_index[b]
    (the no-object / dummy class K -> k); targets whose class is outside the top-k are dropped.

    Args:
        labels: B tensors (n_i,) int64 with values in [0, K].
        rank_index: (B, k+1) int64 from `rank_logits`.
        num_classes: K (read from rank_index[0, -1] when None, one more host sync).

    Returns:
        (new_labels, keep): B tensors (m_i,) int64 of ranks, and B bool tensors (n_i,) selecting the kept
        targets (index the target masks with them).
    """
    if isinstance(rank_index, torch.Tensor) and use_kernel(rank_index):
        return _relabel_targets_batched(labels, rank_index, num_classes)
    return relabel_targets_reference(labels, rank_index, num_classes)


def _relabel_targets_batched(
    labels: list[torch.Tensor], rank_index: torch.Tensor, num_classes: int | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`relabel_targets` for the whole batch at once: one inverse-permutation gather on the concatenated
    labels, and a single device-to-host copy (the kept counts per image and the out-of-range flag)."""
    K = check_relabel_targets_inputs(labels, rank_index, num_classes)
    B, ranks = rank_index.shape
    device = rank_index.device
    sizes = [int(lab.shape[0]) for lab in labels]
    if B == 0:
        return [], []
    all_labels = torch.cat(list(labels))
    inverse = torch.full((B, K + 1), -1, dtype=torch.int64, device=device)
    inverse.scatter_(1, rank_index, torch.arange(ranks, device=device).expand(B, ranks))
    image = torch.repeat_interleave(torch.arange(B, device=device), host_ints_to(sizes, device),
                                    output_size=len(all_labels))
    in_range = (all_labels >= 0) & (all_labels <= K)
    rank = inverse.view(-1)[image * (K + 1) + all_labels.clamp(0, K)]
    kept = in_range & (rank >= 0)
    counts = torch.zeros(B + 1, dtype=torch.int64, device=device)
    counts.index_add_(0, image, kept.long())
    counts[B] = (~in_range).sum()
    host = counts.tolist()
    if host[B]:
        _fail("relabel_targets", f"`labels` must hold class ids in [0, num_classes={K}], got values outside that range")
    kept_rank = rank[torch.nonzero_static(kept, size=sum(host[:B])).view(-1)]
    return list(kept_rank.split(host[:B])), list(kept.split(sizes))
