"""Per-image post-processing of Mask2Former outputs: resize/crop, semantic, panoptic, instance inference."""

from rankseg_fast.modeling.postprocess.instance import instance_inference
from rankseg_fast.modeling.postprocess.panoptic import panoptic_inference, thing_class_mask
from rankseg_fast.modeling.postprocess.resize import sem_seg_postprocess, upsample_mask_logits
from rankseg_fast.modeling.postprocess.semantic import (
    semantic_inference,
    semantic_inference_at_output_size,
)

__all__ = [
    "instance_inference",
    "panoptic_inference",
    "sem_seg_postprocess",
    "semantic_inference",
    "semantic_inference_at_output_size",
    "thing_class_mask",
    "upsample_mask_logits",
]
