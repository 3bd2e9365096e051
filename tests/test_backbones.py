"""Backbones: state-dict keys and shapes against the fact sheet (§3.2), parameter counts, and numerics of
every building block against hand-written computations (fp64)."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankseg_fast.modeling.backbones import (
    BACKBONES,
    BottleneckBlock,
    DropPath,
    FrozenBatchNorm2d,
    PatchEmbed,
    PatchMerging,
    ResNet,
    ShapeSpec,
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    build_backbone,
    relative_position_index,
    shift_window_mask,
    window_partition,
    window_reverse,
)

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, drop_path_rate=0.3)


def build_on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, **kwargs)


def numel(shape) -> int:
    return math.prod(shape)


def randomize_frozen_bn(module: nn.Module, generator: torch.Generator) -> None:
    """Give every FrozenBatchNorm2d non-trivial statistics and affine."""
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            dt = m.weight.dtype
            m.weight.copy_(torch.rand(c, generator=generator, dtype=dt) + 0.5)
            m.bias.copy_(torch.randn(c, generator=generator, dtype=dt) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=generator, dtype=dt) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=generator, dtype=dt) + 0.5)


# ----------------------------------------------------------------------------------------------------------
# Expected key tables, written from the fact sheet §3.2 (not from the modules)
# ----------------------------------------------------------------------------------------------------------
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def fact_sheet_resnet_shapes(res4_blocks: int, stem: str = "basic") -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, shape):
        shapes[f"{name}.weight"] = shape
        for f in BN_FIELDS:
            shapes[f"{name}.norm.{f}"] = (shape[0],)

    if stem == "basic":
        conv("stem.conv1", (64, 3, 7, 7))
        stem_out = 64
    else:  # fact sheet §2.3: R-103 deep stem with 128 output channels
        conv("stem.conv1", (64, 3, 3, 3))
        conv("stem.conv2", (64, 64, 3, 3))
        conv("stem.conv3", (128, 64, 3, 3))
        stem_out = 128
    stages = {2: (64, 256, 3), 3: (128, 512, 4), 4: (256, 1024, res4_blocks), 5: (512, 2048, 3)}
    first_in = {2: stem_out, 3: 256, 4: 512, 5: 1024}
    for s, (mid, out, blocks) in stages.items():
        for b in range(blocks):
            cin = first_in[s] if b == 0 else out
            conv(f"res{s}.{b}.conv1", (mid, cin, 1, 1))
            conv(f"res{s}.{b}.conv2", (mid, mid, 3, 3))
            conv(f"res{s}.{b}.conv3", (out, mid, 1, 1))
        conv(f"res{s}.0.shortcut", (out, first_in[s], 1, 1))
    return shapes


def fact_sheet_swin_shapes(c0: int, heads, depths=(2, 2, 18, 2), window: int = 12
                           ) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (c0, 3, 4, 4),
        "patch_embed.proj.bias": (c0,),
        "patch_embed.norm.weight": (c0,),
        "patch_embed.norm.bias": (c0,),
    }
    for i, (depth, nh) in enumerate(zip(depths, heads)):
        c = c0 * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update({
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, nh),
                p + "attn.relative_position_index": (window ** 2, window ** 2),
                p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,),
            })
        if i < 3:
            shapes[f"layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes[f"layers.{i}.downsample.norm.weight"] = (4 * c,)
            shapes[f"layers.{i}.downsample.norm.bias"] = (4 * c,)
        shapes[f"norm{i}.weight"] = (c,)
        shapes[f"norm{i}.bias"] = (c,)
    return shapes


def assert_state_dict_matches(model: nn.Module, expected: dict[str, tuple[int, ...]]) -> None:
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]} extra {extra[:10]}"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f"shape mismatches (got, expected): {dict(list(wrong.items())[:10])}"


# ----------------------------------------------------------------------------------------------------------
# ResNet: keys, counts, structure
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,res4_blocks", [("R50", 6), ("R101", 23)])
def test_resnet_state_dict_keys_shapes_and_counts(name, res4_blocks):
    model = build_on_meta(name)
    expected = fact_sheet_resnet_shapes(res4_blocks)
    assert_state_dict_matches(model, expected)
    # Every conv weight is a parameter; every norm tensor (FrozenBN) is a buffer.
    expected_params = sum(numel(s) for k, s in expected.items() if ".norm." not in k)
    expected_buffers = sum(numel(s) for k, s in expected.items() if ".norm." in k)
    assert sum(p.numel() for p in model.parameters()) == expected_params
    assert sum(b.numel() for b in model.buffers()) == expected_buffers
    assert all(p.requires_grad for p in model.parameters())  # freeze_at 0


def test_resnet50_matches_public_torchvision_count():
    # torchvision resnet50: 25,557,032 parameters incl. fc (2048*1000 + 1000); BN has 2 learnable tensors.
    model = build_on_meta("R50")
    n_convs = sum(p.numel() for p in model.parameters())
    n_bn_affine = sum(b.numel() for k, b in model.named_buffers()
                      if k.endswith((".norm.weight", ".norm.bias")))
    assert n_convs + n_bn_affine == 25_557_032 - (2048 * 1000 + 1000)


def test_r101c_deeplab_stem_keys():
    model = build_on_meta("R101c")
    assert_state_dict_matches(model, fact_sheet_resnet_shapes(23, stem="deeplab"))


def test_resnet_output_shape_and_forward_shapes():
    torch.manual_seed(0)
    model = build_backbone("R50").eval()
    assert model.size_divisibility == 32
    assert model.output_shape() == {
        "res2": ShapeSpec(256, 4), "res3": ShapeSpec(512, 8),
        "res4": ShapeSpec(1024, 16), "res5": ShapeSpec(2048, 32),
    }
    H, W = 70, 90
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for k, spec in model.output_shape().items():
        assert out[k].shape == (1, spec.channels, math.ceil(H / spec.stride), math.ceil(W / spec.stride))


def test_resnet_deeplab_stem_forward_and_dilation():
    torch.manual_seed(0)
    model = ResNet(50, stem_type="deeplab", stem_out_channels=128, res5_dilation=2,
                   res5_multi_grid=(1, 2, 4)).eval()
    assert model.output_shape()["res5"] == ShapeSpec(2048, 16)
    assert model.res5[0].conv2.stride == (1, 1) and [b.conv2.dilation[0] for b in model.res5] == [2, 4, 8]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape == (1, 2048, 4, 4) and out["res4"].shape == (1, 1024, 4, 4)


def test_resnet_stride_sits_on_conv2():
    model = build_on_meta("R50")
    for s in ("res3", "res4", "res5"):
        block = getattr(model, s)[0]
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
        assert block.shortcut.stride == (2, 2)
    assert model.res2[0].conv2.stride == (1, 1) and model.res2[1].shortcut is None


def test_resnet_out_features_subset_builds_only_needed_stages():
    model = build_on_meta("R50", out_features=["res2", "res3"])
    assert not hasattr(model, "res4") and not hasattr(model, "res5")
    assert list(model.output_shape()) == ["res2", "res3"]


def test_resnet_freeze_at():
    model = build_on_meta("R50", freeze_at=2)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    # With a trainable norm, freezing converts it to FrozenBN (keys unchanged apart from num_batches_tracked).
    bn_model = build_on_meta("R50", norm="BN", freeze_at=1)
    assert isinstance(bn_model.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(bn_model.res2[0].conv1.norm, nn.BatchNorm2d)


# ----------------------------------------------------------------------------------------------------------
# ResNet numerics
# ----------------------------------------------------------------------------------------------------------
def test_frozen_batch_norm_equals_formula():
    g = torch.Generator().manual_seed(0)
    bn = FrozenBatchNorm2d(5).double()
    randomize_frozen_bn(bn, g)
    x = torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64)
    w, b, m, v = (t.view(1, -1, 1, 1) for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    expected = (x - m) / torch.sqrt(v + 1e-5) * w + b
    torch.testing.assert_close(bn(x), expected, rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_(True)  # the differentiable path
    torch.testing.assert_close(bn(xg), expected, rtol=1e-12, atol=1e-12)
    bn(xg).sum().backward()
    torch.testing.assert_close(xg.grad, (w / torch.sqrt(v + 1e-5)).expand_as(x))
    assert bn(x.float()).dtype == torch.float32  # mixed dtypes follow the input
    # identity at init
    x32 = torch.randn(1, 5, 2, 2)
    torch.testing.assert_close(FrozenBatchNorm2d(5)(x32), x32)
    assert set(dict(bn.named_buffers())) == set(BN_FIELDS) and not list(bn.parameters())


def test_frozen_batch_norm_state_dict_tolerates_num_batches_tracked():
    real = nn.BatchNorm2d(4)
    real.running_mean.fill_(0.5)
    sd = real.state_dict()
    assert "num_batches_tracked" in sd
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(sd, strict=True)  # extra key ignored
    torch.testing.assert_close(frozen.running_mean, torch.full((4,), 0.5))
    frozen.load_state_dict(FrozenBatchNorm2d(4).state_dict(), strict=True)  # missing key is fine
    # A plain dict (no version metadata, as rebuilt from a detectron2 .pkl) may lack the running statistics.
    frozen.load_state_dict({"weight": torch.full((4,), 2.0), "bias": torch.zeros(4)}, strict=True)
    torch.testing.assert_close(frozen.running_var, torch.ones(4))
    # With metadata (our own state dicts) loading stays strict.
    with pytest.raises(RuntimeError, match="running_mean"):
        sd = frozen.state_dict()
        del sd["running_mean"]
        frozen.load_state_dict(sd, strict=True)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(nn.Sequential(real))
    assert isinstance(converted[0], FrozenBatchNorm2d)


def test_bottleneck_block_equals_functional():
    g = torch.Generator().manual_seed(1)
    block = BottleneckBlock(8, 16, bottleneck_channels=4, stride=2).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        randomize_frozen_bn(block, g)
    x = torch.randn(2, 8, 9, 11, generator=g, dtype=torch.float64)

    def conv_bn(t, conv, stride=1, padding=0):
        y = F.conv2d(t, conv.weight, stride=stride, padding=padding)
        n = conv.norm
        scale = n.weight / torch.sqrt(n.running_var + 1e-5)
        return y * scale.view(1, -1, 1, 1) + (n.bias - n.running_mean * scale).view(1, -1, 1, 1)

    y = torch.relu(conv_bn(x, block.conv1))
    y = torch.relu(conv_bn(y, block.conv2, stride=2, padding=1))  # STRIDE_IN_1X1 = False
    y = conv_bn(y, block.conv3)
    expected = torch.relu(y + conv_bn(x, block.shortcut, stride=2))
    with torch.no_grad():
        got = block(x)
    assert got.shape == (2, 16, 5, 6)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)

    identity_block = BottleneckBlock(16, 16, bottleneck_channels=4).double()
    randomize_frozen_bn(identity_block, g)
    with torch.no_grad():
        z = identity_block(got)
        e = conv_bn(torch.relu(conv_bn(torch.relu(conv_bn(got, identity_block.conv1)),
                                       identity_block.conv2, padding=1)), identity_block.conv3)
    torch.testing.assert_close(z, torch.relu(e + got), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# Swin: keys, counts, structure
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,c0,heads", [("swin_base", 128, (4, 8, 16, 32)), ("swin_large", 192, (6, 12, 24, 48))]
)
def test_swin_state_dict_keys_shapes_and_counts(name, c0, heads):
    model = build_on_meta(name)
    expected = fact_sheet_swin_shapes(c0, heads)
    assert_state_dict_matches(model, expected)
    sd = model.state_dict()
    assert sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (529, heads[0])
    assert sd["layers.3.blocks.1.attn.relative_position_index"].dtype == torch.int64
    expected_params = sum(numel(s) for k, s in expected.items() if not k.endswith("relative_position_index"))
    assert sum(p.numel() for p in model.parameters()) == expected_params
    assert sum(v.numel() for v in sd.values()) == sum(numel(s) for s in expected.values())
    assert model.output_shape() == {f"res{i + 2}": ShapeSpec(c0 * 2 ** i, 4 * 2 ** i) for i in range(4)}
    assert model.size_divisibility == 32


def test_swin_tiny_matches_public_count():
    # The public Swin-T classifier has 28,288,354 parameters; ours drops the 768->1000 head and the final norm
    # and adds the four per-output norms norm0..norm3.
    model = build_on_meta("swin_tiny")
    expected_keys = fact_sheet_swin_shapes(96, (3, 6, 12, 24), depths=(2, 2, 6, 2), window=7)
    assert_state_dict_matches(model, expected_keys)
    expected = 28_288_354 - (768 * 1000 + 1000) - 2 * 768 + 2 * (96 + 192 + 384 + 768)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_swin_small_builds():
    model = build_on_meta("swin_small")
    expected_keys = fact_sheet_swin_shapes(96, (3, 6, 12, 24), depths=(2, 2, 18, 2), window=7)
    assert_state_dict_matches(model, expected_keys)


def test_swin_drop_path_linear_rule_and_shifts():
    model = build_on_meta("swin_base")
    rates = [blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0
             for layer in model.layers for blk in layer.blocks]
    assert len(rates) == 24
    for j, r in enumerate(rates):
        assert r == pytest.approx(0.3 * j / 23, abs=1e-12)
    shifts = [blk.shift_size for blk in model.layers[2].blocks]
    assert shifts == [0, 6] * 9


# ----------------------------------------------------------------------------------------------------------
# Swin numerics
# ----------------------------------------------------------------------------------------------------------
def test_relative_position_index_formula():
    index = relative_position_index(12)
    assert index.shape == (144, 144) and index.dtype == torch.int64
    for i in (0, 1, 13, 77, 143):
        for j in (0, 5, 12, 100, 143):
            dy, dx = i // 12 - j // 12, i % 12 - j % 12
            assert index[i, j].item() == (dy + 11) * 23 + (dx + 11)
    assert index.min().item() == 0 and index.max().item() == 528
    assert torch.equal(WindowAttention(24, 12, 2).relative_position_index, index)


def test_window_partition_reverse_and_roll_round_trip():
    x = torch.randn(2, 14, 21, 3)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 2 * 3, 7, 7, 3)
    # window (b, r, c) is at index b * 6 + r * 3 + c
    torch.testing.assert_close(windows[1 * 6 + 1 * 3 + 2], x[1, 7:14, 14:21])
    assert torch.equal(window_reverse(windows, 7, 14, 21), x)
    rolled = torch.roll(x, shifts=(-3, -3), dims=(1, 2))
    assert torch.equal(torch.roll(window_reverse(window_partition(rolled, 7), 7, 14, 21), (3, 3), (1, 2)), x)
    with pytest.raises(ValueError, match="multiples of window_size"):
        window_partition(torch.randn(1, 10, 14, 1), 7)


def test_shift_mask_matches_region_rule():
    Hp, Wp, ws, shift = 24, 36, 12, 6
    mask = shift_window_mask(Hp, Wp, ws, shift, dtype=torch.float64)
    assert mask.shape == ((Hp // ws) * (Wp // ws), ws * ws, ws * ws)

    def region(coord, size):
        return 0 if coord < size - ws else (1 if coord < size - shift else 2)

    nwc = Wp // ws
    for w in range(mask.shape[0]):
        r0, c0 = (w // nwc) * ws, (w % nwc) * ws
        labels = torch.tensor([region(r0 + t // ws, Hp) * 3 + region(c0 + t % ws, Wp)
                               for t in range(ws * ws)])
        expected = torch.where(labels[:, None] == labels[None, :], 0.0, -100.0).double()
        assert torch.equal(mask[w], expected), f"window {w}"
    # only the last window row/column mixes regions
    assert torch.all(mask[0] == 0)


def explicit_window_attention(attn: WindowAttention, x: torch.Tensor,
                              mask: torch.Tensor | None) -> torch.Tensor:
    """softmax((q * scale) k^T + table[(dy + ws-1)(2ws-1) + dx + ws-1] + mask) v, written out."""
    ws, nh = attn.window_size, attn.num_heads
    B_, N, C = x.shape
    hd = C // nh
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B_, N, nh, hd).transpose(1, 2) for i in range(3))
    ys, xs = torch.arange(N) // ws, torch.arange(N) % ws
    idx = (ys[:, None] - ys[None, :] + ws - 1) * (2 * ws - 1) + (xs[:, None] - xs[None, :] + ws - 1)
    bias = attn.relative_position_bias_table[idx].permute(2, 0, 1)  # (nh, N, N)
    logits = (q * hd ** -0.5) @ k.transpose(-1, -2) + bias
    if mask is not None:
        nw = mask.shape[0]
        logits = (logits.view(B_ // nw, nw, nh, N, N) + mask[None, :, None]).view(B_, nh, N, N)
    probs = torch.exp(logits - logits.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    out = (probs @ v).transpose(1, 2).reshape(B_, N, C)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_equals_explicit_softmax(shifted):
    torch.manual_seed(2)
    ws, C, nh = 12, 16, 2
    attn = WindowAttention(C, ws, nh).double().eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 1.0)  # make the bias matter
    nw, B = 4, 2
    x = torch.randn(B * nw, ws * ws, C, dtype=torch.float64)
    mask = shift_window_mask(24, 24, ws, ws // 2, dtype=torch.float64) if shifted else None
    with torch.no_grad():
        got = attn(x, mask)
        expected = explicit_window_attention(attn, x, mask)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def reference_swin_block(blk: SwinTransformerBlock, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Block written window by window with explicit softmax: pad, roll, per-window attention with the
    region mask built from coordinates, roll back, crop, residuals."""
    ws, s = blk.window_size, blk.shift_size
    B, L, C = x.shape
    y = F.layer_norm(x, (C,), blk.norm1.weight, blk.norm1.bias).view(B, H, W, C)
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    y = F.pad(y, (0, 0, 0, Wp - W, 0, Hp - H))
    y = torch.roll(y, (-s, -s), (1, 2))
    out = torch.empty_like(y)
    for b in range(B):
        for r in range(0, Hp, ws):
            for c in range(0, Wp, ws):
                tokens = y[b, r:r + ws, c:c + ws].reshape(1, ws * ws, C)
                mask = None
                if s:
                    def region(coord, size):
                        return 0 if coord < size - ws else (1 if coord < size - s else 2)
                    lab = torch.tensor([region(r + t // ws, Hp) * 3 + region(c + t % ws, Wp)
                                        for t in range(ws * ws)])
                    mask = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0).to(x.dtype)[None]
                out[b, r:r + ws, c:c + ws] = explicit_window_attention(blk.attn, tokens, mask).view(ws, ws, C)
    out = torch.roll(out, (s, s), (1, 2))[:, :H, :W].reshape(B, H * W, C)
    x = x + out
    h = F.layer_norm(x, (C,), blk.norm2.weight, blk.norm2.bias)
    h = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    return x + h


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_equals_windowwise_reference(shift):
    torch.manual_seed(3)
    ws, C, H, W = 7, 8, 10, 16  # padded to 14 x 21: 6 windows, both paddings active
    blk = SwinTransformerBlock(C, 2, window_size=ws, shift_size=shift, drop_path=0.2).double().eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, H * W, C, dtype=torch.float64)
    mask = shift_window_mask(14, 21, ws, shift, dtype=torch.float64) if shift else None
    with torch.no_grad():
        got = blk(x, H, W, mask)
        expected = reference_swin_block(blk, x, H, W)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_patch_embed_pads_right_and_bottom():
    torch.manual_seed(4)
    pe = PatchEmbed(4, 3, 8, patch_norm=True).double()
    x = torch.randn(1, 3, 9, 14, dtype=torch.float64)
    y = F.conv2d(F.pad(x, (0, 2, 0, 3)), pe.proj.weight, pe.proj.bias, stride=4)  # 12 x 16
    y = F.layer_norm(y.permute(0, 2, 3, 1), (8,), pe.norm.weight, pe.norm.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(pe(x), y, rtol=1e-12, atol=1e-12)


def test_patch_merging_order_and_odd_padding():
    torch.manual_seed(5)
    pm = PatchMerging(2).double()
    H, W = 3, 5
    grid = torch.randn(1, H, W, 2, dtype=torch.float64)
    padded = F.pad(grid, (0, 0, 0, 1, 0, 1))  # 4 x 6
    # token (i, j) of the merged map: [x(2i,2j), x(2i+1,2j), x(2i,2j+1), x(2i+1,2j+1)]
    cat = torch.stack([
        torch.cat([padded[0, 2 * i, 2 * j], padded[0, 2 * i + 1, 2 * j], padded[0, 2 * i, 2 * j + 1],
                   padded[0, 2 * i + 1, 2 * j + 1]])
        for i in range(2) for j in range(3)
    ])[None]
    expected = F.layer_norm(cat, (8,), pm.norm.weight, pm.norm.bias) @ pm.reduction.weight.T
    torch.testing.assert_close(pm(grid.view(1, H * W, 2), H, W), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("H,W", [(70, 90), (20, 20), (33, 129)])
def test_swin_forward_shapes_odd_sizes(H, W):
    torch.manual_seed(6)
    model = SwinTransformer(**TINY_SWIN).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    h, w = math.ceil(H / 4), math.ceil(W / 4)
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        spec = model.output_shape()[name]
        assert spec == ShapeSpec(16 * 2 ** i, STRIDES[name])
        assert out[name].shape == (1, spec.channels, h, w), (name, out[name].shape)
        assert out[name].is_contiguous()
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_swin_fp64_and_padding_consistency():
    """fp64 forward runs; and it matches fp32 closely. Batch elements are independent (mask expansion)."""
    torch.manual_seed(7)
    model = SwinTransformer(**TINY_SWIN).eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        out32 = model(x)
        out64 = model.double()(x.double())
        single = model(x[1:].double())
    for k in out32:
        assert out64[k].dtype == torch.float64
        torch.testing.assert_close(out64[k].float(), out32[k], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(single[k], out64[k][1:], rtol=1e-10, atol=1e-10)


def test_drop_path_identity_at_eval_and_scaled_in_training():
    dp = DropPath(0.5)
    x = torch.randn(64, 5, 3)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    torch.manual_seed(8)
    y = dp(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert torch.all(kept | dropped) and kept.any() and dropped.any()
    torch.testing.assert_close(y[kept], x[kept] * 2.0)
    model = SwinTransformer(**TINY_SWIN).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_swin_backward_with_checkpointing():
    torch.manual_seed(9)
    kwargs = dict(TINY_SWIN, depths=(2, 2), num_heads=(1, 2), out_features=("res2", "res3"))
    model = SwinTransformer(**kwargs, use_checkpoint=True).train()
    x = torch.randn(1, 3, 30, 30)
    out = model(x)
    assert list(out) == ["res2", "res3"] and not hasattr(model, "norm2")
    (out["res2"].sum() + out["res3"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Round trips, registry, errors
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_state_dict_save_load_round_trip(kind):
    torch.manual_seed(10)
    if kind == "resnet":
        make = lambda: ResNet(50, out_features=("res2", "res3"))  # noqa: E731
        src = make()
        randomize_frozen_bn(src, torch.Generator().manual_seed(0))
    else:
        make = lambda: SwinTransformer(**TINY_SWIN)  # noqa: E731
        src = make()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = make()
    result = dst.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        a, b = src.eval()(x), dst.eval()(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_registry_defaults_and_overrides():
    assert set(BACKBONES) == {"R50", "R101", "R101c", "swin_tiny", "swin_small", "swin_base", "swin_large"}
    large = build_on_meta("swin_large")
    assert large.window_size == 12 and large.pretrain_img_size == 384 and large.embed_dim == 192
    assert build_on_meta("swin_tiny").window_size == 7
    small = build_on_meta("swin_tiny", out_features=["res5"], window_size=12)
    assert list(small.output_shape()) == ["res5"] and small.window_size == 12
    assert isinstance(build_on_meta("R101c").stem.conv3.norm, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="unknown backbone 'R18'"):
        build_backbone("R18")


@pytest.mark.parametrize("name", ["R50", "swin_tiny"])
def test_bad_inputs_raise_clear_errors(name):
    model = build_backbone(name, **({} if name == "R50" else {"depths": (1, 1, 1, 1)})).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*3-d"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_constructor_errors():
    with pytest.raises(ValueError, match="depth"):
        ResNet(34)
    with pytest.raises(ValueError, match="out_features"):
        ResNet(50, out_features=["res6"])
    with pytest.raises(ValueError, match="divisible"):
        WindowAttention(10, 7, 3)
    with pytest.raises(ValueError, match="out_features"):
        SwinTransformer(out_features=["res1"])
