"""The matcher's cost matrices for every (prediction, image) at once: the cost half of the `mask_match`
kernel path (its solver is the compiled `linear_assignment` op).

It draws the same points from the same generator as the reference (one (L, B, P, 2) uniform tensor), so
both see the same points and the same costs. The points of every (l, b) are then visited in ascending y (a
permutation: every cost is a sum over the points), so consecutive bilinear samples read neighbouring rows of
each map, and the mask and dice costs of all (l, b) come from one call of the compiled `point_mask_costs`
op, which samples the predictions and the GT masks and reduces them in one pass (no (L, B, Q, P) tensor).
"""

from __future__ import annotations

import torch

from rankseg_fast.ops._impl import use_kernel
from rankseg_fast.ops.reference._errors import fail
from rankseg_fast.ops.reference.mask_match import class_costs, point_mask_costs_reference
from rankseg_fast.ops.reference.point_sample import uniform_point_coords

__all__ = ["batched_match_costs", "point_mask_costs"]

_KERNEL_PRED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def point_mask_costs(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    target_valid: torch.Tensor,
    coords: torch.Tensor,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> torch.Tensor:
    """The matcher's sigmoid-CE and dice costs of every (prediction, image) at shared points.

    Args:
        pred_masks: (L, B, Q, h, w) mask logits (float32/float16/bfloat16 on the kernel; float64 is sampled
            in float32 there, and in float64 by the reference).
        target_masks: (B, T, H, W) GT masks (any dtype; sampled as float32).
        target_valid: (B, T) bool.
        coords: (L, B, P, 2) float32 (x, y) points in [0, 1]² (grid_sample semantics, zero padding outside).
        mask_weight, dice_weight: weights of the two costs.

    Returns:
        (L, B, Q, T) float32: mask_weight·mean_p sigmoid-CE(x, t) + dice_weight·dice(σ(x), t), 0 in the
        columns of invalid targets. Not differentiable on the kernel path (a RuntimeError says so when an
        input requires grad under grad mode); the reference is.
    """
    if not use_kernel(pred_masks):
        return point_mask_costs_reference(pred_masks, target_masks, target_valid, coords, mask_weight, dice_weight)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in (pred_masks, target_masks, coords)):
        fail("point_mask_costs", "the kernel computes matching costs and is not differentiable: call it under "
                                 "torch.no_grad() (as the matcher does), or use rankseg_fast.ops.set_impl(\"reference\") "
                                 "for gradients", RuntimeError)
    if pred_masks.dtype not in _KERNEL_PRED_DTYPES:
        pred_masks = pred_masks.float()
    return torch.ops.rankseg_fast.point_mask_costs(pred_masks, target_masks.float(), target_valid, coords,
                                                   mask_weight, dice_weight)


@torch.no_grad()
def batched_match_costs(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor,
    target_valid: torch.Tensor,
    num_points: int,
    class_weight: float,
    mask_weight: float,
    dice_weight: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Cost of matching query q to target j, for every prediction l and image b.

    Args:
        pred_logits: (L, B, Q, C) class logits.
        pred_masks: (L, B, Q, h, w) mask logits.
        target_labels: (B, T) int64, in [0, C) where valid.
        target_masks: (B, T, H, W) GT masks.
        target_valid: (B, T) bool (padded targets get the class cost of label 0 and no mask cost; the
            solver ignores them). Labels are clamped to [0, C) so that a bad label cannot fault the gather;
            the caller reports it.
        num_points: P points per (l, b).
        class_weight, mask_weight, dice_weight: weights of the three costs.
        generator: random source of the points, consumed exactly as by `mask_match_reference`.

    Returns:
        (L, B, Q, T) float32 total costs (the inputs are validated by the caller).
    """
    L, B, Q, C = pred_logits.shape
    T = target_labels.shape[1]
    device = pred_logits.device
    with torch.autocast(device_type=device.type, enabled=False):
        coords = uniform_point_coords((L, B, num_points), device, generator)
        order = coords[..., 1].argsort(dim=-1)
        coords = torch.gather(coords, 2, order[..., None].expand(L, B, num_points, 2))
        cost = point_mask_costs(pred_masks, target_masks, target_valid, coords, mask_weight, dice_weight)
        labels = target_labels.masked_fill(~target_valid, 0).clamp_(0, C - 1)
        probs = pred_logits.float().softmax(-1)
        cost.add_(class_costs(probs, labels[None].expand(L, B, T)), alpha=class_weight)
    return cost
