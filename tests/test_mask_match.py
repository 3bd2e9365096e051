"""mask_match kernel path and its linear_assignment solver: exact optima against scipy (random, tied,
rectangular, large and degenerate problems), the padded output format, kernel vs reference end to end,
bad inputs, opcheck and torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankseg_fast import ops
from rankseg_fast.modeling.criterion import SetCriterion
from rankseg_fast.ops.reference import match_costs, point_sample
from rankseg_fast.testing import DEVICES, needs_cuda, needs_ops
from rankseg_fast.testing.mask_match import make_match_inputs, scipy_assignment

pytestmark = needs_ops


def _solve(cost, valid):
    return torch.ops.rankseg_fast.linear_assignment(cost, valid)


def _check_against_scipy(cost, valid, query_index, target_index, ok=None):
    """Every problem: the padded format (ascending queries, -1 past the pairs), min(Q, n_valid) pairs with
    distinct queries and distinct valid targets, and scipy's optimal total."""
    cost64 = cost.double().cpu().numpy()
    valid_np = valid.cpu().numpy()
    q_all, t_all = query_index.cpu().numpy(), target_index.cpu().numpy()
    P, Q, T = cost.shape
    if ok is not None:
        assert ok.cpu().all()
    for p in range(P):
        _, _, expected = scipy_assignment(cost64[p], valid_np[p])
        n = min(Q, int(valid_np[p].sum()))
        q, t = q_all[p], t_all[p]
        assert (q[:n] >= 0).all() and (q[n:] == -1).all() and (t[n:] == -1).all(), f"problem {p}: {q} {t}"
        q, t = q[:n], t[:n]
        assert (np.diff(q) > 0).all(), f"problem {p}: queries not ascending {q}"
        assert len(set(t.tolist())) == n and valid_np[p][t].all(), f"problem {p}: targets {t}"
        total = float(cost64[p][q, t].sum())
        scale = 1.0 + float(np.abs(cost64[p]).max(initial=0.0)) * max(n, 1)
        assert abs(total - expected) <= 1e-12 * scale, f"problem {p}: total {total} != scipy {expected}"


