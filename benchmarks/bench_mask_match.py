"""mask_match: the Hungarian matcher for all 10 decoder predictions of a batch, kernel path (batched costs +
the compiled linear_assignment solver) next to the reference (batched costs + scipy per (prediction,
image) on the host) and next to Mask2Former's original structure (one matcher call per prediction, a
loop over images, point sampling + costs + `.cpu()` + scipy per image). One benchmark group per
(device, workload), so the ratios read off directly.

Run: pytest benchmarks/bench_mask_match.py --benchmark-only [-m cuda | -m "not cuda"]
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from rankseg_fast.ops import mask_match, use_impl
from rankseg_fast.ops.mask_match_costs import point_mask_costs
from rankseg_fast.ops.reference import match_costs, point_sample
from rankseg_fast.testing import DEVICES, needs_ops
from rankseg_fast.testing.mask_match import make_match_inputs

pytestmark = needs_ops

NUM_POINTS = 12544


@dataclass(frozen=True)
class Workload:
    name: str
    target_counts: tuple
    queries: int
    pred_size: tuple
    gt_size: tuple
    devices: tuple


WORKLOADS = [
    Workload("ade512_b2_q100", (5, 60), 100, (128, 128), (512, 512), ("cpu", "cuda")),
    Workload("ade512_b8_q100", (5, 60, 17, 33, 8, 41, 23, 50), 100, (128, 128), (512, 512), ("cuda",)),
    Workload("ade640_b8_q200", (5, 60, 17, 33, 8, 41, 23, 50), 200, (160, 160), (640, 640), ("cuda",)),
]


@torch.no_grad()
def original_matcher(pred_logits, pred_masks, target_labels, target_masks, target_valid, generator):
    """Mask2Former's HungarianMatcher structure: per prediction, per image, fresh points, point-sampled costs,
    one device-to-host copy and one scipy solve. Returns the (query, target) index arrays of every (l, b)."""
    L, B = pred_logits.shape[:2]
    matches = []
    for layer in range(L):
        for b in range(B):
            keep = target_valid[b]
            labels, masks = target_labels[b][keep], target_masks[b][keep]
            coords = torch.rand(1, NUM_POINTS, 2, device=pred_masks.device, generator=generator)
            x = point_sample(pred_masks[layer, b][None].float(), coords)[0]
            t = point_sample(masks[None].float(), coords)[0]
            cost = match_costs(pred_logits[layer, b].float().softmax(-1), x, t, labels)
            matches.append(linear_sum_assignment(cost.cpu().numpy()))
    return matches


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["original", "reference", "kernel"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
@pytest.mark.parametrize("device", DEVICES)
def test_mask_match(benchmark, device, workload, impl):
    if device not in workload.devices:
        pytest.skip(f"{workload.name} is benchmarked on {workload.devices} only")
    inputs = make_match_inputs(workload.target_counts, layers=10, queries=workload.queries,
                               pred_size=workload.pred_size, gt_size=workload.gt_size, device=device)
    generator = torch.Generator(device).manual_seed(0)

    def step():
        if impl == "original":
            original_matcher(*inputs, generator)
        else:
            mask_match(*inputs, num_points=NUM_POINTS, generator=generator)
        _synchronize(device)

    benchmark.group = f"mask_match {device} {workload.name} L10 P{NUM_POINTS}"
    benchmark.extra_info.update(impl=impl, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                threads=torch.get_num_threads())
    with use_impl("reference" if impl == "reference" else "kernel"):
        step()  # warm-up (allocator, lazy init)
        benchmark.pedantic(step, rounds=5 if device == "cpu" else 30, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
@pytest.mark.parametrize("device", DEVICES)
def test_point_mask_costs(benchmark, device, workload, impl):
    """The cost half alone: the fused `point_mask_costs` op next to its reference (grid_sample of the
    predictions and of the GT masks, sigmoid / softplus, two batched GEMMs), at y-sorted points."""
    if device not in workload.devices:
        pytest.skip(f"{workload.name} is benchmarked on {workload.devices} only")
    _, pred_masks, _, target_masks, target_valid = make_match_inputs(
        workload.target_counts, layers=10, queries=workload.queries, pred_size=workload.pred_size,
        gt_size=workload.gt_size, device=device)
    generator = torch.Generator(device).manual_seed(0)
    coords = torch.rand(10, len(workload.target_counts), NUM_POINTS, 2, device=device, generator=generator)
    coords = torch.gather(coords, 2, coords[..., 1].argsort(-1)[..., None].expand_as(coords))

    def step():
        point_mask_costs(pred_masks, target_masks, target_valid, coords)
        _synchronize(device)

    benchmark.group = f"point_mask_costs {device} {workload.name} L10 P{NUM_POINTS}"
    benchmark.extra_info.update(impl=impl, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                threads=torch.get_num_threads())
    with use_impl(impl):
        step()
        benchmark.pedantic(step, rounds=5 if device == "cpu" else 30, warmup_rounds=1)
