"""RankSeg parts: rank-space ops (rank_logits / rank_scatter / relabel_targets), the multi-label head,
the asymmetric loss and the -gt oracle masking."""

import math

import pytest
import torch

from rankseg_fast.modeling.rankseg import (
    AsymmetricLoss,
    MultiLabelHead,
    build_rank_norm,
    image_class_multi_hot,
    mask_absent_classes,
)
from rankseg_fast.ops import rank_logits, rank_scatter, relabel_targets, use_impl
from rankseg_fast.ops.reference import rank_logits_reference


# ---------------------------------------------------------------- independent oracles (plain loops)
def loop_order(scores_row, k):
    """Selection by repeated max with a strict `>` scan: equal scores keep the lowest index."""
    remaining = list(range(len(scores_row)))
    order = []
    for _ in range(k):
        best = remaining[0]
        for c in remaining[1:]:
            if scores_row[c] > scores_row[best]:
                best = c
        order.append(best)
        remaining.remove(best)
    return order


def loop_rank_logits(class_logits, scores, k, weight, bias, eps=1e-5):
    N, B, Q, K1 = class_logits.shape
    out = torch.empty(N, B, Q, k + 1, dtype=class_logits.dtype)
    index = torch.empty(B, k + 1, dtype=torch.int64)
    for b in range(B):
        order = loop_order(scores[b].tolist(), k) + [K1 - 1]
        index[b] = torch.tensor(order)
        for n in range(N):
            for q in range(Q):
                v = torch.stack([class_logits[n, b, q, c] for c in order])
                mean = v.sum() / (k + 1)
                var = ((v - mean) ** 2).sum() / (k + 1)  # biased
                out[n, b, q] = (v - mean) / torch.sqrt(var + eps) * weight + bias
    return out, index


def _inputs(N=3, B=2, Q=5, K=7, k=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, B, Q, K + 1, generator=g, dtype=dtype)
    scores = torch.randn(B, K, generator=g, dtype=dtype)
    weight = 1 + 0.3 * torch.randn(k + 1, generator=g, dtype=dtype)
    bias = 0.2 * torch.randn(k + 1, generator=g, dtype=dtype)
    return logits, scores, weight, bias


# ---------------------------------------------------------------- rank_logits
@pytest.mark.parametrize("k", [7, 4, 1])
def test_rank_logits_matches_loop(k):
    logits, scores, weight, bias = _inputs(k=k)
    ranked, index = rank_logits(logits, scores, k, weight, bias)
    ref, ref_index = loop_rank_logits(logits, scores, k, weight, bias)
    assert ranked.shape == (3, 2, 5, k + 1) and index.shape == (2, k + 1) and index.dtype == torch.int64
    assert torch.equal(index, ref_index)
    assert (index[:, -1] == 7).all()
    torch.testing.assert_close(ranked, ref, rtol=1e-12, atol=1e-12)


def test_rank_logits_fp32_matches_layer_norm_module():
    logits, scores, _, _ = _inputs(dtype=torch.float32, k=7)
    norm = build_rank_norm(7)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    ranked, index = rank_logits(logits, scores, 7, norm.weight, norm.bias, norm.eps)
    gathered = torch.gather(logits, -1, index[None, :, None, :].expand(3, 2, 5, 8))
    torch.testing.assert_close(ranked, norm(gathered))


def test_rank_logits_ties_go_to_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    logits = torch.randn(2, 2, 3, 7)
    w, b = torch.ones(7), torch.zeros(7)
    _, index = rank_logits(logits, scores, 6, w, b)
    assert index.tolist() == [[1, 2, 5, 0, 4, 3, 6], [0, 1, 2, 3, 4, 5, 6]]
    _, index = rank_logits(logits, scores, 3, w[:4], b[:4])
    assert index.tolist() == [[1, 2, 5, 6], [0, 1, 2, 6]]
    # a long run of ties (beyond any small-size special case of the sort)
    scores = torch.zeros(1, 300)
    scores[0, 150:] = 1.0
    _, index = rank_logits(torch.randn(1, 1, 2, 301), scores, 300, torch.ones(301), torch.zeros(301))
    assert index[0].tolist() == list(range(150, 300)) + list(range(150)) + [300]


