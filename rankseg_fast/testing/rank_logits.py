"""Problem builders for the RankSeg rank-space ops (tests and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    """A rank_logits problem: class_logits (layers, batch, queries, classes + 1), scores (batch, classes),
    k ranked classes. `tie_levels` > 0 draws the scores from that many distinct values (many ties)."""

    layers: int
    batch: int
    queries: int
    classes: int
    k: int
    tie_levels: int = 0


# ADE20K panoptic Swin-L + RankSeg: 9 aux + final predictions, 16 images, 200 queries, 150 classes, TOPK=150.
ADE_PANOPTIC_SWIN_L = Case(layers=10, batch=16, queries=200, classes=150, k=150)


def make_inputs(
    case: Case,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    requires_grad: bool = False,
    param_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """(class_logits, scores, k, weight, bias) with class_logits and scores in `dtype`, weight and bias
    (k+1,) in `param_dtype` (default: dtype). Values are drawn in fp64 on the CPU, then rounded, so every
    dtype and device sees the same problem."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(case.layers, case.batch, case.queries, case.classes + 1, generator=g, dtype=torch.float64)
    if case.tie_levels:
        scores = torch.randint(0, case.tie_levels, (case.batch, case.classes), generator=g).double()
    else:
        scores = torch.randn(case.batch, case.classes, generator=g, dtype=torch.float64)
    weight = 1.0 + 0.3 * torch.randn(case.k + 1, generator=g, dtype=torch.float64)
    bias = 0.2 * torch.randn(case.k + 1, generator=g, dtype=torch.float64)
    param_dtype = dtype if param_dtype is None else param_dtype
    logits = logits.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    weight = weight.to(device=device, dtype=param_dtype).requires_grad_(requires_grad)
    bias = bias.to(device=device, dtype=param_dtype).requires_grad_(requires_grad)
    return logits, scores.to(device=device, dtype=dtype), case.k, weight, bias
