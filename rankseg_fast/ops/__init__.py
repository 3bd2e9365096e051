"""The ops of rankseg_fast: each public function runs the compiled kernel or its pure-PyTorch reference,
as chosen by `set_impl` (modeling code calls these, never `torch.ops` directly)."""

from rankseg_fast import extension
from rankseg_fast.ops._impl import IMPLS, get_impl, set_impl, use_impl
from rankseg_fast.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn
from rankseg_fast.ops.masked_attention import mask_logits_at_level, masked_attention
from rankseg_fast.ops.rank_logits import rank_logits, rank_scatter, relabel_targets
from rankseg_fast.ops.mask_match import mask_match, pad_targets
from rankseg_fast.ops.mask_match_costs import point_mask_costs
from rankseg_fast.ops.reference.point_sample import point_sample, uncertain_point_coords

if extension.HAS_OPS:  # the fake kernels attach to ops the library defines (autograd is registered in C++)
    from rankseg_fast.ops import _fake  # noqa: F401

__all__ = ["IMPLS", "get_impl", "set_impl", "use_impl", "ms_deform_attn", "MSDeformAttn"]
__all__ += ["masked_attention", "mask_logits_at_level"]
__all__ += ["rank_logits", "rank_scatter", "relabel_targets"]
__all__ += ["mask_match", "pad_targets", "point_mask_costs", "point_sample", "uncertain_point_coords"]
