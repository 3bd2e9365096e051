"""point_mask_costs (the matcher's fused point sampler + sigmoid-CE/dice costs): the kernel against the fp64
reference over dtypes, shapes, invalid and empty targets, points outside the maps; non-finite inputs; bad
inputs; opcheck and torch.compile."""

from __future__ import annotations

import pytest
import torch

from rankseg_fast import ops
from rankseg_fast.ops.mask_match_costs import point_mask_costs
from rankseg_fast.ops.reference.mask_match import point_mask_costs_reference
from rankseg_fast.testing import DEVICES, needs_ops
from rankseg_fast.testing.mask_match import make_match_inputs

pytestmark = needs_ops

PRED_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(counts, layers, queries, pred_size, gt_size, points, device, seed=0, spread=0.0):
    """(pred_masks, target_masks, target_valid, coords); coords cover [-spread, 1 + spread]²."""
    _, pred_masks, _, target_masks, target_valid = make_match_inputs(
        counts, layers=layers, queries=queries, pred_size=pred_size, gt_size=gt_size, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    coords = torch.rand(layers, len(counts), points, 2, generator=g) * (1 + 2 * spread) - spread
    return tuple(t.to(device) for t in (pred_masks, target_masks, target_valid, coords))


def _kernel(pred_masks, target_masks, target_valid, coords, mask_weight=5.0, dice_weight=5.0):
    return torch.ops.rankseg_fast.point_mask_costs(pred_masks, target_masks, target_valid, coords, mask_weight,
                                                   dice_weight)


def _oracle(pred_masks, target_masks, target_valid, coords, mask_weight=5.0, dice_weight=5.0):
    return point_mask_costs_reference(pred_masks.double(), target_masks.double(), target_valid, coords.double(),
                                      mask_weight, dice_weight)


def _assert_matches_oracle(cost, expected, points=1000):
    """fp32 sums over P points: the error scales with the cost magnitude (tens at most here) and, summed in
    a fixed order, grows like sqrt(P)."""
    assert cost.dtype == torch.float32 and cost.shape == expected.shape
    scale = 1.0 + (float(expected.abs().max()) if expected.numel() else 0.0)
    atol = 2e-6 * scale * max(1.0, (points / 1000) ** 0.5)
    torch.testing.assert_close(cost.double().cpu(), expected.cpu(), rtol=0, atol=atol)


CASES = [
    # counts, layers, queries, pred (h, w), gt (H, W), points
    ((7, 25), 3, 37, (32, 40), (128, 96), 1000),
    ((1,), 1, 1, (1, 1), (1, 1), 1),
    ((0, 3, 0), 2, 5, (8, 8), (16, 16), 300),
    ((60, 5), 2, 100, (128, 128), (512, 512), 12544),
    ((33,), 1, 70, (17, 9), (9, 31), 777),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", PRED_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{max(c[0])}_L{c[1]}_Q{c[2]}_P{c[5]}")
def test_kernel_matches_fp64_reference(device, dtype, case):
    counts, layers, queries, pred_size, gt_size, points = case
    pred, target, valid, coords = _inputs(counts, layers, queries, pred_size, gt_size, points, device, spread=0.1)
    pred = pred.to(dtype)
    _assert_matches_oracle(_kernel(pred, target, valid, coords, 4.0, 3.0),
                           _oracle(pred, target, valid, coords, 4.0, 3.0), points)


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_columns_are_zero_and_non_prefix_valid_targets_work(device):
    pred, target, valid, coords = _inputs((6, 6), 2, 9, (8, 8), (16, 16), 200, device)
    valid = valid.clone()
    valid[0, [1, 4]] = False
    valid[1, 5] = False
    cost = _kernel(pred, target, valid, coords)
    _assert_matches_oracle(cost, _oracle(pred, target, valid, coords))
    assert (cost[:, 0, :, [1, 4]] == 0).all() and (cost[:, 1, :, 5] == 0).all()
    assert (cost[:, 0, :, [0, 2, 3, 5]] != 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    pred, target, valid, coords = _inputs((4, 2), 3, 6, (10, 12), (20, 24), 150, device)
    expected = _kernel(pred, target, valid, coords)
    pred_t = pred.transpose(0, 1).contiguous().transpose(0, 1)
    target_t = target.transpose(-1, -2).contiguous().transpose(-1, -2)
    coords_t = coords[..., [1, 0]].contiguous()[..., [1, 0]]
    coords_strided = torch.stack([coords_t[..., 0], coords_t[..., 1]], dim=0).movedim(0, -1)
    assert not pred_t.is_contiguous() and not target_t.is_contiguous() and not coords_strided.is_contiguous()
    torch.testing.assert_close(_kernel(pred_t, target_t, valid, coords_strided), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 2, 3), (2, 0, 3), (2, 2, 0)], ids=["L0", "B0", "Q0"])
