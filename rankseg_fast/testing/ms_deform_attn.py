"""Input builders for ms_deform_attn, shared by its tests and benchmarks.

Level shapes of the real recipes (levels ordered as the pixel decoder feeds them: /32, /16, /8):
R50 ADE 512 crops give 16x16, 32x32, 64x64 (5376 tokens); Swin-L ADE 640 crops 20x20, 40x40, 80x80 (8400).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

R50_ADE_512 = ((16, 16), (32, 32), (64, 64))
SWIN_L_ADE_640 = ((20, 20), (40, 40), (80, 80))


@dataclass(frozen=True)
class Case:
    """One problem: level shapes, batch B, queries Q (None = one per token, as in the encoder), heads H,
    channels C, points P, and the range the sampling locations are drawn from."""

    levels: tuple
    batch: int = 1
    queries: int | None = None
    heads: int = 8
    channels: int = 32
    points: int = 4
    low: float = -0.05
    high: float = 1.05


def level_metadata(levels) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial_shapes (L, 2) int64, level_start_index (L,) int64), both on the CPU."""
    spatial_shapes = torch.tensor(levels, dtype=torch.int64).view(-1, 2)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def make_inputs(
    case: Case,
    dtype: torch.dtype = torch.float64,
    coord_dtype: torch.dtype | None = None,
    device: str = "cpu",
    seed: int = 0,
    requires_grad: bool = False,
):
    """Returns (value, spatial_shapes, level_start_index, sampling_locations, attention_weights).

    Values are drawn in fp64 and rounded to `dtype`; locations and softmax-normalised weights to
    `coord_dtype` (default: `dtype`). The metadata tensors stay on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_metadata(case.levels)
    num_keys = int(spatial_shapes.prod(1).sum())
    queries = num_keys if case.queries is None else case.queries
    num_levels = len(case.levels)
    value = torch.randn(case.batch, num_keys, case.heads, case.channels, generator=generator, dtype=torch.float64)
    shape = (case.batch, queries, case.heads, num_levels, case.points)
    locations = torch.rand(*shape, 2, generator=generator, dtype=torch.float64)
    locations = locations * (case.high - case.low) + case.low
    weights = torch.randn(*shape[:3], num_levels * case.points, generator=generator, dtype=torch.float64)
    weights = weights.softmax(-1).view(shape)
    coord_dtype = coord_dtype or dtype
    tensors = [
        value.to(device=device, dtype=dtype),
        spatial_shapes,
        level_start_index,
        locations.to(device=device, dtype=coord_dtype),
        weights.to(device=device, dtype=coord_dtype),
    ]
    if requires_grad:
        for index in (0, 3, 4):
            tensors[index].requires_grad_(True)
    return tuple(tensors)