SIZES = [(1, 1), (1, 5), (5, 1), (3, 3), (7, 4), (4, 7), (10, 0), (0, 6), (2, 9), (100, 30), (100, 60),
         (30, 100), (200, 57), (13, 13)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("Q,T", SIZES)
def test_solver_random_problems_match_scipy(device, dtype, Q, T):
    g = torch.Generator().manual_seed(Q * 1000 + T)
    P = 6
    cost = (torch.randn(P, Q, T, generator=g, dtype=torch.float64) * 3).to(dtype)
    cost[1::2] = torch.rand(P // 2, Q, T, generator=g, dtype=torch.float64).to(dtype)  # positive costs
    valid = torch.rand(P, T, generator=g) < 0.7
    valid[0] = True
    valid[-1] = False
    out = _solve(cost.to(device), valid.to(device))
    _check_against_scipy(cost, valid, *out)


def _tied_problems():
    g = torch.Generator().manual_seed(7)
    yield "all_equal", torch.full((3, 9, 5), 2.5, dtype=torch.float64)
    yield "all_equal_wide", torch.zeros(2, 4, 11, dtype=torch.float64)
    yield "integers_0_2", torch.randint(0, 3, (8, 12, 9), generator=g).double()
    yield "integers_0_1_wide", torch.randint(0, 2, (8, 6, 10), generator=g).double()
    base = torch.randint(0, 5, (4, 10, 6), generator=g).double()
    yield "duplicated_rows", base[:, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]
    yield "duplicated_columns", base[:, :, [0, 1, 1, 2, 2, 2]]
    yield "rank_one", torch.outer(torch.arange(12.0), torch.arange(1.0, 8.0)).double().expand(2, 12, 7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,cost", list(_tied_problems()), ids=[n for n, _ in _tied_problems()])
def test_solver_ties_reach_the_optimum_deterministically(device, name, cost):
    valid = torch.ones(cost.shape[0], cost.shape[2], dtype=torch.bool)
    valid[-1, ::3] = False
    for dtype in (torch.float64, torch.float32):
        first = _solve(cost.to(device, dtype), valid.to(device))
        _check_against_scipy(cost, valid, *first)
        again = _solve(cost.to(device, dtype), valid.to(device))
        for a, b in zip(first, again):
            assert torch.equal(a, b), f"{name}: not deterministic"


@pytest.mark.parametrize("device", DEVICES)
def test_solver_large_magnitudes(device):
    g = torch.Generator().manual_seed(3)
    cost = torch.randn(4, 40, 25, generator=g, dtype=torch.float64) * 1e6 + 1e9
    cost[1] = cost[1] * 1e-9  # tiny
    cost[2, :, ::2] = -1e12
    valid = torch.ones(4, 25, dtype=torch.bool)
    _check_against_scipy(cost, valid, *_solve(cost.to(device), valid.to(device)))
    cost32 = (torch.randn(3, 30, 20, generator=g) * 1e5).float()
    valid32 = torch.ones(3, 20, dtype=torch.bool)
    _check_against_scipy(cost32, valid32, *_solve(cost32.to(device), valid32.to(device)))


@pytest.mark.parametrize("device", DEVICES)
def test_solver_non_contiguous_and_empty_inputs(device):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 20, 12, generator=g, dtype=torch.float64)
    cost = base.transpose(1, 2)[:, :, ::2]  # (4, 12, 10), strided
    valid = torch.rand(10, 4, generator=g).t() < 0.8
    _check_against_scipy(cost, valid, *_solve(cost.to(device), valid.to(device)))
    for P, Q, T in [(0, 5, 5), (3, 5, 0), (3, 0, 4)]:
        query_index, target_index, ok = _solve(torch.zeros(P, Q, T, device=device),
                                               torch.ones(P, T, dtype=torch.bool, device=device))
        assert query_index.shape == target_index.shape == (P, T) and ok.shape == (P,)
        assert (query_index == -1).all() and (target_index == -1).all() and ok.all()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solver_cuda_takes_the_cpu_decisions(dtype):
    """Same algorithm, same comparisons, float64 state: identical pairs, ties included."""
    g = torch.Generator().manual_seed(11)
    cost = torch.cat([torch.randn(40, 200, 60, generator=g, dtype=torch.float64),
                      torch.randint(0, 3, (40, 200, 60), generator=g).double()]).to(dtype)
    valid = torch.rand(80, 60, generator=g) < 0.5
    cpu = _solve(cost, valid)
    cuda = _solve(cost.cuda(), valid.cuda())
    for a, b in zip(cpu, cuda):
        assert torch.equal(a, b.cpu())
    wide = torch.randn(5, 7, 300, generator=g, dtype=torch.float64).to(dtype)  # more targets than queries
    wide_valid = torch.ones(5, 300, dtype=torch.bool)
    for a, b in zip(_solve(wide, wide_valid), _solve(wide.cuda(), wide_valid.cuda())):
        assert torch.equal(a, b.cpu())
    # 1200 x 64 costs (300-600 KB) exceed every GPU's shared memory: the kernel stages them in global memory.
    tall = torch.randn(3, 1200, 64, generator=g, dtype=torch.float64).to(dtype)
    tall_valid = torch.rand(3, 64, generator=g) < 0.9
    for a, b in zip(_solve(tall, tall_valid), _solve(tall.cuda(), tall_valid.cuda())):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_solver_non_finite_cost_flags_the_problem(device, bad):
    """A non-finite cost in a valid column: that problem gets ok = False and no pairs, the others their
    optimum; in an invalid column it is ignored. Both kernels return the flag (`mask_match` raises)."""
    cost = torch.randn(3, 5, 4, dtype=torch.float64)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 2] = False
    cost[1, 0, 2] = bad  # in an invalid column
    cost[2, 4, 1] = bad
    query_index, target_index, ok = _solve(cost.to(device), valid.to(device))
    assert ok.tolist() == [True, True, False]
    assert (query_index[2] == -1).all() and (target_index[2] == -1).all()
    _check_against_scipy(cost[:2].nan_to_num(), valid[:2], query_index[:2], target_index[:2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "cost,valid,error,pattern",
    [
        (torch.zeros(5, 4), torch.ones(1, 4, dtype=torch.bool), ValueError, r"`cost` must have 3 dimensions"),
        (torch.zeros(2, 5, 4), torch.ones(4, dtype=torch.bool), ValueError, r"`valid` must have 2 dimensions"),
        (torch.zeros(2, 5, 4), torch.ones(2, 3, dtype=torch.bool), ValueError, r"`valid` must have shape"),
        (torch.zeros(2, 5, 4, dtype=torch.float16), torch.ones(2, 4, dtype=torch.bool), TypeError,
         r"`cost` must be float32 or float64"),
        (torch.zeros(2, 5, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.bool), TypeError,
         r"`cost` must be float32 or float64"),
        (torch.zeros(2, 5, 4), torch.ones(2, 4), TypeError, r"`valid` must be bool"),
        (torch.zeros(2, 5, 4), torch.ones(2, 4, dtype=torch.bool, device="meta"), ValueError,
         r"`valid` is on meta but `cost` is on"),
    ],
)
def test_solver_bad_inputs_name_the_problem(device, cost, valid, error, pattern):
    valid = valid if valid.device.type == "meta" else valid.to(device)
    with pytest.raises(error, match=pattern):
        _solve(cost.to(device), valid)


@pytest.mark.parametrize("device", DEVICES)
def test_solver_opcheck(device):
    g = torch.Generator().manual_seed(2)
    for dtype, (P, Q, T) in [(torch.float64, (3, 7, 4)), (torch.float32, (2, 3, 6)),
                             (torch.float32, (2, 4, 0))]:
        cost = torch.randn(P, Q, T, generator=g, dtype=dtype).to(device)
        valid = (torch.rand(P, T, generator=g) < 0.7).to(device)
        torch.library.opcheck(torch.ops.rankseg_fast.linear_assignment.default, (cost, valid))


@pytest.mark.parametrize("device", DEVICES)
def test_solver_compiles_fullgraph(device):
    def match(cost, valid):
        query_index, target_index, ok = torch.ops.rankseg_fast.linear_assignment(cost * 2 + 1, valid)
        return query_index, target_index, ok

    compiled = torch.compile(match, fullgraph=True, backend="aot_eager")
    cost = torch.randn(4, 9, 6, device=device)
    valid = torch.rand(4, 6, device=device) < 0.8
    for a, b in zip(compiled(cost, valid), match(cost, valid)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- mask_match
def _costs_at_seed(inputs, num_points, seed, device="cpu"):
    """(L, B, Q, T) float64 costs (on the CPU) at the points a generator seeded with `seed` gives
    mask_match."""
    L, B = inputs[0].shape[:2]
    generator = torch.Generator(device).manual_seed(seed)
    coords = torch.rand(L, B, num_points, 2, device=device, generator=generator)
    logits, masks, labels, tmasks, valid = (t.double() if t.is_floating_point() else t for t in inputs)
    Q = logits.shape[2]
    coords = coords.double()
    x = point_sample(masks.flatten(0, 1), coords.flatten(0, 1)).view(L, B, Q, num_points)
    t = torch.stack([point_sample(tmasks, coords[layer]) for layer in range(L)])
    return match_costs(logits.softmax(-1), x, t, labels.masked_fill(~valid, 0)[None].expand(L, -1, -1)).cpu()


def _match(impl, inputs, num_points, seed, device="cpu"):
    with ops.use_impl(impl):
        generator = torch.Generator(device).manual_seed(seed)
        return ops.mask_match(*inputs, num_points=num_points, generator=generator)


def _assert_same_optimum(costs, valid, kernel, reference, same_pairs=True, total_tol=1e-4):
    """Both results have min(Q, n_valid) valid pairs per (l, b) with the same total of the float64 costs.
    With `same_pairs`, the pairs are the same too (the random costs have no ties at these sizes when both
    sides sum in the same order; the CUDA kernel's fp32 sums run in another order than cuBLAS, and with
    random, equally poor predictions two assignments can be closer than that rounding; `total_tol` then
    allows for the fp32 noise of up to 60 pair costs)."""
    kq, kt, km = (o.cpu() for o in kernel)
    rq, rt, rm = (o.cpu() for o in reference)
    valid = valid.cpu()
    L, B, Q, _ = costs.shape
    assert torch.equal(km, rm) and km.shape == (L, B, valid.shape[1])
    for layer in range(L):
        for b in range(B):
            n = int(km[layer, b].sum())
            assert n == min(Q, int(valid[b].sum()))
            assert valid[b][kt[layer, b, :n]].all()
            total = costs[layer, b][kq[layer, b, :n], kt[layer, b, :n]].sum()
            expected = costs[layer, b][rq[layer, b, :n], rt[layer, b, :n]].sum()
            assert total.item() == pytest.approx(expected.item(), abs=total_tol)
    if same_pairs:
        assert torch.equal(kq, rq) and torch.equal(kt, rt)


def test_mask_match_kernel_equals_reference_realistic_cpu():
    inputs = make_match_inputs([7, 25], layers=10, queries=100, pred_size=(32, 32), gt_size=(128, 128),
                               seed=1)
    kernel = _match("kernel", inputs, 12544, seed=4)
    reference = _match("reference", inputs, 12544, seed=4)
    _assert_same_optimum(_costs_at_seed(inputs, 12544, 4), inputs[4], kernel, reference)


@pytest.mark.parametrize("counts", [[0, 4, 0], [0, 0], [3, 9]])
@pytest.mark.parametrize("queries", [5, 12])
def test_mask_match_kernel_equals_reference_small_and_empty(counts, queries):
    """Fewer queries than targets (scipy gives each query a target), empty images, all-empty batches."""
    inputs = make_match_inputs(counts, layers=3, queries=queries, classes=6, pred_size=(8, 8), gt_size=(16, 16),
                               seed=len(counts) + queries)
    kernel = _match("kernel", inputs, 200, seed=2)
    reference = _match("reference", inputs, 200, seed=2)
    _assert_same_optimum(_costs_at_seed(inputs, 200, 2), inputs[4], kernel, reference)


def test_mask_match_non_prefix_valid_targets():
    logits, masks, labels, tmasks, valid = make_match_inputs([6, 6], layers=2, queries=8, classes=9,
                                                            pred_size=(8, 8), gt_size=(16, 16), seed=5)
    valid = valid.clone()
    valid[0, [1, 4]] = False
    valid[1, 5] = False
    inputs = (logits, masks, labels, tmasks, valid)
    kernel = _match("kernel", inputs, 300, seed=1)
    reference = _match("reference", inputs, 300, seed=1)
    _assert_same_optimum(_costs_at_seed(inputs, 300, 1), valid, kernel, reference)
    for b in range(2):
        assert not (kernel[1][:, b][..., None] == (~valid[b]).nonzero()[:, 0]).any()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("queries", [100, 200])
def test_mask_match_kernel_equals_reference_realistic_cuda(queries):
    counts = [5, 60, 17, 33, 8, 41, 0, 25]
    inputs = make_match_inputs(counts, layers=10, queries=queries, device="cuda", seed=queries)
    kernel = _match("kernel", inputs, 12544, seed=9, device="cuda")
    reference = _match("reference", inputs, 12544, seed=9, device="cuda")
    _assert_same_optimum(_costs_at_seed(inputs, 12544, 9, device="cuda"), inputs[4], kernel, reference,
                         same_pairs=False, total_tol=1e-3)


def _bad_inputs():
    base = make_match_inputs([2, 3], layers=2, queries=4, classes=5, pred_size=(4, 4), gt_size=(8, 8))
    names = ("pred_logits", "pred_masks", "target_labels", "target_masks", "target_valid")
    return dict(zip(names, base))


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (lambda a: {**a, "pred_masks": a["pred_masks"][0]}, ValueError, r"`pred_masks` must have 5 dimensions"),
        (lambda a: {**a, "pred_masks": a["pred_masks"][:, :1]}, ValueError, r"`pred_masks` .* must start with"),
        (lambda a: {**a, "target_valid": a["target_valid"][:, :1]}, ValueError, r"must share \(batch=2, targets\)"),
        (lambda a: {**a, "target_labels": a["target_labels"].int()}, TypeError, r"`target_labels` must be int64"),
        (lambda a: {**a, "target_valid": a["target_valid"].float()}, TypeError, r"`target_valid` must be bool"),
        (lambda a: {**a, "pred_logits": a["pred_logits"].long()}, TypeError, r"`pred_logits` must be floating"),
        (lambda a: {**a, "target_masks": a["target_masks"].to("meta")}, ValueError, r"`target_masks` is on meta"),
        (lambda a: {**a, "target_labels": a["target_labels"].clone().fill_(5)}, ValueError,
         r"valid `target_labels` must be class ids in \[0, 5\)"),
        (lambda a: {**a, "pred_masks": a["pred_masks"].clone().index_fill_(1, torch.tensor([1]), float("nan"))},
         ValueError, r"the cost matrix of prediction 0, image 1 has NaN or infinite entries"),
    ],
)
def test_mask_match_bad_inputs_name_the_problem(impl, mutate, error, pattern):
    args = mutate(_bad_inputs())
    with ops.use_impl(impl), pytest.raises(error, match=pattern):
        ops.mask_match(**args, num_points=20)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("num_points", [0, -3, 2.5, True])
def test_mask_match_num_points_must_be_positive(impl, num_points):
    with ops.use_impl(impl), pytest.raises(ValueError, match=r"`num_points` must be a positive int"):
        ops.mask_match(**_bad_inputs(), num_points=num_points)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_mask_match_nan_error_names_the_problem(device, impl):
    """Both paths name the first bad (prediction, image) in prediction-major order, here (0, 1) and not
    (1, 0), which comes first image-major."""
    args = {name: value.to(device) for name, value in _bad_inputs().items()}
    args["pred_logits"][0, 1, 2, 0] = float("nan")
    args["pred_logits"][1, 0, 3, 1] = float("inf")
    with ops.use_impl(impl), pytest.raises(ValueError, match=r"prediction 0, image 1 has NaN or infinite"):
        ops.mask_match(**args, num_points=20)


def test_set_criterion_kernel_equals_reference_end_to_end():
    """The matcher inside the set criterion: same matches, hence the same 30 losses (and gradients)."""
    g = torch.Generator().manual_seed(0)
    B, Q, K, aux = 2, 12, 6, 3
    def prediction():
        return {"pred_logits": torch.randn(B, Q, K + 1, generator=g), "pred_masks": torch.randn(B, Q, 16, 16, generator=g)}

    outputs = {**prediction(), "aux_outputs": [prediction() for _ in range(aux)]}
    targets = [{"labels": torch.tensor([1, 4, 2]), "masks": torch.rand(3, 64, 64, generator=g) > 0.5},
               {"labels": torch.tensor([0]), "masks": torch.rand(1, 48, 64, generator=g) > 0.3}]
    criterion = SetCriterion(K, num_points=400)
    losses = {}
    for impl in ("kernel", "reference"):
        with ops.use_impl(impl):
            losses[impl] = criterion(outputs, targets, generator=torch.Generator().manual_seed(5))
    assert set(losses["kernel"]) == set(losses["reference"]) and len(losses["kernel"]) == 12
    for name, value in losses["kernel"].items():
        assert value.item() == pytest.approx(losses["reference"][name].item(), rel=1e-6, abs=1e-7), name
