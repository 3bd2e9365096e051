"""The Mask2Former pixel decoder: sine position encoding, deformable encoder, `MSDeformAttnPixelDecoder`."""

from rankseg_fast.modeling.pixel_decoder.msdeform_encoder import (
    MSDeformAttnEncoder,
    MSDeformAttnEncoderLayer,
    MSDeformAttnTransformerEncoderOnly,
    encoder_reference_points,
)
from rankseg_fast.modeling.pixel_decoder.msdeform_pixel_decoder import (
    Conv2dNorm,
    MSDeformAttnPixelDecoder,
    c2_xavier_fill,
)
from rankseg_fast.modeling.pixel_decoder.position_encoding import PositionEmbeddingSine

__all__ = [
    "Conv2dNorm",
    "MSDeformAttnEncoder",
    "MSDeformAttnEncoderLayer",
    "MSDeformAttnPixelDecoder",
    "MSDeformAttnTransformerEncoderOnly",
    "PositionEmbeddingSine",
    "c2_xavier_fill",
    "encoder_reference_points",
]
