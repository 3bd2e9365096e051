"""Where a training step's time goes, with our ops and with every op on its reference: torch.profiler
tables of one recipe's `Trainer.step` (forward, criterion, backward, optimiser) per implementation, sorted by
device time on a GPU, plus the step's wall time, its device time and its count of kernels and copies. The
step benchmark (bench_train.py) says how fast; this says which kernels make the difference.

Run: python benchmarks/profile_train_step.py [--recipe swinl_ade640_rankseg] [--device cuda] [--iters 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rankseg_fast.config import load_recipe
from rankseg_fast.engine.trainer import Trainer
from rankseg_fast.ops import use_impl
from rankseg_fast.testing.train import TRAIN_WORKLOADS, random_batch


def device_kernels(prof) -> tuple[float, int]:
    """(device time in µs, count) of the kernels, copies and fills the profiler saw on the GPU."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time_total for e in kernels), len(kernels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=list(TRAIN_WORKLOADS), default="swinl_ade640_rankseg")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rows", type=int, default=30, help="rows of each profiler table")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    recipe_name, overrides, _ = TRAIN_WORKLOADS[args.recipe]
    recipe = load_recipe(recipe_name, overrides)
    batch = random_batch(recipe, recipe.SOLVER.IMS_PER_BATCH, torch.Generator().manual_seed(0))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(recipe, output_dir, torch.device(args.device))
        for impl in ("reference", "kernel"):
            with use_impl(impl):
                for _ in range(2):  # warm-up: allocator, lazy initialisation, backend choices
                    trainer.step(batch)
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with profile(activities=activities) as prof:
                    for _ in range(args.iters):
                        trainer.step(batch)
                    if cuda:
                        torch.cuda.synchronize()
                wall_ms = (time.perf_counter() - start) / args.iters * 1e3
            summary = f"{wall_ms:.1f} ms per step under the profiler"
            if cuda:
                device_us, operations = device_kernels(prof)
                summary += (f", {device_us / args.iters / 1e3:.1f} ms of device work in "
                            f"{operations / args.iters:.0f} kernels and copies per step")
            print(f"\n=== train step {args.recipe} {args.device} {impl}: {summary} ({args.iters} steps)")
            sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows))


if __name__ == "__main__":
    main()
