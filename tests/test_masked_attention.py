"""masked_attention: kernels against the fp64 reference (outputs and q/k/v gradients), the mask rules
(all-blocked rows, exact zeros, NaN), precisions, the op contract (opcheck, torch.compile, autograd),
bad inputs, and the transformer decoder end to end with kernels vs references."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from rankseg_fast.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder
from rankseg_fast.ops import masked_attention, use_impl
from rankseg_fast.ops.reference import masked_attention_reference
from rankseg_fast.testing import DEVICES, assert_close_scaled, needs_cuda, needs_ops
from rankseg_fast.testing.masked_attention import Case, make_inputs, tile_pattern_mask_logits

pytestmark = needs_ops

CASES = {
    "tiny": Case(batch=2, queries=6, keys=37, heads=3, head_dim=4),
    "one_query": Case(batch=2, queries=1, keys=70, heads=2, head_dim=8),
    "keys_31": Case(batch=1, queries=9, keys=31, heads=2, head_dim=16),
    "keys_33_d64": Case(batch=2, queries=5, keys=33, heads=1, head_dim=64),
    "odd_dim": Case(batch=1, queries=7, keys=45, heads=2, head_dim=5),
    "d128": Case(batch=1, queries=20, keys=100, heads=2, head_dim=128),
    "q100_l400": Case(batch=2, queries=100, keys=400),
    "q200_l1600": Case(batch=2, queries=200, keys=1600),
    "q100_l6400": Case(batch=1, queries=100, keys=6400),
    "video_t2": Case(batch=1, queries=100, keys=2 * 1600),
}
NAMES = ("out", "grad_query", "grad_key", "grad_value")


def run_with_grads(fn, inputs, grad_output):
    """fn(q, k, v, mask_logits, H) and the gradients of <out, grad_output> w.r.t. q, k, v."""
    q, k, v, logits, heads = inputs
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves, logits, heads)
    return (out, *torch.autograd.grad(out, leaves, grad_output))


def reference_fp64(inputs, grad_output):
    """The reference on the same (already rounded) inputs, in fp64 on the CPU."""
    q, k, v, logits, heads = inputs
    inputs64 = [t.detach().cpu().double() for t in (q, k, v, logits)]
    return run_with_grads(masked_attention_reference, (*inputs64, heads), grad_output.detach().cpu().double())


def case_inputs(name, dtype, device, seed=0, mask_dtype=None):
    case = CASES[name]
    return (*make_inputs(case, dtype, device=device, seed=seed, mask_dtype=mask_dtype), case.heads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_name", list(CASES))
def test_kernel_matches_reference_fp64(device, case_name):
    # fp64 on CUDA runs the reference (no fp64 CUDA kernel), so this compares the kernel on the CPU and
    # the routing on CUDA; fp32 below is the CUDA kernel's test.
    inputs = case_inputs(case_name, torch.float64, device)
    grad_output = torch.randn_like(inputs[0])
    actual = run_with_grads(masked_attention, inputs, grad_output)
    expected = reference_fp64(inputs, grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.device.type == device and a.dtype == torch.float64
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{case_name} {name}: {m}")


# Multiples of the dtype's unit roundoff times max|expected|: fp32 sums over thousands of keys, fp16/bf16
# round the inputs' products only at the output (fp32 inside) but the backward's delta uses the rounded out.
FACTORS = {torch.float32: 512.0, torch.float16: 8.0, torch.bfloat16: 8.0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(FACTORS), ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case_name", ["tiny", "one_query", "keys_31", "keys_33_d64", "odd_dim", "d128", "q200_l1600",
                                       "video_t2"])
def test_low_precision_against_fp64(device, dtype, case_name):
    inputs = case_inputs(case_name, dtype, device, seed=1)
    grad_output = torch.randn(inputs[0].shape, device=device).to(dtype)
    actual = run_with_grads(masked_attention, inputs, grad_output)
    expected = reference_fp64(inputs, grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype
        assert_close_scaled(a, e, dtype, FACTORS[dtype], f"{case_name} {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,mask_dtype", [(torch.float32, torch.float64), (torch.float16, torch.float32),
                                              (torch.float32, torch.bfloat16), (torch.float64, torch.float16)])
def test_mask_dtype_may_differ(device, dtype, mask_dtype):
    inputs = case_inputs("tiny", dtype, device, mask_dtype=mask_dtype)
    grad_output = torch.randn(inputs[0].shape, device=device).to(dtype)
    actual = run_with_grads(masked_attention, inputs, grad_output)
    expected = reference_fp64(inputs, grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        assert_close_scaled(a, e, dtype, FACTORS.get(dtype, 64.0), name)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_rules(device):
    """Tiny negative fp64 logits block (no rounding through fp32); rows blocking every key, and a batch whose
    every row does, equal unmasked attention; a row whose only visible key has logit 0 returns that value."""
    B, Q, L, H, D = 2, 4, 40, 2, 8
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, n, H * D, generator=generator, dtype=torch.float64).to(device) for n in (Q, L, L))
    logits = torch.full((B, Q, L), -1e-300, dtype=torch.float64)
    logits[0, 1, 7] = 0.0
    logits[0, 2, 3] = 1e-300
    logits = logits.to(device)
    out = masked_attention(q, k, v, logits, H)
    unmasked = masked_attention_reference(q, k, v, torch.zeros_like(logits), H)
    torch.testing.assert_close(out[0, 1], v[0, 7], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0, 2], v[0, 3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0, [0, 3]], unmasked[0, [0, 3]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], unmasked[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_whole_key_tiles_blocked_for_every_query(device, dtype):
    """Only key tiles 0, 2, 3 and 7 of 10 hold visible keys: the kernels skip the others (staged or not,
    tile after tile), and the keys of never-visible tiles get exactly zero gradients."""
    case = Case(batch=2, queries=70, keys=300, heads=2, head_dim=32)
    q, k, v, _ = make_inputs(case, dtype, device=device, seed=7)
    logits = tile_pattern_mask_logits(2, 70, 300, (0, 2, 3, 7), torch.Generator().manual_seed(8)).to(device)
    grad_output = torch.randn(q.shape, generator=torch.Generator().manual_seed(9)).to(device, dtype)
    inputs = (q, k, v, logits, case.heads)
    actual = run_with_grads(masked_attention, inputs, grad_output)
    expected = reference_fp64(inputs, grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        assert_close_scaled(a, e, dtype, FACTORS.get(dtype, 64.0), name)
    never_visible = torch.ones(300, dtype=torch.bool)
    for tile in (0, 2, 3, 7):
        never_visible[32 * tile: 32 * (tile + 1)] = False
    for name, grad in zip(("grad_key", "grad_value"), actual[2:]):
        assert not grad[:, never_visible.to(device)].any(), name


def test_lse_is_the_log_sum_exp_of_the_visible_scaled_scores():
    q, k, v, logits, H = case_inputs("tiny", torch.float64, "cpu")
    out, lse = torch.ops.rankseg_fast.masked_attention(q, k, v, logits, H)
    B, Q, E = q.shape
    D = E // H
    scores = torch.einsum("bqhd,blhd->bhql", q.view(B, Q, H, D), k.view(B, -1, H, D)) / math.sqrt(D)
    visible = ~(logits < 0)
    visible = visible | ~visible.any(-1, keepdim=True)
    expected = scores.masked_fill(~visible[:, None], float("-inf")).logsumexp(-1)
    assert lse.dtype == torch.float64 and lse.shape == (B, H, Q)
    torch.testing.assert_close(lse, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, masked_attention_reference(q, k, v, logits, H), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    q, k, v, logits, H = case_inputs("tiny", torch.float32, device)
    # Same numbers behind transposed / strided storage.
    q_nc = q.transpose(0, 1).contiguous().transpose(0, 1)
    k_nc = torch.stack([k, torch.zeros_like(k)], -1)[..., 0]
    v_nc = v.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    logits_nc = logits.transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(t.is_contiguous() for t in (q_nc, k_nc, v_nc, logits_nc))
    grad_output = torch.randn_like(q)
    grad_output_nc = grad_output.transpose(0, 1).contiguous().transpose(0, 1)
    actual = run_with_grads(masked_attention, (q_nc, k_nc, v_nc, logits_nc, H), grad_output_nc)
    expected = run_with_grads(masked_attention, (q, k, v, logits, H), grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,queries", [(0, 5), (2, 0)])
def test_zero_size(device, batch, queries):
    """No image or no query: empty output, and zero key/value gradients (nothing attends to them)."""
    inputs = (*make_inputs(Case(batch, queries, 10, heads=2, head_dim=4), torch.float32, device=device), 2)
    grad_output = torch.randn(batch, queries, 8, device=device)
    out, grad_q, grad_k, grad_v = run_with_grads(masked_attention, inputs, grad_output)
    assert out.shape == (batch, queries, 8) and grad_q.shape == (batch, queries, 8)
    assert grad_k.shape == (batch, 10, 8) and grad_v.shape == (batch, 10, 8)
    assert not grad_k.any() and not grad_v.any()


def test_gradcheck_fp64():
    q, k, v, logits = make_inputs(Case(batch=2, queries=4, keys=9, heads=2, head_dim=3), seed=3)
    H = 2
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *t: masked_attention(*t, logits, H), leaves, eps=1e-6, atol=1e-6)


def _opcheck_samples(device):
    dtypes = [torch.float32, torch.bfloat16, torch.float16] + ([torch.float64] if device == "cpu" else [])
    for dtype in dtypes:
        for name in ("tiny", "keys_33_d64"):
            case = CASES[name]
            yield (*make_inputs(case, dtype, device=device, requires_grad=True, mask_dtype=torch.float32),
                   case.heads)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for sample in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.rankseg_fast.masked_attention.default, sample)
        q, k, v, logits, heads = (t.detach() if isinstance(t, torch.Tensor) else t for t in sample)
        out, lse = torch.ops.rankseg_fast.masked_attention(q, k, v, logits, heads)
        grad_output = torch.randn_like(out)
        torch.library.opcheck(torch.ops.rankseg_fast._masked_attention_backward.default,
                              (grad_output, q, k, v, logits, out, lse, heads))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    q, k, v, logits, H = case_inputs("tiny", torch.float32, device)

    def attend(q, k, v, logits):
        return masked_attention(q * 2.0, k, v, logits, H).relu()

    compiled = torch.compile(attend, fullgraph=True)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    eager = attend(*leaves, logits)
    eager_grads = torch.autograd.grad(eager.sum(), leaves)
    out = compiled(*leaves, logits)
    grads = torch.autograd.grad(out.sum(), leaves)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (lambda a: {**a, "query": a["query"][0]}, ValueError, r"`query` must have 3 dimensions"),
        (lambda a: {**a, "mask_logits": a["mask_logits"][..., None]}, ValueError,
         r"`mask_logits` must have 3 dimensions"),
        (lambda a: {**a, "num_heads": 0}, ValueError, r"`num_heads` must be a positive int"),
        (lambda a: {**a, "num_heads": 5}, ValueError, r"`query` channels \(12\) must be divisible by num_heads \(5\)"),
        (lambda a: {**a, "key": a["key"][..., :-3]}, ValueError,
         r"`key` must have shape \(batch=2, keys, channels=12\)"),
        (lambda a: {**a, "value": a["value"][:, :-1]}, ValueError, r"`value` must have shape"),
        (lambda a: {**a, "mask_logits": a["mask_logits"][:, :-1]}, ValueError,
         r"`mask_logits` must have shape \(batch, queries, keys\)"),
        (lambda a: {**a, "key": a["key"][:, :0], "value": a["value"][:, :0], "mask_logits": a["mask_logits"][..., :0]},
         ValueError, r"`key` must have at least one key"),
        (lambda a: {**a, "query": a["query"].int()}, TypeError, r"`query` must be a floating tensor"),
        (lambda a: {**a, "mask_logits": a["mask_logits"] > 0}, TypeError, r"`mask_logits` must be a floating tensor"),
        (lambda a: {**a, "value": a["value"].double()}, TypeError, r"`value` dtype torch.float64 differs from `query`"),
        (lambda a: {**a, "mask_logits": a["mask_logits"].to("meta")}, ValueError,
         r"`mask_logits` is on meta but `query` is on"),
    ],
)
def test_bad_inputs_name_the_problem(device, impl, mutate, error, pattern):
    names = ("query", "key", "value", "mask_logits", "num_heads")
    good = dict(zip(names, case_inputs("tiny", torch.float32, device)))
    bad = mutate(good)
    with use_impl(impl), pytest.raises(error, match=pattern):
        masked_attention(*(bad[n] for n in names))


def test_the_op_itself_validates():
    """The C++ schema validates too (same messages), for callers of torch.ops.rankseg_fast directly."""
    q, k, v, logits, H = case_inputs("tiny", torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"masked_attention: `mask_logits` must have shape"):
        torch.ops.rankseg_fast.masked_attention(q, k, v, logits[:, :-1], H)
    with pytest.raises(TypeError, match=r"`key` dtype Half differs from `query` dtype Float"):
        torch.ops.rankseg_fast.masked_attention(q, k.half(), v, logits, H)
    out, lse = torch.ops.rankseg_fast.masked_attention(q, k, v, logits, H)
    with pytest.raises(TypeError, match=r"`lse` must be Float"):
        torch.ops.rankseg_fast._masked_attention_backward(out, q, k, v, logits, out, lse.double(), H)
    with pytest.raises(ValueError, match=r"`grad_output` must have the shape of `query`"):
        torch.ops.rankseg_fast._masked_attention_backward(out[:, :1], q, k, v, logits, out, lse, H)


@needs_cuda
@pytest.mark.cuda
def test_cuda_head_dim_limit_and_mixed_devices():
    q, k, v, logits = make_inputs(Case(1, 3, 10, heads=1, head_dim=136), torch.float32, device="cuda")
    with pytest.raises(ValueError, match=r"head dim 136 .* at most 128"):
        torch.ops.rankseg_fast.masked_attention(q, k, v, logits, 1)
    with pytest.raises(ValueError, match=r"`mask_logits` is on cpu but `query` is on cuda"):
        masked_attention(q, k, v, logits.cpu(), 1)


# Runs in a fresh process: the CPU kernels pick their vector loops (AVX2 or baseline) once per process.
_BASELINE_LOOPS_SCRIPT = """
import torch
from rankseg_fast.ops import masked_attention
from rankseg_fast.ops.reference import masked_attention_reference
from rankseg_fast.testing.masked_attention import Case, make_inputs, tile_pattern_mask_logits
for case in (Case(batch=2, queries=70, keys=1000, heads=2, head_dim=16), Case(batch=1, queries=6, keys=37, heads=3, head_dim=4)):
    q, k, v, logits = make_inputs(case, torch.float32, seed=2)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (masked_attention, masked_attention_reference):
        out = fn(*leaves, logits, case.heads)
        results.append((out, *torch.autograd.grad(out, leaves, grad)))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-5)
