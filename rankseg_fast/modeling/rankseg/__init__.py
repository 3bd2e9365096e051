"""RankSeg components: the multi-label head, its asymmetric loss, the rank-wise LayerNorm (`ml_norm`) and
the `-gt` oracle masking. The rank-space ops themselves live in `rankseg_fast.ops` (`rank_logits`,
`rank_scatter`, `relabel_targets`)."""

from rankseg_fast.modeling.rankseg.asymmetric_loss import AsymmetricLoss
from rankseg_fast.modeling.rankseg.gt_oracle import ORACLE_FILL, image_class_multi_hot, mask_absent_classes
from rankseg_fast.modeling.rankseg.multilabel_head import MultiLabelHead
from rankseg_fast.modeling.rankseg.rank_norm import build_rank_norm

__all__ = [
    "AsymmetricLoss",
    "MultiLabelHead",
    "build_rank_norm",
    "image_class_multi_hot",
    "mask_absent_classes",
    "ORACLE_FILL",
]
