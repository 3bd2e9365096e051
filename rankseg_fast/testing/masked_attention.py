"""Input builders for masked_attention, shared by its tests and benchmarks.

Key lengths of the real recipes (Swin-L ADE 640 crops; the decoder cycles /32, /16, /8): 400, 1600, 6400;
YouTube-VIS concatenates the keys of T = 2 frames. Q = 100 or 200 queries, H = 8 heads, D = 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SWIN_L_ADE_640_LEVELS = ((20, 20), (40, 40), (80, 80))


@dataclass(frozen=True)
class Case:
    """One problem: batch B, queries Q, keys L, heads H, head dim D."""

    batch: int
    queries: int
    keys: int
    heads: int = 8
    head_dim: int = 32


def special_mask_logits(batch: int, queries: int, keys: int, generator: torch.Generator) -> torch.Tensor:
    """(B, Q, L) fp64 logits, about half of them visible (>= 0), with the rows the contract singles out
    (when Q and L allow): row 0 blocks every key (so it sees all), row 1 sees exactly one key through a
    logit of exactly 0, row 2 has NaN logits (visible, as in the reference) next to blocked ones, and the
    last row sees every key; a few other logits are exactly 0 too."""
    logits = torch.randn(batch, queries, keys, generator=generator, dtype=torch.float64)
    logits[torch.rand(logits.shape, generator=generator, dtype=torch.float64) < 0.05] = 0.0
    if batch == 0 or queries < 4:
        return logits
    logits[0, 0] = -0.5 - torch.rand(keys, generator=generator, dtype=torch.float64)
    logits[0, 1] = -1.0
    logits[0, 1, keys // 2] = 0.0
    logits[0, 2] = -1.0
    logits[0, 2, : max(1, keys // 3)] = float("nan")
    logits[-1, -1] = torch.rand(keys, generator=generator, dtype=torch.float64)
    return logits


def tile_pattern_mask_logits(batch: int, queries: int, keys: int, visible_tiles: tuple[int, ...],
                             generator: torch.Generator) -> torch.Tensor:
    """(B, Q, L) fp64 logits under which only the 32-key tiles in `visible_tiles` hold visible keys (about
    half of their keys, per row); every row sees a key of the first listed tile, so no row blocks every key
    (which would make it see all). The kernels then skip the other tiles for every block of queries, and
    key blocks inside them see no query at all."""
    logits = -0.5 - torch.rand(batch, queries, keys, generator=generator, dtype=torch.float64)
    for tile in visible_tiles:
        window = slice(32 * tile, min(32 * (tile + 1), keys))
        chunk = logits[..., window]
        visible = torch.rand(chunk.shape, generator=generator, dtype=torch.float64) < 0.5
        chunk[visible] = torch.rand(int(visible.sum()), generator=generator, dtype=torch.float64)
    first = 32 * visible_tiles[0]
    logits[:, torch.arange(queries), first + torch.arange(queries) % min(32, keys - first)] = 1.0
    return logits


def make_inputs(
    case: Case,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
    requires_grad: bool = False,
    mask_dtype: torch.dtype | None = None,
):
    """Returns (query (B,Q,E), key (B,L,E), value (B,L,E), mask_logits (B,Q,L)), E = H * D.

    Everything is drawn in fp64 and rounded to `dtype` (mask_logits to `mask_dtype`, default `dtype`), so an
    fp64 run on the returned tensors is an exact oracle for a low-precision run.
    """
    generator = torch.Generator().manual_seed(seed)
    B, Q, L, E = case.batch, case.queries, case.keys, case.heads * case.head_dim
    query = torch.randn(B, Q, E, generator=generator, dtype=torch.float64)
    key = torch.randn(B, L, E, generator=generator, dtype=torch.float64)
    value = torch.randn(B, L, E, generator=generator, dtype=torch.float64)
    logits = special_mask_logits(B, Q, L, generator)
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (query, key, value)]
    return (*tensors, logits.to(device=device, dtype=mask_dtype or dtype))


def predicted_mask_logits(batch: int, queries: int, size: tuple[int, int], device: str = "cpu",
                          dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """(B, Q, h, w) smooth mask logits as the mask head predicts them at 1/4 resolution: blobs of positive
    logits (about a quarter of the pixels) on a negative background."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, queries, max(2, size[0] // 16), max(2, size[1] // 16), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (4.0 * (smooth - 0.7)).to(device=device, dtype=dtype)