def test_rank_logits_gradients():
    logits, scores, weight, bias = _inputs(N=2, B=2, Q=3, K=5, k=3)
    logits.requires_grad_(True), weight.requires_grad_(True), bias.requires_grad_(True)
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: rank_logits(x, scores, 3, w, b)[0], (logits, weight, bias), eps=1e-6, atol=1e-7
    )
    # against autograd of a direct formula
    ranked, index = rank_logits(logits, scores, 3, weight, bias)
    g = torch.randn_like(ranked)
    grads = torch.autograd.grad((ranked * g).sum(), (logits, weight, bias))
    v = torch.gather(logits, -1, index[None, :, None, :].expand(2, 2, 3, 4))
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    direct = (v - mean) / torch.sqrt(var + 1e-5) * weight + bias
    ref = torch.autograd.grad((direct * g).sum(), (logits, weight, bias))
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    # classes outside the top-k get no gradient; the ranking itself is not differentiated
    outside = torch.ones(2, 6, dtype=torch.bool)
    outside.scatter_(1, index, False)
    assert (grads[0].permute(1, 0, 2, 3)[outside[:, None, None, :].expand(2, 2, 3, 6)] == 0).all()
    assert scores.grad is None


def test_rank_logits_low_precision():
    logits, scores, weight, bias = _inputs(dtype=torch.float32)
    ref, _ = rank_logits(logits, scores, 7, weight, bias)
    out, _ = rank_logits(logits.bfloat16(), scores.bfloat16(), 7, weight, bias)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_rank_logits_validation():
    logits, scores, weight, bias = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="`k` must be in"):
        rank_logits(logits, scores, 0, weight[:1], bias[:1])
    with pytest.raises(ValueError, match="`k` must be in"):
        rank_logits(logits, scores, 8, torch.ones(9), torch.zeros(9))
    with pytest.raises(TypeError, match="`k` must be an int"):
        rank_logits(logits, scores, 7.0, weight, bias)
    with pytest.raises(ValueError, match="`weight` must have shape"):
        rank_logits(logits, scores, 6, weight, bias[:7])
    with pytest.raises(ValueError, match="`class_logits` must have shape"):
        rank_logits(logits[..., :-1], scores, 7, weight, bias)
    with pytest.raises(ValueError, match="`class_logits` must have 4 dimensions"):
        rank_logits(logits[0], scores, 7, weight, bias)
    with pytest.raises(TypeError, match="`scores` must be float"):
        rank_logits(logits, scores.long(), 7, weight, bias)
    with pytest.raises(TypeError, match="`class_logits` must be float"):
        rank_logits(logits.long(), scores, 7, weight, bias)
    with pytest.raises(TypeError, match="`scores` must be a tensor"):
        rank_logits(logits, scores.tolist(), 7, weight, bias)


# ---------------------------------------------------------------- rank_scatter
def test_rank_scatter_inverts_full_permutation():
    logits, scores, weight, bias = _inputs()
    ones, zeros = torch.ones_like(weight), torch.zeros_like(bias)
    ranked, index = rank_logits(logits, scores, 7, ones, zeros, eps=0.0)
    back = rank_scatter(ranked, index, 7)
    assert back.shape == logits.shape
    # with identity affine and a full permutation, scattering undoes the gather (on normalised values)
    mean = logits.mean(-1, keepdim=True)
    std = logits.var(-1, unbiased=False, keepdim=True).sqrt()
    torch.testing.assert_close(back, (logits - mean) / std)
    assert not (back == -100).any()
    # a pure permutation round-trip on raw values
    gathered = torch.gather(logits, -1, index[None, :, None, :].expand(3, 2, 5, 8))
    torch.testing.assert_close(rank_scatter(gathered, index, 7), logits, rtol=0, atol=0)


