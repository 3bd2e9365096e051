"""Hungarian mask matching: the public `mask_match` op (and its target-padding helper).

Kernel path: the costs of all (prediction, image) pairs from one call of the compiled `point_mask_costs`
op (`mask_match_costs`, same points as the reference), then every assignment in one call of the compiled
`linear_assignment` op (exact, same optimal total as scipy), on the inputs' device. Reference path: `mask_match_reference`
(the same costs, scipy on the host).
"""

from __future__ import annotations

import torch

from rankseg_fast.ops._impl import use_kernel
from rankseg_fast.ops.mask_match_costs import batched_match_costs
from rankseg_fast.ops.reference._errors import fail
from rankseg_fast.ops.reference.mask_match import (
    check_mask_match_inputs,
    fail_label_out_of_range,
    fail_non_finite_cost,
    mask_match_reference,
    pad_targets,
)

__all__ = ["mask_match", "pad_targets"]


def mask_match(
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
    """Matches the queries of every image to its targets, for all decoder predictions in one call.

    Cost per (l, b) = class_weight·(−softmax prob of the target label) + mask_weight·(mean sigmoid-CE over
    num_points uniform points) + dice_weight·(dice loss at those points), in fp32 with autocast off; then an
    optimal linear assignment over the valid targets.

    Args:
        pred_logits: (L, B, Q, C) class logits (C = K+1 or S+1 in rank space). Not differentiated.
        pred_masks: (L, B, Q, h, w) mask logits. Not differentiated.
        target_labels: (B, T_max) int64, in [0, C) where valid.
        target_masks: (B, T_max, H, W) GT masks (see `pad_targets`).
        target_valid: (B, T_max) bool.
        num_points: points per (l, b) (12544).
        class_weight, mask_weight, dice_weight: 2 / 5 / 5.
        generator: seeded random source of the points (on pred_masks' device).

    Returns:
        (query_index, target_index, matched), each (L, B, T_max): int64 pair indices in ascending query
        order, and the bool mask of used slots; on the input device. The pairs of (l, b) fill its first
        min(Q, number of valid targets of b) slots, -1 after them (callers may rely on it: the set criterion
        derives the matched slots from the target counts without reading `matched`).

    Raises:
        ValueError for a valid label outside [0, C) or a NaN / infinite cost of a valid target (naming the
        first such prediction l and image b). On CUDA these checks cost the call's one host
        synchronisation (a read of two flags after the solver).
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        fail("mask_match", f"`num_points` must be a positive int, got {num_points!r}")
    if not use_kernel(pred_masks):
        return mask_match_reference(pred_logits, pred_masks, target_labels, target_masks, target_valid,
                                    num_points, class_weight, mask_weight, dice_weight, generator)
    return _mask_match_kernel(pred_logits, pred_masks, target_labels, target_masks, target_valid, num_points,
                              class_weight, mask_weight, dice_weight, generator)


@torch.no_grad()
def _mask_match_kernel(pred_logits, pred_masks, target_labels, target_masks, target_valid, num_points,
                       class_weight, mask_weight, dice_weight, generator):
    """`mask_match` on the compiled solver; arguments and results as there."""
    check_mask_match_inputs(pred_logits, pred_masks, target_labels, target_masks, target_valid)
    L, B, Q, C = pred_logits.shape
    T = target_labels.shape[1]
    device = pred_logits.device
    if T == 0 or L == 0 or B == 0:
        empty = torch.full((L, B, T), -1, dtype=torch.int64, device=device)
        return empty, empty.clone(), torch.zeros((L, B, T), dtype=torch.bool, device=device)
    labels_ok = ~(target_valid & ((target_labels < 0) | (target_labels >= C))).any()
    cost = batched_match_costs(pred_logits, pred_masks, target_labels, target_masks, target_valid, num_points,
                               class_weight, mask_weight, dice_weight, generator)
    valid = target_valid[None].expand(L, B, T).reshape(L * B, T)
    query_index, target_index, ok = torch.ops.rankseg_fast.linear_assignment(cost.view(L * B, Q, T), valid)
    all_ok, labels_in_range = torch.stack([ok.all(), labels_ok]).tolist()  # the one synchronisation
    if not labels_in_range:
        fail_label_out_of_range(C)
    if not all_ok:
        bad = int((~ok).nonzero()[0, 0])
        fail_non_finite_cost(bad // B, bad % B)
    query_index = query_index.view(L, B, T)
    return query_index, target_index.view(L, B, T), query_index >= 0
