"""FrozenBatchNorm2d: batch norm with fixed statistics and affine, as detectron2's `FrozenBN`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Per-channel affine map with frozen statistics: y = (x - mean) / sqrt(var + eps) * weight + bias.

    `weight`, `bias`, `running_mean` and `running_var` are buffers (never trained, always saved), so the
    state-dict keys are those of `nn.BatchNorm2d` minus `num_batches_tracked`; a `num_batches_tracked`
    entry in a loaded state dict is ignored, and a state dict without version metadata may omit the running
    statistics (filled with mean 0, var 1, as detectron2 does). Initialised to the identity
    (running_var = 1 - eps, as detectron2 does).

    Args:
        num_features: channels C.
        eps: added to the variance (1e-5).

    Shapes: input (B, C, H, W) (any rank >= 2 with channels on dim 1); output the same shape and dtype.
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent per-channel affine: y = x * scale + shift, both (C,) in the buffers' dtype."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm2d: expected input with {self.num_features} channels on dim 1, "
                f"got shape {tuple(x.shape)}"
            )
        if x.requires_grad or x.dtype != self.weight.dtype:
            # Differentiable w.r.t. x only (no grads to the buffers), and safe under mixed dtypes.
            scale, shift = self.scale_and_shift()
            view = (1, -1) + (1,) * (x.dim() - 2)
            return x * scale.to(x.dtype).view(view) + shift.to(x.dtype).view(view)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints converted from real BatchNorm (torchvision, SyncBN training) carry this counter.
        state_dict.pop(prefix + "num_batches_tracked", None)
        # As detectron2: a state dict without version metadata (e.g. one rebuilt from a .pkl) may lack the
        # running statistics (Caffe2-era models folded them into weight/bias); they then load as identity.
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return `module` with every BatchNorm2d / SyncBatchNorm inside replaced by a FrozenBatchNorm2d
        holding the same statistics and affine (in place for children; the root is returned)."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight.detach())
                    frozen.bias.copy_(module.bias.detach())
                if module.running_mean is not None:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
