"""The three sub-layers of a Mask2Former decoder layer (masked cross-attention, self-attention, FFN) and
the small MLP of the mask head. Attribute names match the reference so released checkpoints load.

All activations are sequence-first: queries (Q, B, E), memory (L, B, E). Dropout is 0 in every recipe
and is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankseg_fast import ops


def _with_pos(tensor: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


def _xavier_matrices(module: nn.Module) -> None:
    """The reference init of each layer wrapper: xavier_uniform on every parameter with more than 1 dim."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention of the queries to one level's memory, with a residual and LayerNorm.

    `multihead_attn` is an `nn.MultiheadAttention` kept for its parameters (in_proj_weight/in_proj_bias,
    out_proj); the forward does the projections itself and runs `rankseg_fast.ops.masked_attention`.

    Args:
        d_model: channels E; nhead: heads (E divisible by it); normalize_before: pre-norm instead of post-norm.
    """

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.nhead = nhead
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask_logits: torch.Tensor) -> torch.Tensor:
        """query (Q, B, E), key/value (L, B, E), mask_logits (B, Q, L) -> (Q, B, E), projections included."""
        E = query.shape[-1]
        w, b = self.multihead_attn.in_proj_weight, self.multihead_attn.in_proj_bias
        q = F.linear(query.transpose(0, 1), w[:E], b[:E])  # (B, Q, E)
        k = F.linear(key.transpose(0, 1), w[E:2 * E], b[E:2 * E])  # (B, L, E)
        v = F.linear(value.transpose(0, 1), w[2 * E:], b[2 * E:])
        out = ops.masked_attention(q, k, v, mask_logits, self.nhead)  # (B, Q, E)
        out = self.multihead_attn.out_proj(out)
        return out.transpose(0, 1)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, mask_logits: torch.Tensor,
                pos: torch.Tensor | None = None, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tgt (Q, B, E), memory (L, B, E), mask_logits (B, Q, L) (key visible iff >= 0), pos (L, B, E),
        query_pos (Q, B, E) -> (Q, B, E)."""
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            return tgt + self.attend(_with_pos(tgt2, query_pos), _with_pos(memory, pos), memory, mask_logits)
        tgt2 = self.attend(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory, mask_logits)
        return self.norm(tgt + tgt2)


class SelfAttentionLayer(nn.Module):
    """Unmasked self-attention among the queries (q = k = tgt + query_pos, v = tgt), residual, LayerNorm."""

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tgt (Q, B, E), query_pos (Q, B, E) -> (Q, B, E)."""
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            qk = _with_pos(tgt2, query_pos)
            return tgt + self.self_attn(qk, qk, tgt2, need_weights=False)[0]
        qk = _with_pos(tgt, query_pos)
        return self.norm(tgt + self.self_attn(qk, qk, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    """linear1 -> ReLU -> linear2, residual, LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """tgt (..., E) -> (..., E)."""
        if self.normalize_before:
            return tgt + self.linear2(F.relu(self.linear1(self.norm(tgt))))
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """`num_layers` Linear layers in `layers` (input -> hidden ... -> output), ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
