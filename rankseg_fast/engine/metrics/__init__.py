"""Evaluation metrics with the reference semantics, as evaluator objects (reset / process / evaluate).

- `SemSegEvaluator`: mIoU, fwIoU, mACC, pACC (detectron2 ``SemSegEvaluator``; both mIoU averaging rules).
- `PanopticEvaluator`: PQ, SQ, RQ for All / Things / Stuff (panopticapi ``pq_compute``).
- `InstanceEvaluator`: mask AP through pycocotools ``COCOeval`` (needs ``pip install pycocotools``).
"""

from rankseg_fast.data.prediction_files import rgb_to_id
from rankseg_fast.engine.metrics.instance import InstanceEvaluator
from rankseg_fast.engine.metrics.panoptic import PanopticEvaluator
from rankseg_fast.engine.metrics.sem_seg import MIOU_RULES, SemSegEvaluator

__all__ = ["MIOU_RULES", "InstanceEvaluator", "PanopticEvaluator", "SemSegEvaluator", "rgb_to_id"]
