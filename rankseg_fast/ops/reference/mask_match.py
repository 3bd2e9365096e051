"""Reference Hungarian mask matching (Mask2Former's `HungarianMatcher`, fact sheet §5.2) for a whole batch
and all decoder predictions in one call.

Per (prediction l, image b), without gradient, in fp32 with autocast off:
  * P fresh uniform points shared by the predicted masks and the GT masks of that image;
  * cost_class[q, j] = −softmax(logits[l, b, q])[label_j];
  * cost_mask[q, j]  = (1/P)·Σ_p [t·softplus(−x) + (1−t)·softplus(x)] = (Σ_p softplus(x) − x·t) / P (GEMM form);
  * cost_dice[q, j]  = 1 − (2·σ(x)·t + 1) / (Σ_p σ(x) + Σ_p t + 1);
  * C = mask_weight·cost_mask + class_weight·cost_class + dice_weight·cost_dice.
All costs are computed batched; one device→host copy brings them to scipy's `linear_sum_assignment`, run per
(l, b) on the valid targets only. Targets are padded to (B, T_max) with a validity mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from rankseg_fast.ops.reference._errors import fail
from rankseg_fast.ops.reference.point_sample import point_sample, uniform_point_coords

__all__ = ["mask_match_reference", "match_costs", "class_costs", "mask_costs", "point_mask_costs_reference",
           "check_mask_match_inputs", "fail_label_out_of_range", "fail_non_finite_cost", "pad_targets"]

_OP = "mask_match"
_FLOAT = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def pad_targets(
    labels: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image target lists -> padded batch tensors.

    Args:
        labels: B int64 tensors (n_i,).
        masks: B tensors (n_i, H_i, W_i) (bool or numbers); smaller maps are zero-padded bottom/right to the
            largest (H, W), as detectron2 pads targets to the padded image size.

    Returns:
        target_labels (B, T_max) int64 (0 in padding), target_masks (B, T_max, H, W) float32 (0 in padding),
        target_valid (B, T_max) bool. T_max = max n_i (0 when every image is empty).
    """
    op = "pad_targets"
    if len(labels) != len(masks):
        fail(op, f"got {len(labels)} label tensors but {len(masks)} mask tensors")
    if not labels:
        fail(op, "needs at least one image")
    for i, (lab, m) in enumerate(zip(labels, masks)):
        if lab.dim() != 1 or m.dim() != 3 or m.shape[0] != lab.shape[0]:
            fail(op, f"image {i}: `labels` must be (n,) and `masks` (n, H, W), got {tuple(lab.shape)} and "
                     f"{tuple(m.shape)}")
    device = labels[0].device
    B = len(labels)
    T = max(int(lab.shape[0]) for lab in labels)
    H = max(int(m.shape[1]) for m in masks)
    W = max(int(m.shape[2]) for m in masks)
    target_labels = torch.zeros(B, T, dtype=torch.int64, device=device)
    target_masks = torch.zeros(B, T, H, W, dtype=torch.float32, device=device)
    target_valid = torch.zeros(B, T, dtype=torch.bool, device=device)
    for b, (lab, m) in enumerate(zip(labels, masks)):
        n = lab.shape[0]
        target_labels[b, :n] = lab
        target_masks[b, :n, : m.shape[1], : m.shape[2]] = m.to(device=device, dtype=torch.float32)
        target_valid[b, :n] = True
    return target_labels, target_masks, target_valid


