"""Optimizer and learning-rate schedule with the reference semantics (fact sheet §1.2, §5.5).

Parameter groups: lr x BACKBONE_MULTIPLIER for parameters of modules named *backbone*, lr x
MLHEAD_MULTIPLIER for *ml_head* (RankSeg); weight decay 0 for relative-position tables / absolute position
embeddings, WEIGHT_DECAY_NORM for normalisation layers, WEIGHT_DECAY_EMBED for nn.Embedding; everything
else SOLVER.WEIGHT_DECAY. Parameters with equal settings share one group (same maths as the reference's
one-group-per-parameter, far fewer fused-kernel launches). The global L2 norm of all gradients is clipped
to CLIP_VALUE before every step ("full_model" clipping).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, backbone_multiplier: float = 0.1,
                 mlhead_multiplier: float = 1.0, weight_decay_norm: float = 0.0,
                 weight_decay_embed: float = 0.0) -> list[dict]:
    """Groups of trainable parameters, each {"params", "lr", "weight_decay"}; every parameter once."""
    settings: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = base_lr, weight_decay
            if "backbone" in module_name:
                lr *= backbone_multiplier
            if "ml_head" in module_name:
                lr *= mlhead_multiplier
            if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                wd = 0.0
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            settings.setdefault((lr, wd), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in settings.items()]


def build_optimizer(model: nn.Module, solver) -> torch.optim.AdamW:
    """AdamW (fused where the parameters live on a GPU) over the reference parameter groups of `solver`
    (the recipe's SOLVER section)."""
    if solver.OPTIMIZER.upper() != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER {solver.OPTIMIZER!r} is not supported; the recipes use ADAMW")
    groups = param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER,
                          solver.MLHEAD_MULTIPLIER, solver.WEIGHT_DECAY_NORM, solver.WEIGHT_DECAY_EMBED)
    on_gpu = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=solver.BASE_LR, fused=on_gpu or None)


def clip_full_model(parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scales all gradients together so their global norm is at most max_norm; returns the norm before."""
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type=norm_type, foreach=True)


def lr_factor(iteration: int, solver) -> float:
    """Multiplier of each group's base lr at `iteration` (WarmupPolyLR or WarmupMultiStepLR)."""
    warmup = 1.0
    if iteration < solver.WARMUP_ITERS:
        if solver.WARMUP_METHOD == "linear":
            alpha = iteration / solver.WARMUP_ITERS
            warmup = solver.WARMUP_FACTOR * (1 - alpha) + alpha
        elif solver.WARMUP_METHOD == "constant":
            warmup = solver.WARMUP_FACTOR
        else:
            raise ValueError(f"SOLVER.WARMUP_METHOD {solver.WARMUP_METHOD!r}: use linear or constant")
    name = solver.LR_SCHEDULER_NAME
    if name == "WarmupPolyLR":
        poly = (1.0 - iteration / solver.MAX_ITER) ** solver.POLY_LR_POWER if iteration < solver.MAX_ITER else 0.0
        if solver.POLY_LR_CONSTANT_ENDING > 0 and warmup == 1.0 and poly < solver.POLY_LR_CONSTANT_ENDING:
            return solver.POLY_LR_CONSTANT_ENDING
        return warmup * poly
    if name == "WarmupMultiStepLR":
        steps_passed = sum(iteration >= step for step in solver.STEPS)
        return warmup * solver.GAMMA**steps_passed
    raise ValueError(f"SOLVER.LR_SCHEDULER_NAME {name!r}: use WarmupPolyLR or WarmupMultiStepLR")


def build_scheduler(optimizer: torch.optim.Optimizer, solver) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (call `step()` after every optimizer step)."""
    lr_factor(0, solver)  # validates the settings now rather than at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, solver))


def check_finite(loss: torch.Tensor, iteration: int) -> None:
    """Stops training with a clear message when the loss diverged."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at iteration {iteration}; lower SOLVER.BASE_LR or check the data")
