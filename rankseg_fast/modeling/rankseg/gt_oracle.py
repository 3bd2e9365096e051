"""The `-gt` oracle recipe (`RANKSEG.USE_GT`): the final class logits of every class absent from the image's
ground truth are overwritten with -100 (fact sheet §4.6). An upper bound, not a deployable model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankseg_fast.ops.host_copy import host_ints_to

__all__ = ["ORACLE_FILL", "image_class_multi_hot", "mask_absent_classes"]

ORACLE_FILL = -100.0

_MISSING_GT = (
    "the -gt (oracle) recipe needs the image-level ground-truth classes at inference (per image, the class "
    "ids present in its label map / non-crowd segments); pass them as `gt_classes`, or use a model without "
    "RANKSEG.USE_GT"
)


def image_class_multi_hot(
    gt_classes: Sequence[torch.Tensor] | None, num_classes: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-image GT class lists -> (B, K) bool multi-hot of the classes present.

    Args:
        gt_classes: B int tensors (n_i,) of class ids (repeats allowed). Ids >= K (the video dummy class K)
            are ignored; negative ids raise.
        num_classes: K.
        device: of the result (default: that of the first list, else CPU).
    Raises:
        ValueError: when gt_classes is None (the oracle has no GT to read).
    """
    if gt_classes is None:
        raise ValueError(_MISSING_GT)
    if device is None:
        device = gt_classes[0].device if len(gt_classes) else "cpu"
    for i, classes in enumerate(gt_classes):
        if not isinstance(classes, torch.Tensor) or classes.dtype.is_floating_point or classes.dim() != 1:
            raise TypeError(f"image_class_multi_hot: `gt_classes[{i}]` must be a 1-D integer tensor")
    present = torch.zeros(len(gt_classes), num_classes + 1, dtype=torch.bool, device=device)
    if sum(len(classes) for classes in gt_classes) == 0:
        return present[:, :num_classes]
    # The whole batch at once: one host read (for the check) instead of one per image.
    ids = torch.cat([classes.to(device=device, dtype=torch.int64) for classes in gt_classes])
    if bool((ids < 0).any()):
        bad = next(i for i, classes in enumerate(gt_classes) if bool((classes < 0).any()))
        raise ValueError(f"image_class_multi_hot: `gt_classes[{bad}]` has negative class ids")
    sizes = host_ints_to([len(classes) for classes in gt_classes], device)
    image = torch.repeat_interleave(torch.arange(len(gt_classes), device=device), sizes, output_size=len(ids))
    present[image, ids.clamp(max=num_classes)] = True
    return present[:, :num_classes]


def mask_absent_classes(logits: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """Sets the logits of classes absent from each image to -100; the no-object logit is untouched.

    Args:
        logits: (..., B, Q, K+1) class logits (the final prediction only, in the RS recipe).
        present: (B, K) bool multi-hot from `image_class_multi_hot`.
    Returns:
        a new tensor like logits (differentiable w.r.t. the kept entries).
    Raises:
        ValueError: when present is None, or its shape does not match logits.
    """
    if present is None:
        raise ValueError(_MISSING_GT)
    if logits.dim() < 3 or present.dim() != 2 or present.dtype != torch.bool:
        raise ValueError(
            f"mask_absent_classes: `logits` must be (..., batch, queries, classes + 1) and `present` a bool "
            f"(batch, classes) tensor, got {tuple(logits.shape)} and {tuple(present.shape)} {present.dtype}"
        )
    B, K = present.shape
    if logits.shape[-3] != B or logits.shape[-1] != K + 1:
        raise ValueError(
            f"mask_absent_classes: `logits` {tuple(logits.shape)} does not match `present` {tuple(present.shape)}"
            f" (expected (..., {B}, queries, {K + 1}))"
        )
    absent = torch.cat([~present, present.new_zeros(B, 1)], dim=1).to(logits.device)
    return logits.masked_fill(absent[:, None, :], ORACLE_FILL)