def test_empty_sizes(device, shape):
    L, B, Q = shape
    pred = torch.randn(L, B, Q, 4, 4, device=device)
    target = torch.rand(B, 3, 8, 8, device=device)
    valid = torch.ones(B, 3, dtype=torch.bool, device=device)
    coords = torch.rand(L, B, 10, 2, device=device)
    cost = _kernel(pred, target, valid, coords)
    assert cost.shape == (L, B, Q, 3) and cost.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_no_targets(device):
    pred = torch.randn(2, 2, 3, 4, 4, device=device)
    target = torch.zeros(2, 0, 8, 8, device=device)
    cost = _kernel(pred, target, torch.zeros(2, 0, dtype=torch.bool, device=device), torch.rand(2, 2, 5, 2, device=device))
    assert cost.shape == (2, 2, 3, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_prediction_makes_its_query_non_finite(device, bad):
    pred, target, valid, coords = _inputs((3, 4), 2, 5, (8, 8), (16, 16), 400, device)
    pred = pred.clone()
    pred[1, 0, 2] = bad  # the whole map: every point of prediction 1, image 0, query 2 sees it
    cost = _kernel(pred, target, valid, coords)
    assert not torch.isfinite(cost[1, 0, 2, :3]).any()
    finite = torch.ones_like(cost, dtype=torch.bool)
    finite[1, 0, 2] = False
    assert torch.isfinite(cost[finite]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_points_sample_zero(device):
    """A NaN or infinite point lies outside every map (value 0, as far outside)."""
    pred, target, valid, coords = _inputs((3,), 1, 4, (8, 8), (16, 16), 50, device)
    bad = coords.clone()
    bad[0, 0, :3] = torch.tensor([[float("nan"), 0.5], [0.5, float("inf")], [-float("inf"), float("nan")]])
    far = coords.clone()
    far[0, 0, :3] = -10.0
    torch.testing.assert_close(_kernel(pred, target, valid, bad), _kernel(pred, target, valid, far), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_public_function_dispatch_and_dtypes(impl):
    """`point_mask_costs` takes float64 predictions and non-float32 targets on both paths."""
    pred, target, valid, coords = _inputs((5, 2), 2, 6, (8, 8), (16, 16), 300, "cpu")
    with ops.use_impl(impl):
        cost = point_mask_costs(pred.double(), target.bool(), valid, coords)
    expected = _oracle(pred, target, valid, coords)
    torch.testing.assert_close(cost.double(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["pred_masks", "coords"])
def test_kernel_refuses_gradients_by_name_reference_gives_them(name):
    """The kernel is not differentiable: an input that requires grad under grad mode is refused with a message
    that names the way out; under no_grad it runs, and the reference path differentiates."""
    pred, target, valid, coords = _inputs((2, 3), 2, 4, (4, 4), (8, 8), 20, "cpu")
    inputs = {"pred_masks": pred, "target_masks": target, "target_valid": valid, "coords": coords}
    inputs[name] = inputs[name].clone().requires_grad_(True)
    with ops.use_impl("kernel"):
        with pytest.raises(RuntimeError, match=r"point_mask_costs: .*not differentiable.*torch\.no_grad"):
            point_mask_costs(**inputs)
        with torch.no_grad():
            assert point_mask_costs(**inputs).shape == (2, 2, 4, 3)
    with ops.use_impl("reference"):
        (grad,) = torch.autograd.grad(point_mask_costs(**inputs).sum(), inputs[name])
    assert grad.shape == inputs[name].shape


def _bad_call():
    pred, target, valid, coords = _inputs((2, 3), 2, 4, (4, 4), (8, 8), 20, "cpu")
    return {"pred_masks": pred, "target_masks": target, "target_valid": valid, "coords": coords}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (lambda a: {**a, "pred_masks": a["pred_masks"][0]}, ValueError, r"`pred_masks` must have 5 dimensions"),
        (lambda a: {**a, "target_masks": a["target_masks"][0]}, ValueError, r"`target_masks` must have 4 dim"),
        (lambda a: {**a, "target_valid": a["target_valid"][0]}, ValueError, r"`target_valid` must have 2 dim"),
        (lambda a: {**a, "coords": a["coords"][0]}, ValueError, r"`coords` must have 4 dimensions"),
        (lambda a: {**a, "pred_masks": a["pred_masks"].double()}, TypeError,
         r"`pred_masks` must be float32, float16 or bfloat16"),
        (lambda a: {**a, "pred_masks": a["pred_masks"].long()}, TypeError, r"`pred_masks` must be float32"),
        (lambda a: {**a, "target_masks": a["target_masks"].half()}, TypeError, r"`target_masks` must be float32"),
        (lambda a: {**a, "target_valid": a["target_valid"].float()}, TypeError, r"`target_valid` must be bool"),
        (lambda a: {**a, "coords": a["coords"].double()}, TypeError, r"`coords` must be float32"),
        (lambda a: {**a, "target_masks": a["target_masks"][:1]}, ValueError, r"`target_masks` dimension 0"),
        (lambda a: {**a, "target_valid": a["target_valid"][:, :2]}, ValueError, r"`target_valid` must have shape"),
        (lambda a: {**a, "coords": a["coords"][:1]}, ValueError, r"`coords` must have shape \(layers, batch"),
        (lambda a: {**a, "coords": a["coords"][..., :1]}, ValueError, r"`coords` must have shape \(layers, batch"),
        (lambda a: {**a, "coords": a["coords"][:, :, :0]}, ValueError, r"needs at least one point"),
        (lambda a: {**a, "pred_masks": a["pred_masks"][..., :0]}, ValueError, r"masks must not be empty"),
        (lambda a: {**a, "target_masks": a["target_masks"][:, :, :0]}, ValueError, r"masks must not be empty"),
        (lambda a: {**a, "coords": a["coords"].to("meta")}, ValueError, r"`coords` is on meta but `pred_masks`"),
    ],
)
def test_bad_inputs_name_the_problem(device, mutate, error, pattern):
    args = {k: v.to(device) for k, v in _bad_call().items()}
    args = mutate(args)
    with pytest.raises(error, match=pattern):
        _kernel(**args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype, counts, points in [(torch.float32, (3, 0, 2), 30), (torch.bfloat16, (1,), 7)]:
        pred, target, valid, coords = _inputs(counts, 2, 3, (5, 6), (9, 7), points, device)
        args = (pred.to(dtype), target, valid, coords, 5.0, 2.0)
        torch.library.opcheck(torch.ops.rankseg_fast.point_mask_costs.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_fullgraph(device):
    def costs(pred, target, valid, coords):
        return _kernel(pred * 2, target, valid, coords.clamp(0, 1)) + 1

    pred, target, valid, coords = _inputs((3, 5), 2, 4, (8, 8), (16, 16), 64, device)
    compiled = torch.compile(costs, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(pred, target, valid, coords), costs(pred, target, valid, coords),
                               rtol=0, atol=0)
