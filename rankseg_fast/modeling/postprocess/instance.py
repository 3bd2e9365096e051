"""Mask2Former instance inference (fact sheet §6.1 step 8).

Top-k over the flattened (Q * K) class probabilities (no-object column dropped after the softmax), with
`torch.topk(..., sorted=False)` exactly as the reference (so the returned order — and which of tied scores
are taken at the k-th place — is whatever that call yields); label = index mod K, query = index div K; with
panoptic on only thing classes are kept; masks = logits > 0 (float 0/1); score = class probability * mean
sigmoid inside the binary mask (denominator + 1e-6). Boxes are all-zero placeholders, as in the reference.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rankseg_fast.modeling.postprocess.panoptic import ThingIds, thing_class_mask
from rankseg_fast.ops.host_copy import to_device_async


def instance_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, thing_ids: ThingIds,
                       num_queries: int, test_topk_per_image: int = 100, panoptic_on: bool = False
                       ) -> dict[str, torch.Tensor | tuple[int, int]]:
    """Instance predictions of one image.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits.
        thing_ids: thing classes (used only when panoptic_on), see `panoptic.thing_class_mask`.
        num_queries: Q (the model's query count; must equal mask_cls.shape[0]).
        test_topk_per_image: `TEST.DETECTIONS_PER_IMAGE` (100); must be <= Q * K, as torch.topk requires.
        panoptic_on: keep only thing classes among the top-k.
    Returns:
        dict with image_size (H, W), pred_masks (N, H, W) float 0/1, pred_boxes (N, 4) float zeros,
        scores (N,), pred_classes (N,) int64; N = test_topk_per_image, fewer if panoptic_on filtered some.
    """
    if mask_cls.dim() != 2 or mask_pred.dim() != 3 or mask_cls.shape[0] != mask_pred.shape[0]:
        raise ValueError(f"expected mask_cls (Q, K+1) and mask_pred (Q, H, W) with the same Q, got "
                         f"mask_cls {tuple(mask_cls.shape)} and mask_pred {tuple(mask_pred.shape)}")
    if mask_cls.shape[0] != num_queries:
        raise ValueError(f"num_queries={num_queries} but mask_cls has {mask_cls.shape[0]} rows")
    num_classes = mask_cls.shape[1] - 1
    if test_topk_per_image > num_queries * num_classes:
        raise ValueError(f"test_topk_per_image={test_topk_per_image} exceeds Q*K={num_queries * num_classes}")
    image_size = (int(mask_pred.shape[-2]), int(mask_pred.shape[-1]))

    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device)
    labels = labels.unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(test_topk_per_image, sorted=False)
    labels_per_image = labels[topk_indices]
    query_indices = topk_indices // num_classes
    masks = mask_pred[query_indices]

    if panoptic_on:
        is_thing = to_device_async(thing_class_mask(thing_ids, num_classes), labels_per_image.device)
        keep = is_thing[labels_per_image].nonzero().squeeze(1)  # one host read for the three selections
        scores_per_image = scores_per_image[keep]
        labels_per_image = labels_per_image[keep]
        masks = masks[keep]

    pred_masks = (masks > 0).float()
    binary = pred_masks.flatten(1)
    mask_scores = (masks.sigmoid().flatten(1) * binary).sum(1) / (binary.sum(1) + 1e-6)
    return {
        "image_size": image_size,
        "pred_masks": pred_masks,
        "pred_boxes": torch.zeros(masks.size(0), 4, device=masks.device),
        "scores": scores_per_image * mask_scores,
        "pred_classes": labels_per_image,
    }