def check_mask_match_inputs(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor,
    target_valid: torch.Tensor,
) -> None:
    """Raises TypeError/ValueError naming the offending tensor unless pred_logits (L, B, Q, C),
    pred_masks (L, B, Q, h, w), target_labels (B, T) int64, target_masks (B, T, H, W) and
    target_valid (B, T) bool form a valid call (same device)."""
    layouts = {
        "pred_logits": (pred_logits, 4, "(layers, batch, queries, classes)"),
        "pred_masks": (pred_masks, 5, "(layers, batch, queries, h, w)"),
        "target_labels": (target_labels, 2, "(batch, targets)"),
        "target_masks": (target_masks, 4, "(batch, targets, H, W)"),
        "target_valid": (target_valid, 2, "(batch, targets)"),
    }
    for name, (tensor, rank, layout) in layouts.items():
        if not isinstance(tensor, torch.Tensor):
            fail(_OP, f"`{name}` must be a tensor, got {type(tensor).__name__}", TypeError)
        if tensor.dim() != rank:
            fail(_OP, f"`{name}` must have {rank} dimensions {layout}, got shape {tuple(tensor.shape)}")
        if tensor.device != pred_logits.device:
            fail(_OP, f"`{name}` is on {tensor.device} but `pred_logits` is on {pred_logits.device}")
    for name in ("pred_logits", "pred_masks"):
        if layouts[name][0].dtype not in _FLOAT:
            fail(_OP, f"`{name}` must be floating, got {layouts[name][0].dtype}", TypeError)
    if target_labels.dtype != torch.int64:
        fail(_OP, f"`target_labels` must be int64, got {target_labels.dtype}", TypeError)
    if target_valid.dtype != torch.bool:
        fail(_OP, f"`target_valid` must be bool, got {target_valid.dtype}", TypeError)
    L, B, Q, C = pred_logits.shape
    if tuple(pred_masks.shape[:3]) != (L, B, Q):
        fail(_OP, f"`pred_masks` {tuple(pred_masks.shape)} must start with (layers, batch, queries) = "
                  f"{(L, B, Q)} of `pred_logits` {tuple(pred_logits.shape)}")
    T = target_labels.shape[1]
    if target_labels.shape[0] != B or tuple(target_valid.shape) != (B, T) or tuple(target_masks.shape[:2]) != (B, T):
        fail(_OP, f"`target_labels` {tuple(target_labels.shape)}, `target_masks` {tuple(target_masks.shape)} and "
                  f"`target_valid` {tuple(target_valid.shape)} must share (batch={B}, targets)")
    if C < 1:
        fail(_OP, f"`pred_logits` needs at least one class, got shape {tuple(pred_logits.shape)}")


def fail_label_out_of_range(num_classes: int) -> None:
    """The ValueError of both matchers for a valid target label outside [0, num_classes)."""
    fail(_OP, f"valid `target_labels` must be class ids in [0, {num_classes}) for `pred_logits` with "
              f"{num_classes} classes")


def fail_non_finite_cost(layer: int, image: int) -> None:
    """The ValueError of both matchers for a cost matrix with NaN / infinite entries in a valid column."""
    fail(_OP, f"the cost matrix of prediction {layer}, image {image} has NaN or infinite entries (non-finite "
              "mask or class logits)")