print("ok")
"""


@pytest.mark.parametrize("isa", ["base", "auto"])
def test_cpu_vector_loops_match_reference(isa):
    """Both widths of the CPU kernels' row loops (forced baseline, and what this machine picks) against the
    reference, in fp32: forward and the three gradients."""
    env = {**os.environ, "RANKSEG_FAST_CPU_ISA": isa}
    result = subprocess.run([sys.executable, "-c", _BASELINE_LOOPS_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def tiny_decoder(seed: int = 0) -> MultiScaleMaskedTransformerDecoder:
    torch.manual_seed(seed)
    return MultiScaleMaskedTransformerDecoder(in_channels=16, num_classes=5, hidden_dim=32, num_queries=9, nheads=4,
                                              dim_feedforward=48, dec_layers=4, mask_dim=16).double()


def test_decoder_kernel_equals_reference_fp64():
    """The whole transformer decoder (3 levels, masks predicted per layer) with kernels vs references:
    outputs and the gradients of the parameters and features."""
    decoder = tiny_decoder()
    generator = torch.Generator().manual_seed(1)
    features = [torch.randn(2, 16, h, w, generator=generator, dtype=torch.float64)
                for h, w in ((3, 4), (6, 8), (12, 16))]
    mask_features = torch.randn(2, 16, 24, 32, generator=generator, dtype=torch.float64)
    results = {}
    for impl in ("kernel", "reference"):
        leaves = [t.clone().requires_grad_(True) for t in (*features, mask_features)]
        decoder.zero_grad()
        with use_impl(impl):
            out = decoder(leaves[:3], leaves[3])
        loss = out["pred_logits"].square().sum() + out["pred_masks"].sigmoid().sum()
        loss = loss + sum(aux["pred_masks"].tanh().sum() for aux in out["aux_outputs"])
        grads = torch.autograd.grad(loss, leaves + list(decoder.parameters()), allow_unused=True)
        results[impl] = (out["pred_logits"], out["pred_masks"], grads)
    kernel, reference = results["kernel"], results["reference"]
    torch.testing.assert_close(kernel[0], reference[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(kernel[1], reference[1], rtol=1e-9, atol=1e-9)
    for a, b in zip(kernel[2], reference[2]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
