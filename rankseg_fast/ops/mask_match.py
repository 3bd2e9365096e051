"""Hungarian mask matching: the public `mask_match` op (and its target-padding helper).

There is no compiled kernel yet, so it always runs the pure-PyTorch + scipy reference; a fused kernel
(batched point-sampled costs + an exact on-device assignment with the same optimal total) will take exactly
these inputs and return the same padded index tensors.
"""

from __future__ import annotations

import torch

from rankseg_fast.ops.reference.mask_match import mask_match_reference, pad_targets

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
        (query_index, target_index, matched), each (L, B, T_max): int64 pair indices (-1 in unused slots) in
        ascending query order, and the bool mask of used slots; on the input device.
    """
    # No kernel yet: `use_kernel` is not consulted, the reference is the implementation for every impl.
    return mask_match_reference(pred_logits, pred_masks, target_labels, target_masks, target_valid, num_points,
                                class_weight, mask_weight, dice_weight, generator)
