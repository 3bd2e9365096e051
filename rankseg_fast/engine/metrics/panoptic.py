"""Panoptic quality (PQ, SQ, RQ) with the semantics of panopticapi ``pq_compute``.

Per image (segment-id maps, id 0 = VOID):
- a GT segment and a predicted segment match iff they have the same category, the GT is not crowd, and
  IoU > 0.5 (strictly), where the union excludes the prediction's pixels on VOID:
  union = area(pred) + area(gt) - intersection - |pred ∩ VOID|. GT areas come from the GT segments'
  ``area`` (the GT JSON) when given, predicted areas are always counted in the prediction map;
- each unmatched non-crowd GT segment is a false negative; crowd GT segments never are;
- an unmatched prediction is a false positive unless more than half of it (strictly) lies on VOID plus the
  crowd region of its category (the last crowd segment listed for that category);
- per category PQ = ΣIoU(TP) / (TP + FP/2 + FN/2) = SQ·RQ; categories with no TP, FP or FN are left out of
  the averages; Things / Stuff split by ``isthing``. Reported x100.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

VOID = 0
_OFFSET = 256**3  # segment ids are 24-bit (R + 256 G + 256^2 B)


def _as_numpy_ids(ids: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) segment-id map, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= _OFFSET):
        raise ValueError(f"{name} has segment ids outside [0, 256^3)")
    return ids.astype(np.int64)


class PanopticEvaluator:
    """Accumulates per-category TP / FP / FN / ΣIoU over images; ``evaluate()`` averages them.

    ``categories``: the dataset's categories, as a sequence of ``{"id", "isthing", "name"?}`` dicts or a
    mapping id -> such dict (the GT JSON's ``categories``). Only these categories are averaged over.
    Distributed use: ``merge(other)`` adds another evaluator's statistics.
    """

    def __init__(self, categories: Sequence[Mapping] | Mapping[int, Mapping]) -> None:
        items = categories.values() if isinstance(categories, Mapping) else categories
        self.categories = {int(c["id"]): dict(c) for c in items}
        if not self.categories:
            raise ValueError("categories is empty")
        self.reset()

    def reset(self) -> None:
        k = len(self.categories)
        self._index = {cat_id: i for i, cat_id in enumerate(self.categories)}
        self.iou = np.zeros(k, dtype=np.float64)
        self.tp = np.zeros(k, dtype=np.int64)
        self.fp = np.zeros(k, dtype=np.int64)
        self.fn = np.zeros(k, dtype=np.int64)

    def merge(self, other: PanopticEvaluator) -> None:
        if list(other.categories) != list(self.categories):
            raise ValueError("cannot merge PanopticEvaluators with different categories")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def process(
        self,
        pred_ids: torch.Tensor | np.ndarray,
        pred_segments: Iterable[Mapping],
        gt_ids: torch.Tensor | np.ndarray,
        gt_segments: Iterable[Mapping],
        image_id: object = None,
    ) -> None:
        """Adds one image.

        pred_ids, gt_ids: (H, W) integer segment-id maps (0 = VOID). pred_segments: ``{"id",
        "category_id"}`` per predicted segment (its area is recounted from pred_ids). gt_segments: ``{"id",
        "category_id", "iscrowd"?, "area"?}``; ``iscrowd`` defaults to 0, ``area`` to the pixel count in
        gt_ids. ``image_id`` only names the image in error messages.
        """
        where = f" in image {image_id}" if image_id is not None else ""
        pred = _as_numpy_ids(pred_ids, "pred_ids")
        gt = _as_numpy_ids(gt_ids, "gt_ids")
        if pred.shape != gt.shape:
            raise ValueError(f"pred_ids {pred.shape} and gt_ids {gt.shape} differ in size{where}")

        pred_segms = {int(s["id"]): {"category_id": int(s["category_id"])} for s in pred_segments}
        gt_segms = {int(s["id"]): dict(s) for s in gt_segments}

        # predicted areas from the map + the sanity checks of pq_compute
        unseen = set(pred_segms)
        for seg_id, count in zip(*np.unique(pred, return_counts=True)):
            seg_id = int(seg_id)
            if seg_id not in pred_segms:
                if seg_id == VOID:
                    continue
                raise KeyError(f"segment {seg_id} is in the prediction map but not in pred_segments{where}")
            pred_segms[seg_id]["area"] = int(count)
            unseen.discard(seg_id)
            if pred_segms[seg_id]["category_id"] not in self.categories:
                raise KeyError(
                    f"predicted segment {seg_id} has unknown category_id "
                    f"{pred_segms[seg_id]['category_id']}{where}"
                )
        if unseen:
            raise KeyError(
                f"segments {sorted(unseen)} are in pred_segments but not in the prediction map{where}"
            )

        gt_ids_present, gt_counts = np.unique(gt, return_counts=True)
        gt_pixel_area = dict(zip(gt_ids_present.tolist(), gt_counts.tolist()))
        for seg_id, seg in gt_segms.items():
            if int(seg["category_id"]) not in self.categories:
                raise KeyError(f"GT segment {seg_id} has unknown category_id {seg['category_id']}{where}")
            seg["category_id"] = int(seg["category_id"])
            seg["iscrowd"] = int(seg.get("iscrowd", 0))
            seg["area"] = int(seg["area"]) if seg.get("area") is not None else gt_pixel_area.get(seg_id, 0)

        # intersections of every (gt id, pred id) pair present
        pairs, counts = np.unique(gt * _OFFSET + pred, return_counts=True)
        overlap = {(int(p // _OFFSET), int(p % _OFFSET)): int(c) for p, c in zip(pairs, counts)}

        gt_matched, pred_matched = set(), set()
        for (gt_id, pred_id), inter in overlap.items():
            if gt_id not in gt_segms or pred_id not in pred_segms:
                continue
            g, p = gt_segms[gt_id], pred_segms[pred_id]
            if g["iscrowd"] == 1 or g["category_id"] != p["category_id"]:
                continue
            union = p["area"] + g["area"] - inter - overlap.get((VOID, pred_id), 0)
            iou = inter / union
            if iou > 0.5:
                c = self._index[g["category_id"]]
                self.tp[c] += 1
                self.iou[c] += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_of_category = {}
        for gt_id, g in gt_segms.items():
            if gt_id in gt_matched:
                continue
            if g["iscrowd"] == 1:
                crowd_of_category[g["category_id"]] = gt_id  # the last crowd segment per category wins
                continue
            self.fn[self._index[g["category_id"]]] += 1

        for pred_id, p in pred_segms.items():
            if pred_id in pred_matched:
                continue
            ignored = overlap.get((VOID, pred_id), 0)
            if p["category_id"] in crowd_of_category:
                ignored += overlap.get((crowd_of_category[p["category_id"]], pred_id), 0)
            if ignored / p["area"] > 0.5:
                continue
            self.fp[self._index[p["category_id"]]] += 1

    def evaluate(self) -> dict:
        """{"All" | "Things" | "Stuff": {"PQ", "SQ", "RQ", "N"}, "per_class": {category_id: {"PQ", "SQ",
        "RQ"}}}, x100. N = number of categories averaged; a group with N = 0 has NaN metrics (panopticapi
        would divide by zero). Categories without TP/FP/FN get 0 in per_class (as in panopticapi)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = denom > 0
        pq = np.zeros_like(self.iou)
        sq = np.zeros_like(self.iou)
        rq = np.zeros_like(self.iou)
        pq[present] = self.iou[present] / denom[present]
        rq[present] = self.tp[present] / denom[present]
        has_tp = self.tp > 0
        sq[has_tp] = self.iou[has_tp] / self.tp[has_tp]
        isthing = np.array([bool(c.get("isthing", 0)) for c in self.categories.values()])

        results: dict = {}
        for name, group in (("All", np.ones_like(isthing)), ("Things", isthing), ("Stuff", ~isthing)):
            sel = group & present
            n = int(sel.sum())
            if n == 0:
                results[name] = {"PQ": float("nan"), "SQ": float("nan"), "RQ": float("nan"), "N": 0}
            else:
                results[name] = {
                    "PQ": 100 * float(pq[sel].sum() / n),
                    "SQ": 100 * float(sq[sel].sum() / n),
                    "RQ": 100 * float(rq[sel].sum() / n),
                    "N": n,
                }
        results["per_class"] = {
            cat_id: {"PQ": 100 * float(pq[i]), "SQ": 100 * float(sq[i]), "RQ": 100 * float(rq[i])}
            for cat_id, i in self._index.items()
        }
        return results
