"""masked_attention: Mask2Former's reference path, PyTorch SDPA with a materialised mask, and our kernel,
forward and forward+backward, each INCLUDING the attention-mask construction from the predicted mask
logits (bilinear resize of the 1/4-resolution masks to the level). One benchmark group per (device,
shape, dtype, pass), so the ratios read off directly; on CUDA the peak memory of one step is recorded in
extra_info (peak_mib, above what the inputs already hold).

  reference  Mask2Former: F.interpolate + sigmoid < 0.5 mask, all-blocked rows un-masked, the mask as an
             additive -inf bias applied to every head, explicit (B, H, Q, L) scores / softmax / matmul
             (the math of nn.MultiheadAttention with attn_mask) = ops.reference.masked_attention_reference
  sdpa       F.interpolate + the same boolean mask materialised as (B, H, Q, L), then
             F.scaled_dot_product_attention (whichever backend PyTorch picks for a boolean mask)
  kernel     F.interpolate, then our fused op on the (B, Q, L) logits (thresholded inside the kernel)

Run: pytest benchmarks/bench_masked_attention.py --benchmark-only [-m cuda | -m "not cuda"]
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from rankseg_fast.ops import mask_logits_at_level, masked_attention, use_impl
from rankseg_fast.ops.reference import blocked_keys
from rankseg_fast.testing import DEVICES, needs_ops
from rankseg_fast.testing.masked_attention import predicted_mask_logits

pytestmark = needs_ops

HEADS, HEAD_DIM = 8, 32


@dataclass(frozen=True)
class Workload:
    """B images (or clips of `frames` frames) with Q queries attending one level of size `level`; the mask
    logits are predicted at `mask_size` (1/4 of the input) for every frame."""

    name: str
    batch: int
    queries: int
    level: tuple[int, int]
    mask_size: tuple[int, int]
    frames: int = 1
    devices: tuple = ("cuda",)

    @property
    def keys(self) -> int:
        return self.frames * self.level[0] * self.level[1]


ADE640 = (160, 160)  # Swin-L ADE 640 crops: levels 20x20, 40x40, 80x80
YTVIS = (96, 160)  # YouTube-VIS 384x640 frames: levels 12x20, 24x40, 48x80, two frames per clip
WORKLOADS = [
    Workload("swinl_ade640_q100_l400", 2, 100, (20, 20), ADE640, devices=("cpu", "cuda")),
    Workload("swinl_ade640_q100_l1600", 2, 100, (40, 40), ADE640, devices=("cpu", "cuda")),
    Workload("swinl_ade640_q100_l6400", 1, 100, (80, 80), ADE640, devices=("cpu", "cuda")),
    Workload("swinl_ade640_q200_l400", 2, 200, (20, 20), ADE640),
    Workload("swinl_ade640_q200_l1600", 2, 200, (40, 40), ADE640),
    Workload("swinl_ade640_q200_l6400", 2, 200, (80, 80), ADE640),
    Workload("ytvis_t2_q200_l2x1920", 2, 200, (24, 40), YTVIS, frames=2),
    Workload("ytvis_t2_q200_l2x3840", 2, 200, (48, 80), YTVIS, frames=2),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def level_mask_logits(pred_masks: torch.Tensor, level: tuple[int, int]) -> torch.Tensor:
    """(B, Q, T, h, w) predicted logits -> (B, Q, T * H_l * W_l), frames concatenated along the keys."""
    B, Q, T = pred_masks.shape[:3]
    return mask_logits_at_level(pred_masks.flatten(1, 2), level).view(B, Q, -1)


def sdpa_with_bool_mask(query, key, value, mask_logits, num_heads):
    """Masked attention through F.scaled_dot_product_attention with a materialised (B, H, Q, L) bool mask."""
    B, Q, E = query.shape
    D = E // num_heads
    visible = ~blocked_keys(mask_logits)  # all-blocked rows already made all-visible, without a host sync
    attn_mask = visible[:, None].repeat(1, num_heads, 1, 1)
    q, k, v = (t.view(B, -1, num_heads, D).transpose(1, 2) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(B, Q, E)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["reference", "sdpa", "kernel"])
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
@pytest.mark.parametrize("device", DEVICES)
def test_masked_attention(benchmark, device, workload, dtype_name, pass_, impl):
    if device not in workload.devices:
        pytest.skip(f"{workload.name} is benchmarked on {workload.devices} only")
    if device == "cpu" and dtype_name != "fp32":
        pytest.skip("CPU rows are fp32 only")
    dtype = DTYPES[dtype_name]
    backward = pass_ == "forward+backward"
    B, Q, L, E = workload.batch, workload.queries, workload.keys, HEADS * HEAD_DIM
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(B, n, E, generator=generator).to(device=device, dtype=dtype)
                         .requires_grad_(backward) for n in (Q, L, L))
    pred_masks = predicted_mask_logits(B, Q * workload.frames, workload.mask_size, device=device, dtype=dtype)
    pred_masks = pred_masks.view(B, Q, workload.frames, *workload.mask_size)
    grad_output = torch.randn(B, Q, E, generator=generator).to(device=device, dtype=dtype)
    op = sdpa_with_bool_mask if impl == "sdpa" else masked_attention

    def step():
        out = op(query, key, value, level_mask_logits(pred_masks, workload.level), HEADS)
        if backward:
            torch.autograd.grad(out, (query, key, value), grad_output)
        _synchronize(device)

    benchmark.group = f"masked_attention {device} {workload.name} {dtype_name} {pass_}"
    benchmark.extra_info.update(impl=impl, keys=L, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                threads=torch.get_num_threads())
    with use_impl("reference" if impl == "reference" else "kernel"):
        step()  # warm-up (allocator, lazy init, backend selection)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            step()
            benchmark.extra_info["peak_mib"] = round((torch.cuda.max_memory_allocated() - baseline) / 2**20, 2)
        benchmark.pedantic(step, rounds=5 if device == "cpu" else 50, warmup_rounds=1)
