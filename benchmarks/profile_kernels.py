"""Where the time of the kernel paths goes: torch.profiler tables (device kernels and host-side ops) for
masked_attention, rank_logits and mask_match on the shapes of their speed targets, kernel path,
forward+backward where the op is differentiable. The pytest-benchmark groups say how fast; this says
why (launch and autograd overhead on the host vs kernel time on the device).

Run: python benchmarks/profile_kernels.py [--device cuda] [--iters 20] [--rows 25]
(on the CPU the shapes are cut down so that a run takes seconds).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rankseg_fast.ops import mask_logits_at_level, mask_match, masked_attention, rank_logits, use_impl
from rankseg_fast.testing.mask_match import make_match_inputs
from rankseg_fast.testing.masked_attention import predicted_mask_logits
from rankseg_fast.testing.rank_logits import ADE_PANOPTIC_SWIN_L, Case, make_inputs


def masked_attention_step(device: str, dtype: torch.dtype):
    """Swin-L ADE 640, 1/8 level: batch 2, 200 queries, 8 heads of 32, 6400 keys (CPU: 100 queries, 1600 keys)."""
    batch, queries, size = (2, 200, (80, 80)) if device == "cuda" else (1, 100, (40, 40))
    keys, channels = size[0] * size[1], 256
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, n, channels, generator=g).to(device, dtype).requires_grad_(True)
               for n in (queries, keys, keys))
    predicted = predicted_mask_logits(batch, queries, (2 * size[0], 2 * size[1]), device=device)
    grad = torch.randn(batch, queries, channels, device=device, dtype=dtype)

    def step():
        out = masked_attention(q, k, v, mask_logits_at_level(predicted, size), 8)
        torch.autograd.grad(out, (q, k, v), grad)

    return step


def rank_logits_step(device: str, dtype: torch.dtype):
    """10 predictions, batch 16, 200 queries, 150 classes, TOPK 150 (CPU: batch 2)."""
    case = ADE_PANOPTIC_SWIN_L if device == "cuda" else Case(layers=10, batch=2, queries=200, classes=150, k=150)
    logits, scores, k, weight, bias = make_inputs(case, dtype, device=device, requires_grad=True,
                                                  param_dtype=torch.float32)
    grad = torch.randn(*logits.shape[:3], k + 1, device=device).to(dtype)

    def step():
        ranked, _ = rank_logits(logits, scores, k, weight, bias)
        torch.autograd.grad(ranked, (logits, weight, bias), grad)

    return step


def mask_match_step(device: str, dtype: torch.dtype):
    """Batch 8 (CPU: 2), 10 predictions, 100 queries, 5-60 targets, 12544 points."""
    counts = [5, 60, 12, 33, 7, 48, 20, 60] if device == "cuda" else [5, 60]
    inputs = make_match_inputs(counts, device=device)
    pred_logits, pred_masks = inputs[0].to(dtype), inputs[1].to(dtype)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        mask_match(pred_logits, pred_masks, *inputs[2:], generator=generator)

    return step


STEPS = {"masked_attention": masked_attention_step, "rank_logits": rank_logits_step, "mask_match": mask_match_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25, help="rows of each profiler table")
    parser.add_argument("--ops", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = parser.parse_args()
    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    with use_impl("kernel"):
        for name in args.ops:
            for dtype in dtypes:
                step = STEPS[name](args.device, dtype)
                for _ in range(3):  # warm-up: allocator, lazy initialisation
                    step()
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with profile(activities=activities) as prof:
                    for _ in range(args.iters):
                        step()
                    if cuda:
                        torch.cuda.synchronize()
                per_iter_us = (time.perf_counter() - start) / args.iters * 1e6
                print(f"\n=== {name} {args.device} {str(dtype).removeprefix('torch.')}: "
                      f"{per_iter_us:.0f} us per iteration under the profiler, {args.iters} iterations")
                print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows))


if __name__ == "__main__":
    main()
