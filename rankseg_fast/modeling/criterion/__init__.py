"""Training losses: Mask2Former's set criterion (Hungarian matching through `ops.mask_match`, point-sampled
mask losses, deep supervision) and RankSeg's rank-space variant and multi-label loss."""

from rankseg_fast.modeling.criterion.set_criterion import (
    MULTILABEL_LOSS_WEIGHT,
    SetCriterion,
    dice_loss,
    multilabel_target,
    rankseg_loss,
    sigmoid_ce_loss,
)

__all__ = [
    "SetCriterion",
    "rankseg_loss",
    "multilabel_target",
    "sigmoid_ce_loss",
    "dice_loss",
    "MULTILABEL_LOSS_WEIGHT",
]
