"""Instance segmentation mask AP through pycocotools ``COCOeval`` (iouType "segm"), as detectron2's
``COCOEvaluator`` reports it: AP, AP50, AP75, APs, APm, APl and per-category AP, x100.

Predictions are COCO result records ``{"image_id", "category_id", "score", "segmentation": RLE}`` — the
records ``rankseg_fast.data.prediction_files.instance_records`` writes to ``instances.json``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover - pycocotools is a test dependency
        raise ImportError(
            "InstanceEvaluator needs pycocotools: pip install pycocotools "
            "(or pip install 'rankseg_fast[coco]')"
        ) from e
    return COCO, COCOeval


class InstanceEvaluator:
    """Mask AP of instance predictions against a COCO instances GT.

    gt: a COCO instances dict (``images``, ``annotations``, ``categories``) or the path of its JSON.
    category_id_map: optional contiguous id -> dataset id applied to the predictions' ``category_id``
    (the model predicts contiguous ids; identity for ADE20K).
    """

    def __init__(self, gt: Mapping | str | Path, category_id_map: Mapping[int, int] | None = None) -> None:
        COCO, _ = _require_pycocotools()
        if isinstance(gt, (str, Path)):
            gt = json.loads(Path(gt).read_text())
        dataset = copy.deepcopy(dict(gt))
        dataset.setdefault("annotations", [])
        for i, ann in enumerate(dataset["annotations"]):
            ann.setdefault("id", i + 1)
            ann.setdefault("iscrowd", 0)
            if "area" not in ann:
                from pycocotools import mask as mask_utils

                image = next(im for im in dataset["images"] if im["id"] == ann["image_id"])
                rles = _to_rles(ann["segmentation"], image["height"], image["width"], mask_utils)
                ann["area"] = float(mask_utils.area(mask_utils.merge(rles)))
        self.coco_gt = COCO()
        self.coco_gt.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco_gt.createIndex()
        self.category_id_map = dict(category_id_map) if category_id_map is not None else None
        self.reset()

    def reset(self) -> None:
        self.records: list[dict] = []

    def process(self, records: Iterable[Mapping]) -> None:
        """Adds the result records of one or more images."""
        for r in records:
            r = dict(r)
            if self.category_id_map is not None:
                r["category_id"] = self.category_id_map[int(r["category_id"])]
            self.records.append(r)

    def merge(self, other: InstanceEvaluator) -> None:
        self.records.extend(other.records)

    def evaluate(self) -> dict[str, float]:
        """{"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<category name>"...} x100; NaN without predictions
        (as detectron2)."""
        _, COCOeval = _require_pycocotools()
        names = {c["id"]: c.get("name", str(c["id"])) for c in self.coco_gt.dataset["categories"]}
        keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        if not self.records:
            return {k: float("nan") for k in keys}
        unknown = {r["image_id"] for r in self.records} - set(self.coco_gt.getImgIds())
        if unknown:
            raise KeyError(f"predictions for images not in the GT: {sorted(map(str, unknown))[:10]}")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco_gt.loadRes(copy.deepcopy(self.records))
            coco_eval = COCOeval(self.coco_gt, coco_dt, "segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        results = {k: 100 * float(v) if v >= 0 else float("nan") for k, v in zip(keys, coco_eval.stats[:6])}
        # per category: precision (T IoUs, R recalls, K categories, A areas, M maxDets); area "all", 100 dets
        precision = coco_eval.eval["precision"]
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            results[f"AP-{names[cat_id]}"] = 100 * float(np.mean(p)) if p.size else float("nan")
        return results


def _to_rles(segmentation, height: int, width: int, mask_utils) -> list:
    if isinstance(segmentation, list):  # polygons
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return [mask_utils.frPyObjects(segmentation, height, width)]
    return [segmentation]