def test_rank_scatter_partial_fills_minus_100():
    logits, scores, weight, bias = _inputs(k=3)
    ranked, index = rank_logits(logits, scores, 3, weight, bias)
    back = rank_scatter(ranked, index, 7)
    assert back.shape == (3, 2, 5, 8)
    for b in range(2):
        for r, c in enumerate(index[b].tolist()):
            torch.testing.assert_close(back[:, b, :, c], ranked[:, b, :, r], rtol=0, atol=0)
        others = [c for c in range(8) if c not in index[b].tolist()]
        assert len(others) == 4 and (back[:, b, :, others] == -100).all()
    # a single layer (B, Q, k+1) works too, with a custom fill; gradient reaches ranked only
    r1 = ranked[-1].detach().requires_grad_(True)
    out = rank_scatter(r1, index, 7, fill=-1e4)
    assert out.shape == (2, 5, 8) and (out == -1e4).sum() == 2 * 5 * 4
    out.sum().backward()
    assert torch.equal(r1.grad, torch.ones_like(r1))


def test_rank_scatter_validation():
    ranked = torch.randn(2, 5, 4)
    with pytest.raises(TypeError, match="`rank_index` must be int64"):
        rank_scatter(ranked, torch.zeros(2, 4, dtype=torch.int32), 7)
    with pytest.raises(ValueError, match="`ranked` has 4 ranks"):
        rank_scatter(ranked, torch.zeros(2, 5, dtype=torch.int64), 7)
    with pytest.raises(ValueError, match="rows but the batch"):
        rank_scatter(ranked, torch.zeros(3, 4, dtype=torch.int64), 7)
    with pytest.raises(ValueError, match="needs 1 <= k <= num_classes"):
        rank_scatter(ranked, torch.zeros(2, 4, dtype=torch.int64), 2)


# ---------------------------------------------------------------- relabel_targets
def test_relabel_targets():
    rank_index = torch.tensor([[4, 1, 2, 6], [0, 5, 3, 6]])  # K = 6, k = 3
    labels = [torch.tensor([1, 6, 0, 4, 4]), torch.tensor([3, 2, 6]), torch.tensor([], dtype=torch.int64)[:0]]
    with pytest.raises(ValueError, match="rows but the batch has 3"):
        relabel_targets(labels, rank_index)
    new, keep = relabel_targets(labels[:2], rank_index, num_classes=6)
    assert [t.tolist() for t in new] == [[1, 3, 0, 0], [2, 3]]
    assert [m.tolist() for m in keep] == [[True, True, False, True, True], [True, False, True]]
    new2, keep2 = relabel_targets(labels[:2], rank_index)  # K read from the index
    assert all(torch.equal(a, b) for a, b in zip(new, new2)) and all(torch.equal(a, b) for a, b in zip(keep, keep2))
    # full permutation: nothing is dropped and the mapping is the inverse permutation
    perm = torch.tensor([[2, 0, 1, 3]])
    new, keep = relabel_targets([torch.tensor([0, 1, 2, 3])], perm)
    assert new[0].tolist() == [1, 2, 0, 3] and keep[0].all()
    # empty image
    new, keep = relabel_targets([torch.zeros(0, dtype=torch.int64)], perm)
    assert new[0].numel() == 0 and keep[0].numel() == 0
    with pytest.raises(ValueError, match="class ids in"):
        relabel_targets([torch.tensor([4])], perm)
    with pytest.raises(TypeError, match=r"`labels\[0\]` must be int64"):
        relabel_targets([torch.tensor([1.0])], perm)


# ---------------------------------------------------------------- MultiLabelHead
HEAD_KEYS = {  # fact sheet §3.2, K = 150, hidden 512, d_encoder 256
    "cls_emb": (1, 150, 512),
    "proj_dec.weight": (512, 256),
    "proj_dec.bias": (512,),
    "block.norm1.weight": (512,),
    "block.norm1.bias": (512,),
    "block.attn.qkv.weight": (1536, 512),
    "block.attn.qkv.bias": (1536,),
    "block.attn.proj.weight": (512, 512),
    "block.attn.proj.bias": (512,),
    "block.norm2.weight": (512,),
    "block.norm2.bias": (512,),
    "block.mlp.fc1.weight": (2048, 512),
    "block.mlp.fc1.bias": (2048,),
    "block.mlp.fc2.weight": (512, 2048),
    "block.mlp.fc2.bias": (512,),
    "norm.weight": (512,),
    "norm.bias": (512,),
    "fc.W": (1, 150, 512),
    "fc.b": (1, 150),
}


