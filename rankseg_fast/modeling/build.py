"""Building the image model of a recipe (reference config keys, see `rankseg_fast.config`)."""

from __future__ import annotations

from rankseg_fast.data.datasets.metadata import metadata_for
from rankseg_fast.modeling.backbones import Backbone, ResNet, SwinTransformer
from rankseg_fast.modeling.meta_arch import MaskFormer, MaskFormerHead
from rankseg_fast.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from rankseg_fast.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder


def build_backbone_from_recipe(model) -> Backbone:
    """`MODEL.BACKBONE.NAME`: build_resnet_backbone, build_resnet_deeplab_backbone or D2SwinTransformer."""
    name = model.BACKBONE.NAME
    if name in ("build_resnet_backbone", "build_resnet_deeplab_backbone"):
        r = model.RESNETS
        stem = "deeplab" if name == "build_resnet_deeplab_backbone" or r.STEM_TYPE == "deeplab" else "basic"
        return ResNet(depth=r.DEPTH, out_features=tuple(r.OUT_FEATURES), stem_type=stem,
                      stem_out_channels=r.STEM_OUT_CHANNELS, res2_out_channels=r.RES2_OUT_CHANNELS,
                      num_groups=r.NUM_GROUPS, width_per_group=r.WIDTH_PER_GROUP, stride_in_1x1=r.STRIDE_IN_1X1,
                      res4_dilation=r.RES4_DILATION, res5_dilation=r.RES5_DILATION,
                      # only the DeepLab builder reads the multi-grid
                      res5_multi_grid=tuple(r.RES5_MULTI_GRID) if stem == "deeplab" else None, norm=r.NORM, freeze_at=model.BACKBONE.FREEZE_AT)
    if name == "D2SwinTransformer":
        s = model.SWIN
        return SwinTransformer(pretrain_img_size=s.PRETRAIN_IMG_SIZE, patch_size=s.PATCH_SIZE, embed_dim=s.EMBED_DIM,
                               depths=tuple(s.DEPTHS), num_heads=tuple(s.NUM_HEADS), window_size=s.WINDOW_SIZE,
                               mlp_ratio=s.MLP_RATIO, qkv_bias=s.QKV_BIAS, qk_scale=s.QK_SCALE,
                               drop_rate=s.DROP_RATE, attn_drop_rate=s.ATTN_DROP_RATE,
                               drop_path_rate=s.DROP_PATH_RATE, ape=s.APE, patch_norm=s.PATCH_NORM,
                               out_features=tuple(s.OUT_FEATURES), use_checkpoint=s.USE_CHECKPOINT)
    raise ValueError(f"MODEL.BACKBONE.NAME: unknown backbone {name!r}; "
                     "use build_resnet_backbone, build_resnet_deeplab_backbone or D2SwinTransformer")


def build_model(recipe) -> MaskFormer:
    """The image model of `recipe` (a loaded `rankseg_fast.config.Recipe`), in eval mode, randomly initialised
    (load weights with `rankseg_fast.checkpoint.load_model_zoo`)."""
    model = recipe.MODEL
    if model.META_ARCHITECTURE != "MaskFormer":
        raise ValueError(f"MODEL.META_ARCHITECTURE {model.META_ARCHITECTURE!r} is not an image model (MaskFormer)")
    head, mf, rs = model.SEM_SEG_HEAD, model.MASK_FORMER, model.RANKSEG
    backbone = build_backbone_from_recipe(model)
    pixel_decoder = MSDeformAttnPixelDecoder(
        backbone.output_shape(), in_features=tuple(head.IN_FEATURES),
        transformer_in_features=tuple(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES), conv_dim=head.CONVS_DIM,
        mask_dim=head.MASK_DIM, norm=head.NORM, transformer_nheads=mf.NHEADS,
        transformer_enc_layers=head.TRANSFORMER_ENC_LAYERS, transformer_dropout=mf.DROPOUT,
        common_stride=head.COMMON_STRIDE, fp32=head.PIXEL_DECODER_FP32)
    predictor = MultiScaleMaskedTransformerDecoder(
        in_channels=head.CONVS_DIM, num_classes=head.NUM_CLASSES, hidden_dim=mf.HIDDEN_DIM,
        num_queries=mf.NUM_OBJECT_QUERIES, nheads=mf.NHEADS, dim_feedforward=mf.DIM_FEEDFORWARD,
        dec_layers=mf.DEC_LAYERS, pre_norm=mf.PRE_NORM, mask_dim=head.MASK_DIM,
        enforce_input_project=mf.ENFORCE_INPUT_PROJ, use_cosine_classifier=head.USE_LAYERNORM)
    test = mf.TEST
    # RankSeg's code always resizes mask logits before inference; Mask2Former only with panoptic/instance on.
    before = (model.REFERENCE == "rankseg" or test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
              or test.PANOPTIC_ON or test.INSTANCE_ON)
    datasets = list(recipe.DATASETS.TEST) or list(recipe.DATASETS.TRAIN)
    thing_ids = metadata_for(datasets[0]).thing_ids if datasets else ()
    return MaskFormer(
        backbone=backbone, sem_seg_head=MaskFormerHead(pixel_decoder, predictor), num_classes=head.NUM_CLASSES,
        pixel_mean=tuple(model.PIXEL_MEAN), pixel_std=tuple(model.PIXEL_STD), size_divisibility=mf.SIZE_DIVISIBILITY,
        rankseg_topk=rs.TOPK if rs.FLAG else 0, rankseg_hidden_dim=rs.HIDDEN_DIM, rankseg_in_dim=head.CONVS_DIM,
        use_gt_oracle=rs.USE_GT, semantic_on=test.SEMANTIC_ON, panoptic_on=test.PANOPTIC_ON,
        instance_on=test.INSTANCE_ON, thing_ids=thing_ids, object_mask_threshold=test.OBJECT_MASK_THRESHOLD,
        overlap_threshold=test.OVERLAP_THRESHOLD, test_topk_per_image=recipe.TEST.DETECTIONS_PER_IMAGE,
        postprocess_before_inference=before,
    ).eval()
