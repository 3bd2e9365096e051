"""The deformable-attention transformer encoder of the Mask2Former pixel decoder (encoder only, no masks).

Names follow the reference (`level_embed`, `encoder.layers.{n}.self_attn / norm1 / linear1 / linear2 /
norm2`) so the checkpoint keys `sem_seg_head.pixel_decoder.transformer.*` load as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from rankseg_fast.ops import MSDeformAttn


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], batch: int,
                             device: torch.device | str | None,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deformable-attention reference points of the flattened levels, with every valid ratio 1 (no padding).

    Token t of level l (row i, column j of an H_l x W_l map) gets ((j + 0.5) / W_l, (i + 0.5) / H_l), the
    same for every level it attends to.

    Args:
        spatial_shapes: [(H_l, W_l)] per level, in flattening order.
    Returns:
        (batch, S, L, 2) with S = sum H_l * W_l, (x, y) in [0, 1].
    """
    points = []
    for height, width in spatial_shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=dtype, device=device),
            torch.linspace(0.5, width - 0.5, width, dtype=dtype, device=device),
            indexing="ij",
        )
        points.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
    reference = torch.cat(points, 0)  # (S, 2)
    return reference[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


class MSDeformAttnEncoderLayer(nn.Module):
    """One post-norm encoder layer:
    src = norm1(src + self_attn(src + pos, reference_points, src));
    src = norm2(src + linear2(relu(linear1(src)))).

    Args:
        d_model: channels (256); d_ffn: feed-forward width (1024 in Mask2Former, hard-coded there);
        dropout: dropout probability (0.0 in every recipe); n_levels / n_heads / n_points: of MSDeformAttn.
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.0, n_levels: int = 3,
                 n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        """
        Args:
            src: (B, S, d_model) flattened levels; pos: (B, S, d_model) position + level embedding.
            reference_points: (B, S, L, 2); spatial_shapes: (L, 2) int64 (CPU); level_start_index: (L,) int64.
        Returns:
            (B, S, d_model).
        """
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """`num_layers` deep copies of one encoder layer (so copies start with identical biases and norms)."""

    def __init__(self, encoder_layer: MSDeformAttnEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        """Shapes as in `MSDeformAttnEncoderLayer.forward`; returns (B, S, d_model)."""
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the projected levels, adds the level embeddings and runs the deformable encoder.

    Initialisation as in the reference: xavier_uniform on every parameter with more than one dimension,
    then each MSDeformAttn re-runs its own initialisation, then `level_embed` ~ N(0, 1).

    Args:
        d_model: channels (256); nhead: attention heads (8); num_encoder_layers: 6; dim_feedforward: 1024;
        dropout: 0.0; num_feature_levels: levels (3); enc_n_points: sampling points per head and level (4).
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.0, num_feature_levels: int = 3,
                 enc_n_points: int = 4):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        layer = MSDeformAttnEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = MSDeformAttnEncoder(layer, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """
        Args:
            srcs: L maps (B, d_model, H_l, W_l), lowest resolution first;
            pos_embeds: the matching position encodings, same shapes.
        Returns:
            memory (B, S, d_model) with S = sum H_l * W_l, tokens level-major and row-major within a level;
            the [(H_l, W_l)] list; level_start_index (L,) int64 on the CPU.
        """
        if len(srcs) != self.num_feature_levels or len(pos_embeds) != self.num_feature_levels:
            raise ValueError(
                f"MSDeformAttnTransformerEncoderOnly: expected {self.num_feature_levels} levels, "
                f"got {len(srcs)} maps and {len(pos_embeds)} position encodings"
            )
        shapes = [(int(src.shape[2]), int(src.shape[3])) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        lvl_pos = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
             for level, pos in enumerate(pos_embeds)], 1
        )
        # CPU int64 metadata: the op never has to read it back from the GPU
        spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        ref_dtype = torch.float64 if src_flatten.dtype == torch.float64 else torch.float32
        batch, device = src_flatten.shape[0], src_flatten.device
        reference_points = encoder_reference_points(shapes, batch, device, ref_dtype)
        memory = self.encoder(src_flatten, lvl_pos, reference_points, spatial_shapes, level_start_index)
        return memory, shapes, level_start_index