def test_multilabel_head_keys_and_init():
    torch.manual_seed(0)
    head = MultiLabelHead(150)
    shapes = {name: tuple(t.shape) for name, t in head.state_dict().items()}
    assert shapes == HEAD_KEYS
    count = sum(math.prod(s) for s in HEAD_KEYS.values())
    assert count == 3_438_742 == sum(p.numel() for p in head.parameters())
    bound = 1 / math.sqrt(512)
    assert head.fc.W.abs().max() <= bound and head.fc.b.abs().max() <= bound
    assert head.fc.W.abs().max() > 0.9 * bound  # uniform over the whole range
    assert abs(head.cls_emb.std().item() - 0.02) < 0.001 and abs(head.cls_emb.mean().item()) < 0.001
    assert head.block.attn.num_heads == 8
    norm = build_rank_norm(150)
    assert tuple(norm.weight.shape) == (151,) and (norm.weight == 1).all() and (norm.bias == 0).all()


def test_multilabel_head_forward():
    torch.manual_seed(0)
    head = MultiLabelHead(10, d_encoder=32, hidden_dim=128).eval()
    assert head.block.attn.num_heads == 2 and head.block.mlp.fc1.out_features == 512
    x = torch.randn(6, 3, 32)  # (Q, B, d_encoder)
    out = head(x)
    assert out.shape == (3, 10)
    torch.testing.assert_close(head(x), out, rtol=0, atol=0)  # eval: no dropout
    # per-image: batching does not mix images
    torch.testing.assert_close(head(x[:, 1:2]), out[1:2], rtol=1e-5, atol=1e-5)
    # a per-class read-out of the class tokens: changing one class token's read-out changes that logit only
    with torch.no_grad():
        head.fc.b[0, 3] += 1.0
    diff = head(x) - out
    assert torch.allclose(diff[:, 3], torch.ones(3)) and diff[:, [0, 1, 2, 4]].abs().max() < 1e-6
    with torch.no_grad():
        head.cls_emb.add_(0.5 * torch.randn_like(head.cls_emb))
    assert not torch.allclose(head(x), out + diff)
    # the head reads the query tokens through attention (changing them changes the output)
    assert not torch.allclose(head(x + 1.0), head(x))
    # dropout is active in training mode
    head.train()
    assert not torch.allclose(head(x), head(x))
    with pytest.raises(ValueError, match="query_feature"):
        head(torch.randn(3, 6, 31))


def test_multilabel_head_matches_manual_formula():
    """Forward against a hand-written pre-norm block (eval mode)."""
    torch.manual_seed(1)
    head = MultiLabelHead(5, d_encoder=16, hidden_dim=64, num_heads=4).eval().double()
    x = torch.randn(7, 2, 16, dtype=torch.float64)
    t = torch.cat([head.proj_dec(x.transpose(0, 1)), head.cls_emb.expand(2, -1, -1)], 1)
    blk = head.block
    h = blk.norm1(t)
    q, k, v = blk.attn.qkv(h).view(2, 12, 3, 4, 16).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * 16**-0.5, -1) @ v
    t = t + blk.attn.proj(a.transpose(1, 2).reshape(2, 12, 64))
    t = t + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(t))))
    t = head.norm(t)[:, -5:]
    ref = (t * head.fc.W).sum(-1) + head.fc.b
    torch.testing.assert_close(head(x), ref)


# ---------------------------------------------------------------- AsymmetricLoss
def direct_asl(x, y, gamma_neg=2.0, gamma_pos=0.0, clip=0.05, eps=1e-5):
    B, K = x.shape
    total = 0.0
    for b in range(B):
        for c in range(K):
            p = torch.sigmoid(x[b, c])
            if y[b, c]:
                total = total + torch.log(torch.clamp(p, min=eps)) * (1 - p) ** gamma_pos
            else:
                pn = torch.clamp(1 - p + clip, max=1.0)
                total = total + torch.log(torch.clamp(pn, min=eps)) * (1 - pn) ** gamma_neg
    return -total / B / K


