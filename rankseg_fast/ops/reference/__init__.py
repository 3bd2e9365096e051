"""Pure-PyTorch references of every op: the specification, the fallback and the test oracle.

They import without the compiled extension and work on any device and in fp64.
"""

from rankseg_fast.ops.reference.ms_deform_attn import check_ms_deform_attn_inputs, ms_deform_attn_reference

__all__ = ["ms_deform_attn_reference", "check_ms_deform_attn_inputs"]
