"""Reference point sampling of the matcher and the set criterion (fact sheet §5.2–5.3): bilinear sampling of
maps at normalised point coordinates, and PointRend-style importance sampling of the most uncertain points.

Coordinates are (x, y) in [0, 1]² relative to the whole map (x along the width); they are mapped to
`grid_sample`'s [-1, 1] grid as 2u − 1 with align_corners=False and zero padding, so a map and a larger
or smaller map of the same content are compared at the same physical locations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rankseg_fast.ops.reference._errors import fail

__all__ = ["point_sample", "uncertain_point_coords", "uniform_point_coords"]


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of `inputs` at normalised points.

    Args:
        inputs: (N, C, H, W) floating maps.
        coords: (N, P, 2) floating (x, y) in [0, 1]²; points outside sample zeros (zero padding).

    Returns:
        (N, C, P) in inputs' dtype; differentiable w.r.t. inputs.
    """
    op = "point_sample"
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        fail(op, f"`inputs` must be a (N, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs).__name__)}")
    if not isinstance(coords, torch.Tensor) or coords.dim() != 3 or coords.shape[-1] != 2:
        fail(op, f"`coords` must be a (N, P, 2) tensor, got {getattr(coords, 'shape', type(coords).__name__)}")
    if coords.shape[0] != inputs.shape[0]:
        fail(op, f"`coords` {tuple(coords.shape)} and `inputs` {tuple(inputs.shape)} disagree on N")
    grid = (2.0 * coords - 1.0).to(inputs.dtype).unsqueeze(2)  # (N, P, 1, 2)
    out = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(3)


def uniform_point_coords(
    shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform random points: (*shape, 2) float32 in [0, 1)², drawn from `generator` (global RNG if None)."""
    return torch.rand(*shape, 2, device=device, generator=generator)


@torch.no_grad()
def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-sampled points per map (detectron2's `get_uncertain_point_coords_with_randomness` with the
    uncertainty −|logit|): draw int(num_points·oversample_ratio) uniform points, keep the
    int(importance_ratio·num_points) with the largest uncertainty (logit closest to 0), then append the rest
    as fresh uniform points. Not differentiable.

    Args:
        logits: (R, 1, h, w) mask logits (one map per matched pair).
        num_points: P.
        oversample_ratio: >= 1.
        importance_ratio: in [0, 1].
        generator: random source of both uniform draws (on logits' device).

    Returns:
        (R, P, 2) float32 coordinates in [0, 1]²: the P·importance_ratio most uncertain first, in descending
        uncertainty, then the uniform ones.
    """
    op = "uncertain_point_coords"
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != 1:
        fail(op, f"`logits` must be a (R, 1, h, w) tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    if oversample_ratio < 1:
        fail(op, f"`oversample_ratio` must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_ratio <= 1:
        fail(op, f"`importance_ratio` must be in [0, 1], got {importance_ratio}")
    R = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = uniform_point_coords((R, num_sampled), logits.device, generator)
    uncertainty = -point_sample(logits, coords.to(logits.dtype))[:, 0].abs()  # (R, num_sampled)
    index = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # (R, num_uncertain)
    picked = torch.gather(coords, 1, index[..., None].expand(R, num_uncertain, 2))
    if num_random > 0:
        picked = torch.cat([picked, uniform_point_coords((R, num_random), logits.device, generator)], dim=1)
    return picked
