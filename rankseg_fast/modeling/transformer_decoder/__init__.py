"""The Mask2Former masked-attention transformer decoder (image version)."""

from rankseg_fast.modeling.transformer_decoder.layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from rankseg_fast.modeling.transformer_decoder.masked_transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["CrossAttentionLayer", "FFNLayer", "MLP", "MultiScaleMaskedTransformerDecoder", "SelfAttentionLayer"]
