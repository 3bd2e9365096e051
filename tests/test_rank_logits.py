"""rank_logits / rank_scatter / relabel_targets: kernels against the fp64 references, autograd, the op
contract (opcheck, torch.compile), bad inputs with both implementations, and the model end to end."""

from __future__ import annotations

import pytest
import torch

from rankseg_fast import ops
from rankseg_fast.modeling.criterion import SetCriterion
from rankseg_fast.ops import rank_logits, rank_scatter, relabel_targets, use_impl
from rankseg_fast.ops.reference import rank_logits_reference, rank_scatter_reference, relabel_targets_reference
from rankseg_fast.testing import DEVICES, assert_close_scaled, needs_ops
from rankseg_fast.testing.model import tiny_mask_former
from rankseg_fast.testing.rank_logits import ADE_PANOPTIC_SWIN_L, Case, make_inputs

pytestmark = needs_ops

CASES = {
    "tiny": Case(layers=2, batch=2, queries=3, classes=5, k=5),
    "k_lt_K": Case(layers=3, batch=2, queries=5, classes=7, k=3),
    "k1": Case(layers=2, batch=3, queries=4, classes=6, k=1),
    "ties": Case(layers=2, batch=4, queries=6, classes=40, k=25, tie_levels=3),
    "many_queries": Case(layers=1, batch=2, queries=300, classes=20, k=20),
    "large_K": Case(layers=1, batch=2, queries=3, classes=1000, k=700),
    "ade_panoptic": ADE_PANOPTIC_SWIN_L,
}


def run_with_grads(fn, inputs, grad_ranked):
    """(ranked, rank_index, grad_logits, grad_weight, grad_bias) of fn(logits, scores, k, weight, bias)."""
    logits, scores, k, weight, bias = inputs
    leaves = [t.detach().requires_grad_(True) for t in (logits, weight, bias)]
    ranked, rank_index = fn(leaves[0], scores, k, leaves[1], leaves[2])
    grads = torch.autograd.grad(ranked, leaves, grad_ranked)
    return (ranked, rank_index, *grads)


def reference_fp64(inputs, grad_ranked):
    """The reference on the same (already rounded) inputs, in fp64 on the CPU."""
    logits, scores, k, weight, bias = inputs
    inputs64 = (logits.detach().cpu().double(), scores.cpu().double(), k, weight.detach().cpu().double(),
                bias.detach().cpu().double())
    return run_with_grads(rank_logits_reference, inputs64, grad_ranked.detach().cpu().double())


NAMES = ("ranked", "rank_index", "grad_logits", "grad_weight", "grad_bias")


