"""Mask2Former's set criterion (fact sheet §5.3) with RankSeg's rank-space variant (§4.4).

For every decoder prediction (the final one and, with deep supervision, each aux one) the queries are matched
to the targets with `ops.mask_match` (all predictions in one call) and three losses are computed:
  * loss_ce:   weighted cross-entropy over all B·Q queries (unmatched -> the last, no-object index; class
               weights `empty_weight`, last = no_object_weight), i.e. Σ w_t·NLL / Σ w_t;
  * loss_mask: Σ_pairs mean_p BCE-with-logits at importance-sampled points / num_masks;
  * loss_dice: Σ_pairs dice loss at the same points / num_masks.
Aux losses carry the suffixes `_0 .. _{L-2}` (aux order). num_masks = number of targets, summed over ranks
and divided by the world size when torch.distributed is initialised, clamped >= 1.

RankSeg: with a `rank_index` (B, S+1), the targets are re-labelled to ranks (classes outside the top-S are
dropped with their masks) for the matching, num_masks and every layer; the classification runs on the S+1
rank-space logits with default target S and the last S+1 entries of `empty_weight`. `loss_ml` (the
asymmetric multi-label loss × 10) is added as is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rankseg_fast import ops
from rankseg_fast.modeling.rankseg.asymmetric_loss import AsymmetricLoss
from rankseg_fast.modeling.rankseg.gt_oracle import image_class_multi_hot
from rankseg_fast.ops.host_copy import host_ints_to

__all__ = ["SetCriterion", "rankseg_loss", "multilabel_target", "MULTILABEL_LOSS_WEIGHT"]

MULTILABEL_LOSS_WEIGHT = 10.0
_SUFFIX = re.compile(r"_\d+$")


def multilabel_target(gt_classes: Sequence[torch.Tensor], num_classes: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """RankSeg's multi-label target: (B, K) float multi-hot of each image's GT classes (repeats allowed,
    the video dummy class K ignored)."""
    return image_class_multi_hot(gt_classes, num_classes, device=device).float()


def rankseg_loss(
    multilabel_logits: torch.Tensor,
    gt_classes: Sequence[torch.Tensor],
    weight: float = MULTILABEL_LOSS_WEIGHT,
    loss_fn: nn.Module | None = None,
) -> torch.Tensor:
    """`loss_ml` = AsymmetricLoss(multilabel_logits (B, K), multi-hot of gt_classes) × weight (a scalar, never
    re-weighted by `weighted_total`). gt_classes: B int tensors of the image's class ids — all its targets'
    labels before any rank re-labelling (panoptic: every non-crowd segment, also those cropped away)."""
    loss_fn = AsymmetricLoss() if loss_fn is None else loss_fn
    K = multilabel_logits.shape[-1]
    target = multilabel_target(gt_classes, K, device=multilabel_logits.device)
    return loss_fn(multilabel_logits, target) * weight


def _reduce_num_masks(count: int, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return max(float(count), 1.0)  # known on the host: no device round trip
    num_masks = torch.as_tensor([float(count)], dtype=torch.float32, device=device)
    dist.all_reduce(num_masks)
    return torch.clamp(num_masks / dist.get_world_size(), min=1).item()


def _matched_slots(pairs_per_image: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, slot) of every matched pair, image-major: image b fills slots 0 .. pairs_per_image[b] - 1 of
    every prediction (the `mask_match` contract). Built on the host and copied without synchronising."""
    image = [b for b, n in enumerate(pairs_per_image) for _ in range(n)]
    slot = [s for n in pairs_per_image for s in range(n)]
    batch_idx, slot_idx = host_ints_to([image, slot], device)
    return batch_idx, slot_idx


