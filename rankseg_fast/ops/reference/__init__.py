"""Pure-PyTorch references of every op: the specification, the fallback and the test oracle.

They import without the compiled extension and work on any device and in fp64.
"""

from rankseg_fast.ops.reference.ms_deform_attn import check_ms_deform_attn_inputs, ms_deform_attn_reference
from rankseg_fast.ops.reference.masked_attention import (
    blocked_keys,
    check_masked_attention_inputs,
    mask_logits_at_level,
    masked_attention_reference,
)
from rankseg_fast.ops.reference.rank_logits import (
    check_rank_logits_inputs,
    rank_logits_reference,
    rank_order,
    rank_scatter_reference,
    relabel_targets_reference,
)
from rankseg_fast.ops.reference.mask_match import (
    check_mask_match_inputs,
    mask_match_reference,
    class_costs,
    mask_costs,
    match_costs,
    point_mask_costs_reference,
    pad_targets,
)
from rankseg_fast.ops.reference.point_sample import point_sample, uncertain_point_coords, uniform_point_coords

__all__ = ["ms_deform_attn_reference", "check_ms_deform_attn_inputs"]
__all__ += [
    "masked_attention_reference",
    "check_masked_attention_inputs",
    "blocked_keys",
    "mask_logits_at_level",
]
__all__ += [
    "rank_logits_reference",
    "rank_scatter_reference",
    "relabel_targets_reference",
    "rank_order",
    "check_rank_logits_inputs",
]
__all__ += ["mask_match_reference", "match_costs", "class_costs", "mask_costs", "point_mask_costs_reference"]
__all__ += ["check_mask_match_inputs", "pad_targets"]
__all__ += ["point_sample", "uncertain_point_coords", "uniform_point_coords"]
