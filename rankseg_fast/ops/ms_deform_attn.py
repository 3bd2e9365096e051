"""Multi-scale deformable attention: the public op and the `MSDeformAttn` module of the Mask2Former pixel
decoder (parameter names and initialisation as in the reference, so released checkpoints load)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rankseg_fast.ops._impl import use_kernel
from rankseg_fast.ops.host_copy import to_device_async
from rankseg_fast.ops.reference.ms_deform_attn import ms_deform_attn_reference


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention core (bilinear, zero padding, align_corners=False).

    Args:
        value: (B, S, H, C), S = sum of H_l * W_l over levels, level-major, row-major within a level;
            fp32, fp64, fp16 or bf16.
        spatial_shapes: (L, 2) int64, (H_l, W_l) per level. Keep it on the CPU to spare a device sync.
        level_start_index: (L,) int64, exclusive prefix sum of H_l * W_l.
        sampling_locations: (B, Q, H, L, P, 2), (x, y) normalised to [0, 1] per level; points outside
            sample zeros. fp32 or value's dtype.
        attention_weights: (B, Q, H, L, P), same dtype as sampling_locations.

    Returns:
        (B, Q, H * C) in value's dtype: per head, the attention-weighted sum of the sampled values.
    """
    if use_kernel(value):
        return torch.ops.rankseg_fast.ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention layer (Deformable DETR), as used by the Mask2Former pixel decoder.

    Args:
        d_model: channels of queries and values (256 in Mask2Former).
        n_levels: feature levels (3).
        n_heads: attention heads (8); d_model must divide by it.
        n_points: sampling points per head and level (4).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: each head starts sampling along its own direction (8 compass
        directions for 8 heads, scaled to unit max-norm), point k at distance k + 1; uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Q, d_model).
            reference_points: (B, Q, L, 2) normalised (x, y) centres, or (B, Q, L, 4) boxes (cx, cy, w, h).
            input_flatten: (B, S, d_model), the flattened levels.
            input_spatial_shapes: (L, 2) int64 (H_l, W_l); input_level_start_index: (L,) int64.
            input_padding_mask: optional (B, S) bool, True at padding (those values are zeroed).
        Returns:
            (B, Q, d_model).
        """
        B, Q, _ = query.shape
        S = input_flatten.shape[1]
        H, L, P = self.n_heads, self.n_levels, self.n_points
        if input_spatial_shapes.shape != (L, 2):
            raise ValueError(
                f"MSDeformAttn: `input_spatial_shapes` must have shape ({L}, 2) for n_levels={L}, "
                f"got {tuple(input_spatial_shapes.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, H, self.d_model // H)
        offsets = self.sampling_offsets(query).view(B, Q, H, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide x by W_l and y by H_l
            normalizer = to_device_async(input_spatial_shapes.flip(-1), offsets.device).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"MSDeformAttn: `reference_points` last dimension must be 2 or 4, got {tuple(reference_points.shape)}"
            )
        if locations.dtype != weights.dtype:  # e.g. fp32 reference points next to bf16 offsets under AMP
            weights = weights.to(locations.dtype)
        if locations.dtype not in (value.dtype, torch.float32):
            locations, weights = locations.float(), weights.float()
        output = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(output)
