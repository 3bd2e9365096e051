"""Reference RankSeg rank-space ops: ranking the classes of each image by its multi-label scores,
gathering the class logits of every decoder layer into rank order with a LayerNorm over the ranks
(`rank_logits`), scattering them back to class order (`rank_scatter`) and re-labelling the set-criterion
targets to their ranks (`relabel_targets`).

Conventions (fact sheet §4.3–4.5): K classes, index K is no-object; k = TOPK selected classes; the rank
index of an image is its k highest-scoring classes in descending score order (ties: the lower class index
first) followed by K, so rank position k is always the no-object slot. NaN scores rank above every
number (torch.sort's order; NaN vs NaN: the lower class index first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rankseg_fast.ops.reference._errors import fail as _fail

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_tensor(op: str, name: str, tensor: object, rank: int, layout: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        _fail(op, f"`{name}` must be a tensor, got {type(tensor).__name__}", TypeError)
    if tensor.dim() != rank:
        _fail(op, f"`{name}` must have {rank} dimensions {layout}, got shape {tuple(tensor.shape)}")


def _check_float(op: str, name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in _FLOAT_DTYPES:
        _fail(op, f"`{name}` must be float32, float64, float16 or bfloat16, got {tensor.dtype}", TypeError)


def _check_k(op: str, k: object, num_classes: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        _fail(op, f"`k` must be an int, got {type(k).__name__}", TypeError)
    if not 1 <= k <= num_classes:
        _fail(op, f"`k` must be in [1, num_classes={num_classes}], got {k}")
    return k


def _check_rank_index(op: str, rank_index: object, batch: int | None = None) -> None:
    _check_tensor(op, "rank_index", rank_index, 2, "(batch, k + 1)")
    if rank_index.dtype != torch.int64:
        _fail(op, f"`rank_index` must be int64, got {rank_index.dtype}", TypeError)
    if rank_index.shape[1] < 2:
        _fail(op, f"`rank_index` must have k + 1 >= 2 columns, got shape {tuple(rank_index.shape)}")
    if batch is not None and rank_index.shape[0] != batch:
        _fail(op, f"`rank_index` has {rank_index.shape[0]} rows but the batch has {batch} images")


def rank_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K) multi-label scores -> (B, k + 1) int64: the k best classes of each image in descending score
    order (equal scores: the lower class index first; NaN above every number), then the no-object index K.
    Not differentiable."""
    B, K = scores.shape
    order = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices[:, :k]
    no_object = torch.full((B, 1), K, dtype=torch.int64, device=scores.device)
    return torch.cat([order, no_object], dim=1)


def check_rank_logits_inputs(
    class_logits: torch.Tensor, scores: torch.Tensor, k: int, weight: torch.Tensor, bias: torch.Tensor
) -> None:
    """Raises ValueError/TypeError naming the offending argument unless class_logits (N, B, Q, K+1),
    scores (B, K), 1 <= k <= K, weight (k+1,) and bias (k+1,) form a valid call."""
    op = "rank_logits"
    _check_tensor(op, "class_logits", class_logits, 4, "(layers, batch, queries, classes + 1)")
    _check_tensor(op, "scores", scores, 2, "(batch, classes)")
    _check_float(op, "class_logits", class_logits)
    _check_float(op, "scores", scores)
    B, K = scores.shape
    if K < 1:
        _fail(op, f"`scores` must have at least one class, got shape {tuple(scores.shape)}")
    if class_logits.shape[1] != B or class_logits.shape[3] != K + 1:
        _fail(
            op,
            f"`class_logits` must have shape (layers, batch={B}, queries, classes + 1={K + 1}) to match "
            f"`scores` {tuple(scores.shape)}, got {tuple(class_logits.shape)}",
        )
    _check_k(op, k, K)
    for name, tensor in (("weight", weight), ("bias", bias)):
        _check_tensor(op, name, tensor, 1, "(k + 1,)")
        _check_float(op, name, tensor)
        if tensor.shape[0] != k + 1:
            _fail(op, f"`{name}` must have shape (k + 1,) = ({k + 1},) for k={k}, got {tuple(tensor.shape)}")
    for name, tensor in (("scores", scores), ("weight", weight), ("bias", bias)):
        if tensor.device != class_logits.device:
            _fail(op, f"`{name}` is on {tensor.device} but `class_logits` is on {class_logits.device}")


def check_rank_scatter_inputs(ranked: torch.Tensor, rank_index: torch.Tensor, num_classes: int) -> None:
    """Raises ValueError/TypeError naming the offending argument unless ranked (..., B, Q, k+1),
    rank_index (B, k+1) int64 and num_classes K >= k form a valid `rank_scatter` call (no value checks)."""
    op = "rank_scatter"
    if not isinstance(ranked, torch.Tensor):
        _fail(op, f"`ranked` must be a tensor, got {type(ranked).__name__}", TypeError)
    if ranked.dim() < 3:
        _fail(op, f"`ranked` must have shape (..., batch, queries, k + 1), got {tuple(ranked.shape)}")
    _check_float(op, "ranked", ranked)
    _check_rank_index(op, rank_index, batch=ranked.shape[-3])
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        _fail(op, f"`num_classes` must be an int, got {type(num_classes).__name__}", TypeError)
    ranks = rank_index.shape[1]
    if ranked.shape[-1] != ranks:
        _fail(op, f"`ranked` has {ranked.shape[-1]} ranks but `rank_index` has {ranks} columns")
    if not 1 <= ranks - 1 <= num_classes:
        _fail(op, f"`rank_index` has k + 1 = {ranks} columns, needs 1 <= k <= num_classes={num_classes}")
    if rank_index.device != ranked.device:
        _fail(op, f"`rank_index` is on {rank_index.device} but `ranked` is on {ranked.device}")


