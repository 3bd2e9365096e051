"""The matcher's cost matrices for every (prediction, image) at once: the cost half of the `mask_match`
kernel path (its solver is the compiled `linear_assignment` op).

It draws the same points from the same generator as the reference (one (L, B, P, 2) uniform tensor), so
both see the same points and the same costs; it differs only in how the work is laid out:
  * the points of every (l, b) are visited in ascending y (a permutation: every cost is a sum over the
    points), so consecutive bilinear samples read neighbouring rows of each map (cache reuse on CPU);
  * the predicted masks are sampled once for all (l, b), the GT masks once per image for all L point
    sets; the sigmoid-CE and dice sums are two batched GEMMs over the padded targets;
  * everything runs in fp32 with autocast off and without gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rankseg_fast.ops.reference.point_sample import point_sample, uniform_point_coords

__all__ = ["batched_match_costs"]


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
        target_valid: (B, T) bool (padded targets get the cost of label 0; the solver ignores them).
            Labels are clamped to [0, C) so that a bad label cannot fault the gather; the caller reports it.
        num_points: P points per (l, b).
        class_weight, mask_weight, dice_weight: weights of the three costs.
        generator: random source of the points, consumed exactly as by `mask_match_reference`.

    Returns:
        (L, B, Q, T) float32 total costs (the inputs are validated by the caller).
    """
    L, B, Q, _ = pred_logits.shape
    T = target_labels.shape[1]
    P = num_points
    device = pred_logits.device
    with torch.autocast(device_type=device.type, enabled=False):
        coords = uniform_point_coords((L, B, P), device, generator)
        order = coords[..., 1].argsort(dim=-1)
        coords = torch.gather(coords, 2, order[..., None].expand(L, B, P, 2))
        h, w = pred_masks.shape[-2:]
        x = point_sample(pred_masks.reshape(L * B, Q, h, w).float(), coords.view(L * B, P, 2)).view(L, B, Q, P)
        # GT of image b sampled once at the points of all L predictions: (B, T, L·P) -> (L, B, T, P) view.
        t = point_sample(target_masks.float(), coords.transpose(0, 1).reshape(B, L * P, 2))
        t = t.view(B, T, L, P).permute(2, 0, 1, 3)

        s = torch.sigmoid(x)
        t_transposed = t.transpose(-1, -2)
        # sigmoid-CE: (Σ_p softplus(x) − x·t) / P;  dice: 1 − (2 σ(x)·t + 1) / (Σ σ(x) + Σ t + 1)
        cost = torch.matmul(x, t_transposed).neg_().add_(F.softplus(x).sum(-1, keepdim=True)).mul_(mask_weight / P)
        denominator = s.sum(-1)[..., :, None] + t.sum(-1)[..., None, :] + 1
        cost += dice_weight
        cost.sub_(torch.matmul(s, t_transposed).mul_(2).add_(1).div_(denominator).mul_(dice_weight))
        labels = target_labels.masked_fill(~target_valid, 0).clamp_(0, pred_logits.shape[-1] - 1)
        probs = pred_logits.float().softmax(-1)
        cost.sub_(torch.gather(probs, -1, labels[None, :, None, :].expand(L, B, Q, T)).mul_(class_weight))
    return cost