def grad_like(inputs, seed=1):
    logits, _, k, _, _ = inputs
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*logits.shape[:3], k + 1, generator=g, dtype=torch.float64).to(logits.device, logits.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_name", list(CASES))
def test_kernel_matches_reference_fp64(device, case_name):
    inputs = make_inputs(CASES[case_name], torch.float64, device=device)
    grad_ranked = grad_like(inputs)
    actual = run_with_grads(rank_logits, inputs, grad_ranked)
    expected = reference_fp64(inputs, grad_ranked)
    assert torch.equal(actual[1].cpu(), expected[1]), f"{case_name}: rank_index differs"
    for name, a, e in zip(NAMES, actual, expected):
        assert a.device.type == device and a.dtype == e.dtype, name
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{case_name} {name}: {m}")


# (logits dtype, weight/bias dtype); factors are multiples of the result dtype's unit roundoff times max|expected|.
PRECISIONS = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
]
FACTORS = {torch.float32: 256.0, torch.float16: 8.0, torch.bfloat16: 8.0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,param_dtype", PRECISIONS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case_name", ["k_lt_K", "ties", "ade_panoptic"])
def test_low_precision_against_fp64(device, dtype, param_dtype, case_name):
    inputs = make_inputs(CASES[case_name], dtype, device=device, seed=2, param_dtype=param_dtype)
    grad_ranked = grad_like(inputs, seed=3)
    actual = run_with_grads(rank_logits, inputs, grad_ranked)
    expected = reference_fp64(inputs, grad_ranked)
    # Rounded scores compare exactly in fp32, so the ranking (ties included) is the fp64 one.
    assert torch.equal(actual[1].cpu(), expected[1])
    assert actual[0].dtype == dtype and actual[2].dtype == dtype
    assert actual[3].dtype == param_dtype and actual[4].dtype == param_dtype
    for name, a, e in zip(NAMES, actual, expected):
        if name != "rank_index":
            assert_close_scaled(a, e, a.dtype, FACTORS[a.dtype], f"{case_name} {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_ranking_ties_and_nan(device, impl):
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[1.0, nan, 3.0, nan, -inf, inf, 3.0, -0.0, 0.0],
                           [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]], device=device)
    logits = torch.randn(1, 2, 3, 10, device=device)
    with use_impl(impl):
        _, index = rank_logits(logits, scores, 9, torch.ones(10, device=device), torch.zeros(10, device=device))
        _, top3 = rank_logits(logits, scores, 3, torch.ones(4, device=device), torch.zeros(4, device=device))
    # NaN first (torch.sort's order), equal scores (NaN vs NaN, -0.0 vs 0.0) by the lower class index.
    assert index.tolist() == [[1, 3, 5, 2, 6, 0, 7, 8, 4, 9], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert top3.tolist() == [[1, 3, 5, 9], [0, 1, 2, 9]]


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_fp64(device):
    logits, scores, k, weight, bias = make_inputs(CASES["k_lt_K"], torch.float64, device=device, requires_grad=True)

    def fn(x, w, b):
        return rank_logits(x, scores, k, w, b)[0]

    assert torch.autograd.gradcheck(fn, (logits, weight, bias), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    inputs = make_inputs(CASES["k_lt_K"], torch.float64, device=device)
    logits, scores, k, weight, bias = inputs
    logits_nc = logits.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    scores_nc = scores.t().contiguous().t()
    weight_nc = torch.stack([weight, weight], 1)[:, 0]
    assert not (logits_nc.is_contiguous() or scores_nc.is_contiguous() or weight_nc.is_contiguous())
    grad_ranked = grad_like(inputs)
    grad_nc = grad_ranked.transpose(0, 2).contiguous().transpose(0, 2)
    actual = run_with_grads(rank_logits, (logits_nc, scores_nc, k, weight_nc, bias), grad_nc)
    expected = reference_fp64(inputs, grad_ranked)
    for name, a, e in zip(NAMES, actual, expected):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers,batch,queries", [(0, 2, 3), (2, 2, 0), (2, 0, 3)])
def test_zero_size(device, layers, batch, queries):
    inputs = make_inputs(Case(layers, batch, queries, classes=6, k=4), torch.float32, device=device)
    grad_ranked = grad_like(inputs)
    ranked, index, grad_logits, grad_weight, grad_bias = run_with_grads(rank_logits, inputs, grad_ranked)
    _, expected_index = rank_logits_reference(*inputs)
    assert ranked.shape == (layers, batch, queries, 5) and torch.equal(index, expected_index)
    assert grad_logits.shape == inputs[0].shape
    assert grad_weight.shape == (5,) and not grad_weight.any() and not grad_bias.any()


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    inputs = make_inputs(ADE_PANOPTIC_SWIN_L, torch.float32, device=device)
    grad_ranked = grad_like(inputs)
    first = run_with_grads(rank_logits, inputs, grad_ranked)
    second = run_with_grads(rank_logits, inputs, grad_ranked)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def _forward_samples(device):
    yield make_inputs(CASES["k_lt_K"], torch.float64, device=device, requires_grad=True)
    yield make_inputs(CASES["tiny"], torch.float32, device=device)
    yield make_inputs(CASES["ties"], torch.bfloat16, device=device, requires_grad=True, param_dtype=torch.float32)
    yield make_inputs(CASES["k1"], torch.float16, device=device, requires_grad=True)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ops = torch.ops.rankseg_fast
    for logits, scores, k, weight, bias in _forward_samples(device):
        torch.library.opcheck(ops.rank_logits.default, (logits, scores, k, weight, bias, 1e-5))
        ranked, index, mean, rstd = ops.rank_logits(logits, scores, k, weight, bias, 1e-5)
        grad = torch.randn_like(ranked)
        torch.library.opcheck(ops._rank_logits_backward.default,
                              (grad, logits.detach(), index, weight.detach(), mean, rstd))
        ranked = ranked.detach().requires_grad_(logits.requires_grad)
        torch.library.opcheck(ops.rank_scatter.default, (ranked, index, scores.shape[1], -100.0))
        grad_out = torch.randn(*ranked.shape[:-1], scores.shape[1] + 1, device=device).to(ranked.dtype)
        torch.library.opcheck(ops._rank_scatter_backward.default, (grad_out, index))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    logits, scores, k, weight, bias = make_inputs(CASES["k_lt_K"], torch.float32, device=device, requires_grad=True)

    def fn(x, s, w, b):
        ranked, index = rank_logits(x, s, k, w, b)
        back = rank_scatter(ranked[-1], index, s.shape[1])
        return (ranked * ranked).sum() + back.clamp(min=-1.0).sum()

    compiled = torch.compile(fn, fullgraph=True)
    eager = fn(logits, scores, weight, bias)
    eager_grads = torch.autograd.grad(eager, (logits, weight, bias))
    out = compiled(logits, scores, weight, bias)
    grads = torch.autograd.grad(out, (logits, weight, bias))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _good_args(device):
    logits, scores, k, weight, bias = make_inputs(CASES["k_lt_K"], torch.float32, device=device)
    return {"class_logits": logits, "scores": scores, "k": k, "weight": weight, "bias": bias}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (lambda a: {**a, "class_logits": a["class_logits"][0]}, ValueError, r"`class_logits` must have 4 dimensions"),
        (lambda a: {**a, "scores": a["scores"][0]}, ValueError, r"`scores` must have 2 dimensions"),
        (lambda a: {**a, "class_logits": a["class_logits"][..., :-1]}, ValueError,
         r"`class_logits` must have shape \(layers, batch=2, queries, classes \+ 1=8\)"),
        (lambda a: {**a, "class_logits": a["class_logits"][:, :1]}, ValueError, r"`class_logits` must have shape"),
        (lambda a: {**a, "class_logits": a["class_logits"].long()}, TypeError, r"`class_logits` must be float32"),
        (lambda a: {**a, "scores": a["scores"].int()}, TypeError, r"`scores` must be float32"),
        (lambda a: {**a, "scores": a["scores"][:, :0]}, ValueError, r"`scores` must have at least one class"),
        (lambda a: {**a, "k": 0}, ValueError, r"`k` must be in \[1, num_classes=7\], got 0"),
        (lambda a: {**a, "k": 8}, ValueError, r"`k` must be in \[1, num_classes=7\], got 8"),
        (lambda a: {**a, "k": 3.0}, TypeError, r"`k` must be an int"),
        (lambda a: {**a, "k": True}, TypeError, r"`k` must be an int"),
        (lambda a: {**a, "weight": a["weight"][:-1]}, ValueError, r"`weight` must have shape \(k \+ 1,\) = \(4,\)"),
        (lambda a: {**a, "bias": a["bias"][None]}, ValueError, r"`bias` must have 1 dimensions"),
        (lambda a: {**a, "weight": a["weight"].long()}, TypeError, r"`weight` must be float32"),
        (lambda a: {**a, "scores": a["scores"].tolist()}, TypeError, r"`scores` must be a tensor"),
        (lambda a: {**a, "bias": None}, TypeError, r"`bias` must be a tensor"),
        (lambda a: {**a, "scores": a["scores"].to("meta")}, ValueError, r"`scores` is on meta but `class_logits` is on"),
    ],
)
def test_bad_inputs_name_the_problem(device, impl, mutate, error, pattern):
    bad = mutate(_good_args(device))
    with use_impl(impl), pytest.raises(error, match=pattern):
        rank_logits(bad["class_logits"], bad["scores"], bad["k"], bad["weight"], bad["bias"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (lambda a: {**a, "rank_index": a["rank_index"].int()}, TypeError, r"`rank_index` must be int64"),
        (lambda a: {**a, "ranked": a["ranked"][..., :-1]}, ValueError, r"`ranked` has 3 ranks but `rank_index` has 4"),
        (lambda a: {**a, "rank_index": a["rank_index"][:1]}, ValueError, r"`rank_index` has 1 rows but the batch has 2"),
        (lambda a: {**a, "num_classes": 2}, ValueError, r"needs 1 <= k <= num_classes=2"),
        (lambda a: {**a, "num_classes": 7.0}, TypeError, r"`num_classes` must be an int"),
        (lambda a: {**a, "ranked": a["ranked"][0, 0]}, ValueError, r"`ranked` must have shape \(\.\.\., batch"),
        (lambda a: {**a, "ranked": a["ranked"].long()}, TypeError, r"`ranked` must be float32"),
        (lambda a: {**a, "ranked": a["ranked"].tolist()}, TypeError, r"`ranked` must be a tensor"),
    ],
)
def test_rank_scatter_bad_inputs(device, impl, mutate, error, pattern):
    args = _good_args(device)
    ranked, index = rank_logits(args["class_logits"], args["scores"], args["k"], args["weight"], args["bias"])
    bad = mutate({"ranked": ranked.detach(), "rank_index": index, "num_classes": 7})
    with use_impl(impl), pytest.raises(error, match=pattern):
        rank_scatter(bad["ranked"], bad["rank_index"], bad["num_classes"])


