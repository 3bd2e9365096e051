"""Asymmetric loss (ASL) for RankSeg's multi-label head, as configured there (fact sheet §4.1, §4.4)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AsymmetricLoss"]


class AsymmetricLoss(nn.Module):
    """Asymmetric multi-label loss, averaged over the batch and the classes.

    Per element, with p = sigmoid(x) and y in {0, 1}:
        p_neg = min(1 - p + clip, 1)                        (probability shifting of negatives)
        L = y * log(max(p, eps)) + (1 - y) * log(max(p_neg, eps))
        w = (1 - p * y - p_neg * (1 - y)) ** (gamma_pos * y + gamma_neg * (1 - y))
    loss = -sum(L * w) / (B * K). Gradients flow through the focusing weight w as well.

    Args:
        gamma_neg: focusing exponent of negatives (2 in RankSeg).
        gamma_pos: focusing exponent of positives (0).
        clip: probability margin of negatives (0.05); 0 or None disables it.
        eps: log clamp (1e-5).
    """

    def __init__(self, gamma_neg: float = 2.0, gamma_pos: float = 0.0, clip: float | None = 0.05, eps: float = 1e-5):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: (B, K) multi-label logits (fp16/bf16 are computed in fp32).
            targets: (B, K) multi-hot, bool or {0, 1} numbers.
        Returns:
            scalar loss in fp32 (or fp64 for fp64 logits).
        """
        if logits.dim() != 2 or targets.shape != logits.shape:
            raise ValueError(
                f"AsymmetricLoss: `logits` must be (batch, classes) and `targets` the same shape, got "
                f"{tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        x = logits if logits.dtype == torch.float64 else logits.float()
        y = targets.to(x.dtype)
        p = torch.sigmoid(x)
        p_neg = 1 - p
        if self.clip is not None and self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1)
        loss = y * torch.log(p.clamp(min=self.eps)) + (1 - y) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            pt = p * y + p_neg * (1 - y)
            loss = loss * torch.pow(1 - pt, self.gamma_pos * y + self.gamma_neg * (1 - y))
        B, K = logits.shape
        return -loss.sum() / B / K
