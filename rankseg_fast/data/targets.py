"""Training/test targets in the loader-agnostic batch format (fact sheet §4.4, §5.1, §7.5).

One sample is a dict::

    image       (3, H, W) uint8 tensor (padded at train time)
    sem_seg     (H, W) int64 tensor (255 = ignore, padding included) or None
    labels      (N,) int64 tensor: class of each mask target (None at test time)
    masks       (N, H, W) bool tensor (None at test time)
    gt_classes  (G,) int64 tensor: sorted image-level classes for RankSeg / the -gt oracle
    height, width   size of the original image (what predictions are resized back to)
    file_name   the image file

Semantic: one target per class present in the padded label map (ignore excluded); gt_classes = those
classes. Panoptic: one target per non-crowd segment of ``segments_info``, masks from the padded id map
(empty if the segment was cropped away); gt_classes = the unique categories of ALL non-crowd segments
(including those cropped out of view, quirk §9.11). Test (RS test mapper): gt_classes = classes with at
least one pixel in the test-resized label map, or the non-crowd ``segments_info`` categories.
"""

from __future__ import annotations

import numpy as np
import torch

from rankseg_fast.data.prediction_files import rgb_to_id

__all__ = ["semantic_targets", "panoptic_targets", "build_train_sample", "build_test_sample"]


def semantic_targets(sem_seg: np.ndarray, ignore_label: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,) int64 sorted, masks (N, H, W) bool) for the classes present in ``sem_seg``."""
    classes = np.unique(sem_seg)
    classes = classes[classes != ignore_label]
    masks = sem_seg[None] == classes[:, None, None] if len(classes) else np.zeros((0,) + sem_seg.shape, bool)
    return torch.as_tensor(classes.astype(np.int64)), torch.from_numpy(np.ascontiguousarray(masks))


def panoptic_targets(pan_ids: np.ndarray, segments_info: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, masks) for every non-crowd segment in ``segments_info`` order; masks may be empty."""
    kept = [s for s in segments_info if not s.get("iscrowd", 0)]
    labels = np.array([s["category_id"] for s in kept], dtype=np.int64)
    ids = np.array([s["id"] for s in kept], dtype=np.int64)
    masks = pan_ids[None] == ids[:, None, None] if len(kept) else np.zeros((0,) + pan_ids.shape, bool)
    return torch.from_numpy(labels), torch.from_numpy(np.ascontiguousarray(masks))


def _non_crowd_classes(segments_info: list[dict]) -> torch.Tensor:
    classes = sorted({int(s["category_id"]) for s in segments_info if not s.get("iscrowd", 0)})
    return torch.tensor(classes, dtype=torch.int64)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def build_train_sample(record: dict, image: np.ndarray, sem_seg: np.ndarray | None, pan_seg: np.ndarray | None,
                       ignore_label: int = 255) -> dict:
    """Batch dict of an augmented training sample. ``pan_seg`` is the padded (H, W, 3) RGB id map."""
    sem_t = torch.from_numpy(sem_seg.astype(np.int64)) if sem_seg is not None else None
    if "segments_info" in record and pan_seg is not None:
        labels, masks = panoptic_targets(rgb_to_id(pan_seg), record["segments_info"])
        gt_classes = _non_crowd_classes(record["segments_info"])
    else:
        if sem_seg is None:
            raise ValueError(f"{record.get('file_name')}: a training sample needs a semantic or panoptic label")
        labels, masks = semantic_targets(sem_seg, ignore_label)
        gt_classes = labels.clone()
    return {
        "image": _image_tensor(image),
        "sem_seg": sem_t,
        "labels": labels,
        "masks": masks,
        "gt_classes": gt_classes,
        "height": record.get("height"),
        "width": record.get("width"),
        "file_name": record["file_name"],
    }


def build_test_sample(record: dict, image: np.ndarray, sem_seg: np.ndarray | None, num_classes: int) -> dict:
    """Batch dict of a test-resized sample (RS test mapper's image-level GT classes)."""
    if "segments_info" in record:
        gt_classes = _non_crowd_classes(record["segments_info"])
    elif sem_seg is not None:
        hist = np.bincount(sem_seg.ravel(), minlength=256)[:num_classes]
        gt_classes = torch.from_numpy(np.nonzero(hist)[0].astype(np.int64))
    else:
        gt_classes = torch.zeros(0, dtype=torch.int64)
    return {
        "image": _image_tensor(image),
        "sem_seg": torch.from_numpy(sem_seg.astype(np.int64)) if sem_seg is not None else None,
        "labels": None,
        "masks": None,
        "gt_classes": gt_classes,
        "height": record.get("height"),
        "width": record.get("width"),
        "file_name": record["file_name"],
    }
