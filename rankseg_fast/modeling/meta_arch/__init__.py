"""Meta-architectures: the image model (`MaskFormer`); the video model comes later and reuses its parts."""

from rankseg_fast.modeling.meta_arch.image_batch import normalize_and_pad
from rankseg_fast.modeling.meta_arch.mask_former import MaskFormer, MaskFormerHead

__all__ = ["MaskFormer", "MaskFormerHead", "normalize_and_pad"]
