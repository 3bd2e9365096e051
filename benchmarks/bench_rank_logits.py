"""rank_logits: the reference chain of torch ops (sort, gather, layer_norm per call) next to the fused
kernel, forward and forward+backward (grads of the class logits and the LayerNorm affine), on the
ADE20K panoptic Swin-L + RankSeg shape (10 predictions, 16 images, 200 queries, 150 classes, TOPK 150)
and a CPU-sized batch. One benchmark group per (device, shape, dtype, pass), so the ratio reads off
directly.

Run: pytest benchmarks/bench_rank_logits.py --benchmark-only [-m cuda | -m "not cuda"]
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from rankseg_fast.ops import rank_logits, use_impl
from rankseg_fast.testing import DEVICES, needs_ops
from rankseg_fast.testing.rank_logits import ADE_PANOPTIC_SWIN_L, Case, make_inputs

pytestmark = needs_ops


@dataclass(frozen=True)
class Workload:
    name: str
    case: Case
    dtype: torch.dtype
    devices: tuple


WORKLOADS = [
    Workload("ade_pan_swinl_b16", ADE_PANOPTIC_SWIN_L, torch.float32, ("cpu", "cuda")),
    Workload("ade_pan_swinl_b16", ADE_PANOPTIC_SWIN_L, torch.bfloat16, ("cuda",)),
    Workload("ade_pan_swinl_b2", Case(layers=10, batch=2, queries=200, classes=150, k=150), torch.float32,
             ("cpu", "cuda")),
]


def _workload_id(w: Workload) -> str:
    return f"{w.name}-{ {torch.float32: 'fp32', torch.bfloat16: 'bf16'}[w.dtype]}"


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=_workload_id)
@pytest.mark.parametrize("device", DEVICES)
def test_rank_logits(benchmark, device, workload, pass_, impl):
    if device not in workload.devices:
        pytest.skip(f"{workload.name} is benchmarked on {workload.devices} only")
    backward = pass_ == "forward+backward"
    # fp32 LayerNorm parameters next to low-precision logits, as under AMP.
    logits, scores, k, weight, bias = make_inputs(workload.case, workload.dtype, device=device,
                                                  requires_grad=backward, param_dtype=torch.float32)
    grad_ranked = torch.randn(*logits.shape[:3], k + 1, device=device).to(workload.dtype)

    def step():
        ranked, _ = rank_logits(logits, scores, k, weight, bias)
        if backward:
            torch.autograd.grad(ranked, (logits, weight, bias), grad_ranked)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"rank_logits {device} {_workload_id(workload)} {pass_}"
    benchmark.extra_info.update(impl=impl, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                threads=torch.get_num_threads())
    with use_impl(impl):
        step()  # warm-up (allocator, lazy init)
        benchmark.pedantic(step, rounds=20 if device == "cpu" else 200, warmup_rounds=2)
