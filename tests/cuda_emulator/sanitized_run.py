"""Runs every emulated CUDA op once on small problems with the AddressSanitizer build of the emulator:
any read or write past a tensor, a dynamic shared memory block or a fiber stack aborts the process with
ASan's report. Started by tests/test_cuda_emulated.py in a process with libasan preloaded
(cuda_emulator.asan_environment()); prints "sanitized run: ok" at the end."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuda_emulator  # noqa: E402
from rankseg_fast.testing import mask_match, masked_attention, ms_deform_attn, rank_logits  # noqa: E402


def main() -> None:
    ops = cuda_emulator.load(sanitize=True)
    os.environ["RSF_EMU_SMS"] = "2"
    case = masked_attention.Case(batch=2, queries=70, keys=150, heads=2, head_dim=32)
    wide = masked_attention.Case(batch=1, queries=20, keys=100, heads=1, head_dim=128)  # one tile buffer
    for sm in ("90", "75"):  # tensor-core and SIMT kernels
        os.environ["RSF_EMU_SM"] = sm
        for dtype in (torch.bfloat16, torch.float32):
            for c in (case, wide):
                q, k, v, logits = masked_attention.make_inputs(c, dtype, seed=1)
                out, lse = ops.masked_attention(q, k, v, logits, c.heads)
                ops._masked_attention_backward(out, q, k, v, logits, out, lse, c.heads)

    rank_case = rank_logits.Case(layers=2, batch=3, queries=70, classes=9, k=5)
    x, scores, k, weight, bias = rank_logits.make_inputs(rank_case, torch.float32, seed=2)
    ranked, index, mean, rstd = ops.rank_logits(x, scores, k, weight, bias, 1e-5)
    ops._rank_logits_backward(ranked, x, index, weight, mean, rstd)
    scattered = ops.rank_scatter(ranked, index, rank_case.classes, -100.0)
    ops._rank_scatter_backward(scattered, index)

    _, pred_masks, _, target_masks, valid = mask_match.make_match_inputs(
        [67, 0, 5], layers=2, queries=70, pred_size=(9, 11), gt_size=(20, 17), seed=1)
    coords = torch.rand(2, 3, 45, 2)
    ops.point_mask_costs(pred_masks, target_masks, valid, coords, 5.0, 2.0)
    cost = torch.randn(4, 9, 12)
    for optin in ("232448", "512"):  # costs staged in shared memory, then in a global scratch
        os.environ["RSF_EMU_SMEM_OPTIN"] = optin
        ops.linear_assignment(cost, torch.rand(4, 12) < 0.6)
        ops.linear_assignment(cost.transpose(1, 2).contiguous(), torch.ones(4, 9, dtype=torch.bool))

    deform_case = ms_deform_attn.Case(levels=((5, 6), (3, 2)), batch=2, queries=11, heads=2, channels=32, points=3)
    value, shapes, starts, locations, weights = ms_deform_attn.make_inputs(deform_case, torch.bfloat16, seed=4)
    out = ops.ms_deform_attn(value, shapes, starts, locations, weights)
    ops._ms_deform_attn_backward(out, value, shapes, starts, locations, weights)
    print("sanitized run: ok")


if __name__ == "__main__":
    main()
