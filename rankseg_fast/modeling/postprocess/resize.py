"""Resizing of mask logits / score maps between the network's grid, the padded input and the original image.

Reference pipeline (fact sheet §6.1, steps 4-5):
  1. the batched mask logits (B, Q, H_pad/4, W_pad/4) are upsampled bilinearly (align_corners=False) to the
     padded input size (H_pad, W_pad) — `upsample_mask_logits`;
  2. per image, `sem_seg_postprocess` crops the top-left (h, w) block (the resized, unpadded image) and
     resizes it bilinearly (align_corners=False) to the original (height, width).
RankSeg applies step 2 to the (Q, ...) mask logits *before* inference, always; Mask2Former does so only with
panoptic/instance on and otherwise applies it to the (K, ...) semantic score map *after* inference
(see `semantic.semantic_inference_at_output_size`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def upsample_mask_logits(pred_masks: torch.Tensor, padded_size: Sequence[int]) -> torch.Tensor:
    """Upsample batched mask logits to the padded input size.

    Args:
        pred_masks: (B, Q, h, w) mask logits (h = H_pad / 4 for the Mask2Former head).
        padded_size: (H_pad, W_pad), the spatial size of the padded input batch.
    Returns:
        (B, Q, H_pad, W_pad), bilinear with align_corners=False.
    """
    if pred_masks.dim() != 4:
        raise ValueError(f"pred_masks must be (B, Q, h, w), got shape {tuple(pred_masks.shape)}")
    if len(padded_size) != 2:
        raise ValueError(f"padded_size must be (H_pad, W_pad), got {tuple(padded_size)}")
    return F.interpolate(pred_masks, size=(int(padded_size[0]), int(padded_size[1])),
                         mode="bilinear", align_corners=False)


def sem_seg_postprocess(result: torch.Tensor, img_size: Sequence[int], output_height: int,
                        output_width: int) -> torch.Tensor:
    """Crop a padded per-image map to the image and resize it to the output (original) size.

    Args:
        result: (C, H_pad, W_pad) — mask logits (C = Q) or semantic scores (C = K) at padded input size.
        img_size: (h, w), the size of the resized image inside the padded input (h <= H_pad, w <= W_pad).
        output_height, output_width: the original image size (H0, W0).
    Returns:
        (C, output_height, output_width): result[:, :h, :w] resized bilinearly, align_corners=False.
    """
    if result.dim() != 3:
        raise ValueError(f"result must be (C, H_pad, W_pad), got shape {tuple(result.shape)}")
    h, w = int(img_size[0]), int(img_size[1])
    if h > result.shape[-2] or w > result.shape[-1]:
        raise ValueError(f"img_size {(h, w)} exceeds the padded size {tuple(result.shape[-2:])} of result")
    cropped = result[:, :h, :w].expand(1, -1, -1, -1)
    return F.interpolate(cropped, size=(int(output_height), int(output_width)), mode="bilinear",
                         align_corners=False)[0]
