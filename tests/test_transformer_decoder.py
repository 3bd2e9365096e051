"""The masked-attention op (reference) and the Mask2Former image transformer decoder: numerics against
independent computations (explicit loops, nn.MultiheadAttention with the reference's repeated boolean
masks), checkpoint key set and shapes from the fact sheet (§2.7, §3.2), output structure."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rankseg_fast
from rankseg_fast.modeling.transformer_decoder import CrossAttentionLayer, MultiScaleMaskedTransformerDecoder
from rankseg_fast.ops.reference import mask_logits_at_level, masked_attention_reference

F64 = torch.float64


# ---------------------------------------------------------------- independent oracles


def reference_bool_mask(mask_logits: torch.Tensor, num_heads: int) -> torch.Tensor:
    """What Mask2Former builds: sigmoid < 0.5 = blocked, repeated per head batch-major (index b*H + h),
    then rows that block every key made all-visible. (B, Q, L) -> (B*H, Q, L) bool."""
    mask = (mask_logits.sigmoid().unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1) < 0.5).bool()
    mask[torch.where(mask.sum(-1) == mask.shape[-1])] = False
    return mask


def naive_masked_attention(q, k, v, mask_logits, num_heads):
    """Explicit loops over batch, head and query; softmax over the visible keys only."""
    B, Q, E = q.shape
    D = E // num_heads
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(num_heads):
            channels = slice(h * D, (h + 1) * D)
            for i in range(Q):
                visible = mask_logits[b, i].sigmoid() >= 0.5
                if not bool(visible.any()):
                    visible = torch.ones_like(visible)
                scores = (k[b, visible, channels] @ q[b, i, channels]) / math.sqrt(D)
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                out[b, i, channels] = weights @ v[b, visible, channels]
    return out


def random_mask_logits(B, Q, L, generator):
    """Logits well away from 0, with an exact 0, an all-blocked row and an all-visible row."""
    logits = torch.randn(B, Q, L, generator=generator, dtype=F64)
    logits = logits + logits.sign() * 0.1
    logits[0, 0] = -1.0 - torch.rand(L, generator=generator, dtype=F64)  # all blocked -> sees everything
    logits[0, 1] = -2.0
    logits[0, 1, 3] = 0.0  # exactly 0: visible (sigmoid(0) = 0.5 is not < 0.5); the only visible key
    logits[-1, -1] = 1.0  # all visible
    return logits


# ---------------------------------------------------------------- the op


def test_masked_attention_matches_explicit_loops_fp64():
    g = torch.Generator().manual_seed(0)
    B, Q, L, H, D = 2, 5, 7, 3, 4
    q, k, v = (torch.randn(B, n, H * D, generator=g, dtype=F64, requires_grad=True) for n in (Q, L, L))
    logits = random_mask_logits(B, Q, L, g)
    out = rankseg_fast.ops.masked_attention(q, k, v, logits, H)
    expected = naive_masked_attention(q, k, v, logits, H)
    assert out.shape == (B, Q, H * D) and out.dtype == F64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the exact-0 key is the only one query (0, 1) sees: every head outputs that key's value
    torch.testing.assert_close(out[0, 1], v[0, 3], rtol=1e-12, atol=1e-12)
    # the all-blocked row attends to every key: plain softmax attention
    grad_out = torch.randn(B, Q, H * D, generator=g, dtype=F64)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    for name, got, want in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12, msg=f"grad of {name}")


def test_masked_attention_matches_multihead_attention_with_repeated_bool_mask():
    g = torch.Generator().manual_seed(1)
    B, Q, L, H, D = 3, 6, 10, 4, 5
    q, k, v = (torch.randn(B, n, H * D, generator=g, dtype=F64) for n in (Q, L, L))
    logits = random_mask_logits(B, Q, L, g)
    # nn.MultiheadAttention's core without projections: identity in/out projections
    mha = torch.nn.MultiheadAttention(H * D, H, dtype=F64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.eye(H * D, dtype=F64).repeat(3, 1))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(torch.eye(H * D, dtype=F64))
        mha.out_proj.bias.zero_()
    expected = mha(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                   attn_mask=reference_bool_mask(logits, H), need_weights=False)[0].transpose(0, 1)
    out = masked_attention_reference(q, k, v, logits, H)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_masked_attention_all_blocked_rows_equal_unmasked_attention():
    g = torch.Generator().manual_seed(2)
    B, Q, L, H, D = 2, 3, 5, 2, 3
    q, k, v = (torch.randn(B, n, H * D, generator=g, dtype=F64) for n in (Q, L, L))
    blocked = -torch.rand(B, Q, L, generator=g, dtype=F64) - 0.5
    visible = torch.zeros(B, Q, L, dtype=F64)
    torch.testing.assert_close(rankseg_fast.ops.masked_attention(q, k, v, blocked, H),
                               rankseg_fast.ops.masked_attention(q, k, v, visible, H), rtol=0, atol=0)
    assert not torch.equal(rankseg_fast.ops.masked_attention(q, k, v, blocked, H),
                           rankseg_fast.ops.masked_attention(q, k, v, visible + blocked * (torch.arange(L) > 1), H))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_attention_low_precision_close_to_fp64(dtype):
    g = torch.Generator().manual_seed(3)
    B, Q, L, H, D = 2, 4, 9, 2, 8
    q, k, v = (torch.randn(B, n, H * D, generator=g, dtype=F64) for n in (Q, L, L))
    logits = random_mask_logits(B, Q, L, g)
    expected = masked_attention_reference(q, k, v, logits, H)
    out = rankseg_fast.ops.masked_attention(q.to(dtype), k.to(dtype), v.to(dtype), logits.to(dtype), H)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_masked_attention_gradcheck():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, n, 4, generator=g, dtype=F64, requires_grad=True) for n in (3, 4, 4))
    logits = torch.tensor([[[1.0, -1.0, 0.0, -2.0], [-1.0, -1.0, -1.0, -1.0], [2.0, 2.0, -3.0, 1.0]]], dtype=F64)
    assert torch.autograd.gradcheck(lambda a, b, c: masked_attention_reference(a, b, c, logits, 2), (q, k, v))


def _bad_call(**overrides):
    args = dict(query=torch.zeros(2, 3, 8), key=torch.zeros(2, 5, 8), value=torch.zeros(2, 5, 8),
                mask_logits=torch.zeros(2, 3, 5), num_heads=2)
    args.update(overrides)
    return rankseg_fast.ops.masked_attention(**args)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (dict(query=torch.zeros(2, 3, 2, 4)), "`query` must have 3 dimensions"),
        (dict(key=torch.zeros(2, 5, 6)), "`key` must have shape"),
        (dict(key=torch.zeros(1, 5, 8)), "`key` must have shape"),
        (dict(value=torch.zeros(2, 4, 8)), "`value` must have shape"),
        (dict(mask_logits=torch.zeros(2, 5, 3)), "`mask_logits` must have shape"),
        (dict(mask_logits=torch.zeros(2, 3, 5, dtype=torch.bool)), "`mask_logits` must be a floating"),
        (dict(num_heads=3), "divisible by num_heads"),
        (dict(num_heads=0), "`num_heads` must be a positive int"),
        (dict(value=torch.zeros(2, 5, 8, dtype=F64)), "`value` dtype"),
        (dict(key=[[0.0]]), "`key` must be a tensor"),
        (dict(key=torch.zeros(2, 0, 8), value=torch.zeros(2, 0, 8), mask_logits=torch.zeros(2, 3, 0)),
         "at least one key"),
    ],
)
def test_masked_attention_bad_inputs_name_the_tensor(overrides, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        _bad_call(**overrides)


def test_mask_logits_at_level_is_bilinear_align_corners_false_and_detached():
    g = torch.Generator().manual_seed(5)
    masks = torch.randn(2, 3, 8, 6, generator=g, dtype=F64, requires_grad=True)
    # factor-2 downsampling with align_corners=False samples at 2i + 0.5: the mean of each 2x2 block
    down = mask_logits_at_level(masks, (4, 3))
    blocks = masks.detach().view(2, 3, 4, 2, 3, 2).mean(dim=(3, 5)).flatten(2)
    assert down.shape == (2, 3, 12) and not down.requires_grad
    torch.testing.assert_close(down, blocks, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(mask_logits_at_level(masks, (8, 6)), masks.detach().flatten(2), rtol=0, atol=0)
    # factor-2 upsampling: output pixel 2i+1 samples at i + 0.25 -> 0.75 * x[i] + 0.25 * x[i+1] (rows, cols)
    up = mask_logits_at_level(masks, (16, 12)).view(2, 3, 16, 12)
    x = masks.detach()
    rows = 0.75 * x[:, :, 0] + 0.25 * x[:, :, 1]  # output row 1
    expected = 0.75 * rows[..., 0] + 0.25 * rows[..., 1]  # output col 1
    torch.testing.assert_close(up[:, :, 1, 1], expected, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="`pred_masks`"):
        mask_logits_at_level(masks[0], (4, 3))


# ---------------------------------------------------------------- the cross-attention layer


def test_cross_attention_layer_equals_multihead_attention_post_norm():
    torch.manual_seed(6)
    E, H, Q, L, B = 12, 3, 5, 9, 2
    layer = CrossAttentionLayer(E, H).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))  # nonzero biases, non-trivial LayerNorm
    tgt, query_pos = torch.randn(Q, B, E, dtype=F64), torch.randn(Q, B, E, dtype=F64)
    memory, pos = torch.randn(L, B, E, dtype=F64), torch.randn(L, B, E, dtype=F64)
    logits = random_mask_logits(B, Q, L, torch.Generator().manual_seed(7))
    attn = layer.multihead_attn(tgt + query_pos, memory + pos, memory,
                                attn_mask=reference_bool_mask(logits, H), need_weights=False)[0]
    expected = F.layer_norm(tgt + attn, (E,), layer.norm.weight, layer.norm.bias)
    torch.testing.assert_close(layer(tgt, memory, logits, pos=pos, query_pos=query_pos), expected,
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- keys, shapes, parameter count (§3.2)


def expected_decoder_keys(Q, K, cosine, layers=9, d=256, ff=2048, in_proj_channels=None):
    """The key table of fact sheet §3.2 (prefix `sem_seg_head.predictor.` removed)."""
    keys = {}
    for i in range(layers):
        for wrapper, attn in (("transformer_cross_attention_layers", "multihead_attn"),
                              ("transformer_self_attention_layers", "self_attn")):
            keys[f"{wrapper}.{i}.{attn}.in_proj_weight"] = (3 * d, d)
            keys[f"{wrapper}.{i}.{attn}.in_proj_bias"] = (3 * d,)
            keys[f"{wrapper}.{i}.{attn}.out_proj.weight"] = (d, d)
            keys[f"{wrapper}.{i}.{attn}.out_proj.bias"] = (d,)
            keys[f"{wrapper}.{i}.norm.weight"] = keys[f"{wrapper}.{i}.norm.bias"] = (d,)
        keys[f"transformer_ffn_layers.{i}.linear1.weight"] = (ff, d)
        keys[f"transformer_ffn_layers.{i}.linear1.bias"] = (ff,)
        keys[f"transformer_ffn_layers.{i}.linear2.weight"] = (d, ff)
        keys[f"transformer_ffn_layers.{i}.linear2.bias"] = (d,)
        keys[f"transformer_ffn_layers.{i}.norm.weight"] = keys[f"transformer_ffn_layers.{i}.norm.bias"] = (d,)
    keys["decoder_norm.weight"] = keys["decoder_norm.bias"] = (d,)
    keys["query_feat.weight"] = keys["query_embed.weight"] = (Q, d)
    keys["level_embed.weight"] = (3, d)
    keys["class_embed.weight"] = (K + 1, d)
    if not cosine:
        keys["class_embed.bias"] = (K + 1,)
    for j in range(3):
        keys[f"mask_embed.layers.{j}.weight"] = (d, d)
        keys[f"mask_embed.layers.{j}.bias"] = (d,)
    if in_proj_channels is not None:
        for level in range(3):
            keys[f"input_proj.{level}.weight"] = (d, in_proj_channels, 1, 1)
            keys[f"input_proj.{level}.bias"] = (d,)
    return keys


@pytest.mark.parametrize("Q, cosine", [(100, False), (100, True), (200, False), (200, True)])
def test_decoder_state_dict_matches_reference_keys(Q, cosine):
    with torch.device("meta"):
        model = MultiScaleMaskedTransformerDecoder(num_classes=150, num_queries=Q, use_cosine_classifier=cosine)
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = expected_decoder_keys(Q, 150, cosine)
    assert set(got) == set(expected), (sorted(set(got) - set(expected)), sorted(set(expected) - set(got)))
    assert got == expected
    # parameter count from the table: 9 layers x 1,578,752 + heads and embeddings
    per_layer = 2 * (3 * 256 * 256 + 3 * 256 + 256 * 256 + 256 + 2 * 256) + (2 * 2048 * 256 + 2048 + 256 + 2 * 256)
    assert per_layer == 1_578_752
    heads = 2 * 256 + 2 * Q * 256 + 3 * 256 + 151 * 256 + (0 if cosine else 151) + 3 * (256 * 256 + 256)
    assert sum(p.numel() for p in model.parameters()) == 9 * per_layer + heads
    assert sum(math.prod(s) for s in expected.values()) == 9 * per_layer + heads


def test_decoder_input_projection_keys_when_channels_differ():
    with torch.device("meta"):
        model = MultiScaleMaskedTransformerDecoder(in_channels=512, num_classes=150)
        identity = MultiScaleMaskedTransformerDecoder(num_classes=150)
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert got == expected_decoder_keys(100, 150, False, in_proj_channels=512)
    assert not any(name.startswith("input_proj") for name in identity.state_dict())


# ---------------------------------------------------------------- forward


SMALL = dict(hidden_dim=32, nheads=4, num_queries=5, dim_feedforward=48, dec_layers=4, mask_dim=32)
SIZES = [(2, 3), (4, 5), (7, 9)]  # lowest resolution first
MASK_SIZE = (12, 16)


def small_inputs(B=2, dtype=F64, seed=0, channels=32):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, channels, h, w, generator=g, dtype=dtype) for h, w in SIZES]
    return feats, torch.randn(B, SMALL["mask_dim"], *MASK_SIZE, generator=g, dtype=dtype)


def test_decoder_forward_structure_real_config():
    torch.manual_seed(0)
    model = MultiScaleMaskedTransformerDecoder(num_classes=7, num_queries=10)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 256, h, w, generator=g) for h, w in SIZES]
    mask_features = torch.randn(2, 256, *MASK_SIZE, generator=g)
    out = model(feats, mask_features)
    assert out["pred_logits"].shape == (2, 10, 8)
    assert out["pred_masks"].shape == (2, 10, *MASK_SIZE)
    assert len(out["aux_outputs"]) == 9 and len(out["query_feature"]) == 9
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 10, 8) and aux["pred_masks"].shape == (2, 10, *MASK_SIZE)
    for feature in out["query_feature"]:
        assert feature.shape == (10, 2, 256)
    # the last prediction is made from the last raw layer output
    z = model.decoder_norm(out["query_feature"][-1]).transpose(0, 1)
    torch.testing.assert_close(out["pred_logits"], model.class_embed(z))
    torch.testing.assert_close(out["pred_masks"], torch.einsum("bqc,bchw->bqhw", model.mask_embed(z), mask_features))


def test_decoder_level_schedule_and_masks_from_previous_prediction(monkeypatch):
    torch.manual_seed(1)
    model = MultiScaleMaskedTransformerDecoder(in_channels=32, num_classes=3, **{**SMALL, "dec_layers": 8})
    calls = []
    real = rankseg_fast.ops.masked_attention

    def recording(q, k, v, mask_logits, num_heads):
        calls.append((k.shape[1], mask_logits))
        return real(q, k, v, mask_logits, num_heads)

    monkeypatch.setattr(rankseg_fast.ops, "masked_attention", recording)
    feats, mask_features = small_inputs(dtype=torch.float32)
    out = model(feats, mask_features)
    predictions = out["aux_outputs"] + [{"pred_masks": out["pred_masks"]}]
    assert len(calls) == 7
    for i, (num_keys, mask_logits) in enumerate(calls):
        h, w = SIZES[i % 3]
        assert num_keys == h * w, f"layer {i} should attend level {i % 3}"
        assert mask_logits.shape == (2, 5, h * w)
        assert predictions[i]["pred_masks"].requires_grad
        assert not mask_logits.requires_grad and mask_logits.grad_fn is None, f"layer {i} mask is not detached"
        expected = F.interpolate(predictions[i]["pred_masks"].detach(), size=(h, w), mode="bilinear",
                                 align_corners=False).flatten(2)
        torch.testing.assert_close(mask_logits, expected, rtol=0, atol=0)


def test_decoder_cosine_head():
    torch.manual_seed(2)
    model = MultiScaleMaskedTransformerDecoder(in_channels=32, num_classes=6, use_cosine_classifier=True, **SMALL)
    assert model.class_embed.bias is None
    out = model(*small_inputs(dtype=torch.float32))
    for i, logits in enumerate([a["pred_logits"] for a in out["aux_outputs"][1:]] + [out["pred_logits"]]):
        assert logits.abs().max() <= 1.0 + 1e-6
        z = model.decoder_norm(out["query_feature"][i]).transpose(0, 1)
        w = model.class_embed.weight
        cosine = (z @ w.t()) / (z.norm(dim=-1, keepdim=True) * w.norm(dim=-1)[None, None])
        torch.testing.assert_close(logits, cosine, rtol=1e-5, atol=1e-6)
    assert out["pred_logits"].abs().max() > 0.05  # not degenerate


def straightforward_decoder(model: MultiScaleMaskedTransformerDecoder, feats, mask_features, pre_norm, cosine):
    """An independent re-implementation of the reference forward: sequence-first, nn.MultiheadAttention
    modules called directly with the reference's repeated boolean masks, explicit LayerNorms."""
    H = model.num_heads
    E = model.decoder_norm.weight.shape[0]

    def ln(x, norm):
        return F.layer_norm(x, (E,), norm.weight, norm.bias)

    def heads(t, size):
        z = ln(t, model.decoder_norm).transpose(0, 1)
        w = model.class_embed.weight
        if cosine:
            logits = (z / z.norm(dim=-1, keepdim=True)) @ (w / w.norm(dim=-1, keepdim=True)).t()
        else:
            logits = z @ w.t() + model.class_embed.bias
        e = z
        for j, lin in enumerate(model.mask_embed.layers):
            e = lin(e) if j == 2 else F.relu(lin(e))
        masks = torch.einsum("bqc,bchw->bqhw", e, mask_features)
        resized = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        attn_mask = (resized.sigmoid().flatten(2).unsqueeze(1).repeat(1, H, 1, 1).flatten(0, 1) < 0.5).bool().detach()
        return logits, masks, attn_mask

    src, pos = [], []
    for level, x in enumerate(feats):
        pos.append(model.pe_layer(x).flatten(2).permute(2, 0, 1))
        src.append((x.flatten(2) + model.level_embed.weight[level][None, :, None]).permute(2, 0, 1))
    B = feats[0].shape[0]
    query_pos = model.query_embed.weight[:, None].expand(-1, B, -1)
    t = model.query_feat.weight[:, None].expand(-1, B, -1)
    logits, masks, attn_mask = heads(t, SIZES[0])
    classes, all_masks, raw = [logits], [masks], []
    for i in range(model.num_layers):
        level = i % 3
        attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
        cross = model.transformer_cross_attention_layers[i]
        selfa = model.transformer_self_attention_layers[i]
        ffn = model.transformer_ffn_layers[i]
        if pre_norm:
            t2 = ln(t, cross.norm)
            t = t + cross.multihead_attn(t2 + query_pos, src[level] + pos[level], src[level], attn_mask=attn_mask)[0]
            t2 = ln(t, selfa.norm)
            t = t + selfa.self_attn(t2 + query_pos, t2 + query_pos, t2)[0]
            t = t + ffn.linear2(F.relu(ffn.linear1(ln(t, ffn.norm))))
        else:
            t = ln(t + cross.multihead_attn(t + query_pos, src[level] + pos[level], src[level],
                                            attn_mask=attn_mask)[0], cross.norm)
            t = ln(t + selfa.self_attn(t + query_pos, t + query_pos, t)[0], selfa.norm)
            t = ln(t + ffn.linear2(F.relu(ffn.linear1(t))), ffn.norm)
        raw.append(t)
        logits, masks, attn_mask = heads(t, SIZES[(i + 1) % 3])
        classes.append(logits)
        all_masks.append(masks)
    return classes, all_masks, raw


