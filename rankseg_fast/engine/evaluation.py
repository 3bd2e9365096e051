"""Running a model over a test loader and scoring it: mIoU/fwIoU/mACC/pACC always (against the GT label
maps at their original resolution, as detectron2's evaluator), PQ when the model produces panoptic
output and the dataset has panoptic GT (with test-time augmentation: mIoU only, as the reference). Under DDP every rank scores its shard and the statistics are
summed across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from rankseg_fast.data.datasets.ade20k import read_panoptic_ids, read_semantic_label
from rankseg_fast.data.datasets.metadata import DatasetMetadata
from rankseg_fast.engine.metrics import PanopticEvaluator, SemSegEvaluator
from rankseg_fast.modeling.test_time_augmentation import SemanticTTA


def _all_reduce_sum(array):
    """Sums a numpy statistics array over the ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    tensor = torch.from_numpy(array).to("cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


@torch.no_grad()
def evaluate_model(
    model, loader: DataLoader, metadata: DatasetMetadata, device: torch.device, tta: SemanticTTA | None = None
) -> dict[str, float]:
    """Metrics of `model` (in eval mode) over the loader's samples; returns {"mIoU": ..., "PQ": ...}.
    With `tta` (wrapping the same model) every image is predicted by multi-scale + flip TTA instead."""
    records = {r["file_name"]: r for r in loader.dataset.records}
    num_classes = len(metadata.class_names)
    sem_eval = SemSegEvaluator(num_classes, ignore_label=metadata.ignore_label, class_names=metadata.class_names)
    panoptic = tta is None and model.panoptic_on and all("pan_seg_file_name" in r for r in records.values())
    categories = [{"id": i, "isthing": int(i in metadata.thing_ids), "name": n} for i, n in enumerate(metadata.class_names)]
    pan_eval = PanopticEvaluator(categories) if panoptic else None
    for batch in loader:
        images = [s["image"].to(device) for s in batch]
        sizes = [(s["height"], s["width"]) for s in batch]
        gt_classes = [s["gt_classes"].to(device) for s in batch] if model.use_gt_oracle else None
        if tta is None:
            results = model(images, output_sizes=sizes, gt_classes=gt_classes)
        else:
            results = [tta(image, size, gt_classes[i] if gt_classes else None)
                       for i, (image, size) in enumerate(zip(images, sizes))]
        for sample, result in zip(batch, results):
            record = records[sample["file_name"]]
            gt = read_semantic_label(record["sem_seg_file_name"], record.get("sem_seg_offset", 0))
            sem_eval.process(result["sem_seg"].argmax(0).cpu(), torch.from_numpy(gt.astype("int64")))
            if pan_eval is not None:
                ids, segments = result["panoptic_seg"]
                pan_eval.process(ids.cpu(), segments, read_panoptic_ids(record["pan_seg_file_name"]),
                                 record["segments_info"], image_id=sample["file_name"])
    sem_eval.confusion = _all_reduce_sum(sem_eval.confusion)
    metrics = {k: v for k, v in sem_eval.evaluate().items() if not k.startswith(("IoU-", "ACC-"))}
    if pan_eval is not None:
        for attr in ("tp", "fp", "fn", "iou"):  # per-category statistics
            setattr(pan_eval, attr, _all_reduce_sum(getattr(pan_eval, attr)))
        pq = pan_eval.evaluate()
        metrics.update({f"{group}_{k}": pq[group][k] for group in ("All", "Things", "Stuff") for k in ("PQ", "SQ", "RQ")})
    return metrics
