"""Mask2Former panoptic inference (fact sheet §6.1 step 7), vectorised but decision-for-decision identical.

Reference algorithm, for one image:
  * (score, label) = max over softmax(mask_cls) (K + 1 columns); keep = label != K and score > 0.8 (strict).
  * prob_k = score_k * sigmoid(mask_k) over the kept queries; owner = argmax_k prob_k (first index on ties).
  * for kept queries in their original order: area = #owned pixels, original_area = #(sigmoid >= 0.5),
    region = owned and sigmoid >= 0.5; skip unless area > 0, original_area > 0, region non-empty and
    area / original_area >= 0.8 (skipped iff the Python-float ratio < threshold, so exactly 0.8 is kept).
  * stuff classes: the first accepted segment of a class takes a new id, later ones are painted with that
    id and not listed; things always take a new id. Ids count from 1; 0 = void.
Vectorisation: every pixel has exactly one owner, so the regions are disjoint and painting them in any order
equals the reference's sequential painting; areas come from one scatter-add per kind instead of per-query
scans. Only the id assignment (a few scalars per kept query) stays a Python loop; on a GPU the image costs
two host reads (the kept queries, then their areas and classes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.nn import functional as F

from rankseg_fast.ops.host_copy import host_ints_to

ThingIds = Iterable[int] | Sequence[bool] | torch.Tensor


def thing_class_mask(thing_ids: ThingIds, num_classes: int, device: torch.device | str | None = None
                     ) -> torch.Tensor:
    """(K,) bool: True for thing classes.

    Args:
        thing_ids: either the contiguous thing class ids (a set / iterable of ints, e.g. the values of
            `thing_dataset_id_to_contiguous_id`), or a bool list / bool tensor of length K.
        num_classes: K.
    """
    if isinstance(thing_ids, torch.Tensor) and thing_ids.dtype == torch.bool:
        flags = thing_ids.to(device=device)
    else:
        items = list(thing_ids.tolist() if isinstance(thing_ids, torch.Tensor) else thing_ids)
        if items and all(isinstance(x, bool) for x in items):
            flags = torch.tensor(items, dtype=torch.bool, device=device)
        else:
            flags = torch.zeros(num_classes, dtype=torch.bool, device=device)
            ids = [int(x) for x in items if 0 <= int(x) < num_classes]
            if ids:
                flags[torch.tensor(ids, dtype=torch.long, device=device)] = True
            return flags
    if flags.shape != (num_classes,):
        raise ValueError(f"a bool thing_ids must have length K={num_classes}, got shape {tuple(flags.shape)}")
    return flags


def panoptic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, thing_ids: ThingIds,
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8
                       ) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic segmentation of one image.

    Args:
        mask_cls: (Q, K + 1) class logits (index K = no-object).
        mask_pred: (Q, H, W) mask logits.
        thing_ids: thing classes, see `thing_class_mask`.
        object_mask_threshold: keep queries with max class probability strictly above this.
        overlap_threshold: drop a query whose owned area / own (sigmoid >= 0.5) area is below this.
    Returns:
        panoptic_seg: (H, W) int32, 0 = void, segment ids from 1.
        segments_info: [{"id": int, "isthing": bool, "category_id": int}] in id order.
    """
    if mask_cls.dim() != 2 or mask_pred.dim() != 3 or mask_cls.shape[0] != mask_pred.shape[0]:
        raise ValueError(f"expected mask_cls (Q, K+1) and mask_pred (Q, H, W) with the same Q, got "
                         f"mask_cls {tuple(mask_cls.shape)} and mask_pred {tuple(mask_pred.shape)}")
    num_classes = mask_cls.shape[1] - 1
    is_thing = thing_class_mask(thing_ids, num_classes).tolist()

    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    masks = mask_pred.sigmoid()
    kept = (labels.ne(num_classes) & (scores > object_mask_threshold)).nonzero().squeeze(1)  # a host read
    cur_scores = scores[kept]
    cur_classes = labels[kept]
    cur_masks = masks[kept]
    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks

    height, width = masks.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=masks.device)
    segments_info: list[dict] = []
    num_kept = cur_masks.shape[0]
    if num_kept == 0:
        return panoptic_seg, segments_info

    owner = cur_prob_masks.argmax(0)  # (H, W), first maximal query on ties
    owner_flat = owner.flatten()
    owner_fg = cur_masks.gather(0, owner[None])[0] >= 0.5  # pixel inside its owner's own mask
    # Per-query pixel counts, read back in one go (index_add_ where bincount would read its input's maximum).
    mask_area = torch.zeros(num_kept, dtype=torch.int64, device=masks.device).index_add_(
        0, owner_flat, torch.ones_like(owner_flat))
    region_area = torch.zeros_like(mask_area).index_add_(0, owner_flat, owner_fg.flatten().long())
    original_area = (cur_masks >= 0.5).flatten(1).sum(1)
    mask_area, original_area, region_area, classes = torch.stack(
        [mask_area, original_area, region_area, cur_classes]).tolist()

    segment_of_query = [0] * num_kept
    stuff_segment: dict[int, int] = {}
    current_segment_id = 0
    for k, pred_class in enumerate(classes):
        if not (mask_area[k] > 0 and original_area[k] > 0 and region_area[k] > 0):
            continue
        if mask_area[k] / original_area[k] < overlap_threshold:
            continue
        isthing = bool(is_thing[pred_class])
        if not isthing:
            if pred_class in stuff_segment:
                segment_of_query[k] = stuff_segment[pred_class]
                continue
            stuff_segment[pred_class] = current_segment_id + 1
        current_segment_id += 1
        segment_of_query[k] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": isthing, "category_id": int(pred_class)})

    lut = host_ints_to(segment_of_query, masks.device).int()
    panoptic_seg = torch.where(owner_fg, lut[owner], panoptic_seg)
    return panoptic_seg, segments_info
