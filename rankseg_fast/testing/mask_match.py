"""Input builders for mask_match and its linear_assignment solver, shared by their tests and benchmarks.

Realistic matcher shapes: 10 decoder predictions (9 aux + final), 100 queries (200 for panoptic), masks
at 1/4 of a 512 crop (128x128) against GT masks at the crop size, 12544 points, ADE20K images holding
5 to 60 targets (classes or segments).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def make_match_inputs(
    target_counts: Sequence[int],
    layers: int = 10,
    queries: int = 100,
    classes: int = 151,
    pred_size: tuple[int, int] = (128, 128),
    gt_size: tuple[int, int] = (512, 512),
    device: str = "cpu",
    seed: int = 0,
):
    """(pred_logits (L, B, Q, C), pred_masks (L, B, Q, h, w), target_labels (B, T), target_masks
    (B, T, H, W), target_valid (B, T)) for B = len(target_counts) images, image b holding target_counts[b]
    valid targets (a prefix of T = max count slots). GT masks are blobs (thresholded smooth noise, so
    bilinear samples are fractional at the edges); labels are object classes (never the last, no-object)."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(target_counts), max(target_counts, default=0)
    L, Q, C = layers, queries, classes
    pred_logits = torch.randn(L, B, Q, C, generator=g) * 2
    pred_masks = torch.randn(L, B, Q, *pred_size, generator=g) * 4
    coarse = torch.randn(B * T, 1, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=gt_size, mode="bilinear", align_corners=False)
    target_masks = (smooth > 0.5).float().view(B, T, *gt_size)
    target_labels = torch.randint(0, C - 1, (B, T), generator=g)
    target_valid = torch.arange(T)[None, :] < torch.tensor(list(target_counts))[:, None]
    target_masks *= target_valid[:, :, None, None]
    tensors = (pred_logits, pred_masks, target_labels, target_masks, target_valid)
    return tuple(t.to(device) for t in tensors)


def scipy_assignment(cost: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """scipy's optimum of one (Q, T) problem restricted to the valid columns (T,): (queries, targets, total);
    targets are indices into all T columns."""
    columns = np.flatnonzero(valid)
    rows, cols = linear_sum_assignment(cost[:, columns])
    return rows, columns[cols], float(cost[:, columns][rows, cols].sum())
