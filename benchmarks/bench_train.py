"""Training-step time, data-wait share and peak memory, with our ops (`kernel`) and with every op on its
pure-PyTorch reference (`reference`) in the same group.

- `synthetic` (the embedded default recipe; CPU and CUDA): real loader, batch 8 of 128x128 crops.
- `r50_ade512`, `swinl_ade640_rankseg` (CUDA only): the model-zoo recipes at 2 images per GPU on random
  images with random per-class targets (the step's cost does not depend on the pixels), from random
  initialisation (MODEL.WEIGHTS cleared: the ImageNet init files are not on the benchmark machine).

Run: pytest benchmarks/bench_train.py --benchmark-only [-m cuda | -m "not cuda"]
"""

from __future__ import annotations

import resource
import time

import pytest
import torch

from rankseg_fast.config import load_recipe
from rankseg_fast.data.loader import build_dataset, build_train_loader
from rankseg_fast.engine.trainer import Trainer
from rankseg_fast.ops import use_impl
from rankseg_fast.testing import DEVICES
from rankseg_fast.testing.train import TRAIN_WORKLOADS, random_batch


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("name", list(TRAIN_WORKLOADS))
@pytest.mark.parametrize("device", DEVICES)
def test_train_step(benchmark, device, name, impl, tmp_path):
    recipe_name, overrides, devices = TRAIN_WORKLOADS[name]
    if device not in devices:
        pytest.skip(f"{name} is benchmarked on {devices} only")
    recipe = load_recipe(recipe_name, overrides)
    trainer = Trainer(recipe, tmp_path, torch.device(device))
    batch_size = recipe.SOLVER.IMS_PER_BATCH
    if name == "synthetic":
        loader = iter(build_train_loader(recipe, build_dataset(recipe.DATASETS.TRAIN[0]), batch_size))
        start = time.perf_counter()
        batches = [next(loader) for _ in range(5)]
        benchmark.extra_info["data_time_per_batch_s"] = (time.perf_counter() - start) / 5
    else:
        batches = [random_batch(recipe, batch_size, torch.Generator().manual_seed(0))]
    state = {"i": 0}

    def step():
        trainer.step(batches[state["i"] % len(batches)])
        state["i"] += 1
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"train step {device} {name} batch {batch_size}"
    benchmark.extra_info["impl"] = impl
    with use_impl(impl):
        step()  # warm-up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        benchmark.pedantic(step, rounds=5 if device == "cpu" else 20, warmup_rounds=1)
    if device == "cuda":
        benchmark.extra_info["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    else:
        benchmark.extra_info["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if "data_time_per_batch_s" in benchmark.extra_info:
        step_time = benchmark.stats.stats.min
        data_time = benchmark.extra_info["data_time_per_batch_s"]
        benchmark.extra_info["data_wait_share_if_serial"] = round(data_time / (data_time + step_time), 3)
