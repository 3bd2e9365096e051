"""Inference time and peak memory of whole models (random weights; the time does not depend on them):
R50 ADE 512 (semantic) and Swin-L ADE 640 (+RankSeg), one image, ms_deform_attn kernel vs reference.

Run: pytest benchmarks/bench_inference.py --benchmark-only [-m cuda | -m "not cuda"]
Peak memory: CUDA -> torch.cuda.max_memory_allocated; CPU -> the max resident set size of a fresh
subprocess running the same inference (reported in extra_info, MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rankseg_fast.config import load_recipe
from rankseg_fast.modeling.build import build_model
from rankseg_fast.ops import use_impl
from rankseg_fast.testing import DEVICES

MODELS = {
    "r50_ade512": ("ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml", 512),
    "swinl_ade640_rankseg": (
        "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640-rankseg.yaml", 640),
}

_CPU_PEAK_SCRIPT = """
import json, resource, sys, torch
from rankseg_fast.config import load_recipe
from rankseg_fast.modeling.build import build_model
from rankseg_fast.ops import use_impl
recipe, size, impl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = build_model(load_recipe(recipe))
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with use_impl(impl):
    model([torch.randint(0, 256, (3, size, size), dtype=torch.uint8)])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rss_after_build_mib": round(built), "peak_rss_mib": round(peak)}))
"""


def cpu_peak_memory(recipe: str, size: int, impl: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CPU_PEAK_SCRIPT, recipe, str(size), impl],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_inference(benchmark, device, name, impl):
    recipe, size = MODELS[name]
    model = build_model(load_recipe(recipe)).to(device)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, device=device)]

    def run():
        model(images)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"inference {device} {name} 1x{size}x{size} fp32"
    with use_impl(impl):
        run()  # warm-up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            run()
            benchmark.extra_info["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
        else:
            benchmark.extra_info.update(cpu_peak_memory(recipe, size, impl))
        benchmark.extra_info["threads"] = torch.get_num_threads()
        benchmark.pedantic(run, rounds=3 if device == "cpu" else 20, warmup_rounds=0)