@pytest.mark.parametrize("pre_norm, cosine", [(False, False), (False, True), (True, False)])
def test_decoder_matches_straightforward_reimplementation_fp64(pre_norm, cosine):
    torch.manual_seed(3)
    model = MultiScaleMaskedTransformerDecoder(in_channels=32, num_classes=4, pre_norm=pre_norm,
                                               use_cosine_classifier=cosine, **SMALL).double()
    with torch.no_grad():  # nonzero attention biases and non-trivial norms
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    feats, mask_features = small_inputs(dtype=F64, seed=4)
    out = model(feats, mask_features)
    classes, masks, raw = straightforward_decoder(model, feats, mask_features, pre_norm, cosine)
    got_classes = [a["pred_logits"] for a in out["aux_outputs"]] + [out["pred_logits"]]
    got_masks = [a["pred_masks"] for a in out["aux_outputs"]] + [out["pred_masks"]]
    assert len(got_classes) == len(classes) == 4 and len(out["query_feature"]) == len(raw) == 3
    for i in range(4):
        torch.testing.assert_close(got_classes[i], classes[i], rtol=1e-10, atol=1e-10, msg=f"logits {i}")
        torch.testing.assert_close(got_masks[i], masks[i], rtol=1e-10, atol=1e-10, msg=f"masks {i}")
    for i in range(3):
        torch.testing.assert_close(out["query_feature"][i], raw[i], rtol=1e-10, atol=1e-10, msg=f"feature {i}")
    # the masks actually block something (otherwise the comparison would not test masking)
    blocked = [(F.interpolate(m, size=SIZES[(i + 1) % 3], mode="bilinear", align_corners=False) < 0).float().mean()
               for i, m in enumerate(masks[:-1])]
    assert all(0.05 < float(b) < 0.95 for b in blocked), blocked
    # gradients reach the queries through the whole decoder
    out["pred_masks"].sum().backward()
    assert model.query_feat.weight.grad is not None and model.query_feat.weight.grad.abs().sum() > 0


def test_decoder_rejects_wrong_number_of_levels():
    model = MultiScaleMaskedTransformerDecoder(in_channels=32, num_classes=2, **SMALL)
    feats, mask_features = small_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        model(feats[:2], mask_features)