class SetCriterion(nn.Module):
    """Mask2Former losses (see the module docstring).

    Args:
        num_classes: K.
        class_weight, mask_weight, dice_weight: matcher cost weights and loss weights (2 / 5 / 5).
        no_object_weight: class weight of the no-object index (0.1).
        num_points: points per mask (12544) in the matcher and the mask losses.
        oversample_ratio, importance_sample_ratio: importance sampling of the mask losses (3.0 / 0.75).
        deep_supervision: also match and supervise every aux prediction.
        multilabel_weight: scale of `loss_ml` when the outputs carry `multilabel_logits` (RankSeg; 10).
    """

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        multilabel_weight: float = MULTILABEL_LOSS_WEIGHT,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.multilabel_weight = multilabel_weight
        self.multilabel_loss = AsymmetricLoss()
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight)  # persistent: `criterion.empty_weight` in checkpoints
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight,
                            "loss_ml": 1.0}

    # ------------------------------------------------------------------------------------------------------
    def forward(
        self,
        outputs: dict,
        targets: Sequence[dict],
        rank_index: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder dict: `pred_logits` (B, Q, C), `pred_masks` (B, Q, h, w), `aux_outputs`
                (list of such dicts), optionally `multilabel_logits` (B, K) and `rank_index` (B, S+1).
            targets: B dicts {"labels": (n,) int64 class ids, "masks": (n, H, W) at the padded input size}.
            rank_index: (B, S+1) int64 RankSeg rank index; defaults to outputs["rank_index"] when present.
                With it, C must be S+1; without it, C must be K+1.
            generator: seeded random source of all point draws (matcher and importance sampling).

        Returns:
            dict of scalar losses: loss_ce, loss_mask, loss_dice, their `_i` aux versions, and loss_ml when
            outputs has `multilabel_logits`. Unweighted except loss_ml (see `weighted_total`).
        """
        if rank_index is None:
            rank_index = outputs.get("rank_index")
        B = outputs["pred_logits"].shape[0]
        if len(targets) != B:
            raise ValueError(f"SetCriterion: {len(targets)} targets for a batch of {B} predictions")
        device = outputs["pred_logits"].device
        gt_labels = [t["labels"].to(device) for t in targets]
        masks = [t["masks"].to(device) for t in targets]
        labels = gt_labels
        if rank_index is not None:
            labels, keep = ops.relabel_targets(gt_labels, rank_index, self.num_classes)
            # the kept counts are host-known: select the masks without a host read per image
            masks = [m[torch.nonzero_static(k, size=lab.shape[0]).view(-1)]
                     for m, k, lab in zip(masks, keep, labels)]
            expected = rank_index.shape[1]
        else:
            expected = self.num_classes + 1
        if outputs["pred_logits"].shape[-1] != expected:
            raise ValueError(
                f"SetCriterion: `pred_logits` has {outputs['pred_logits'].shape[-1]} classes, expected {expected} "
                + ("(S+1 rank-space logits for the given rank_index)" if rank_index is not None else
                   f"(num_classes + 1 = {self.num_classes + 1}; pass rank_index for rank-space logits)")
            )
        num_masks = _reduce_num_masks(sum(int(lab.shape[0]) for lab in labels), device)
        target_labels, target_masks, target_valid = ops.pad_targets(labels, masks)

        predictions = [outputs]
        suffixes = [""]
        if self.deep_supervision and outputs.get("aux_outputs"):
            predictions = [*outputs["aux_outputs"], outputs]
            suffixes = [f"_{i}" for i in range(len(outputs["aux_outputs"]))] + [""]
        query_index, target_index, _ = ops.mask_match(
            torch.stack([p["pred_logits"].detach() for p in predictions]),
            torch.stack([p["pred_masks"].detach() for p in predictions]),
            target_labels, target_masks, target_valid, self.num_points,
            self.class_weight, self.mask_weight, self.dice_weight, generator,
        )

        # An exact assignment matches min(Q, n_b) pairs of image b in its first slots, in every prediction.
        Q = outputs["pred_logits"].shape[1]
        batch_idx, slot = _matched_slots([min(Q, int(lab.shape[0])) for lab in labels], device)
        losses: dict[str, torch.Tensor] = {}
        # Final prediction first (the reference's order of random draws), then aux 0..L-2.
        order = [len(predictions) - 1, *range(len(predictions) - 1)]
        for layer in order:
            prediction, suffix = predictions[layer], suffixes[layer]
            q_idx = query_index[layer, batch_idx, slot]
            t_idx = target_index[layer, batch_idx, slot]
            losses["loss_ce" + suffix] = self.loss_labels(prediction["pred_logits"], target_labels,
                                                          batch_idx, q_idx, t_idx)
            loss_mask, loss_dice = self.loss_masks(prediction["pred_masks"], target_masks, batch_idx, q_idx,
                                                   t_idx, num_masks, generator)
            losses["loss_mask" + suffix] = loss_mask
            losses["loss_dice" + suffix] = loss_dice
        if outputs.get("multilabel_logits") is not None:
            losses["loss_ml"] = rankseg_loss(outputs["multilabel_logits"], gt_labels, self.multilabel_weight,
                                             self.multilabel_loss)
        return losses

    def loss_labels(self, logits: torch.Tensor, target_labels: torch.Tensor, batch_idx: torch.Tensor,
                    q_idx: torch.Tensor, t_idx: torch.Tensor) -> torch.Tensor:
        """Weighted CE over all (B, Q) queries; logits (B, Q, C) -> fp32; matched queries take their target's
        label, the rest C−1 (no-object / rank S); class weights = the last C entries of empty_weight."""
        logits = logits.float()
        C = logits.shape[-1]
        target_classes = torch.full(logits.shape[:2], C - 1, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, q_idx] = target_labels[batch_idx, t_idx]
        weight = self.empty_weight[-C:].to(logits.device)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def loss_masks(self, pred_masks: torch.Tensor, target_masks: torch.Tensor, batch_idx: torch.Tensor,
                   q_idx: torch.Tensor, t_idx: torch.Tensor, num_masks: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid-CE and dice of the matched pairs at importance-sampled points, each summed over the pairs
        and divided by num_masks. pred_masks (B, Q, h, w); target_masks (B, T, H, W)."""
        if batch_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0
            return zero.float(), zero.float()
        src = pred_masks[batch_idx, q_idx][:, None]  # (R, 1, h, w)
        tgt = target_masks[batch_idx, t_idx][:, None].to(src.dtype)  # (R, 1, H, W)
        with torch.no_grad():
            coords = ops.uncertain_point_coords(src.detach(), self.num_points, self.oversample_ratio,
                                                self.importance_sample_ratio, generator)
            point_labels = ops.point_sample(tgt, coords)[:, 0].float()
        point_logits = ops.point_sample(src, coords)[:, 0].float()  # (R, P)
        return (
            sigmoid_ce_loss(point_logits, point_labels, num_masks),
            dice_loss(point_logits, point_labels, num_masks),
        )

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ weight·loss with weight by name without its `_i` suffix: loss_ce 2, loss_mask 5, loss_dice 5,
        loss_ml 1 (already scaled). Unknown names raise KeyError."""
        total = None
        for name, value in losses.items():
            base = _SUFFIX.sub("", name)
            if base not in self.weight_dict:
                raise KeyError(f"SetCriterion.weighted_total: no weight for loss {name!r} "
                               f"(known: {sorted(self.weight_dict)})")
            term = value * self.weight_dict[base]
            total = term if total is None else total + term
        if total is None:
            raise ValueError("SetCriterion.weighted_total: no losses given")
        return total


def sigmoid_ce_loss(point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """(R, P) logits and labels -> Σ_r mean_p BCE-with-logits / num_masks."""
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """(R, P) logits and labels -> Σ_r [1 − (2·Σσ(x)t + 1)/(Σσ(x) + Σt + 1)] / num_masks."""
    prob = point_logits.sigmoid()
    numerator = 2 * (prob * point_labels).sum(-1)
    denominator = prob.sum(-1) + point_labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
