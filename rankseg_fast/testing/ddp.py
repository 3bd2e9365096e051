"""One training step of the embedded recipe in a worker process, for the DDP-equivalence test: the same
step with 1 process and a global batch of N*b, or with N gloo processes and b images each, must give the
same gradients.

Two sources of randomness depend on how a batch is split, so the worker removes them: the random point
coordinates of the matcher and the loss (drawn for the whole local batch at once) become a fixed
per-image pattern, and dropout is switched off. The augmentations need nothing: they are seeded by the
sample's place in the global stream (see `rankseg_fast.data.loader`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def fixed_point_coords(shape, device, generator=None) -> torch.Tensor:
    """(*shape, 2) points that depend on the point index only (a Halton-like lattice), for every image."""
    count = shape[-1]
    index = torch.arange(count, dtype=torch.float64, device=device)
    coords = torch.stack([(index * 0.6180339887498949) % 1.0, (index * 0.7548776662466927) % 1.0], dim=-1)
    return coords.float().expand(*shape, 2).contiguous()


def _patch_point_coords() -> None:
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("rankseg_fast") and hasattr(module, "uniform_point_coords"):
            module.uniform_point_coords = fixed_point_coords


def _disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


def train_step(rank: int, world_size: int, overrides: list[str], out_dir: str) -> None:
    """Builds the synthetic recipe's trainer (gloo process group when world_size > 1), takes this rank's
    first batch, runs one step and saves {"grads", "files", "images", "losses"} of this rank to
    out_dir/step_<world_size>_<rank>.pt. Signature as `torch.multiprocessing.spawn` calls it."""
    from rankseg_fast.config import load_recipe
    from rankseg_fast.data.loader import build_dataset, build_train_loader
    from rankseg_fast.engine.trainer import Trainer

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank,
                                world_size=world_size)
    try:
        _patch_point_coords()
        recipe = load_recipe("synthetic", overrides)
        trainer = Trainer(recipe, Path(out_dir) / f"run_{world_size}_{rank}", torch.device("cpu"))
        _disable_dropout(trainer.model)
        loader = build_train_loader(recipe, build_dataset(recipe.DATASETS.TRAIN[0]), trainer.batch_per_rank,
                                    seed=trainer.seed, rank=rank, world_size=world_size)
        batch = next(iter(loader))
        losses = trainer.step(batch)
        torch.save({
            "grads": {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None},
            "files": [sample["file_name"] for sample in batch],
            "images": [sample["image"] for sample in batch],
            "losses": {k: float(v) for k, v in losses.items()},
        }, Path(out_dir) / f"step_{world_size}_{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
