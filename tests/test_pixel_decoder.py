"""MSDeformAttnPixelDecoder: sine position encoding, reference points, checkpoint keys and parameter counts of
the real configs, initialisation, forward shapes and the bilinear FPN merge, kernel vs reference end to end,
fp32 / autocast behaviour and input errors. Small configs keep it fast on 2 CPU cores."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from rankseg_fast.modeling.backbones.base import ShapeSpec
from rankseg_fast.modeling.pixel_decoder import (
    MSDeformAttnPixelDecoder,
    MSDeformAttnTransformerEncoderOnly,
    PositionEmbeddingSine,
    encoder_reference_points,
)
from rankseg_fast.ops import use_impl
from rankseg_fast.testing import needs_ops

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
BACKBONE_CHANNELS = {
    "resnet": (256, 512, 1024, 2048),
    "swin_base": (128, 256, 512, 1024),
    "swin_large": (192, 384, 768, 1536),
}
SMALL_CHANNELS = (16, 24, 40, 48)


def input_shape(channels):
    return {name: ShapeSpec(c, STRIDES[name]) for name, c in zip(STRIDES, channels)}


def small_decoder(seed=0, **kwargs):
    torch.manual_seed(seed)
    args = dict(conv_dim=32, mask_dim=16, transformer_enc_layers=2)
    args.update(kwargs)
    return MSDeformAttnPixelDecoder(input_shape(SMALL_CHANNELS), **args)


def small_features(batch=2, height=64, width=96, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(
            batch, c, height // STRIDES[name], width // STRIDES[name], generator=generator
        ).to(dtype)
        for name, c in zip(STRIDES, SMALL_CHANNELS)
    }


# ---------------------------------------------------------------- position encoding


def sine_formula(height, width, feats, temperature, normalize, scale):
    """(2 * feats, H, W) by the textbook formula, one value at a time."""
    out = torch.empty(2 * feats, height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            y, x = float(i + 1), float(j + 1)
            if normalize:
                y = y / (height + 1e-6) * scale
                x = x / (width + 1e-6) * scale
            for c in range(feats):
                wavelength = temperature ** (2 * (c // 2) / feats)
                fn = math.sin if c % 2 == 0 else math.cos
                out[c, i, j] = fn(y / wavelength)
                out[feats + c, i, j] = fn(x / wavelength)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_position_encoding_matches_formula(normalize):
    feats, temperature, scale = 6, 100.0, 2 * math.pi
    layer = PositionEmbeddingSine(feats, temperature, normalize=normalize, scale=scale if normalize else None)
    x = torch.zeros(2, 5, 3, 4, dtype=torch.float64)
    pos = layer(x)
    assert pos.shape == (2, 2 * feats, 3, 4) and pos.dtype == torch.float64
    expected = sine_formula(3, 4, feats, temperature, normalize, scale)
    torch.testing.assert_close(pos[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pos[1], expected, rtol=0, atol=1e-12)
    pos32 = layer(x.float())
    assert pos32.dtype == torch.float32
    torch.testing.assert_close(pos32[0].double(), expected, rtol=0, atol=1e-5)
    assert list(layer.state_dict()) == []


def test_position_encoding_rejects_scale_without_normalize():
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(8, scale=1.0)


# ---------------------------------------------------------------- reference points


def test_reference_points_are_pixel_centres_on_every_level():
    shapes = [(2, 3), (4, 6), (5, 7)]
    points = encoder_reference_points(shapes, batch=2, device="cpu", dtype=torch.float64)
    tokens = sum(h * w for h, w in shapes)
    assert points.shape == (2, tokens, 3, 2)
    t = 0
    for height, width in shapes:
        for i in range(height):
            for j in range(width):
                own = torch.tensor([(j + 0.5) / width, (i + 0.5) / height], dtype=torch.float64)
                for b in range(2):
                    for level in range(3):
                        assert torch.equal(points[b, t, level], own), (t, level)
                t += 1


@needs_ops
def test_encoder_matches_functional_recomputation():
    """Flatten order, level embedding, post-norm layers with a ReLU FFN, recomputed step by step."""
    torch.manual_seed(0)
    encoder = MSDeformAttnTransformerEncoderOnly(
        d_model=16, nhead=2, num_encoder_layers=2, dim_feedforward=24, num_feature_levels=3, enc_n_points=2
    ).double()
    with torch.no_grad():
        for layer in encoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.1)
            layer.norm1.weight.normal_(1, 0.1)
            layer.norm2.bias.normal_(0, 0.1)
    shapes = [(2, 3), (3, 5), (6, 4)]
    srcs = [torch.randn(2, 16, h, w, dtype=torch.float64) for h, w in shapes]
    pos = [torch.randn(2, 16, h, w, dtype=torch.float64) for h, w in shapes]
    memory, got_shapes, starts = encoder(srcs, pos)
    assert got_shapes == shapes and starts.tolist() == [0, 6, 21] and starts.device.type == "cpu"

    src = torch.cat([s.permute(0, 2, 3, 1).reshape(2, -1, 16) for s in srcs], 1)
    query_pos = torch.cat(
        [p.permute(0, 2, 3, 1).reshape(2, -1, 16) + encoder.level_embed[i] for i, p in enumerate(pos)], 1
    )
    centres = []
    for h, w in shapes:
        for i in range(h):
            for j in range(w):
                centres.append([(j + 0.5) / w, (i + 0.5) / h])
    reference = torch.tensor(centres, dtype=torch.float64)[None, :, None].expand(2, -1, 3, -1)
    spatial = torch.tensor(shapes)
    for layer in encoder.encoder.layers:
        attended = layer.self_attn(src + query_pos, reference, src, spatial, starts)
        x = F.layer_norm(src + attended, (16,), layer.norm1.weight, layer.norm1.bias)
        ffn = F.linear(torch.relu(F.linear(x, layer.linear1.weight, layer.linear1.bias)),
                       layer.linear2.weight, layer.linear2.bias)
        src = F.layer_norm(x + ffn, (16,), layer.norm2.weight, layer.norm2.bias)
    torch.testing.assert_close(memory, src, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- checkpoint keys and parameter counts


def key_table(channels, layers=6):
    """Fact sheet §3.2, prefix `sem_seg_head.pixel_decoder.` removed."""
    c_res2, c_res3, c_res4, c_res5 = channels
    table = {}
    for level, c_in in enumerate((c_res5, c_res4, c_res3)):
        table[f"input_proj.{level}.0.weight"] = (256, c_in, 1, 1)
        table[f"input_proj.{level}.0.bias"] = (256,)
        table[f"input_proj.{level}.1.weight"] = (256,)
        table[f"input_proj.{level}.1.bias"] = (256,)
    table["transformer.level_embed"] = (3, 256)
    for n in range(layers):
        p = f"transformer.encoder.layers.{n}."
        table[p + "self_attn.sampling_offsets.weight"] = (192, 256)
        table[p + "self_attn.sampling_offsets.bias"] = (192,)
        table[p + "self_attn.attention_weights.weight"] = (96, 256)
        table[p + "self_attn.attention_weights.bias"] = (96,)
        for proj in ("value_proj", "output_proj"):
            table[p + f"self_attn.{proj}.weight"] = (256, 256)
            table[p + f"self_attn.{proj}.bias"] = (256,)
        for norm in ("norm1", "norm2"):
            table[p + f"{norm}.weight"] = (256,)
            table[p + f"{norm}.bias"] = (256,)
        table[p + "linear1.weight"] = (1024, 256)
        table[p + "linear1.bias"] = (1024,)
        table[p + "linear2.weight"] = (256, 1024)
        table[p + "linear2.bias"] = (256,)
    table["mask_features.weight"] = (256, 256, 1, 1)
    table["mask_features.bias"] = (256,)
    table["adapter_1.weight"] = (256, c_res2, 1, 1)
    table["adapter_1.norm.weight"] = (256,)
    table["adapter_1.norm.bias"] = (256,)
    table["layer_1.weight"] = (256, 256, 3, 3)
    table["layer_1.norm.weight"] = (256,)
    table["layer_1.norm.bias"] = (256,)
    return table


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CHANNELS))
def test_real_config_keys_shapes_and_parameter_count(backbone):
    channels = BACKBONE_CHANNELS[backbone]
    with torch.device("meta"):
        decoder = MSDeformAttnPixelDecoder(input_shape(channels))
    state = {key: tuple(value.shape) for key, value in decoder.state_dict().items()}
    expected = key_table(channels)
    assert set(state) == set(expected), (
        f"missing {sorted(set(expected) - set(state))}, unexpected {sorted(set(state) - set(expected))}"
    )
    for key, shape in expected.items():
        assert state[key] == shape, f"{key}: {state[key]} != {shape}"
    assert sum(p.numel() for p in decoder.parameters()) == sum(math.prod(s) for s in expected.values())
    assert not list(decoder.buffers())


def test_config_ignores_extra_backbone_features():
    shape = dict(input_shape(SMALL_CHANNELS), stem=ShapeSpec(8, 2))
    decoder = MSDeformAttnPixelDecoder(shape, conv_dim=32, mask_dim=16, transformer_enc_layers=1)
    assert decoder.in_features == ["res2", "res3", "res4", "res5"]
    assert not any(k.startswith("adapter_2") for k in decoder.state_dict())


# ---------------------------------------------------------------- initialisation

COMPASS = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]


def test_initialisation():
    torch.manual_seed(0)
    channels = BACKBONE_CHANNELS["swin_base"]
    decoder = MSDeformAttnPixelDecoder(input_shape(channels))
    level_embed = decoder.transformer.level_embed
    assert level_embed.abs().min() > 0 and 0.8 < level_embed.std().item() < 1.2  # N(0, 1)

    for level, c_in in enumerate((channels[3], channels[2], channels[1])):
        conv, norm = decoder.input_proj[level]
        bound = math.sqrt(6.0 / (c_in + 256))  # xavier_uniform, gain 1, 1x1 kernel
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
        assert torch.count_nonzero(conv.bias) == 0
        assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 32
    c2_filled = ((decoder.adapter_1, channels[0]), (decoder.layer_1, 256 * 9), (decoder.mask_features, 256))
    for conv, fan_in in c2_filled:
        bound = math.sqrt(3.0 / fan_in)  # kaiming_uniform(a=1)
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    assert decoder.adapter_1.bias is None and decoder.layer_1.bias is None
    assert torch.count_nonzero(decoder.mask_features.bias) == 0
    assert decoder.adapter_1.norm.num_groups == 32 and decoder.layer_1.norm.num_groups == 32

    compass = torch.tensor(COMPASS, dtype=torch.float32).view(8, 1, 1, 2)
    compass = compass * torch.arange(1, 5, dtype=torch.float32).view(1, 1, 4, 1)
    compass = compass.expand(8, 3, 4, 2).reshape(-1)
    layers = decoder.transformer.encoder.layers
    assert len(layers) == 6
    for layer in layers:
        attn = layer.self_attn
        # MSDeformAttn init re-applied after the xavier pass
        # (cos/sin of multiples of pi/4 leave ~1e-8 residues)
        torch.testing.assert_close(attn.sampling_offsets.bias.detach(), compass, rtol=0, atol=1e-6)
        assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
        assert torch.count_nonzero(attn.attention_weights.weight) == 0
        assert torch.count_nonzero(attn.attention_weights.bias) == 0
        assert torch.count_nonzero(attn.value_proj.bias) == 0
        bound = math.sqrt(6.0 / (256 + 1024))
        assert layer.linear1.weight.abs().max() <= bound and layer.linear1.weight.abs().max() > 0.95 * bound
    # xavier pass: every layer's weights drawn separately; deep copies: biases start identical
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)
    for layer in layers[1:]:
        assert torch.equal(layer.linear1.bias, layers[0].linear1.bias)
        assert torch.equal(layer.linear2.bias, layers[0].linear2.bias)


# ---------------------------------------------------------------- forward


@needs_ops
def test_forward_shapes_non_square():
    decoder = small_decoder()
    mask_features, multi_scale = decoder(small_features(height=64, width=96))
    assert mask_features.shape == (2, 16, 16, 24) and mask_features.dtype == torch.float32
    assert [tuple(m.shape) for m in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert all(torch.isfinite(t).all() for t in [mask_features, *multi_scale])


@needs_ops
def test_fpn_merge_is_bilinear_upsample():
    decoder = small_decoder()
    captured = {}
    decoder.adapter_1.register_forward_hook(lambda m, args, out: captured.__setitem__("adapter", out))
    decoder.layer_1.register_forward_pre_hook(lambda m, args: captured.__setitem__("merged", args[0]))
    features = small_features(height=64, width=96)
    mask_features, multi_scale = decoder(features)
    upsampled = F.interpolate(multi_scale[2], size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(captured["merged"], captured["adapter"] + upsampled, rtol=0, atol=1e-6)
    nearest = F.interpolate(multi_scale[2], size=(16, 24), mode="nearest")
    assert (captured["merged"] - captured["adapter"] - nearest).abs().max() > 1e-3
    # the rest of the res2 branch, recomputed functionally
    y = decoder.layer_1.norm(F.conv2d(captured["merged"], decoder.layer_1.weight, padding=1)).relu()
    expected = F.conv2d(y, decoder.mask_features.weight, decoder.mask_features.bias)
    torch.testing.assert_close(mask_features, expected, rtol=1e-5, atol=1e-5)


@needs_ops
def test_kernel_matches_reference_end_to_end_fp64():
    decoder = small_decoder(fp32=False).double()
    # perturb the zero-initialised attention so sampling is not just the initial compass pattern
    with torch.no_grad():
        for layer in decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.05)
            layer.self_attn.attention_weights.weight.normal_(0, 0.05)
    features = small_features(batch=1, height=32, width=64, dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    results = {}
    for impl in ("kernel", "reference"):
        decoder.zero_grad()
        inputs = {k: v.clone().requires_grad_(True) for k, v in features.items()}
        with use_impl(impl):
            mask_features, multi_scale = decoder(inputs)
        assert mask_features.dtype == torch.float64
        outputs = [mask_features, *multi_scale]
        generator.manual_seed(5)
        weights = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outputs]
        sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
        grads = {f"param {n}": p.grad.clone() for n, p in decoder.named_parameters()}
        grads.update({f"input {k}": v.grad for k, v in inputs.items()})
        results[impl] = ([o.detach() for o in outputs], grads)
    for a, b in zip(results["kernel"][0], results["reference"][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["kernel"][1][name], grad, rtol=1e-10, atol=1e-10, msg=name)
    offsets_key = "param transformer.encoder.layers.0.self_attn.sampling_offsets.weight"
    offsets_grad = results["kernel"][1][offsets_key]
    assert offsets_grad.abs().max() > 0


@needs_ops
def test_fp32_mode_ignores_autocast_and_low_precision_inputs():
    decoder = small_decoder(fp32=True)
    features = small_features()
    expected_mask, expected_scales = decoder(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = decoder(features)
    assert mask_features.dtype == torch.float32 and all(m.dtype == torch.float32 for m in multi_scale)
    torch.testing.assert_close(mask_features, expected_mask, rtol=0, atol=0)
    for got, want in zip(multi_scale, expected_scales):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # bf16 features are cast up to fp32 first
    bf16 = {k: v.bfloat16() for k, v in features.items()}
    from_bf16, _ = decoder(bf16)
    expected_from_bf16, _ = decoder({k: v.float() for k, v in bf16.items()})
    assert from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, expected_from_bf16, rtol=0, atol=0)


@needs_ops
def test_ambient_mode_runs_under_bf16_autocast():
    decoder = small_decoder(fp32=False)
    features = small_features()
    expected_mask, expected_scales = decoder(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = decoder(features)
    assert mask_features.dtype == torch.bfloat16  # the final 1x1 conv runs in bf16 under autocast
    scale = expected_mask.abs().max()
    assert (mask_features.float() - expected_mask).abs().max() < 0.1 * scale
    for got, want in zip(multi_scale, expected_scales):
        assert got.shape == want.shape
        assert (got.float() - want).abs().max() < 0.1 * want.abs().max()


# ---------------------------------------------------------------- errors


def test_missing_feature_raises():
    decoder = small_decoder(transformer_enc_layers=1)
    features = small_features()
    del features["res4"]
    with pytest.raises(ValueError, match="'res4'"):
        decoder(features)


def test_wrong_channels_raises():
    decoder = small_decoder(transformer_enc_layers=1)
    features = small_features()
    features["res2"] = features["res2"][:, :5]
    with pytest.raises(ValueError, match="'res2'.*16 channels"):
        decoder(features)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="'res5'"):
        MSDeformAttnPixelDecoder({k: v for k, v in input_shape(SMALL_CHANNELS).items() if k != "res5"})


def test_encoder_level_count_checked():
    encoder = MSDeformAttnTransformerEncoderOnly(
        d_model=16, nhead=2, num_encoder_layers=1, num_feature_levels=3
    )
    x = torch.randn(1, 16, 2, 2)
    with pytest.raises(ValueError, match="3 levels"):
        encoder([x, x], [x, x])
