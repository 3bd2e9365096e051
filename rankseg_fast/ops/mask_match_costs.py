"""The matcher's cost matrices for every (prediction, image) at once: the cost half of the `mask_match`
kernel path (its solver is the compiled `linear_assignment` op).

It draws the same points from the same generator as the reference (one (L, B, P, 2) uniform tensor), so
both see the same points and the same costs; it differs only in how the work is laid out:
  * the points of every (l, b) are visited in ascending y (a permutation: every cost is a sum over the
    points), so consecutive bilinear samples read neighbouring rows of each map (cache reuse on CPU);
  * the predicted masks are sampled in one call for all (l, b); the GT masks of an image in one call for
    its L point sets (the masks expanded, without a copy, to one batch entry per prediction: grid_sample
    parallelises over batch entries); the sigmoid-CE and dice sums are GEMMs over the targets, batched
    over the L predictions of an image; on the CPU an image's GT work stops after its last valid target
    (the padded columns past it get cost 0 and are never matched);
  * everything runs in fp32 with autocast off and without gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rankseg_fast.ops.reference.point_sample import point_sample, uniform_point_coords

__all__ = ["batched_match_costs"]


def _target_extent(target_valid: torch.Tensor) -> list[int]:
    """Per image, the number of leading target slots that cover all its valid ones (1 + the last valid
    index): the GT work is limited to them on the CPU, where reading the mask is free. On a GPU every
    image uses all T slots, so that nothing waits for the device."""
    B, T = target_valid.shape
    if target_valid.device.type != "cpu":
        return [T] * B
    slots = torch.arange(1, T + 1).masked_fill(~target_valid, 0)
    return slots.amax(1).tolist() if T else [0] * B


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
        x = point_sample(pred_masks.reshape(L * B, Q, h, w).float(), coords.view(L * B, P, 2))
        x = x.view(L, B, Q, P)
        s = torch.sigmoid(x)
        softplus_sum = F.softplus(x).sum(-1, keepdim=True)  # (L, B, Q, 1)
        sigmoid_sum = s.sum(-1, keepdim=True)
        x_dot_t = x.new_zeros(L, B, Q, T)
        s_dot_t = x.new_zeros(L, B, Q, T)
        t_sum = x.new_zeros(L, B, 1, T)
        H, W = target_masks.shape[-2:]
        for b, n in enumerate(_target_extent(target_valid)):
            if n == 0:
                continue
            # GT of image b at the points of each prediction: the masks are expanded (a view) to one batch
            # entry per prediction, so grid_sample works on L entries in parallel and returns (L, n, P).
            t = point_sample(target_masks[b : b + 1, :n].float().expand(L, n, H, W), coords[:, b])
            t_transposed = t.transpose(1, 2)
            x_dot_t[:, b, :, :n] = torch.matmul(x[:, b], t_transposed)
            s_dot_t[:, b, :, :n] = torch.matmul(s[:, b], t_transposed)
            t_sum[:, b, 0, :n] = t.sum(-1)
        # sigmoid-CE: (Σ_p softplus(x) − x·t) / P;  dice: 1 − (2 σ(x)·t + 1) / (Σ σ(x) + Σ t + 1)
        cost = x_dot_t.neg_().add_(softplus_sum).mul_(mask_weight / P)
        cost += dice_weight
        cost.sub_(s_dot_t.mul_(2).add_(1).div_(sigmoid_sum + t_sum + 1).mul_(dice_weight))
        labels = target_labels.masked_fill(~target_valid, 0).clamp_(0, pred_logits.shape[-1] - 1)
        probs = pred_logits.float().softmax(-1)
        cost.sub_(torch.gather(probs, -1, labels[None, :, None, :].expand(L, B, Q, T)).mul_(class_weight))
    return cost
