"""Post-processing (fact sheet §6.1) on hand-built logits with known answers.

Conventions of the hand-built inputs: a class logit row `_cls(c, K)` puts logit 10 on class c (probability
~0.9998 > 0.8), `_cls(c, K, logit=0.0)` gives probability 1/(K+1) (below the 0.8 object threshold); mask
logits are +10 (inside, sigmoid ~1) or -10 (outside, sigmoid ~4.5e-5).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from rankseg_fast.modeling.postprocess import (
    instance_inference,
    panoptic_inference,
    sem_seg_postprocess,
    semantic_inference,
    semantic_inference_at_output_size,
    thing_class_mask,
    upsample_mask_logits,
)

IN, OUT = 10.0, -10.0


def _cls(c: int, num_classes: int, logit: float = 10.0) -> torch.Tensor:
    row = torch.zeros(num_classes + 1)
    row[c] = logit
    return row


def _masks(*binary: list[list[int]]) -> torch.Tensor:
    """(Q, H, W) logits: +10 where the hand-drawn 0/1 map is 1, -10 elsewhere."""
    b = torch.tensor(binary, dtype=torch.float32)
    return torch.where(b > 0, torch.tensor(IN), torch.tensor(OUT))


def _loop_panoptic(mask_cls, mask_pred, thing_ids, obj_thr=0.8, ovl_thr=0.8):
    """A literal, per-query transcription of §6.1 step 7, used as an oracle for the vectorised version."""
    num_classes = mask_cls.shape[1] - 1
    scores, labels = F.softmax(mask_cls, -1).max(-1)
    masks = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > obj_thr)
    s, c, m = scores[keep], labels[keep], masks[keep]
    pan = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    info = []
    if m.shape[0] == 0:
        return pan, info
    ids = (s.view(-1, 1, 1) * m).argmax(0)
    stuff, seg = {}, 0
    for k in range(c.shape[0]):
        cls = c[k].item()
        isthing = cls in set(thing_ids)
        area = (ids == k).sum().item()
        orig = (m[k] >= 0.5).sum().item()
        region = (ids == k) & (m[k] >= 0.5)
        if area > 0 and orig > 0 and region.sum().item() > 0:
            if area / orig < ovl_thr:
                continue
            if not isthing:
                if cls in stuff:
                    pan[region] = stuff[cls]
                    continue
                stuff[cls] = seg + 1
            seg += 1
            pan[region] = seg
            info.append({"id": seg, "isthing": bool(isthing), "category_id": int(cls)})
    return pan, info


# ----------------------------------------------------------------------------------------------- semantic


def test_semantic_inference_formula():
    g = torch.Generator().manual_seed(0)
    mask_cls = torch.randn(5, 4, generator=g)  # Q=5, K=3
    mask_pred = torch.randn(5, 6, 7, generator=g)
    out = semantic_inference(mask_cls, mask_pred)
    assert out.shape == (3, 6, 7)
    probs = mask_cls.softmax(-1)[:, :3]  # softmax over K+1, then drop no-object
    expected = (probs[:, :, None, None] * mask_pred.sigmoid()[:, None]).sum(0)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    # by hand: one query, class logits [0, 0, ln 2] -> probs [1/4, 1/4] after dropping no-object; mask logit 0
    out1 = semantic_inference(torch.tensor([[0.0, 0.0, math.log(2.0)]]), torch.zeros(1, 1, 1))
    torch.testing.assert_close(out1, torch.full((2, 1, 1), 0.125))


def test_semantic_shape_errors():
    with pytest.raises(ValueError, match="mask_cls"):
        semantic_inference(torch.zeros(3, 4), torch.zeros(2, 5, 5))


# ----------------------------------------------------------------------------------------------- panoptic

K = 3  # classes 0, 1, 2; index 3 = no-object
THINGS = {0}  # class 0 is a thing, 1 and 2 are stuff


def test_panoptic_drops_query_below_object_threshold():
    mask_cls = torch.stack([_cls(1, K), _cls(2, K, logit=0.0)])
    mask_pred = _masks([[1, 1, 0, 0]] * 2, [[0, 0, 1, 1]] * 2)
    pan, info = panoptic_inference(mask_cls, mask_pred, THINGS)
    assert pan.dtype == torch.int32 and pan.shape == (2, 4)
    # query 1 is dropped; query 0 owns every pixel but paints only where its own sigmoid >= 0.5
    assert pan.tolist() == [[1, 1, 0, 0]] * 2
    assert info == [{"id": 1, "isthing": False, "category_id": 1}]


def test_panoptic_object_threshold_is_strict():
    row = torch.log(torch.tensor([0.8, 0.1, 0.1]))  # K = 2, no-object last
    score = float(F.softmax(row, -1).max())
    # score == threshold -> dropped (the reference keeps score > threshold)
    pan, info = panoptic_inference(row[None], _masks([[1, 1]]), set(), object_mask_threshold=score)
    assert info == [] and pan.tolist() == [[0, 0]]
    # threshold one float32 step below the score -> kept
    below = float(torch.nextafter(torch.tensor(score), torch.tensor(0.0)))
    pan, info = panoptic_inference(row[None], _masks([[1, 1]]), set(), object_mask_threshold=below)
    assert info == [{"id": 1, "isthing": False, "category_id": 0}] and pan.tolist() == [[1, 1]]


def test_panoptic_drops_no_object_class():
    mask_cls = torch.stack([_cls(K, K), _cls(0, K)])  # query 0 is confidently "no object"
    mask_pred = _masks([[1, 1, 1, 1]], [[0, 0, 1, 1]])
    pan, info = panoptic_inference(mask_cls, mask_pred, THINGS)
    assert pan.tolist() == [[0, 0, 1, 1]]
    assert info == [{"id": 1, "isthing": True, "category_id": 0}]


def _overlap_case(covered: int, own: int):
    """Query 0 (higher score) covers `covered` of the `own` pixels of query 1 (a 1 x 20 image)."""
    width = 20
    mask_cls = torch.stack([_cls(1, K, logit=12.0), _cls(2, K, logit=10.0)])
    q0 = [1 if i < covered else 0 for i in range(width)]
    q1 = [1 if i < own else 0 for i in range(width)]
    return mask_cls, _masks([q0], [q1])


@pytest.mark.parametrize("covered,own,kept", [
    (1, 5, True),    # ratio 4/5 == 0.8 exactly -> kept (the reference skips only if ratio < 0.8)
    (2, 10, True),   # 8/10 == 0.8 -> kept
    (2, 5, False),   # 3/5 = 0.6 -> dropped
    (3, 14, False),  # 11/14 = 0.786 -> dropped
    (3, 16, True),   # 13/16 = 0.8125 -> kept
])
def test_panoptic_overlap_threshold(covered, own, kept):
    mask_cls, mask_pred = _overlap_case(covered, own)
    pan, info = panoptic_inference(mask_cls, mask_pred, THINGS)
    if kept:
        assert [s["category_id"] for s in info] == [1, 2]
        assert pan[0, covered:own].eq(2).all() and pan[0, :covered].eq(1).all()
    else:
        assert [s["category_id"] for s in info] == [1]
        assert pan[0, covered:].eq(0).all() and pan[0, :covered].eq(1).all()
    ref_pan, ref_info = _loop_panoptic(mask_cls, mask_pred, THINGS)
    assert torch.equal(pan, ref_pan) and info == ref_info


def test_panoptic_area_counts_owned_pixels_outside_own_mask():
    # Query 1's own mask (sigmoid >= 0.5) is pixels 0..4; query 0 (higher score) covers pixels 0..1, so the
    # region ratio alone would be 3/5 = 0.6. Query 1 also owns pixels 5..9 where its logit is -1
    # (sigmoid 0.27 > query 0's ~0), so area = 8, original_area = 5: ratio 1.6 -> kept, painted only on 2..4.
    mask_cls = torch.stack([_cls(1, K, logit=12.0), _cls(2, K)])
    q0 = torch.tensor([[IN, IN] + [OUT] * 8])
    q1 = torch.tensor([[IN] * 5 + [-1.0] * 5])
    pan, info = panoptic_inference(mask_cls, torch.stack([q0, q1]), THINGS)
    assert pan.tolist() == [[1, 1, 2, 2, 2, 0, 0, 0, 0, 0]]
    assert [s["id"] for s in info] == [1, 2]


def test_panoptic_stuff_merges_things_do_not_and_ids_follow_query_order():
    mask_cls = torch.stack([_cls(1, K), _cls(0, K), _cls(1, K), _cls(0, K), _cls(2, K)])
    mask_pred = _masks(
        [[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]],  # stuff 1       -> id 1
        [[0, 0, 1, 1, 0, 0, 0, 0, 0, 0]],  # thing 0       -> id 2
        [[0, 0, 0, 0, 1, 1, 0, 0, 0, 0]],  # stuff 1 again -> painted 1, not listed
        [[0, 0, 0, 0, 0, 0, 1, 1, 0, 0]],  # thing 0 again -> id 3 (things never merge)
        [[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]],  # stuff 2       -> id 4
    )
    pan, info = panoptic_inference(mask_cls, mask_pred, THINGS)
    assert pan.tolist() == [[1, 1, 2, 2, 1, 1, 3, 3, 4, 4]]
    assert info == [
        {"id": 1, "isthing": False, "category_id": 1},
        {"id": 2, "isthing": True, "category_id": 0},
        {"id": 3, "isthing": True, "category_id": 0},
        {"id": 4, "isthing": False, "category_id": 2},
    ]
    # the same with thing_ids given as a bool list over K, or as a tensor of ids
    for things in ([True, False, False], torch.tensor([0])):
        pan2, info2 = panoptic_inference(mask_cls, mask_pred, things)
        assert torch.equal(pan, pan2) and info == info2


def test_panoptic_skipped_query_consumes_no_id_and_ties_go_to_first_query():
    # queries 0 and 1 are identical: argmax ties go to query 0, query 1 owns nothing and is skipped
    mask_cls = torch.stack([_cls(0, K), _cls(0, K), _cls(1, K)])
    mask_pred = _masks([[1, 1, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 1, 1]])
    pan, info = panoptic_inference(mask_cls, mask_pred, THINGS)
    assert pan.tolist() == [[1, 1, 2, 2]]
    assert info == [{"id": 1, "isthing": True, "category_id": 0},
                    {"id": 2, "isthing": False, "category_id": 1}]


def test_panoptic_empty_prediction():
    mask_cls = torch.stack([_cls(K, K), _cls(1, K, logit=0.0)])
    pan, info = panoptic_inference(mask_cls, _masks([[1, 1], [1, 1]], [[1, 1], [1, 1]]), THINGS)
    assert pan.dtype == torch.int32 and pan.tolist() == [[0, 0], [0, 0]] and info == []
    # kept queries whose masks are empty everywhere -> also nothing listed
    pan, info = panoptic_inference(_cls(0, K)[None], _masks([[0, 0], [0, 0]]), THINGS)
    assert pan.tolist() == [[0, 0], [0, 0]] and info == []


@pytest.mark.parametrize("overlap", [0.8, 0.5])
@pytest.mark.parametrize("seed", range(8))
def test_panoptic_matches_loop_oracle_on_random_inputs(seed, overlap):
    g = torch.Generator().manual_seed(seed)
    q, k = 12, 4
    mask_cls = torch.randn(q, k + 1, generator=g)
    mask_cls[torch.arange(q), torch.randint(0, k + 1, (q,), generator=g)] += 8  # many confident queries
    coarse = torch.randn(1, q, 3, 3, generator=g) * 6  # blob-like masks
    mask_pred = F.interpolate(coarse, size=(12, 12), mode="bilinear", align_corners=False)[0]
    things = {0, 2}
    pan, info = panoptic_inference(mask_cls, mask_pred, things, 0.8, overlap)
    ref_pan, ref_info = _loop_panoptic(mask_cls, mask_pred, things, 0.8, overlap)
    assert torch.equal(pan, ref_pan) and info == ref_info


def test_panoptic_reads_the_device_twice_per_image():
    """On a GPU each read of tensor values drains the stream: the kept queries, then their areas and classes
    in one go (plus the thing table, built on the host)."""
    from rankseg_fast.testing.host_reads import HostReads

    g = torch.Generator().manual_seed(0)
    mask_cls = torch.randn(12, 5, generator=g)
    mask_cls[torch.arange(12), torch.randint(0, 5, (12,), generator=g)] += 8
    mask_pred = F.interpolate(torch.randn(1, 12, 3, 3, generator=g) * 6, size=(12, 12), mode="bilinear")[0]
    with HostReads() as counter:
        _, info = panoptic_inference(mask_cls, mask_pred, {0, 2}, 0.8, 0.5)
    assert info, "the case must keep some queries"
    assert sorted(name for (name, _), n in counter.reads.items() for _ in range(n)) == ["nonzero", "tolist", "tolist"]


def test_thing_class_mask_forms():
    assert thing_class_mask({1, 7}, 3).tolist() == [False, True, False]  # ids outside [0, K) are ignored
    assert thing_class_mask([True, False, True], 3).tolist() == [True, False, True]
    assert thing_class_mask(torch.tensor([False, True]), 2).tolist() == [False, True]
    assert thing_class_mask(set(), 2).tolist() == [False, False]
    with pytest.raises(ValueError, match="length K"):
        thing_class_mask([True, False], 3)


# ----------------------------------------------------------------------------------------------- instance


def test_instance_topk_with_ties_matches_reference_call():
    k = 2
    # Q=3 queries, K=2: probabilities (after dropping no-object) contain ties across queries
    mask_cls = torch.log(torch.tensor([[0.4, 0.4, 0.2], [0.4, 0.3, 0.3], [0.1, 0.4, 0.5]]))
    mask_pred = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = instance_inference(mask_cls, mask_pred, set(), num_queries=3, test_topk_per_image=3)
    flat = mask_cls.softmax(-1)[:, :k].flatten()
    ref_scores, ref_idx = flat.topk(3, sorted=False)  # the reference's own call decides tie order
    assert out["pred_classes"].tolist() == (ref_idx % k).tolist()
    assert torch.equal(out["pred_masks"], (mask_pred[ref_idx // k] > 0).float())
    # the four tied 0.4 entries: three are chosen, all with probability 0.4
    torch.testing.assert_close(ref_scores, torch.full((3,), 0.4))
    assert out["pred_boxes"].shape == (3, 4) and not out["pred_boxes"].any()  # zero placeholders
    assert out["image_size"] == (4, 4)


def test_instance_mask_score_formula():
    k = 2
    mask_cls = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]]))
    mask_pred = torch.tensor([[[2.0, -1.0, 0.0, 3.0]], [[-1.0, -2.0, -3.0, 0.0]]])
    out = instance_inference(mask_cls, mask_pred, set(), num_queries=2, test_topk_per_image=4)
    by_entry = {(int(i // k), int(i % k)): j for j, i in enumerate(
        mask_cls.softmax(-1)[:, :k].flatten().topk(4, sorted=False).indices)}
    s = torch.sigmoid
    j = by_entry[(0, 0)]
    # mask > 0 is strict: logit 0.0 is outside. mean sigmoid over {2, 3}, denominator + 1e-6
    expected = torch.tensor(0.7) * (s(torch.tensor(2.0)) + s(torch.tensor(3.0))) / (2 + 1e-6)
    torch.testing.assert_close(out["scores"][j], expected)
    assert out["pred_masks"][j].tolist() == [[1.0, 0.0, 0.0, 1.0]]
    j = by_entry[(1, 1)]
    assert out["scores"][j].item() == 0.0  # empty binary mask -> 0 / (0 + 1e-6)
    assert out["pred_masks"].dtype == torch.float32


def test_instance_panoptic_on_keeps_only_things():
    mask_cls = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    mask_pred = torch.ones(2, 2, 2)
    out = instance_inference(mask_cls, mask_pred, {1}, num_queries=2, test_topk_per_image=4, panoptic_on=True)
    assert sorted(out["pred_classes"].tolist()) == [1, 1]
    assert out["pred_masks"].shape == (2, 2, 2) and out["pred_boxes"].shape == (2, 4)
    out = instance_inference(mask_cls, mask_pred, {1}, num_queries=2, test_topk_per_image=4,
                             panoptic_on=False)
    assert sorted(out["pred_classes"].tolist()) == [0, 0, 1, 1]


def test_instance_argument_errors():
    with pytest.raises(ValueError, match="num_queries"):
        instance_inference(torch.zeros(2, 3), torch.zeros(2, 1, 1), set(), num_queries=3,
                           test_topk_per_image=1)
    with pytest.raises(ValueError, match="exceeds"):
        instance_inference(torch.zeros(2, 3), torch.zeros(2, 1, 1), set(), num_queries=2,
                           test_topk_per_image=5)


# ----------------------------------------------------------------------------------------------- resize


def test_upsample_mask_logits_to_padded_size():
    x = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(2))
    y = upsample_mask_logits(x, (32, 40))
    assert y.shape == (2, 3, 32, 40)
    assert torch.equal(y, F.interpolate(x, size=(32, 40), mode="bilinear", align_corners=False))


def test_sem_seg_postprocess_shapes_and_crop():
    # padded input 8 x 8, the resized image occupies the top-left 5 x 6; original image is 10 x 12
    padded = torch.full((2, 8, 8), 100.0)
    padded[0, :5, :6] = 3.0
    padded[1, :5, :6] = -2.0
    out = sem_seg_postprocess(padded, (5, 6), 10, 12)
    assert out.shape == (2, 10, 12)
    # the crop removes the padding completely: constant in, constant out
    assert out[0].eq(3.0).all() and out[1].eq(-2.0).all()
    # without the crop the padding would leak in
    leaked = F.interpolate(padded[None], size=(10, 12), mode="bilinear", align_corners=False)[0]
    assert leaked.max() > 50
    # identity when nothing is padded and the output size equals the image size
    x = torch.randn(3, 5, 6)
    assert torch.equal(sem_seg_postprocess(x, (5, 6), 5, 6), x)
    with pytest.raises(ValueError, match="exceeds"):
        sem_seg_postprocess(x, (6, 6), 5, 6)


def test_two_resize_orders_by_hand():
    """RankSeg order (postprocess_before_inference=True, forced in RS): crop/resize the Q mask *logits*, then
    sigmoid/einsum. Mask2Former semantic-only order (False): semantic scores at padded size, then crop/resize
    the K score maps. Example: one query, K = 1, class probability p; padded logits 1 x 3 = [-4, 4, 50]
    (the 50 is padding), image 1 x 2, output 1 x 4. Bilinear 2 -> 4 (align_corners False) samples source
    x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)."""
    mask_cls = torch.tensor([[2.0, 0.0]])
    p = torch.softmax(mask_cls, -1)[0, 0]
    padded = torch.tensor([[[-4.0, 4.0, 50.0]]])
    s = torch.sigmoid

    rs = semantic_inference_at_output_size(mask_cls, padded, (1, 2), 1, 4, postprocess_before_inference=True)
    m2f = semantic_inference_at_output_size(mask_cls, padded, (1, 2), 1, 4,
                                            postprocess_before_inference=False)
    assert rs.shape == m2f.shape == (1, 1, 4)  # both end at (K, H0, W0)
    # intermediate shapes differ: RS runs inference on (Q, H0, W0) logits, M2F on (Q, H_pad, W_pad)
    assert sem_seg_postprocess(padded, (1, 2), 1, 4).shape == (1, 1, 4)
    assert semantic_inference(mask_cls, padded).shape == (1, 1, 3)

    rs_expected = p * s(torch.tensor([-4.0, -2.0, 2.0, 4.0]))
    lo, hi = s(torch.tensor(-4.0)), s(torch.tensor(4.0))
    m2f_expected = p * torch.stack([lo, 0.75 * lo + 0.25 * hi, 0.25 * lo + 0.75 * hi, hi])
    torch.testing.assert_close(rs[0, 0], rs_expected)
    torch.testing.assert_close(m2f[0, 0], m2f_expected)
    # equal where no interpolation happens (clamped ends), different in between
    torch.testing.assert_close(rs[0, 0, [0, 3]], m2f[0, 0, [0, 3]])
    assert (m2f[0, 0, 1] - rs[0, 0, 1]).abs() > 0.1