def check_relabel_targets_inputs(
    labels: list[torch.Tensor], rank_index: torch.Tensor, num_classes: int | None
) -> int:
    """Raises ValueError/TypeError unless labels (B tensors (n_i,) int64), rank_index (B, k+1) int64 and
    num_classes form a valid `relabel_targets` call; returns K (read from rank_index[0, -1] when
    num_classes is None: a host sync on a GPU). The label values are not inspected."""
    op = "relabel_targets"
    if not isinstance(labels, (list, tuple)):
        _fail(op, f"`labels` must be a list of (n_i,) int64 tensors, got {type(labels).__name__}", TypeError)
    _check_rank_index(op, rank_index, batch=len(labels))
    K = int(rank_index[0, -1]) if num_classes is None else num_classes
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        _fail(op, f"`num_classes` must be a positive int, got {num_classes!r}")
    ranks = rank_index.shape[1]
    if ranks - 1 > K:
        _fail(op, f"`rank_index` has k + 1 = {ranks} columns, more than num_classes + 1 = {K + 1}")
    for i, lab in enumerate(labels):
        _check_tensor(op, f"labels[{i}]", lab, 1, "(n_i,)")
        if lab.dtype != torch.int64:
            _fail(op, f"`labels[{i}]` must be int64, got {lab.dtype}", TypeError)
        if lab.device != rank_index.device:
            _fail(op, f"`labels[{i}]` is on {lab.device} but `rank_index` is on {rank_index.device}")
    return K


def rank_logits_reference(
    class_logits: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits of all decoder layers -> rank-space logits with the rank-wise LayerNorm.

    Args:
        class_logits: (N, B, Q, K+1), the class logits of N decoder predictions (aux + final).
        scores: (B, K) multi-label scores (logits or probabilities; only their order matters).
        k: number of ranked classes, 1 <= k <= K.
        weight, bias: (k+1,) per-rank affine of the LayerNorm (`ml_norm`).
        eps: LayerNorm epsilon (biased variance).

    Returns:
        ranked: (N, B, Q, k+1) in class_logits' dtype (fp16/bf16 are normalised in fp32):
            LayerNorm over the last axis of class_logits gathered at rank_index.
        rank_index: (B, k+1) int64, see `rank_order`.
    """
    check_rank_logits_inputs(class_logits, scores, k, weight, bias)
    rank_index = rank_order(scores, k)
    N, B, Q, _ = class_logits.shape
    index = rank_index[None, :, None, :].expand(N, B, Q, k + 1)
    gathered = torch.gather(class_logits, -1, index)
    compute = torch.float32 if class_logits.dtype in _LOW_PRECISION else class_logits.dtype
    ranked = F.layer_norm(gathered.to(compute), (k + 1,), weight.to(compute), bias.to(compute), eps)
    return ranked.to(class_logits.dtype), rank_index


def rank_scatter_reference(
    ranked: torch.Tensor, rank_index: torch.Tensor, num_classes: int, fill: float = -100.0
) -> torch.Tensor:
    """Rank-space logits back to class order.

    Args:
        ranked: (..., B, Q, k+1) rank-space logits (any number of leading dims, e.g. layers).
        rank_index: (B, k+1) int64 from `rank_logits` (last column = num_classes).
        num_classes: K.
        fill: value of the K - k classes outside the top-k.

    Returns:
        (..., B, Q, K+1): out[..., b, q, rank_index[b, r]] = ranked[..., b, q, r], `fill` elsewhere.
        Differentiable w.r.t. ranked.
    """
    check_rank_scatter_inputs(ranked, rank_index, num_classes)
    shape = (*ranked.shape[:-1], num_classes + 1)
    index = rank_index[:, None, :].expand(*ranked.shape)
    return torch.full(shape, fill, dtype=ranked.dtype, device=ranked.device).scatter(-1, index, ranked)


def relabel_targets_reference(
    labels: list[torch.Tensor], rank_index: torch.Tensor, num_classes: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Re-labels the set-criterion targets from class ids to rank positions.

    Args:
        labels: B tensors (n_i,) int64 of class ids in [0, K]; K (the dummy / no-object class of video
            targets) maps to rank k.
        rank_index: (B, k+1) int64 from `rank_logits`.
        num_classes: K; when None it is read from rank_index[0, -1] (a host sync on a GPU).

    Returns:
        new_labels: B tensors (m_i,) int64, the rank of each kept target.
        keep: B bool tensors (n_i,), False for targets whose class is outside the top-k (drop their masks
            with the same mask).
    """
    K = check_relabel_targets_inputs(labels, rank_index, num_classes)
    B, ranks = len(labels), rank_index.shape[1]
    all_labels = torch.cat(list(labels)) if B else rank_index.new_empty(0)
    if all_labels.numel() and (bool((all_labels < 0).any()) or bool((all_labels > K).any())):
        _fail(
            "relabel_targets",
            f"`labels` must hold class ids in [0, num_classes={K}], got values outside that range",
        )
    inverse = torch.full((B, K + 1), -1, dtype=torch.int64, device=rank_index.device)
    positions = torch.arange(ranks, device=rank_index.device).expand(B, ranks)
    inverse.scatter_(1, rank_index, positions)
    new_labels, keep = [], []
    for b, lab in enumerate(labels):
        ranked = inverse[b][lab]
        kept = ranked >= 0
        new_labels.append(ranked[kept])
        keep.append(kept)
    return new_labels, keep
