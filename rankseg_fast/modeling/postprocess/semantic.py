"""Mask2Former semantic inference: per-class score maps from query class probabilities and mask probabilities.

scores[c, h, w] = sum_q softmax(mask_cls_q)[c] * sigmoid(mask_pred_q[h, w]) for c < K; the softmax runs over
all K + 1 columns and the no-object column K is dropped afterwards (fact sheet §6.1 step 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from rankseg_fast.modeling.postprocess.resize import sem_seg_postprocess


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Semantic score maps of one image.

    Args:
        mask_cls: (Q, K + 1) class logits (index K = no-object).
        mask_pred: (Q, H, W) mask logits.
    Returns:
        (K, H, W) scores (not normalised; evaluation takes the argmax over K).
    """
    if mask_cls.dim() != 2 or mask_pred.dim() != 3 or mask_cls.shape[0] != mask_pred.shape[0]:
        raise ValueError(f"expected mask_cls (Q, K+1) and mask_pred (Q, H, W) with the same Q, got "
                         f"mask_cls {tuple(mask_cls.shape)} and mask_pred {tuple(mask_pred.shape)}")
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    masks = mask_pred.sigmoid()
    return torch.einsum("qc,qhw->chw", probs, masks)


def semantic_inference_at_output_size(mask_cls: torch.Tensor, mask_pred_padded: torch.Tensor,
                                      img_size: Sequence[int], output_height: int, output_width: int,
                                      postprocess_before_inference: bool) -> torch.Tensor:
    """Semantic scores at the original image size, in either of the two reference orders.

    postprocess_before_inference=True (RankSeg, always; Mask2Former with panoptic/instance on): crop/resize
    the (Q, H_pad, W_pad) mask logits to (Q, H0, W0), then `semantic_inference`.
    postprocess_before_inference=False (Mask2Former semantic-only configs): `semantic_inference` at
    (H_pad, W_pad), then crop/resize the (K, H_pad, W_pad) scores. The two orders are not numerically equal.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred_padded: (Q, H_pad, W_pad) mask logits already upsampled to the padded input size.
        img_size: (h, w) of the resized image inside the padding.
        output_height, output_width: original image size (H0, W0).
    Returns:
        (K, H0, W0).
    """
    if postprocess_before_inference:
        mask_pred = sem_seg_postprocess(mask_pred_padded, img_size, output_height, output_width)
        return semantic_inference(mask_cls.to(mask_pred), mask_pred)
    scores = semantic_inference(mask_cls, mask_pred_padded)
    return sem_seg_postprocess(scores, img_size, output_height, output_width)
