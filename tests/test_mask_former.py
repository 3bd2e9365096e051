"""The image meta-architecture end to end on a tiny model: kernels vs references, RankSeg, the GT oracle,
post-processing outputs and the reference parameter names."""

from __future__ import annotations

import pytest
import torch

from rankseg_fast.ops import use_impl
from rankseg_fast.testing import needs_ops
from rankseg_fast.testing.model import tiny_mask_former


def images(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 70, 90), generator=generator, dtype=torch.uint8),
            torch.randint(0, 256, (3, 64, 50), generator=generator, dtype=torch.uint8)]


@needs_ops
@pytest.mark.parametrize("topk", [0, 6, 4])
def test_kernels_and_references_give_the_same_outputs(topk):
    model = tiny_mask_former(rankseg_topk=topk, panoptic_on=True, instance_on=True, thing_ids=(0, 1, 2),
                             test_topk_per_image=10).double()
    results = {}
    for impl in ("kernel", "reference"):
        with use_impl(impl):
            results[impl] = model(images(), output_sizes=[(140, 180), (64, 50)])
    for a, b in zip(results["kernel"], results["reference"]):
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(a["instances"]["scores"], b["instances"]["scores"], rtol=1e-9, atol=1e-9)
        assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])


def test_output_sizes_and_keys():
    model = tiny_mask_former(rankseg_topk=6, panoptic_on=True, thing_ids=(0, 1))
    out = model(images(), output_sizes=[(35, 45), (128, 100)])
    assert out[0]["sem_seg"].shape == (6, 35, 45) and out[1]["sem_seg"].shape == (6, 128, 100)
    panoptic, segments = out[1]["panoptic_seg"]
    assert panoptic.shape == (128, 100) and panoptic.dtype == torch.int32
    assert {s["id"] for s in segments} <= set(panoptic.unique().tolist()) | {0}
    keys = model.state_dict().keys()
    assert any(k.startswith("backbone.patch_embed.") for k in keys)
    assert any(k.startswith("sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.") for k in keys)
    assert any(k.startswith("sem_seg_head.predictor.transformer_cross_attention_layers.0.") for k in keys)
    assert "sem_seg_head.predictor.class_embed.bias" not in keys  # cosine head with RankSeg
    assert {"ml_norm.weight", "ml_norm.bias", "ml_head.cls_emb", "ml_head.fc.W"} <= set(keys)
    assert not any("pixel_mean" in k or "pixel_std" in k for k in keys)


def test_rankseg_logits_are_in_rank_space_and_scatter_back():
    model = tiny_mask_former(rankseg_topk=4)
    batch = torch.randn(2, 3, 64, 64)
    out = model.forward_logits(batch)
    assert out["pred_logits"].shape == (2, 7, 5) and out["rank_index"].shape == (2, 5)
    assert all(aux["pred_logits"].shape == (2, 7, 5) for aux in out["aux_outputs"])
    assert (out["rank_index"][:, -1] == 6).all()  # the no-object slot comes last
    # Ranks follow the multi-label scores (descending).
    top = out["multilabel_logits"].sort(dim=-1, descending=True, stable=True).indices[:, :4]
    assert torch.equal(out["rank_index"][:, :4], top)


def test_gt_oracle_needs_gt_classes_and_masks_absent_classes():
    model = tiny_mask_former(use_gt_oracle=True)
    with pytest.raises(ValueError, match="needs the image-level ground-truth classes"):
        model(images())
    out = model.forward_logits(torch.randn(2, 3, 64, 64), gt_classes=[torch.tensor([1, 3]), torch.tensor([0])])
    logits = out["pred_logits"]
    assert (logits[0, :, [0, 2, 4, 5]] == -100).all() and (logits[0, :, [1, 3]] != -100).all()
    assert (logits[1, :, 1:6] == -100).all() and (logits[:, :, 6] != -100).all()
    assert not (out["aux_outputs"][0]["pred_logits"] == -100).any()  # aux predictions untouched


def test_semantic_resize_order_follows_the_reference():
    """RankSeg resizes mask logits before inference; Mask2Former (semantic-only) after: different values."""
    before = tiny_mask_former(postprocess_before_inference=True)
    after = tiny_mask_former(postprocess_before_inference=False)
    a = before(images()[:1], output_sizes=[(100, 130)])[0]["sem_seg"]
    b = after(images()[:1], output_sizes=[(100, 130)])[0]["sem_seg"]
    assert a.shape == b.shape == (6, 100, 130)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="need postprocess_before_inference=True"):
        tiny_mask_former(postprocess_before_inference=False, panoptic_on=True)


def test_bad_images_are_refused():
    model = tiny_mask_former()
    with pytest.raises(ValueError, match=r"image 1 must be a \(3, H, W\) RGB tensor"):
        model([images()[0], torch.zeros(64, 64)])
