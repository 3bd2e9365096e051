"""A tiny Mask2Former (+ RankSeg) built from the real parts, for fast end-to-end tests on a CPU."""

from __future__ import annotations

import torch

from rankseg_fast.modeling.backbones import SwinTransformer
from rankseg_fast.modeling.meta_arch import MaskFormer, MaskFormerHead
from rankseg_fast.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from rankseg_fast.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder


def tiny_mask_former(num_classes: int = 6, rankseg_topk: int = 0, seed: int = 0, **kwargs) -> MaskFormer:
    """Swin (embed 32, one block per stage) + pixel decoder (32 ch, 1 encoder layer) + decoder (32 ch,
    7 queries, 4 predictions), every part the production module; extra kwargs go to `MaskFormer`."""
    torch.manual_seed(seed)
    backbone = SwinTransformer(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=7,
                               drop_path_rate=0.0)
    pixel_decoder = MSDeformAttnPixelDecoder(backbone.output_shape(), conv_dim=32, mask_dim=32,
                                             transformer_nheads=4, transformer_enc_layers=1,
                                             transformer_dim_feedforward=64)
    predictor = MultiScaleMaskedTransformerDecoder(in_channels=32, num_classes=num_classes, hidden_dim=32,
                                                   num_queries=7, nheads=4, dim_feedforward=64, dec_layers=4,
                                                   mask_dim=32, use_cosine_classifier=rankseg_topk > 0)
    return MaskFormer(backbone=backbone, sem_seg_head=MaskFormerHead(pixel_decoder, predictor),
                      num_classes=num_classes, rankseg_topk=rankseg_topk, rankseg_hidden_dim=64, rankseg_in_dim=32,
                      **kwargs).eval()