def match_costs(
    class_prob: torch.Tensor,
    point_logits: torch.Tensor,
    point_targets: torch.Tensor,
    target_labels: torch.Tensor,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> torch.Tensor:
    """The matcher's cost matrices from already-sampled points (batched over any leading dims `...`).

    Args:
        class_prob: (..., Q, C) class probabilities (softmax of the logits).
        point_logits: (..., Q, P) predicted mask logits at the points.
        point_targets: (..., T, P) GT mask values at the same points (fractional at edges).
        target_labels: (..., T) int64 in [0, C) (broadcast over leading dims of class_prob).

    Returns:
        (..., Q, T) total cost in the dtype of the inputs (fp32 in `mask_match`).
    """
    cost_class = class_costs(class_prob, target_labels)
    return class_weight * cost_class + mask_costs(point_logits, point_targets, mask_weight, dice_weight)


def class_costs(class_prob: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """cost_class[..., q, j] = −class_prob[..., q, target_labels[..., j]]: (..., Q, C), (..., T) -> (..., Q, T)."""
    index = target_labels.unsqueeze(-2).expand(*class_prob.shape[:-1], target_labels.shape[-1])
    return -torch.gather(class_prob, -1, index)


def mask_costs(point_logits: torch.Tensor, point_targets: torch.Tensor, mask_weight: float = 5.0,
               dice_weight: float = 5.0) -> torch.Tensor:
    """The sigmoid-CE and dice parts of the matcher's costs, from already-sampled points.

    Args:
        point_logits: (..., Q, P) predicted mask logits at the points.
        point_targets: (..., T, P) GT mask values at the same points.

    Returns:
        (..., Q, T) mask_weight·cost_mask + dice_weight·cost_dice, in the inputs' dtype.
    """
    P = point_logits.shape[-1]
    x, t = point_logits, point_targets
    cost_mask = (F.softplus(x).sum(-1, keepdim=True) - x @ t.transpose(-1, -2)) / P
    s = x.sigmoid()
    numerator = 2 * (s @ t.transpose(-1, -2))
    denominator = s.sum(-1)[..., :, None] + t.sum(-1)[..., None, :]
    cost_dice = 1 - (numerator + 1) / (denominator + 1)
    return mask_weight * cost_mask + dice_weight * cost_dice


def point_mask_costs_reference(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    target_valid: torch.Tensor,
    coords: torch.Tensor,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> torch.Tensor:
    """Reference of the `point_mask_costs` op: the mask and dice costs of every (prediction, image) at shared
    points, in the dtype of `pred_masks` promoted with float32 (float64 inputs give the fp64 oracle).

    Args:
        pred_masks: (L, B, Q, h, w) mask logits.
        target_masks: (B, T, H, W) GT masks.
        target_valid: (B, T) bool; the columns of invalid targets are 0.
        coords: (L, B, P, 2) (x, y) points in [0, 1]², P >= 1.

    Returns:
        (L, B, Q, T) mask_weight·cost_mask + dice_weight·cost_dice.
    """
    L, B, Q, h, w = pred_masks.shape
    T, H, W = target_masks.shape[1:]
    P = coords.shape[2]
    dtype = torch.promote_types(pred_masks.dtype, torch.float32)
    coords = coords.to(dtype)
    x = point_sample(pred_masks.reshape(L * B, Q, h, w).to(dtype), coords.reshape(L * B, P, 2)).view(L, B, Q, P)
    gt_coords = coords.transpose(0, 1).reshape(B, L * P, 2)  # image b's GT at the points of all L predictions
    t = point_sample(target_masks.to(dtype), gt_coords).view(B, T, L, P).permute(2, 0, 1, 3)
    cost = mask_costs(x, t, mask_weight, dice_weight)
    return cost.masked_fill(~target_valid[None, :, None, :], 0)


@torch.no_grad()
def mask_match_reference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    target_labels: torch.Tensor,
    target_masks: torch.Tensor,
    target_valid: torch.Tensor,
    num_points: int = 12544,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimal (query, target) assignment of every image for every decoder prediction.

    Args:
        pred_logits: (L, B, Q, C) class logits (C = K+1, or S+1 in RankSeg rank space).
        pred_masks: (L, B, Q, h, w) mask logits.
        target_labels: (B, T) int64 labels in [0, C) on valid rows (anything on padded rows).
        target_masks: (B, T, H, W) GT masks (bool or numbers) at the padded input resolution.
        target_valid: (B, T) bool, False on padded rows (ignored by the assignment).
        num_points: P uniform points per (l, b), shared by its predictions and GT masks.
        class_weight, mask_weight, dice_weight: cost weights (2 / 5 / 5).
        generator: random source of the points (on pred_masks' device); points are drawn as one
            (L, B, P, 2) tensor.

    Returns:
        query_index, target_index: (L, B, T) int64; slot k of (l, b) holds its k-th matched pair in
            scipy's order (ascending query index), -1 past the pairs.
        matched: (L, B, T) bool, True on the min(Q, n_valid(b)) filled slots.
        All on pred_logits' device.
    """
    check_mask_match_inputs(pred_logits, pred_masks, target_labels, target_masks, target_valid)
    L, B, Q, C = pred_logits.shape
    T = target_labels.shape[1]
    device = pred_logits.device
    query_index = torch.full((L, B, T), -1, dtype=torch.int64, device=device)
    target_index = torch.full((L, B, T), -1, dtype=torch.int64, device=device)
    matched = torch.zeros((L, B, T), dtype=torch.bool, device=device)
    if T == 0 or L == 0 or B == 0:
        return query_index, target_index, matched
    bad = target_valid & ((target_labels < 0) | (target_labels >= C))
    if bool(bad.any()):
        fail_label_out_of_range(C)

    with torch.autocast(device_type=device.type, enabled=False):
        coords = uniform_point_coords((L, B, num_points), device, generator)  # (L, B, P, 2)
        labels = target_labels.masked_fill(~target_valid, 0)
        costs = class_weight * class_costs(pred_logits.float().softmax(-1), labels[None].expand(L, B, T))
        costs += point_mask_costs_reference(pred_masks.float(), target_masks, target_valid, coords, mask_weight,
                                            dice_weight)  # (L, B, Q, T)

    costs_host = costs.cpu().numpy()
    valid_host = target_valid.cpu().numpy()
    finite = (np.isfinite(costs_host) | ~valid_host[None, :, None, :]).all(axis=(2, 3))  # (L, B)
    if not finite.all():
        layer, image = np.argwhere(~finite)[0]
        fail_non_finite_cost(int(layer), int(image))
    q_host = np.full((L, B, T), -1, dtype=np.int64)
    t_host = np.full((L, B, T), -1, dtype=np.int64)
    for b in range(B):
        columns = np.flatnonzero(valid_host[b])
        if columns.size == 0:
            continue
        for layer in range(L):
            rows, cols = linear_sum_assignment(costs_host[layer, b][:, columns])
            n = rows.shape[0]
            q_host[layer, b, :n] = rows
            t_host[layer, b, :n] = columns[cols]
    query_index.copy_(torch.from_numpy(q_host))
    target_index.copy_(torch.from_numpy(t_host))
    matched = query_index >= 0
    return query_index, target_index, matched
