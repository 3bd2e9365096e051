"""Swin Transformer backbone (hierarchical, shifted windows), as Mask2Former's `D2SwinTransformer`.

Module names follow the official Swin code so released checkpoints load verbatim (no `backbone.` prefix):
    patch_embed.proj.{weight,bias}, patch_embed.norm.{weight,bias}
    layers.{i}.blocks.{j}.{norm1,norm2}.*, .attn.relative_position_bias_table (529, nH) for window 12,
    .attn.relative_position_index (144, 144) persistent int64 buffer, .attn.qkv.*, .attn.proj.*,
    .mlp.fc1.*, .mlp.fc2.*;  layers.{i}.downsample.{norm.*, reduction.weight} for i < 3;
    norm{i}.* per output.

Token layout inside the model: (B, H * W, C), row-major over (H, W). Windows are ws x ws tiles of the
feature map after zero-padding it on the right/bottom to multiples of ws; windows are ordered batch-major,
then row-major over the window grid; tokens inside a window row-major.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from rankseg_fast.modeling.backbones.base import Backbone

STAGE_NAMES = ("res2", "res3", "res4", "res5")
SHIFT_MASK_VALUE = -100.0


# ----------------------------------------------------------------------------------------------------------
# Window helpers
# ----------------------------------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of window_size -> contiguous (B * nW, window_size, window_size, C),
    nW = (H / ws) * (W / ws), windows batch-major then row-major."""
    B, H, W, C = x.shape
    if H % window_size or W % window_size:
        raise ValueError(
            f"window_partition: H and W ({H}, {W}) must be multiples of window_size {window_size}"
        )
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    nh, nw = H // window_size, W // window_size
    if windows.shape[0] % (nh * nw):
        raise ValueError(
            f"window_reverse: {windows.shape[0]} windows do not tile a batch of {H}x{W} maps "
            f"({nh * nw} windows each)"
        )
    B = windows.shape[0] // (nh * nw)
    x = windows.reshape(B, nh, nw, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def relative_position_index(window_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(N, N) int64, N = ws^2: index[i, j] = (dy + ws - 1) * (2 ws - 1) + (dx + ws - 1), where
    (dy, dx) = position of token i minus position of token j inside the window (row-major tokens)."""
    coords = torch.arange(window_size, device=device)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (window_size - 1)
    dx = xs[:, None] - xs[None, :] + (window_size - 1)
    return dy * (2 * window_size - 1) + dx


def shift_window_mask(Hp: int, Wp: int, window_size: int, shift_size: int, *,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask of shifted-window attention for a (padded) Hp x Wp map: (nW, N, N) with 0 where the
    two tokens came from the same region before the cyclic shift and -100 otherwise. Regions: the map is cut
    at -window_size and -shift_size along each axis (9 regions)."""
    region = torch.zeros(1, Hp, Wp, 1, device=device, dtype=dtype)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[:, hs, ws, :] = label
            label += 1
    windows = window_partition(region, window_size).view(-1, window_size * window_size)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, SHIFT_MASK_VALUE)


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole samples (dim 0) with probability drop_prob, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x / keep * mask


class DropPath(nn.Module):
    """Module form of `drop_path` (identity at eval or with rate 0)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """fc1 (C -> hidden) -> GELU (exact) -> dropout -> fc2 (hidden -> C) -> dropout. (..., C) -> (..., C)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias.

    softmax(q k^T * scale + bias[h] + mask[w]) v per window w and head h, where bias[h][i, j] =
    relative_position_bias_table[relative_position_index[i, j], h]. Computed by
    `F.scaled_dot_product_attention` with the summed additive bias as `attn_mask` (same math).

    Args:
        dim: channels C; num_heads must divide it.
        window_size: ws (N = ws^2 tokens per window).
        num_heads: nH.
        qkv_bias: bias on the qkv projection (True).
        qk_scale: override of head_dim ** -0.5 (None).
        attn_drop, proj_drop: dropout on attention probabilities / after proj (0).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"WindowAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(nH, N, N): the table gathered with the index."""
        N = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C) window tokens; mask: None or (nW, N, N) additive shift mask.
        Returns (B * nW, N, C)."""
        B_, N, C = x.shape
        if N != self.window_size ** 2 or C != self.dim:
            raise ValueError(
                f"WindowAttention: expected tokens (B*nW, {self.window_size ** 2}, {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B_, nH, N, hd)
        bias = self.relative_position_bias()  # (nH, N, N)
        if mask is None:
            attn_mask = bias.unsqueeze(0)
        else:
            nW = mask.shape[0]
            if mask.shape != (nW, N, N) or B_ % nW:
                raise ValueError(
                    f"WindowAttention: mask of shape {tuple(mask.shape)} does not fit {B_} windows "
                    f"of {N} tokens"
                )
            attn_mask = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)  # (nW, nH, N, N)
            if B_ != nW:
                # (B, nW, nH, N, N) -> (B * nW, nH, N, N), windows batch-major like the tokens.
                attn_mask = attn_mask.expand(B_ // nW, -1, -1, -1, -1).reshape(B_, self.num_heads, N, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        out = out.transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """x + DropPath(W-MSA(norm1(x))), then x + DropPath(MLP(norm2(x))), with (shifted) window attention.

    Args:
        dim, num_heads, window_size: as in `WindowAttention`.
        shift_size: 0 (regular windows) or window_size // 2 (shifted windows).
        mlp_ratio: MLP hidden width / dim (4).
        qkv_bias, qk_scale, drop, attn_drop: see `WindowAttention` / `Mlp`.
        drop_path: stochastic-depth rate of this block.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(
                f"SwinTransformerBlock: shift_size {shift_size} must lie in [0, window_size {window_size})"
            )
        self.dim, self.window_size, self.shift_size = dim, window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, H: int, W: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H * W, C); shift_mask: (nW, N, N) for the padded map (used only if shift_size > 0).
        Returns (B, H * W, C)."""
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"SwinTransformerBlock: {L} tokens do not match a {H}x{W} map")
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shift_mask
        else:
            mask = None
        windows = window_partition(x, ws).view(-1, ws * ws, C)
        windows = self.attn(windows, mask)
        x = window_reverse(windows.view(-1, ws, ws, C), ws, Hp, Wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :H, :W, :]
        x = shortcut + self.drop_path(x.reshape(B, H * W, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 token merge: pad odd H/W, concatenate the sub-grids (even row/even col, odd/even, even/odd,
    odd/odd) -> 4C, LayerNorm `norm`, bias-free Linear `reduction` 4C -> 2C.
    (B, H * W, C) -> (B, ceil(H/2) * ceil(W/2), 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"PatchMerging: {L} tokens do not match a {H}x{W} map")
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks alternating regular and shifted windows, then optional PatchMerging.

    Args:
        dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop: see the blocks.
        drop_path: per-block stochastic-depth rates (length depth).
        downsample: build a `PatchMerging` after the blocks.
        use_checkpoint: recompute blocks in backward (activation checkpointing) while training.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: Sequence[float] = (), downsample: bool = False,
                 use_checkpoint: bool = False):
        super().__init__()
        drop_path = list(drop_path) if len(drop_path) else [0.0] * depth
        if len(drop_path) != depth:
            raise ValueError(f"BasicLayer: got {len(drop_path)} drop-path rates for {depth} blocks")
        self.window_size, self.shift_size = window_size, window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size=window_size,
                                 shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                 drop_path=drop_path[i])
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, H: int, W: int):
        """x: (B, H * W, C) -> (stage output (B, H * W, C), H, W, next-stage input, H', W'), where the
        next-stage input is (B, H' * W', 2C) after merging (H' = ceil(H/2)) or the stage output itself."""
        ws = self.window_size
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        mask = None
        if self.shift_size > 0 and len(self.blocks) > 1:
            mask = shift_window_mask(Hp, Wp, ws, self.shift_size, device=x.device, dtype=x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, H, W, mask, use_reentrant=False)
            else:
                x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Image to patch tokens: zero-pad right (W) then bottom (H) to multiples of patch_size, Conv2d
    (k = s = patch_size, with bias) `proj`, optional LayerNorm `norm` over channels.
    (B, 3, H, W) -> (B, embed_dim, ceil(H / p), ceil(W / p))."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        if W % p:
            x = F.pad(x, (0, p - W % p))
        if H % p:
            x = F.pad(x, (0, 0, 0, p - H % p))
        x = self.proj(x)
        if self.norm is not None:
            Wh, Ww = x.shape[-2:]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(-1, x.shape[1], Wh, Ww)
        return x


# ----------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------
class SwinTransformer(Backbone):
    """Swin Transformer backbone returning {res2..res5} feature maps (Mask2Former's `D2SwinTransformer`).

    Args:
        pretrain_img_size: image size of the pretrained model (224 or 384); only sizes the absolute position
            embedding, which exists only with ape=True.
        patch_size: 4.
        in_chans: 3.
        embed_dim: C of stage 0 (96 T/S, 128 B, 192 L); stage i has C * 2^i channels.
        depths: blocks per stage ([2, 2, 6, 2] T, [2, 2, 18, 2] S/B/L).
        num_heads: heads per stage ([3, 6, 12, 24] T/S, [4, 8, 16, 32] B, [6, 12, 24, 48] L).
        window_size: 7 (224 models) or 12 (384 models).
        mlp_ratio: 4.0.  qkv_bias: True.  qk_scale: None (head_dim ** -0.5).
        drop_rate, attn_drop_rate: 0.
        drop_path_rate: stochastic depth of the last block; block j of J gets rate * j / (J - 1) (0.3).
        ape: absolute position embedding (False in every recipe).
        patch_norm: LayerNorm after the patch embedding (True).
        out_features: subset of ("res2", "res3", "res4", "res5"); each gets its LayerNorm `norm{i}`.
        use_checkpoint: activation checkpointing of every block while training (False).

    Input (B, 3, H, W) float, any H, W >= 1 (padded internally); output {res{i+2}: (B, C * 2^i, H_i, W_i)}
    with H_0 = ceil(H / 4) and H_{i+1} = ceil(H_i / 2) (same for W): strides 4, 8, 16, 32.
    """

    def __init__(self, pretrain_img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.3, ape: bool = False,
                 patch_norm: bool = True, out_features: Sequence[str] = STAGE_NAMES,
                 use_checkpoint: bool = False):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(
                f"SwinTransformer: depths {depths} and num_heads {num_heads} must have equal length"
            )
        if len(depths) > len(STAGE_NAMES):
            raise ValueError(f"SwinTransformer: at most {len(STAGE_NAMES)} stages, got depths {depths}")
        out_features = list(out_features)
        stage_names = STAGE_NAMES[: len(depths)]
        if not out_features or any(f not in stage_names for f in out_features):
            raise ValueError(
                f"SwinTransformer: out_features must be a non-empty subset of {stage_names}, "
                f"got {out_features}"
            )
        self.in_channels = in_chans
        self.pretrain_img_size, self.patch_size, self.window_size = pretrain_img_size, patch_size, window_size
        self.num_layers = len(depths)
        self.embed_dim, self.depths, self.num_heads = embed_dim, depths, num_heads
        self.ape = ape
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm=patch_norm)
        if ape:
            side = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, side, side))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        total = sum(depths)
        rates = [drop_path_rate * j / (total - 1) if total > 1 else 0.0 for j in range(total)]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            start = sum(depths[:i])
            self.layers.append(BasicLayer(
                self.num_features[i], depths[i], num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=rates[start:start + depths[i]], downsample=i < self.num_layers - 1,
                use_checkpoint=use_checkpoint,
            ))

        self._out_features = out_features
        self._out_feature_channels = {name: self.num_features[i] for i, name in enumerate(stage_names)}
        self._out_feature_strides = {name: patch_size * 2 ** i for i, name in enumerate(stage_names)}
        self._out_indices = [stage_names.index(f) for f in out_features]
        for i in self._out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) float -> {name: (B, C_name, H_name, W_name)} for each name in `out_features`."""
        self._check_input(x)
        x = self.patch_embed(x)
        Wh, Ww = x.shape[-2:]
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(Wh, Ww), mode="bicubic")
            x = x + pos.to(x.dtype)
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        found = {}
        for i, layer in enumerate(self.layers):
            x_out, H, W, x, Wh, Ww = layer(x, Wh, Ww)
            if i in self._out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                x_out = x_out.view(-1, H, W, self.num_features[i])
                found[STAGE_NAMES[i]] = x_out.permute(0, 3, 1, 2).contiguous()
        return {name: found[name] for name in self._out_features}
