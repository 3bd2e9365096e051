"""The defaults tree: every key a recipe may set, with its default value.

Key names and nesting are those of the reference detectron2 / Mask2Former / RankSeg configs, restricted
to the keys this package reads. Values are the settings shared by every in-scope model-zoo recipe
(fact sheet §1.2, including the block shared by the ADE20K image recipes). Keys no recipe sets keep
the detectron2 / Mask2Former / RankSeg defaults. Keys that vary per recipe row get a neutral default:
the value all image rows share where there is one (``NUM_CLASSES`` 150, absolute crop), otherwise the
detectron2 default (``MIN_SIZE_TRAIN`` (800,), empty ``DATASETS``). Our own keys are
``MODEL.REFERENCE`` and ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_FP32``. ``rankseg_fast.config.reference`` knows the true detectron2 defaults where they
differ, for reading reference configs.

The type of each default is the type a recipe value must have (see ``recipe.py``): an int is accepted
where a float is expected, a list or tuple where a list is expected, and a key whose default is
``None`` accepts any value.
"""

from __future__ import annotations

import copy

__all__ = ["DEFAULTS", "REFERENCE_CHOICES", "defaults"]

REFERENCE_CHOICES = ("rankseg", "mask2former")

DEFAULTS: dict = {
    "MODEL": {
        # Which reference's behaviour to reproduce where the two differ (fact sheet §6.1, §9.5):
        # "rankseg" forces sem_seg_postprocess_before_inference=True; "mask2former" follows
        # MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE / PANOPTIC_ON / INSTANCE_ON.
        "REFERENCE": "rankseg",
        "META_ARCHITECTURE": "MaskFormer",
        "WEIGHTS": "",
        "MASK_ON": False,
        "PIXEL_MEAN": [123.675, 116.280, 103.530],
        "PIXEL_STD": [58.395, 57.120, 57.375],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 0},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": False,
            "RES4_DILATION": 1,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "STEM_TYPE": "basic",
            "RES5_MULTI_GRID": [1, 1, 1],
        },
        "SWIN": {
            "PRETRAIN_IMG_SIZE": 384,
            "PATCH_SIZE": 4,
            "EMBED_DIM": 96,
            "DEPTHS": [2, 2, 6, 2],
            "NUM_HEADS": [3, 6, 12, 24],
            "WINDOW_SIZE": 12,
            "MLP_RATIO": 4.0,
            "QKV_BIAS": True,
            "QK_SCALE": None,
            "DROP_RATE": 0.0,
            "ATTN_DROP_RATE": 0.0,
            "DROP_PATH_RATE": 0.3,
            "APE": False,
            "PATCH_NORM": True,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "USE_CHECKPOINT": False,
        },
        "SEM_SEG_HEAD": {
            "NAME": "MaskFormerHead",
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 150,
            "CONVS_DIM": 256,
            "MASK_DIM": 256,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
            "PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
            "TRANSFORMER_ENC_LAYERS": 6,
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
            # Present for compatibility; not read by the reference code (fact sheet §9.20).
            "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
            "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
            # RankSeg only: bias-free cosine class head (fact sheet facts #2).
            "USE_LAYERNORM": False,
            # Ours: run the pixel decoder in fp32 with autocast off (the reference numerics), or in the
            # ambient precision (the deformable-attention op supports fp16/bf16 natively).
            "PIXEL_DECODER_FP32": True,
        },
        "MASK_FORMER": {
            "TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
            "TRANSFORMER_IN_FEATURE": "multi_scale_pixel_decoder",
            "DEEP_SUPERVISION": True,
            "NO_OBJECT_WEIGHT": 0.1,
            "CLASS_WEIGHT": 2.0,
            "MASK_WEIGHT": 5.0,
            "DICE_WEIGHT": 5.0,
            "HIDDEN_DIM": 256,
            "NUM_OBJECT_QUERIES": 100,
            "NHEADS": 8,
            "DROPOUT": 0.0,
            "DIM_FEEDFORWARD": 2048,
            "ENC_LAYERS": 0,
            "DEC_LAYERS": 10,
            "PRE_NORM": False,
            "ENFORCE_INPUT_PROJ": False,
            "SIZE_DIVISIBILITY": 32,
            "TRAIN_NUM_POINTS": 12544,
            "OVERSAMPLE_RATIO": 3.0,
            "IMPORTANCE_SAMPLE_RATIO": 0.75,
            "TEST": {
                "SEMANTIC_ON": True,
                "INSTANCE_ON": False,
                "PANOPTIC_ON": False,
                "OVERLAP_THRESHOLD": 0.8,
                "OBJECT_MASK_THRESHOLD": 0.8,
                "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
            },
        },
        "RANKSEG": {
            "FLAG": False,
            "USE_GT": False,
            "LOSS_WEIGHT": 0.0,
            "TOPK": 0,
            "SHARE_EMBEDDING": False,
            "HIDDEN_DIM": 512,
        },
    },
    "INPUT": {
        "FORMAT": "RGB",
        "DATASET_MAPPER_NAME": "mask_former_semantic",
        "MIN_SIZE_TRAIN": [800],
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800,
        "MAX_SIZE_TEST": 1333,
        "RANDOM_FLIP": "horizontal",
        "CROP": {
            "ENABLED": True,
            "TYPE": "absolute",
            "SIZE": [640, 640],
            "SINGLE_CATEGORY_MAX_AREA": 1.0,
        },
        "COLOR_AUG_SSD": True,
        "SIZE_DIVISIBILITY": -1,
        # LSJ (present, unused by every in-scope recipe)
        "IMAGE_SIZE": 1024,
        "MIN_SCALE": 0.1,
        "MAX_SCALE": 2.0,
        # video (fact sheet §1.4)
        "SAMPLING_FRAME_NUM": 2,
        "SAMPLING_FRAME_RANGE": 20,
        "SAMPLING_FRAME_SHUFFLE": False,
        "SAMPLING_RANDOM": True,
        "SAMPLING_INTERVAL": 5,
        "AUGMENTATIONS": [],
    },
    "DATASETS": {"TRAIN": [], "TEST": []},
    "DATALOADER": {
        "NUM_WORKERS": 4,
        "ASPECT_RATIO_GROUPING": True,
        "SAMPLER_TRAIN": "TrainingSampler",
        "FILTER_EMPTY_ANNOTATIONS": True,
    },
    "SOLVER": {
        "OPTIMIZER": "ADAMW",
        "LR_SCHEDULER_NAME": "WarmupPolyLR",
        "MAX_ITER": 160000,
        "BASE_LR": 1e-4,
        "WEIGHT_DECAY": 0.05,
        "WEIGHT_DECAY_NORM": 0.0,
        "WEIGHT_DECAY_EMBED": 0.0,
        "BACKBONE_MULTIPLIER": 0.1,
        "MLHEAD_MULTIPLIER": 1.0,
        "POLY_LR_POWER": 0.9,
        "POLY_LR_CONSTANT_ENDING": 0.0,
        "GAMMA": 0.1,
        "STEPS": [30000],
        "WARMUP_FACTOR": 1.0,
        "WARMUP_ITERS": 0,
        "WARMUP_METHOD": "linear",
        "CHECKPOINT_PERIOD": 5000,
        "IMS_PER_BATCH": 16,
        "CLIP_GRADIENTS": {"ENABLED": True, "CLIP_TYPE": "full_model", "CLIP_VALUE": 0.01, "NORM_TYPE": 2.0},
        "AMP": {"ENABLED": True},
    },
    "TEST": {
        "EVAL_PERIOD": 5000,
        "DETECTIONS_PER_IMAGE": 100,
        "AUG": {"ENABLED": False, "MIN_SIZES": [320, 480, 640, 800, 960, 1120], "MAX_SIZE": 4480, "FLIP": True},
    },
    "OUTPUT_DIR": "./output",
    "SEED": -1,
}


def defaults() -> dict:
    """A fresh deep copy of :data:`DEFAULTS` (callers may mutate it)."""
    return copy.deepcopy(DEFAULTS)
