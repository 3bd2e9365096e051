"""RankSeg's multi-label head: image-level class logits from the query tokens of the 3rd decoder layer.

One pre-norm ViT block over [projected query tokens; K learned class tokens], then a per-class linear
read-out of the class tokens (fact sheet §4.2). Parameter names match the released checkpoints
(`ml_head.*`, §3.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiLabelHead"]


class _Attention(nn.Module):
    """Multi-head self-attention: fused `qkv`, scale head_dim^-0.5, dropout on the attention matrix, `proj`."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MultiLabelHead: hidden_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) -> (B, T, dim)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # scale defaults to head_dim^-0.5
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, C)))


class _FeedForward(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, d_ff)
        self.fc2 = nn.Linear(d_ff, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)) (no drop-path)."""

    def __init__(self, dim: int, num_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _FeedForward(dim, d_ff, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _GroupWiseLinear(nn.Module):
    """Per-class linear read-out: out[b, c] = sum_d W[0, c, d] * x[b, c, d] + b[0, c]."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(1, num_classes, dim))
        self.b = nn.Parameter(torch.empty(1, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.W.shape[2])
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, K, dim) -> (B, K)."""
        return (self.W * x).sum(-1) + self.b


class MultiLabelHead(nn.Module):
    """Image-level (or video-level) multi-label classifier of RankSeg.

    Args:
        num_classes: K.
        d_encoder: channels of the decoder query features (256).
        hidden_dim: width of the head (`RANKSEG.HIDDEN_DIM`, 512).
        num_heads: attention heads (default hidden_dim // 64).
        d_ff: MLP width (default 4 * hidden_dim).
        dropout: dropout of attention matrix, projections and MLP (0.1; active in training mode only).

    Parameters (checkpoint keys under `ml_head.`): cls_emb (1, K, hidden), proj_dec, block.norm1,
    block.attn.qkv, block.attn.proj, block.norm2, block.mlp.fc1, block.mlp.fc2, norm, fc.W (1, K, hidden),
    fc.b (1, K).
    """

    def __init__(
        self,
        num_classes: int,
        d_encoder: int = 256,
        hidden_dim: int = 512,
        num_heads: int | None = None,
        d_ff: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        num_heads = hidden_dim // 64 if num_heads is None else num_heads
        d_ff = 4 * hidden_dim if d_ff is None else d_ff
        if num_classes < 1:
            raise ValueError(f"MultiLabelHead: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.cls_emb = nn.Parameter(torch.empty(1, num_classes, hidden_dim))
        self.proj_dec = nn.Linear(d_encoder, hidden_dim)
        self.block = _Block(hidden_dim, num_heads, d_ff, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc = _GroupWiseLinear(num_classes, hidden_dim)
        nn.init.trunc_normal_(self.cls_emb, std=0.02, a=-2.0, b=2.0)

    def forward(self, query_feature: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query_feature: (Q, B, d_encoder), the raw output of decoder layer index 2 as the decoder emits it
                (not normalised, not detached).
        Returns:
            (B, K) class logits.
        """
        if query_feature.dim() != 3 or query_feature.shape[-1] != self.proj_dec.in_features:
            raise ValueError(
                f"MultiLabelHead: `query_feature` must have shape (queries, batch, {self.proj_dec.in_features}), "
                f"got {tuple(query_feature.shape)}"
            )
        tokens = self.proj_dec(query_feature.transpose(0, 1))  # (B, Q, hidden)
        B = tokens.shape[0]
        x = torch.cat([tokens, self.cls_emb.expand(B, -1, -1).to(tokens.dtype)], dim=1)
        x = self.norm(self.block(x))
        return self.fc(x[:, -self.num_classes :])
