"""The image meta-architecture: backbone -> pixel decoder -> masked-attention decoder -> [RankSeg] ->
post-processing. Attribute names follow the reference (`backbone`, `sem_seg_head.pixel_decoder`,
`sem_seg_head.predictor`, `ml_head`, `ml_norm`) so released checkpoints load key for key."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankseg_fast import ops
from rankseg_fast.modeling.meta_arch.image_batch import normalize_and_pad
from rankseg_fast.modeling.postprocess import (
    instance_inference,
    panoptic_inference,
    sem_seg_postprocess,
    semantic_inference,
    upsample_mask_logits,
)
from rankseg_fast.modeling.rankseg import MultiLabelHead, image_class_multi_hot, mask_absent_classes


class MaskFormerHead(nn.Module):
    """`sem_seg_head`: the pixel decoder and the transformer decoder (no parameters of its own)."""

    def __init__(self, pixel_decoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(multi_scale_features, mask_features)


class MaskFormer(nn.Module):
    """Mask2Former, optionally with RankSeg (multi-label head + rank-space logits) or the GT-class oracle.

    Args:
        backbone, sem_seg_head: the feature extractor and `MaskFormerHead`.
        num_classes: K.
        pixel_mean, pixel_std: RGB normalisation on the 0-255 scale.
        size_divisibility: batch padding multiple (32).
        rankseg_topk: S > 0 turns RankSeg on (ranking over S classes; S = K in the released recipes).
        rankseg_hidden_dim: width of the multi-label head (512).
        rankseg_in_dim: channels of the decoder query features it reads (CONVS_DIM, 256).
        use_gt_oracle: the "-gt" variant: classes absent from the image's GT get -100 in the final logits.
        semantic_on, panoptic_on, instance_on: which outputs inference produces.
        thing_ids: thing classes (contiguous ids) for panoptic/instance inference.
        object_mask_threshold, overlap_threshold, test_topk_per_image: post-processing settings.
        postprocess_before_inference: resize mask logits to the original size before inference (always in
            RankSeg's code; in Mask2Former only when panoptic or instance output is on).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: MaskFormerHead,
        num_classes: int,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        size_divisibility: int = 32,
        rankseg_topk: int = 0,
        rankseg_hidden_dim: int = 512,
        rankseg_in_dim: int = 256,
        use_gt_oracle: bool = False,
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        thing_ids: Sequence[int] = (),
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
        postprocess_before_inference: bool = True,
    ):
        super().__init__()
        if not 0 <= rankseg_topk <= num_classes:
            raise ValueError(f"MaskFormer: rankseg_topk must be in [0, num_classes={num_classes}], got {rankseg_topk}")
        if (panoptic_on or instance_on) and not postprocess_before_inference:
            raise ValueError("MaskFormer: panoptic and instance inference run at the original size; "
                             "they need postprocess_before_inference=True")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.rankseg_topk = rankseg_topk
        if rankseg_topk:
            self.ml_head = MultiLabelHead(num_classes, d_encoder=rankseg_in_dim, hidden_dim=rankseg_hidden_dim)
            self.ml_norm = nn.LayerNorm(rankseg_topk + 1)
        self.use_gt_oracle = use_gt_oracle
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.thing_ids = tuple(thing_ids)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image
        self.postprocess_before_inference = postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    @property
    def rankseg_on(self) -> bool:
        return self.rankseg_topk > 0

    def forward_logits(self, batch: torch.Tensor, gt_classes: Sequence[torch.Tensor] | None = None) -> dict:
        """Raw predictions of a normalised, padded batch (B, 3, H, W).

        Returns the decoder's dict (`pred_logits` (B, Q, K+1) — (B, Q, S+1) in rank space with RankSeg —,
        `pred_masks` (B, Q, H/4, W/4), `aux_outputs`, `query_feature`) plus, with RankSeg,
        `multilabel_logits` (B, K) and `rank_index` (B, S+1).
        """
        outputs = self.sem_seg_head(self.backbone(batch))
        if self.use_gt_oracle:  # before the ranking, on the final prediction only (as the reference)
            present = image_class_multi_hot(gt_classes, self.num_classes, device=batch.device)
            outputs["pred_logits"] = mask_absent_classes(outputs["pred_logits"], present)
        if self.rankseg_on:
            scores = self.ml_head(outputs["query_feature"][2])
            predictions = [*outputs["aux_outputs"], outputs]
            stacked = torch.stack([p["pred_logits"] for p in predictions])  # (N, B, Q, K+1)
            ranked, rank_index = ops.rank_logits(
                stacked, scores, self.rankseg_topk, self.ml_norm.weight, self.ml_norm.bias, self.ml_norm.eps
            )
            for prediction, logits in zip(predictions, ranked.unbind(0)):
                prediction["pred_logits"] = logits
            outputs["multilabel_logits"] = scores
            outputs["rank_index"] = rank_index
        return outputs

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(3, H_i, W_i) RGB images on the 0-255 scale -> the normalised batch padded to size_divisibility
        (B, 3, H_pad, W_pad) and the unpadded sizes."""
        return normalize_and_pad(list(images), self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        output_sizes: Sequence[tuple[int, int]] | None = None,
        gt_classes: Sequence[torch.Tensor] | None = None,
    ) -> dict | list[dict]:
        """Training mode: `images` is a batch from `preprocess` (B, 3, H_pad, W_pad); returns the raw
        predictions of `forward_logits` for the criterion.

        Eval mode: inference on a list of (3, H_i, W_i) RGB images on the 0-255 scale (already
        test-resized); see `inference`.
        """
        if self.training:
            return self.forward_logits(images, gt_classes)
        with torch.no_grad():
            return self.inference(images, output_sizes, gt_classes)

    def inference(
        self,
        images: Sequence[torch.Tensor],
        output_sizes: Sequence[tuple[int, int]] | None = None,
        gt_classes: Sequence[torch.Tensor] | None = None,
    ) -> list[dict]:
        """Post-processed predictions of a list of images.

        Args:
            output_sizes: per image (height, width) to produce the results at (the original size before
                the test resize); default: the input size.
            gt_classes: per image the GT class ids; required by the "-gt" oracle, unused otherwise.
        Returns:
            per image a dict with `sem_seg` (K, H0, W0) scores, `panoptic_seg` ((H0, W0) int32 ids,
            segments_info) and `instances` (dict of tensors), as enabled.
        """
        batch, sizes = self.preprocess(images)
        output_sizes = list(output_sizes) if output_sizes is not None else sizes
        if len(output_sizes) != len(sizes):
            raise ValueError(f"MaskFormer: {len(sizes)} images but {len(output_sizes)} output sizes")
        outputs = self.forward_logits(batch, gt_classes)
        class_logits = outputs["pred_logits"]
        if self.rankseg_on:
            class_logits = ops.rank_scatter(class_logits, outputs["rank_index"], self.num_classes)
        mask_logits = upsample_mask_logits(outputs["pred_masks"], batch.shape[-2:])
        return [
            self._postprocess(class_logits[i], mask_logits[i], sizes[i], output_sizes[i])
            for i in range(len(sizes))
        ]

    def _postprocess(self, mask_cls, mask_pred, size, output_size) -> dict:
        """Post-processing of one image: mask_cls (Q, K+1), mask_pred (Q, H_pad, W_pad)."""
        height, width = output_size
        result: dict = {}
        if self.postprocess_before_inference:
            mask_pred = sem_seg_postprocess(mask_pred, size, height, width)
        if self.semantic_on:
            sem_seg = semantic_inference(mask_cls, mask_pred)
            if not self.postprocess_before_inference:
                sem_seg = sem_seg_postprocess(sem_seg, size, height, width)
            result["sem_seg"] = sem_seg
        if self.panoptic_on:
            result["panoptic_seg"] = panoptic_inference(
                mask_cls, mask_pred, self.thing_ids, self.object_mask_threshold, self.overlap_threshold
            )
        if self.instance_on:
            result["instances"] = instance_inference(
                mask_cls, mask_pred, self.thing_ids, mask_cls.shape[0], self.test_topk_per_image, self.panoptic_on
            )
        return result