@pytest.mark.parametrize(
    "bad,pattern",
    [(7, r"`rank_index` holds 7, outside the classes \[0, 6\]"),
     (2, r"`rank_index` row 1 holds class 2 twice; each row must rank distinct classes")],
)
def test_rank_scatter_kernel_checks_the_rank_index_values(bad, pattern):
    """The CPU kernel's value checks (the CUDA kernel asserts instead, see test_cuda_emulated.py): a
    class outside [0, K], or one ranked twice in a row, whose other rank the scatter would drop."""
    ranked = torch.randn(2, 4, 3)
    rank_index = torch.tensor([[2, 0, 6], [1, bad, 2]])
    with use_impl("kernel"), pytest.raises(ValueError, match=pattern):
        rank_scatter(ranked, rank_index, 6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("leading", [(), (3,), (2, 3)])
def test_rank_scatter_matches_reference(device, dtype, leading):
    case = CASES["k_lt_K"]
    g = torch.Generator().manual_seed(4)
    index = torch.stack([torch.randperm(case.classes, generator=g)[: case.k] for _ in range(case.batch)])
    index = torch.cat([index, torch.full((case.batch, 1), case.classes)], 1).to(device)
    ranked = torch.randn(*leading, case.batch, case.queries, case.k + 1, generator=g).to(device, dtype)
    grad_out = torch.randn(*leading, case.batch, case.queries, case.classes + 1, generator=g).to(device, dtype)
    results = []
    for fn in (rank_scatter, rank_scatter_reference):
        leaf = ranked.detach().requires_grad_(True)
        out = fn(leaf, index, case.classes, fill=-7.5)
        (grad,) = torch.autograd.grad(out, leaf, grad_out)
        results.append((out, grad))
    (out, grad), (ref_out, ref_grad) = results
    assert out.dtype == dtype and grad.dtype == dtype
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)  # pure data movement: exact


