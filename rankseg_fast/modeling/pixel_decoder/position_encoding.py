"""Sine position encoding of Mask2Former (DETR style), used by the pixel decoder and the transformer
decoder."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-d sine/cosine position encoding; it depends only on (B, H, W), the device and the dtype.

    The row coordinate y = 1..H and the column coordinate x = 1..W (cumulative counts of the all-valid
    mask); with `normalize` each is divided by (its last value + 1e-6) and multiplied by `scale`. Channel i
    of each half is sin (i even) or cos (i odd) of coord / temperature^(2 * floor(i / 2) / num_pos_feats);
    the output concatenates the y half and then the x half: 2 * num_pos_feats channels.

    Computed in fp32 (fp64 when asked for fp64), as the reference does, then cast to `dtype`.
    Holds no tensors (no state_dict keys).

    Args:
        num_pos_feats: channels per coordinate (128 for a 256-channel model).
        temperature: wavelength base (10000).
        normalize: normalise the coordinates to (0, scale].
        scale: the normalised range (2 pi by default); only allowed with `normalize`.
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = False,
                 scale: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `normalize` must be True when `scale` is given")
        if num_pos_feats <= 0 or num_pos_feats % 2 != 0:
            raise ValueError(
                f"PositionEmbeddingSine: num_pos_feats must be a positive even number, got {num_pos_feats}"
            )
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def encode(self, batch: int, height: int, width: int, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The encoding for a (batch, height, width) grid: (batch, 2 * num_pos_feats, height, width)."""
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        y = torch.arange(1, height + 1, dtype=compute, device=device)
        x = torch.arange(1, width + 1, dtype=compute, device=device)
        if self.normalize:
            eps = 1e-6
            y = y / (y[-1:] + eps) * self.scale
            x = x / (x[-1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=compute, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = self._interleave(y[:, None] / dim_t)  # (H, F)
        pos_x = self._interleave(x[:, None] / dim_t)  # (W, F)
        pos = torch.cat(
            (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)), dim=-1
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1).to(dtype)[None].expand(batch, -1, -1, -1)

    @staticmethod
    def _interleave(angles: torch.Tensor) -> torch.Tensor:
        """(N, F) angles -> (N, F): sin at even channels, cos at odd channels."""
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), only its shape, device and dtype are used -> (B, 2 * num_pos_feats, H, W)."""
        if x.dim() != 4:
            raise ValueError(
                f"PositionEmbeddingSine: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return self.encode(x.shape[0], x.shape[2], x.shape[3], x.device, dtype)

    def extra_repr(self) -> str:
        return (f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
                f"normalize={self.normalize}, scale={self.scale}")
