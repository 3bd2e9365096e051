"""Every image recipe builds the reference architecture: state-dict key structure and the parameter count
derived independently from the fact sheet's shape tables (§3.2), built on the meta device."""

from __future__ import annotations

import pytest
import torch

from rankseg_fast.config import load_recipe
from rankseg_fast.modeling.build import build_model

SEM = "ade20k/semantic-segmentation/"
PAN = "ade20k/panoptic-segmentation/"
# recipe -> (backbone, queries, RankSeg on, GT oracle on, panoptic on)
RECIPES = {
    SEM + "maskformer2_R50_bs16_160k.yaml": ("R50", 100, False, False, False),
    SEM + "swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640.yaml": ("swin_base", 100, False, False, False),
    SEM + "swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640-rankseg.yaml": ("swin_base", 100, True, False, False),
    SEM + "swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640-gt.yaml": ("swin_base", 100, False, True, False),
    SEM + "swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml": ("swin_large", 100, False, False, False),
    SEM + "swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640-rankseg.yaml": ("swin_large", 100, True, False, False),
    SEM + "swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640-gt.yaml": ("swin_large", 100, False, True, False),
    PAN + "maskformer2_R50_bs16_160k.yaml": ("R50", 100, False, False, True),
    PAN + "swin/maskformer2_swin_large_IN21k_384_bs16_160k.yaml": ("swin_large", 200, False, False, True),
    PAN + "swin/maskformer2_swin_large_IN21k_384_bs16_160k-rankseg.yaml": ("swin_large", 200, True, False, True),
    PAN + "swin/maskformer2_swin_large_IN21k_384_bs16_160k-gt.yaml": ("swin_large", 200, False, True, True),
}
K = 150


def linear(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def resnet50_params():
    """Conv weights only: FrozenBN affine and statistics are buffers, not parameters."""
    total, c_in = 64 * 3 * 7 * 7, 64
    for blocks, mid, out in ((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)):
        for block in range(blocks):
            source = c_in if block == 0 else out
            total += source * mid + mid * mid * 9 + mid * out + (source * out if block == 0 else 0)
        c_in = out
    return total


def swin_params(embed, heads, window=12, depths=(2, 2, 18, 2)):
    total = linear(3 * 16, embed) + 2 * embed  # patch_embed.proj + norm
    for stage, (depth, n_heads) in enumerate(zip(depths, heads)):
        c = embed * 2**stage
        block = (2 * c + (2 * window - 1) ** 2 * n_heads + linear(c, 3 * c) + linear(c, c) + 2 * c
                 + linear(c, 4 * c) + linear(4 * c, c))
        total += depth * block + 2 * c  # blocks + norm{i}
        if stage < 3:
            total += 2 * 4 * c + linear(4 * c, 2 * c, bias=False)  # downsample norm + reduction
    return total


def pixel_decoder_params(channels):  # channels of res2..res5
    c2, c3, c4, c5 = channels
    input_proj = sum(linear(c, 256) + 512 for c in (c5, c4, c3))
    layer = linear(256, 192) + linear(256, 96) + 2 * linear(256, 256) + 2 * 512 + linear(256, 1024) + linear(1024, 256)
    return input_proj + 3 * 256 + 6 * layer + linear(256, 256) + (256 * c2 + 512) + (256 * 256 * 9 + 512)


def predictor_params(queries, cosine):
    attention = linear(256, 768) + linear(256, 256) + 512
    ffn = linear(256, 2048) + linear(2048, 256) + 512
    return (9 * (2 * attention + ffn) + 512 + 2 * queries * 256 + 3 * 256
            + linear(256, K + 1, bias=not cosine) + 3 * linear(256, 256))


def rankseg_params():
    ml_head = (2 * K * 512 + K + linear(256, 512) + 3 * 1024 + linear(512, 1536) + linear(512, 512)
               + linear(512, 2048) + linear(2048, 512))
    return ml_head + 2 * (K + 1)  # + ml_norm


BACKBONES = {
    "R50": (resnet50_params, (256, 512, 1024, 2048)),
    "swin_base": (lambda: swin_params(128, (4, 8, 16, 32)), (128, 256, 512, 1024)),
    "swin_large": (lambda: swin_params(192, (6, 12, 24, 48)), (192, 384, 768, 1536)),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_builds_the_reference_architecture(name):
    backbone, queries, rankseg, oracle, panoptic = RECIPES[name]
    recipe = load_recipe(name)
    with torch.device("meta"):
        model = build_model(recipe)
    backbone_params, channels = BACKBONES[backbone]
    expected = (backbone_params() + pixel_decoder_params(channels) + predictor_params(queries, cosine=rankseg)
                + (rankseg_params() if rankseg else 0))
    assert sum(p.numel() for p in model.parameters()) == expected
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == ({"backbone", "sem_seg_head"} | ({"ml_head", "ml_norm"} if rankseg else set()))
    assert model.sem_seg_head.predictor.query_feat.weight.shape == (queries, 256)
    assert ("sem_seg_head.predictor.class_embed.bias" in keys) == (not rankseg)
    assert model.use_gt_oracle == oracle and model.panoptic_on == panoptic
    assert model.postprocess_before_inference  # the RankSeg reference always resizes first
    if panoptic:
        assert len(model.thing_ids) == 100
    if backbone == "R50":
        assert "backbone.res4.5.conv3.norm.running_var" in keys and "backbone.res4.6.conv1.weight" not in keys


def test_mask2former_reference_resize_order_for_semantic_recipes():
    recipe = load_recipe(SEM + "maskformer2_R50_bs16_160k.yaml", ["MODEL.REFERENCE=mask2former"])
    with torch.device("meta"):
        assert not build_model(recipe).postprocess_before_inference
