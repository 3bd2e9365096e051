"""Semantic segmentation metrics with detectron2 ``SemSegEvaluator`` semantics.

A (K+1) x (K+1) int64 confusion matrix is accumulated over all images before any metric is computed:
rows = prediction, columns = GT, GT ``ignore_label`` mapped to the extra index K. Metrics use the K x K
block only, so predictions on ignored pixels never count. Per-class IoU and accuracy are defined only
for classes with GT pixels. Two mIoU averaging rules exist (both documented in the fact sheet §11):

- ``"gt_or_pred"`` (detectron2 v0.6, the rule of Mask2Former's published numbers, default): the sum of
  the IoUs of the GT classes divided by the number of classes present in GT *or* prediction, i.e.
  predicted-only classes count as IoU 0.
- ``"gt_only"`` (detectron2 after 2022-07-06): the mean IoU over the classes present in GT.

Classes absent from both GT and prediction are excluded by both rules; fwIoU, mACC and pACC do not depend
on the rule. Everything is reported x100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MIOU_RULES = ("gt_or_pred", "gt_only")


class SemSegEvaluator:
    """Accumulates a confusion matrix over images and computes mIoU / fwIoU / mACC / pACC.

    Distributed use: each process calls ``process``; then either ``merge(other)`` evaluators, or all-reduce
    (sum) ``evaluator.confusion`` (a (K+1, K+1) int64 numpy array, assignable) before ``evaluate()``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_label: int = 255,
        miou_rule: str = "gt_or_pred",
        class_names: Sequence[str] | None = None,
    ) -> None:
        if miou_rule not in MIOU_RULES:
            raise ValueError(f"miou_rule must be one of {MIOU_RULES}, got {miou_rule!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_label < num_classes:
            raise ValueError(f"ignore_label {ignore_label} is a valid class id (num_classes={num_classes})")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.miou_rule = miou_rule
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.reset()

    # -- accumulation ---------------------------------------------------------------------------------

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def process(self, pred_labels: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        """Adds one image. pred_labels (H, W): predicted class ids in [0, K); gt (H, W): class ids in
        [0, K) or ``ignore_label``. Torch tensors are counted on their own device (e.g. GPU)."""
        if tuple(pred_labels.shape) != tuple(gt.shape) or len(gt.shape) != 2:
            raise ValueError(
                f"pred_labels {tuple(pred_labels.shape)} and gt {tuple(gt.shape)} must be (H, W) "
                "of equal size"
            )
        k = self.num_classes
        if isinstance(pred_labels, torch.Tensor) or isinstance(gt, torch.Tensor):
            device = pred_labels.device if isinstance(pred_labels, torch.Tensor) else gt.device
            pred = torch.as_tensor(pred_labels, device=device).reshape(-1).long()
            target = torch.as_tensor(gt, device=device).reshape(-1).long()
            target = torch.where(target == self.ignore_label, torch.full_like(target, k), target)
            self._check_range(pred, target)
            counts = torch.bincount((k + 1) * pred + target, minlength=(k + 1) ** 2).cpu().numpy()
        else:
            pred = np.asarray(pred_labels).reshape(-1).astype(np.int64)
            target = np.asarray(gt).reshape(-1).astype(np.int64)
            target = np.where(target == self.ignore_label, k, target)
            self._check_range(pred, target)
            counts = np.bincount((k + 1) * pred + target, minlength=(k + 1) ** 2)
        self.confusion += counts.reshape(k + 1, k + 1)

    def _check_range(self, pred, target) -> None:
        k = self.num_classes
        if pred.numel() if isinstance(pred, torch.Tensor) else pred.size:
            bad_pred = (pred < 0) | (pred >= k)
            if bool(bad_pred.any()):
                values = sorted({int(v) for v in pred[bad_pred][:1000].tolist()})
                raise ValueError(f"pred_labels has values {values[:10]} outside [0, {k})")
            bad_gt = (target < 0) | (target > k)
            if bool(bad_gt.any()):
                values = sorted({int(v) for v in target[bad_gt][:1000].tolist()})
                raise ValueError(
                    f"gt has values {values[:10]} that are neither in [0, {k}) "
                    f"nor ignore_label {self.ignore_label}"
                )

    def merge(self, other: SemSegEvaluator) -> None:
        """Adds another evaluator's counts (e.g. gathered from another process)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError(f"cannot merge confusion {other.confusion.shape} into {self.confusion.shape}")
        self.confusion += other.confusion

    # -- metrics --------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """{"mIoU", "fwIoU", "mACC", "pACC", "IoU-<class>"..., "ACC-<class>"...}, all x100; per-class
        values are NaN for classes without GT pixels (as in detectron2)."""
        conf = self.confusion[:-1, :-1].astype(np.float64)  # drop the ignore row and column
        tp = conf.diagonal()
        pos_gt = conf.sum(axis=0)
        pos_pred = conf.sum(axis=1)
        union = pos_gt + pos_pred - tp
        acc_valid = pos_gt > 0
        iou_valid = acc_valid & (union > 0)
        acc = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        total_gt = pos_gt.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.miou_rule == "gt_or_pred":
                miou = iou[iou_valid].sum() / np.count_nonzero((pos_gt + pos_pred) > 0)
            else:
                miou = iou[iou_valid].sum() / np.count_nonzero(iou_valid)
            macc = acc[acc_valid].sum() / np.count_nonzero(acc_valid)
            fwiou = (iou[iou_valid] * pos_gt[iou_valid] / total_gt).sum() if total_gt > 0 else np.nan
            pacc = tp.sum() / total_gt
        results = {"mIoU": 100 * float(miou), "fwIoU": 100 * float(fwiou)}
        results.update({f"IoU-{name}": 100 * float(v) for name, v in zip(self.class_names, iou)})
        results["mACC"] = 100 * float(macc)
        results["pACC"] = 100 * float(pacc)
        results.update({f"ACC-{name}": 100 * float(v) for name, v in zip(self.class_names, acc)})
        return results