def test_asymmetric_loss_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 9, generator=g, dtype=torch.float64)).requires_grad_(True)
    with torch.no_grad():
        x[0, 0], x[0, 1], x[1, 0] = -4.0, 30.0, -30.0  # p < clip (negative weight 0), saturated p
    y = torch.rand(4, 9, generator=g) > 0.5
    y[0, 0], y[0, 1], y[1, 0] = False, False, True
    loss = AsymmetricLoss(gamma_neg=2, gamma_pos=0)(x, y)
    ref = direct_asl(x, y)
    torch.testing.assert_close(loss, ref)
    g1 = torch.autograd.grad(loss, x)[0]
    g2 = torch.autograd.grad(direct_asl(x, y), x)[0]
    torch.testing.assert_close(g1, g2)
    assert g1[0, 0] == 0  # negative with p < clip: shifted probability is clamped to 1
    x13 = x.detach()[1:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: AsymmetricLoss()(t, y[1:3]), (x13,))
    # the focusing weight is differentiated: a negative's gradient differs from the detached-weight one
    z = torch.tensor([[1.5]], dtype=torch.float64, requires_grad=True)
    g_full = torch.autograd.grad(AsymmetricLoss()(z, torch.zeros(1, 1)), z)[0]
    pn = 1 - torch.sigmoid(z) + 0.05
    g_detached = torch.autograd.grad(-(torch.log(pn) * ((1 - pn) ** 2).detach()).sum(), z)[0]
    assert not torch.allclose(g_full, g_detached)
    # float targets, fp32 logits, other settings
    x32 = x.detach().float()
    torch.testing.assert_close(AsymmetricLoss()(x32, y.float()), ref.float().detach())
    ref_noclip = direct_asl(x.detach(), y, gamma_neg=4, gamma_pos=1, clip=0.0)
    torch.testing.assert_close(AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0)(x.detach(), y), ref_noclip)
    with pytest.raises(ValueError, match="same shape"):
        AsymmetricLoss()(x32, y[:, :3])


# ---------------------------------------------------------------- -gt oracle
def test_gt_oracle_masking():
    present = image_class_multi_hot([torch.tensor([0, 3, 3]), torch.tensor([5, 2]), torch.tensor([1, 5])], 5)
    expected = [[1, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]  # id 5 = K (video dummy) ignored
    assert present.dtype == torch.bool and present.int().tolist() == expected
    logits = torch.randn(3, 4, 6, requires_grad=True)
    out = mask_absent_classes(logits, present)
    keep = torch.cat([present, torch.ones(3, 1, dtype=torch.bool)], 1)[:, None, :].expand(3, 4, 6)
    assert (out[~keep] == -100).all()
    assert torch.equal(out[keep], logits[keep])
    assert torch.equal(out[..., 5], logits[..., 5])  # no-object untouched
    out.sum().backward()
    assert torch.equal(logits.grad, keep.float())
    # leading dims (stacked layers) broadcast
    assert torch.equal(mask_absent_classes(logits.detach()[None].expand(2, 3, 4, 6), present)[1], out.detach())


def test_gt_oracle_errors():
    with pytest.raises(ValueError, match=r"the -gt \(oracle\) recipe needs the image-level ground-truth classes"):
        image_class_multi_hot(None, 5)
    with pytest.raises(ValueError, match=r"the -gt \(oracle\) recipe needs"):
        mask_absent_classes(torch.randn(1, 2, 6), None)
    with pytest.raises(ValueError, match="does not match"):
        mask_absent_classes(torch.randn(1, 2, 7), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="negative"):
        image_class_multi_hot([torch.tensor([-1])], 5)


def test_reference_impl_is_the_reference():
    """With the reference selected the public op is the reference (kernels: tests/test_rank_logits.py)."""
    logits, scores, weight, bias = _inputs(k=4)
    with use_impl("reference"):
        a = rank_logits(logits, scores, 4, weight, bias)
    b = rank_logits_reference(logits, scores, 4, weight, bias)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
