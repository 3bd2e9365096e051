"""ms_deform_attn: the grid_sample reference next to our kernel, forward and forward+backward, on the
encoder shapes of the real recipes (every token is a query). One benchmark group per (device, shape,
dtype, pass), so the reference/kernel ratio reads off directly.

Run: pytest benchmarks/bench_ms_deform_attn.py --benchmark-only [-m cuda | -m "not cuda"]

The "original" rows time the Deformable-DETR / Mask2Former CUDA kernel (fp32 only) when its extension
`MultiScaleDeformableAttention` is importable; build it from its public source outside this project
(e.g. `cd Deformable-DETR/models/ops && pip install --no-build-isolation .`). Nothing of it is part of
rankseg_fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from rankseg_fast.ops import ms_deform_attn, use_impl
from rankseg_fast.testing import DEVICES, needs_ops
from rankseg_fast.testing.ms_deform_attn import R50_ADE_512, SWIN_L_ADE_640, Case, make_inputs

pytestmark = needs_ops


@dataclass(frozen=True)
class Workload:
    name: str
    case: Case
    dtype: torch.dtype
    coord_dtype: torch.dtype  # bf16 value with fp32 locations is what AMP produces
    devices: tuple


WORKLOADS = [
    Workload("r50_ade512_b1", Case(levels=R50_ADE_512, batch=1), torch.float32, torch.float32, ("cpu", "cuda")),
    Workload("r50_ade512_b1", Case(levels=R50_ADE_512, batch=1), torch.bfloat16, torch.float32, ("cpu", "cuda")),
    Workload("swinl_ade640_b1", Case(levels=SWIN_L_ADE_640, batch=1), torch.float32, torch.float32, ("cpu", "cuda")),
    Workload("swinl_ade640_b2", Case(levels=SWIN_L_ADE_640, batch=2), torch.float32, torch.float32, ("cuda",)),
    Workload("swinl_ade640_b2", Case(levels=SWIN_L_ADE_640, batch=2), torch.bfloat16, torch.float32, ("cuda",)),
    Workload("swinl_ade640_b2", Case(levels=SWIN_L_ADE_640, batch=2), torch.bfloat16, torch.bfloat16, ("cuda",)),
    Workload("swinl_ade640_b2", Case(levels=SWIN_L_ADE_640, batch=2), torch.float16, torch.float16, ("cuda",)),
]


def _workload_id(w: Workload) -> str:
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return f"{w.name}-{short[w.dtype]}-coords_{short[w.coord_dtype]}"


def _original_kernel():
    """The Deformable-DETR CUDA op wrapped in autograd, or None when it is not installed."""
    try:
        import MultiScaleDeformableAttention as original
    except ImportError:
        return None

    class OriginalMSDeformAttn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, shapes, starts, locations, weights):
            ctx.save_for_backward(value, shapes, starts, locations, weights)
            return original.ms_deform_attn_forward(value, shapes, starts, locations, weights, 128)

        @staticmethod
        def backward(ctx, grad_output):
            value, shapes, starts, locations, weights = ctx.saved_tensors
            grads = original.ms_deform_attn_backward(
                value, shapes, starts, locations, weights, grad_output.contiguous(), 128
            )
            return grads[0], None, None, grads[1], grads[2]

    def run(value, shapes, starts, locations, weights):
        return OriginalMSDeformAttn.apply(value, shapes.to(value.device), starts.to(value.device), locations, weights)

    return run


ORIGINAL = _original_kernel()


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["reference", "kernel", "original"])
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=_workload_id)
@pytest.mark.parametrize("device", DEVICES)
def test_ms_deform_attn(benchmark, device, workload, pass_, impl):
    if device not in workload.devices:
        pytest.skip(f"{workload.name} is benchmarked on {workload.devices} only")
    if impl == "original" and (ORIGINAL is None or device != "cuda" or workload.dtype != torch.float32):
        pytest.skip("the original Deformable-DETR kernel: CUDA, fp32, and only when MultiScaleDeformableAttention is installed")
    backward = pass_ == "forward+backward"
    inputs = make_inputs(workload.case, workload.dtype, workload.coord_dtype, device=device, requires_grad=backward)
    value, locations = inputs[0], inputs[3]
    grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                              device=device).to(workload.dtype)
    leaves = (inputs[0], inputs[3], inputs[4])

    op = ORIGINAL if impl == "original" else ms_deform_attn

    def step():
        out = op(*inputs)
        if backward:
            torch.autograd.grad(out, leaves, grad_output)
        _synchronize(device)

    benchmark.group = f"ms_deform_attn {device} {_workload_id(workload)} {pass_}"
    benchmark.extra_info.update(impl=impl, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                threads=torch.get_num_threads())
    with use_impl("reference" if impl == "reference" else "kernel"):
        step()  # warm-up (allocator, lazy init)
        benchmark.pedantic(step, rounds=10 if device == "cpu" else 50, warmup_rounds=1)
