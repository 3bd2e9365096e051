"""`MultiScaleMaskedTransformerDecoder`: the Mask2Former (image) transformer decoder, with the RankSeg
options (bias-free cosine class head, raw per-layer query features). State-dict keys equal the reference's
under `sem_seg_head.predictor.` (fact sheet §2.7, §3.2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankseg_fast import ops
from rankseg_fast.modeling.pixel_decoder.msdeform_pixel_decoder import c2_xavier_fill
from rankseg_fast.modeling.pixel_decoder.position_encoding import PositionEmbeddingSine
from rankseg_fast.modeling.transformer_decoder.layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Q learnable queries refined by `dec_layers - 1` layers of masked cross-attention (to level i % 3 of
    the multi-scale features, lowest resolution first) -> self-attention -> FFN; class and mask predictions
    after the initial queries and after every layer. Each prediction's mask logits, resized to the next
    layer's level, are that layer's attention mask (key visible iff logit >= 0; detached).

    Args:
        in_channels: channels of the multi-scale features (a 1x1 conv projects them when != hidden_dim).
        num_classes: K; the class head outputs K + 1 logits (the last is no-object).
        hidden_dim: query channels (256). num_queries: Q (100 or 200). nheads: attention heads (8).
        dim_feedforward: FFN width (2048). dec_layers: DEC_LAYERS (10) -> dec_layers - 1 transformer layers.
        pre_norm: pre-norm layers (False in every recipe). mask_dim: mask-feature channels (256).
        enforce_input_project: use a 1x1 conv even when in_channels == hidden_dim.
        use_cosine_classifier: RankSeg's `USE_LAYERNORM`: bias-free class head whose logits are the cosine
            of the normalised query feature and the normalised class weight (in [-1, 1], no epsilon).
        num_feature_levels: levels cycled through (3).
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 150,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        use_cosine_classifier: bool = False,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        if dec_layers < 2:
            raise ValueError(f"MultiScaleMaskedTransformerDecoder: dec_layers must be >= 2, got {dec_layers}")
        if hidden_dim % 2 != 0:
            raise ValueError(f"MultiScaleMaskedTransformerDecoder: hidden_dim must be even, got {hidden_dim}")
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.use_cosine_classifier = use_cosine_classifier
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        for _ in range(self.num_layers):
            self.transformer_self_attention_layers.append(SelfAttentionLayer(hidden_dim, nheads, pre_norm))
            self.transformer_cross_attention_layers.append(CrossAttentionLayer(hidden_dim, nheads, pre_norm))
            self.transformer_ffn_layers.append(FFNLayer(hidden_dim, dim_feedforward, pre_norm))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1, bias=not use_cosine_classifier)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def classify(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """(B, Q, hidden) normalised query features -> (B, Q, K + 1) class logits."""
        if not self.use_cosine_classifier:
            return self.class_embed(decoder_output)
        z = decoder_output / decoder_output.norm(dim=-1, keepdim=True)
        w = self.class_embed.weight / self.class_embed.weight.norm(dim=-1, keepdim=True)
        return torch.matmul(z, w.t())

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """output (Q, B, hidden), mask_features (B, mask_dim, H, W) -> class logits (B, Q, K+1), mask logits
        (B, Q, H, W) and the next layer's attention-mask logits (B, Q, h_l * w_l) at `target_size` (detached)."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.classify(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask_logits = ops.mask_logits_at_level(outputs_mask, target_size)
        return outputs_class, outputs_mask, attn_mask_logits

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor) -> dict[str, Any]:
        """
        Args:
            x: `num_feature_levels` feature maps (B, in_channels, h_l, w_l), lowest resolution first.
            mask_features: (B, mask_dim, H, W) per-pixel embeddings (stride 4).
        Returns:
            dict with `pred_logits` (B, Q, K+1) and `pred_masks` (B, Q, H, W) of the last prediction,
            `aux_outputs` (dec_layers - 1 dicts of the earlier predictions, the initial-query one first) and
            `query_feature` (dec_layers - 1 raw layer outputs (Q, B, hidden), before decoder_norm).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder: expected {self.num_feature_levels} feature maps in `x`, "
                f"got {len(x)}"
            )
        src, pos, sizes = [], [], []
        for level, feature in enumerate(x):
            if feature.dim() != 4 or feature.shape[0] != mask_features.shape[0]:
                raise ValueError(
                    f"MultiScaleMaskedTransformerDecoder: `x[{level}]` must be (B={mask_features.shape[0]}, C, h, w) "
                    f"to match `mask_features` {tuple(mask_features.shape)}, got {tuple(feature.shape)}"
                )
            sizes.append(tuple(feature.shape[-2:]))
            pos.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1))  # (L, B, hidden)
            projected = self.input_proj[level](feature).flatten(2) + self.level_embed.weight[level][None, :, None]
            src.append(projected.permute(2, 0, 1))
        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)  # (Q, B, hidden)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        predictions_class, predictions_mask, query_feature = [], [], []
        outputs_class, outputs_mask, attn_mask_logits = self.forward_prediction_heads(output, mask_features, sizes[0])
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, src[level], attn_mask_logits, pos=pos[level], query_pos=query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            query_feature.append(output)
            outputs_class, outputs_mask, attn_mask_logits = self.forward_prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)
        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m} for c, m in zip(predictions_class[:-1], predictions_mask[:-1])
            ],
            "query_feature": query_feature,
        }