@pytest.mark.parametrize("device", DEVICES)
def test_rank_scatter_gradcheck(device):
    index = torch.tensor([[2, 0, 5], [4, 3, 5]], device=device)
    ranked = torch.randn(2, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: rank_scatter(r, index, 5), (ranked,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [7, 4, 1])
def test_relabel_targets_matches_reference(device, k):
    K, B = 7, 4
    g = torch.Generator().manual_seed(5)
    index = torch.stack([torch.randperm(K, generator=g)[:k] for _ in range(B)])
    index = torch.cat([index, torch.full((B, 1), K)], 1).to(device)
    labels = [torch.randint(0, K + 1, (n,), generator=g).to(device) for n in (5, 0, 9, 3)]
    actual = relabel_targets(labels, index, K)
    expected = relabel_targets_reference(labels, index, K)
    for a_list, e_list in zip(actual, expected):
        assert len(a_list) == B
        for a, e in zip(a_list, e_list):
            assert a.device.type == device and a.dtype == e.dtype and torch.equal(a, e)
    inferred = relabel_targets(labels, index)  # K read from the index
    assert all(torch.equal(a, e) for a, e in zip(inferred[0], expected[0]))


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_relabel_targets_bad_inputs(impl):
    index = torch.tensor([[2, 0, 1, 3]])
    with use_impl(impl):
        with pytest.raises(ValueError, match=r"class ids in \[0, num_classes=3\]"):
            relabel_targets([torch.tensor([0, 4])], index, 3)
        with pytest.raises(ValueError, match=r"class ids in"):
            relabel_targets([torch.tensor([-1])], index, 3)
        with pytest.raises(TypeError, match=r"`labels\[0\]` must be int64"):
            relabel_targets([torch.tensor([0], dtype=torch.int32)], index, 3)
        with pytest.raises(TypeError, match=r"`labels` must be a list"):
            relabel_targets(torch.tensor([0]), index, 3)
        with pytest.raises(ValueError, match=r"rows but the batch has 2"):
            relabel_targets([torch.tensor([0]), torch.tensor([1])], index, 3)


def _training_step(model, batch, targets):
    """Losses and the gradients of their weighted total w.r.t. every parameter, with fixed randomness."""
    torch.manual_seed(1)
    outputs = model.forward_logits(batch, [t["labels"] for t in targets])
    criterion = SetCriterion(model.num_classes, num_points=64)
    losses = criterion(outputs, targets, generator=torch.Generator().manual_seed(2))
    total = criterion.weighted_total(losses)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    return losses, dict(zip([n for n, p in model.named_parameters() if p.requires_grad], grads))


def _tiny_training_problem(topk):
    model = tiny_mask_former(num_classes=6, rankseg_topk=topk).double().train()
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    targets = [{"labels": torch.tensor([0, 3, 6]), "masks": torch.rand(3, 64, 64, generator=g) > 0.5},
               {"labels": torch.tensor([5, 1]), "masks": torch.rand(2, 64, 64, generator=g) > 0.5}]
    return model, batch, targets


@pytest.mark.parametrize("topk", [6, 4])
def test_model_losses_kernel_impl_match_reference_impl(topk):
    """The whole model switched between use_impl("kernel") and use_impl("reference"): same losses."""
    model, batch, targets = _tiny_training_problem(topk)
    results = {}
    for impl in ("kernel", "reference"):
        with use_impl(impl):
            results[impl] = _training_step(model, batch, targets)[0]
    assert results["kernel"].keys() == results["reference"].keys() and "loss_ml" in results["kernel"]
    for name, loss in results["kernel"].items():
        torch.testing.assert_close(loss, results["reference"][name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("topk", [6, 4])
def test_model_training_step_rank_kernels_match_references(topk, monkeypatch):
    """Only the rank-space ops switched (the other ops stay on their kernels): same losses and the same
    gradient for every parameter of the model."""
    model, batch, targets = _tiny_training_problem(topk)
    losses, grads = _training_step(model, batch, targets)
    monkeypatch.setattr(ops, "rank_logits", rank_logits_reference)
    monkeypatch.setattr(ops, "rank_scatter", rank_scatter_reference)
    monkeypatch.setattr(ops, "relabel_targets", relabel_targets_reference)
    ref_losses, ref_grads = _training_step(model, batch, targets)
    for name in losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-9, atol=1e-9, msg=name)
    assert grads["ml_norm.weight"] is not None and grads["ml_norm.weight"].abs().sum() > 0
    for name, grad in grads.items():
        if grad is None:
            assert ref_grads[name] is None, name
        else:
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-8, atol=1e-9, msg=name)
