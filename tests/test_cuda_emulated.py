"""The CUDA launchers and kernels of every op, run on the CPU by the CUDA emulator (tests/cuda_emulator),
against the same ops' CPU kernels on fp64 copies of the inputs: CI checks the CUDA code on machines
without a GPU. masked_attention runs both kernel families: tensor-core (the launcher sees an sm_90
binary) and SIMT (sm_75). The emulator does not model timing or the memory model: a GPU run stays the
final word (tests/test_*.py -m cuda)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cuda_emulator
from rankseg_fast.testing import assert_close_scaled, needs_ops
from rankseg_fast.testing import mask_match as match_inputs
from rankseg_fast.testing import masked_attention as attention_inputs
from rankseg_fast.testing import ms_deform_attn as deform_inputs
from rankseg_fast.testing import rank_logits as rank_inputs

pytestmark = [
    needs_ops,
    pytest.mark.skipif(cuda_emulator.cuda_include_dir() is None, reason="no CUDA toolkit headers (set CUDA_HOME)"),
]

LOW_PRECISION = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
cpu = torch.ops.rankseg_fast


@pytest.fixture(scope="module")
def emulated():
    return cuda_emulator.load()


def fp64(*tensors):
    return [t.double() if t.is_floating_point() else t for t in tensors]


class Canaries:
    """Puts floating "device" inputs inside NaN padding: a kernel that reads past an input gets NaN into
    its results, and one that writes past it (or into it) is caught by check()."""

    PAD = 64  # elements: keeps 16-byte alignment

    def __init__(self):
        self.inputs = []

    def __call__(self, *tensors):
        out = []
        for t in tensors:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                out.append(t)
                continue
            buffer = torch.full((t.numel() + 2 * self.PAD,), float("nan"), dtype=t.dtype)
            inner = buffer[self.PAD : self.PAD + t.numel()].view(t.shape)
            inner.copy_(t)
            self.inputs.append((buffer, t.clone()))
            out.append(inner)
        return out[0] if len(out) == 1 else out

    def check(self):
        for buffer, original in self.inputs:
            assert buffer[: self.PAD].isnan().all() and buffer[-self.PAD :].isnan().all(), "write past an input"
            inner = buffer[self.PAD : self.PAD + original.numel()].view(original.shape)
            assert torch.equal(inner.nan_to_num(7.0), original.nan_to_num(7.0)), "write into an input"


@pytest.fixture
def guard():
    canaries = Canaries()
    yield canaries
    canaries.check()


# ------------------------------------------------------------------------------------------------
# masked_attention

ATTENTION_CASES = {
    "tiny": attention_inputs.Case(batch=2, queries=6, keys=37, heads=3, head_dim=4),
    "odd_dim": attention_inputs.Case(batch=1, queries=7, keys=45, heads=2, head_dim=5),
    "d16_keys31": attention_inputs.Case(batch=1, queries=9, keys=31, heads=2, head_dim=16),
    "d24_partial_head": attention_inputs.Case(batch=1, queries=19, keys=70, heads=2, head_dim=24),
    "d32_two_row_blocks": attention_inputs.Case(batch=1, queries=70, keys=150, heads=2, head_dim=32),
    "d64_key_splits": attention_inputs.Case(batch=1, queries=20, keys=300, heads=1, head_dim=64),
    "d128": attention_inputs.Case(batch=1, queries=20, keys=100, heads=2, head_dim=128),
}
# As tests/test_masked_attention.py: multiples of the unit roundoff times max|expected|.
ATTENTION_FACTORS = {torch.float32: 512.0, torch.float16: 8.0, torch.bfloat16: 8.0}


@pytest.mark.parametrize("sm", [90, 75], ids=["sm90_tensor_cores", "sm75_simt"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS)
@pytest.mark.parametrize("case_name", list(ATTENTION_CASES))
def test_masked_attention(emulated, monkeypatch, guard, sm, dtype, case_name):
    monkeypatch.setenv("RSF_EMU_SM", str(sm))
    monkeypatch.setenv("RSF_EMU_SMS", "2")  # few SMs: the launchers split the keys of small problems
    case = ATTENTION_CASES[case_name]
    q, k, v, logits = attention_inputs.make_inputs(case, dtype, seed=3)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(dtype)
    q, k, v, logits, grad_out = guard(q, k, v, logits, grad_out)
    mma_before = emulated.emulated_mma_calls()
    out, lse = emulated.masked_attention(q, k, v, logits, case.heads)
    grads = emulated._masked_attention_backward(grad_out, q, k, v, logits, *guard(out, lse), case.heads)
    tensor_cores = sm >= 80 and dtype != torch.float32 and case.head_dim <= 64 and case.head_dim % 8 == 0
    assert (emulated.emulated_mma_calls() > mma_before) == tensor_cores

    q64, k64, v64, logits64, grad64 = fp64(q, k, v, logits, grad_out)
    out64, lse64 = cpu.masked_attention(q64, k64, v64, logits64, case.heads)
    expected = cpu._masked_attention_backward(grad64, q64, k64, v64, logits64, out64, lse64, case.heads)
    factor = ATTENTION_FACTORS[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close_scaled(out, out64, dtype, factor, "out")
    assert_close_scaled(lse, lse64, dtype, factor, "lse")
    for name, actual, wanted in zip(("grad_query", "grad_key", "grad_value"), grads, expected):
        assert actual.dtype == dtype
        assert_close_scaled(actual, wanted, dtype, factor, name)


@pytest.mark.parametrize("sm", [90, 75], ids=["sm90_tensor_cores", "sm75_simt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_masked_attention_skips_whole_key_tiles(emulated, monkeypatch, guard, sm, dtype):
    """Only key tiles 0, 2, 3 and 7 of 10 hold visible keys: every block skips the others (the pipelined
    loops then neither stage nor compute them, in runs of one and of three), the last of three key splits
    sees nothing, and the key blocks of never-visible tiles see no query (exactly zero dK, dV)."""
    monkeypatch.setenv("RSF_EMU_SM", str(sm))
    monkeypatch.setenv("RSF_EMU_SMS", "6")  # three key splits: tiles 0-3, 4-7, 8-9
    case = attention_inputs.Case(batch=1, queries=70, keys=300, heads=2, head_dim=32)
    q, k, v, _ = attention_inputs.make_inputs(case, dtype, seed=7)
    logits = attention_inputs.tile_pattern_mask_logits(1, 70, 300, (0, 2, 3, 7), torch.Generator().manual_seed(8))
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    q, k, v, logits, grad_out = guard(q, k, v, logits, grad_out)
    out, lse = emulated.masked_attention(q, k, v, logits, case.heads)
    grads = emulated._masked_attention_backward(grad_out, q, k, v, logits, *guard(out, lse), case.heads)
    q64, k64, v64, logits64, grad64 = fp64(q, k, v, logits, grad_out)
    out64, lse64 = cpu.masked_attention(q64, k64, v64, logits64, case.heads)
    expected = cpu._masked_attention_backward(grad64, q64, k64, v64, logits64, out64, lse64, case.heads)
    factor = ATTENTION_FACTORS[dtype]
    assert_close_scaled(out, out64, dtype, factor, "out")
    assert_close_scaled(lse, lse64, dtype, factor, "lse")
    for name, actual, wanted in zip(("grad_query", "grad_key", "grad_value"), grads, expected):
        assert_close_scaled(actual, wanted, dtype, factor, name)
    never_visible = torch.ones(300, dtype=torch.bool)
    for tile in (0, 2, 3, 7):
        never_visible[32 * tile: 32 * (tile + 1)] = False
    assert not grads[1][:, never_visible].any() and not grads[2][:, never_visible].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_masked_attention_misaligned_inputs_run_the_simt_kernels(emulated, monkeypatch, dtype):
    """The tensor-core kernels load rows in 16-byte chunks; inputs two bytes off that alignment run the SIMT
    kernels instead, bit for bit as on a pre-tensor-core GPU."""
    case = ATTENTION_CASES["d32_two_row_blocks"]
    q, k, v, logits = attention_inputs.make_inputs(case, dtype, seed=5)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(dtype)

    def shifted(t):
        buffer = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = buffer[1:].view(t.shape)
        view.copy_(t)
        assert view.data_ptr() % 16 != 0
        return view

    def run(sm, q, k, v, grad_out):
        monkeypatch.setenv("RSF_EMU_SM", str(sm))
        out, lse = emulated.masked_attention(q, k, v, logits, case.heads)
        return (out, lse, *emulated._masked_attention_backward(grad_out, q, k, v, logits, out, lse, case.heads))

    simt = run(75, q, k, v, grad_out)
    mma_before = emulated.emulated_mma_calls()
    misaligned = run(90, *(shifted(t) for t in (q, k, v, grad_out)))
    assert emulated.emulated_mma_calls() == mma_before
    for name, a, b in zip(("out", "lse", "grad_query", "grad_key", "grad_value"), simt, misaligned):
        assert torch.equal(a, b), name


def test_masked_attention_seeds_do_not_matter(emulated, monkeypatch):
    """Another block and thread order gives the same bits: no result depends on an unsynchronised order."""
    case = ATTENTION_CASES["d32_two_row_blocks"]
    q, k, v, logits = attention_inputs.make_inputs(case, torch.bfloat16, seed=5)
    runs = []
    for seed in ("1", "2"):
        monkeypatch.setenv("RSF_EMU_SEED", seed)
        out, lse = emulated.masked_attention(q, k, v, logits, case.heads)
        runs.append((out, lse, *emulated._masked_attention_backward(out, q, k, v, logits, out, lse, case.heads)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


# ------------------------------------------------------------------------------------------------
# rank_logits, rank_scatter

RANK_CASES = {
    "k_below_classes": rank_inputs.Case(layers=2, batch=3, queries=70, classes=9, k=5),
    "ties": rank_inputs.Case(layers=3, batch=2, queries=50, classes=12, k=12, tie_levels=3),
    "k_one": rank_inputs.Case(layers=1, batch=2, queries=3, classes=4, k=1),
    "many_classes": rank_inputs.Case(layers=1, batch=2, queries=40, classes=600, k=590),  # 37 rows per block
}
RANK_FACTORS = {torch.float32: 64.0, torch.float16: 4.0, torch.bfloat16: 4.0}


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS)
@pytest.mark.parametrize("case_name", list(RANK_CASES))
def test_rank_logits_and_scatter(emulated, guard, dtype, case_name):
    case = RANK_CASES[case_name]
    logits, scores, k, weight, bias = rank_inputs.make_inputs(case, dtype, seed=2, param_dtype=torch.float32)
    logits, scores, weight, bias = guard(logits, scores, weight, bias)
    ranked, index, mean, rstd = emulated.rank_logits(logits, scores, k, weight, bias, 1e-5)
    logits64, scores64, weight64, bias64 = fp64(logits, scores, weight, bias)
    ranked64, index64, mean64, rstd64 = cpu.rank_logits(logits64, scores64, k, weight64, bias64, 1e-5)
    assert torch.equal(index, index64)  # ties to the lower class index on both
    factor = RANK_FACTORS[dtype]
    for name, actual, wanted in (("ranked", ranked, ranked64), ("mean", mean, mean64), ("rstd", rstd, rstd64)):
        assert_close_scaled(actual, wanted, dtype, factor, name)

    grad = torch.randn(ranked.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(dtype)
    grads = emulated._rank_logits_backward(guard(grad), logits, index, weight, *guard(mean, rstd))
    expected = cpu._rank_logits_backward(grad.double(), logits64, index64, weight64, mean64, rstd64)
    # With few ranks the LayerNorm gradient cancels to far below its inputs' scale: the yardstick is then
    # the CPU kernel's own error in the same dtype.
    _, cpu_index, cpu_mean, cpu_rstd = cpu.rank_logits(logits, scores, k, weight, bias, 1e-5)
    cpu_grads = cpu._rank_logits_backward(grad, logits, cpu_index, weight, cpu_mean, cpu_rstd)
    for name, actual, wanted, cpu_actual in zip(("grad_logits", "grad_weight", "grad_bias"), grads, expected, cpu_grads):
        cpu_error = (cpu_actual.double() - wanted).abs().max().item()
        if (actual.double() - wanted).abs().max().item() > 2 * cpu_error:
            assert_close_scaled(actual, wanted, dtype, factor * 8, name)

    scattered = emulated.rank_scatter(guard(ranked), index, case.classes, -100.0)
    assert torch.equal(scattered, cpu.rank_scatter(ranked, index, case.classes, -100.0))
    back = emulated._rank_scatter_backward(guard(scattered), index)
    assert torch.equal(back, cpu._rank_scatter_backward(scattered, index))


def test_rank_logits_backward_many_blocks(emulated, monkeypatch, guard):
    """Enough rows for 8 backward blocks: the last block's reduction of the weight/bias partials, in a
    few orders of the blocks in flight (a block that counted itself done before all of its partials were
    written fails at about half the seeds)."""
    case = rank_inputs.Case(layers=3, batch=2, queries=150, classes=6, k=4)
    logits, scores, k, weight, bias = guard(*rank_inputs.make_inputs(case, torch.float32, seed=7))
    ranked, index, mean, rstd = emulated.rank_logits(logits, scores, k, weight, bias, 1e-5)
    grad = torch.randn_like(ranked)
    expected = cpu._rank_logits_backward(*fp64(grad, logits), index, *fp64(weight, mean, rstd))
    for seed in range(4):
        monkeypatch.setenv("RSF_EMU_SEED", str(seed))
        grads = emulated._rank_logits_backward(guard(grad), logits, index, weight, *guard(mean, rstd))
        for name, actual, wanted in zip(("grad_logits", "grad_weight", "grad_bias"), grads, expected):
            assert_close_scaled(actual, wanted, torch.float32, 512.0, f"{name} (seed {seed})")


_BAD_RANK_INDEX_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
import cuda_emulator
ops = cuda_emulator.load()
index = torch.tensor([[2, 0, 4], [1, {bad}, 4]])
ops.rank_scatter(torch.randn(2, 3, 3), index, 4, -100.0)
print("no assert")
"""


@pytest.mark.parametrize("bad,failed", [(1, "earlier == -1"), (7, "c >= 0 && c < classes_plus_one")],
                         ids=["repeated_class", "class_out_of_range"])
def test_rank_scatter_asserts_on_a_bad_rank_index(emulated, bad, failed):
    """A rank_index row that repeats a class (one of its ranks would be lost) or holds one outside
    [0, K] trips the kernel's device assert; in the emulator it aborts the process, so in a child."""
    tests = str(Path(cuda_emulator.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", _BAD_RANK_INDEX_RUN.format(tests=tests, bad=bad)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "no assert" not in result.stdout, result.stdout + result.stderr
    assert f"Assertion `{failed}' failed" in result.stderr, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# point_mask_costs, linear_assignment


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS)
def test_point_mask_costs(emulated, guard, dtype):
    # 70 queries and 67 targets: two 64-wide tiles each way; 45 points: a partial 32-point chunk.
    pred_logits, pred_masks, _, target_masks, valid = match_inputs.make_match_inputs(
        [67, 0, 5], layers=2, queries=70, pred_size=(9, 11), gt_size=(20, 17), seed=1)
    coords = torch.rand(2, 3, 45, 2, generator=torch.Generator().manual_seed(2)) * 1.2 - 0.1
    pred = pred_masks.to(dtype)
    actual = emulated.point_mask_costs(*guard(pred, target_masks), valid, guard(coords), 5.0, 2.0)
    expected = cpu.point_mask_costs(pred, target_masks, valid, coords, 5.0, 2.0)
    assert_close_scaled(actual, expected, torch.float32, 64.0, "cost")
    assert not actual[:, 1].any() and not actual[..., 5:].sum(-1)[:, 2].any()  # invalid columns are 0


def check_assignment_against_cpu_and_scipy(emulated, guard, cost, valid):
    rows, cols, ok = emulated.linear_assignment(guard(cost), valid)
    expected_rows, expected_cols, _ = cpu.linear_assignment(cost, valid)
    assert ok.all()
    assert torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)
    for p in range(cost.shape[0]):  # and the optimum is scipy's
        _, _, best = match_inputs.scipy_assignment(cost[p].double().numpy(), valid[p].numpy())
        pairs = rows[p] >= 0
        total = cost[p].double()[rows[p][pairs], cols[p][pairs]].sum().item()
        np.testing.assert_allclose(total, best, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("staging", ["shared", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_linear_assignment(emulated, monkeypatch, guard, dtype, ties, staging):
    if staging == "global":  # a device without room for the costs: the kernel stages them in global memory
        monkeypatch.setenv("RSF_EMU_SMEM_OPTIN", "512")
    generator = torch.Generator().manual_seed(3)
    problems, queries, targets = 6, 9, 12
    if ties:  # few distinct values: many optimal assignments, the tie rule decides
        cost = torch.randint(0, 3, (problems, queries, targets), generator=generator).to(dtype)
    else:
        cost = torch.randn(problems, queries, targets, generator=generator, dtype=dtype)
    valid = torch.rand(problems, targets, generator=generator) < 0.6
    valid[0] = True  # more targets than queries
    valid[1] = False  # nothing to match
    check_assignment_against_cpu_and_scipy(emulated, guard, cost, valid)


def test_linear_assignment_stages_large_costs_in_opted_in_shared_memory(emulated, guard):
    """200 queries x 70 targets in float64: 112 KB of staged costs, above the 48 KiB a launch gets
    without cudaFuncSetAttribute (the emulator refuses such a launch, as a GPU does)."""
    generator = torch.Generator().manual_seed(5)
    cost = torch.randint(0, 50, (1, 200, 70), generator=generator).double()  # ties among 50 values
    valid = torch.rand(1, 70, generator=generator) < 0.8
    check_assignment_against_cpu_and_scipy(emulated, guard, cost, valid)


def test_linear_assignment_reports_non_finite_costs(emulated):
    cost = torch.randn(2, 4, 3, dtype=torch.float64)
    cost[1, 2, 0] = float("nan")
    rows, cols, ok = emulated.linear_assignment(cost, torch.ones(2, 3, dtype=torch.bool))
    assert ok.tolist() == [True, False]
    assert (rows[1] == -1).all() and (cols[1] == -1).all() and (rows[0] >= 0).all()


# ------------------------------------------------------------------------------------------------
# ms_deform_attn

DEFORM_FACTORS = {torch.float32: 64.0, torch.float16: 16.0, torch.bfloat16: 16.0}


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS)
@pytest.mark.parametrize("channels", [8, 32, 6], ids=["c8", "c32", "c6"])
def test_ms_deform_attn(emulated, guard, dtype, channels):
    case = deform_inputs.Case(levels=((5, 6), (3, 2)), batch=2, queries=11, heads=2, channels=channels, points=3)
    value, shapes, starts, locations, weights = deform_inputs.make_inputs(case, dtype, seed=4)
    out = emulated.ms_deform_attn(*guard(value, shapes, starts, locations, weights))
    v64, loc64, w64 = fp64(value, locations, weights)
    expected = cpu.ms_deform_attn(v64, shapes, starts, loc64, w64)
    assert_close_scaled(out, expected, dtype, DEFORM_FACTORS[dtype], "out")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    grads = emulated._ms_deform_attn_backward(*guard(grad, value, shapes, starts, locations, weights))
    expected = cpu._ms_deform_attn_backward(grad.double(), v64, shapes, starts, loc64, w64)
    for name, actual, wanted in zip(("grad_value", "grad_locations", "grad_weights"), grads, expected):
        assert_close_scaled(actual, wanted, dtype, DEFORM_FACTORS[dtype] * 4, name)


# ------------------------------------------------------------------------------------------------
# The CUDA launchers' own limits: named errors before any launch (CI has no other way to reach them).


def test_cuda_launcher_limits_name_the_problem(emulated):
    def attention(batch, heads, head_dim, dtype=torch.float32):
        q = torch.zeros(batch, 1, heads * head_dim, dtype=dtype)
        return emulated.masked_attention(q, q, q, torch.zeros(batch, 1, 1, dtype=dtype), heads)

    with pytest.raises(ValueError, match=r"head dim 136 \(channels / num_heads\) is too large: .* at most 128"):
        attention(1, 1, 136)
    with pytest.raises(TypeError, match=r"no float64 version"):
        attention(1, 1, 8, torch.float64)
    with pytest.raises(ValueError, match=r"batch \* num_heads = 65536 exceeds the 65535"):
        attention(65536, 1, 1)

    logits, scores, k, weight, bias = rank_inputs.make_inputs(rank_inputs.Case(1, 1, 1, classes=13000, k=4))
    with pytest.raises(ValueError, match=r"rank_logits: the CUDA kernel keeps the scores of an image in shared "
                                         r"memory \(\d+ bytes\), more than the 49152 available; too many classes"):
        emulated.rank_logits(logits, scores, k, weight, bias, 1e-5)

    with pytest.raises(ValueError, match=r"linear_assignment: `cost` .* has too many queries or targets for the "
                                         r"CUDA kernel"):
        emulated.linear_assignment(torch.zeros(1, 1500, 2), torch.ones(1, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# The emulator itself: a kernel that breaks the rules is reported, not silently run.


def test_every_cuda_source_is_emulated():
    launchers = {p.name.removesuffix("_kernel.cu") for p in (cuda_emulator.ROOT / "csrc" / "ops" / "cuda").glob("*.cu")}
    assert launchers == set(cuda_emulator.OPS)


def test_emulator_rewrites_fail_loudly_when_the_sources_change():
    with pytest.raises(RuntimeError, match="no longer matches"):
        cuda_emulator.emulated_text("void f() {}", "cu", "example.cu")


@pytest.mark.parametrize("name", ["intrinsics", "intrinsics_64k_shared"])
def test_emulator_intrinsics(emulated, name):
    out = torch.zeros(6, 64, 10, dtype=torch.int32)
    emulated.emulator_selftest(name, out)
    t = np.arange(64)
    lane, warp_base = t % 32, t - t % 32
    for block in range(6):
        got = out[block].numpy()
        np.testing.assert_array_equal(got[:, 0], 100 * block + (t + 1) % 64)
        np.testing.assert_array_equal(got[:, 1], warp_base + (lane ^ 5))
        np.testing.assert_array_equal(got[:, 2], np.where(lane + 3 < 32, t + 3, t))
        np.testing.assert_array_equal(got[:, 3], warp_base + 7)
        ballot = sum(1 << i for i in range(32) if i % 3 == 0)
        np.testing.assert_array_equal(got[:, 4].astype(np.uint32), np.uint32(ballot))
        np.testing.assert_array_equal(got[:, 5], t >= 32)
        np.testing.assert_array_equal(got[:, 6], 1)
        np.testing.assert_array_equal(got[:, 7], 0)
        np.testing.assert_array_equal(got[:, 8], [sum(range(i - i % 8, i - i % 8 + 8)) for i in t])
        np.testing.assert_array_equal(np.sort(got[:, 9]), t)


def test_emulator_ldmatrix(emulated):
    out = torch.zeros(32, 2, 4, dtype=torch.int32)
    emulated.emulator_selftest("ldmatrix", out)
    bits = out.numpy().view(np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for m in range(4):  # matrix m: rows 8 (m % 2) ..., columns 8 (m // 2) ... of values 256 i + j
            def value(i, j):
                return 256 * (8 * (m % 2) + i) + 8 * (m // 2) + j
            assert bits[lane, 0, m] == value(g, 2 * t) | value(g, 2 * t + 1) << 16, (lane, m)
            assert bits[lane, 1, m] == value(2 * t, g) | value(2 * t + 1, g) << 16, (lane, m, "trans")


@pytest.mark.parametrize(
    "name,pattern",
    [
        ("ldmatrix_misaligned", r"ldmatrix with a row address not 16-byte aligned"),
        ("cp_async_without_wait", r"a thread ended with cp.async copies it never waited for"),
        ("lane_skips_shuffle", r"deadlock in block \(0, 0, 0\).*a warp collective \(warp 0 has 31 live lanes\)"),
        ("mask_without_caller", r"mask does not contain the calling lane"),
        ("trap", r"__trap\(\) called"),
        ("too_many_threads", r"invalid configuration argument"),
        ("shared_above_48k_without_opt_in", r"invalid argument"),
    ],
)
def test_emulator_reports_broken_kernels(emulated, name, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        emulated.emulator_selftest(name, torch.zeros(64, dtype=torch.int32))


def test_emulator_exposes_a_missing_barrier(emulated):
    """One warp runs ahead: it reads the other warp's slots of shared memory before they are written."""
    out = torch.zeros(64, dtype=torch.int32)
    emulated.emulator_selftest("missing_barrier", out)
    assert not torch.equal(out, (torch.arange(64, dtype=torch.int32) + 32) % 64)


BLOCKS, THREADS = 8, 64  # selftest_kernels.cu: kBlocks, kThreads


def grid_selftest(emulated, name: str, monkeypatch, resident: int) -> torch.Tensor:
    """Runs a selftest kernel of BLOCKS blocks with `resident` of them in flight; returns its out buffer:
    BLOCKS x THREADS results, then THREADS scratch words, a total and a counter, all zero first."""
    monkeypatch.setenv("RSF_EMU_RESIDENT", str(resident))
    out = torch.zeros(BLOCKS * THREADS + THREADS + 2, dtype=torch.int32)
    emulated.emulator_selftest(name, out)
    return out


def own_block_values() -> torch.Tensor:
    t = torch.arange(THREADS, dtype=torch.int32)
    return torch.cat([1000 * b + (t + 1) % THREADS for b in range(BLOCKS)])


def test_emulator_gives_each_resident_block_its_own_static_shared_memory(emulated, monkeypatch):
    out = grid_selftest(emulated, "static_shared", monkeypatch, resident=4)
    assert torch.equal(out[: BLOCKS * THREADS], own_block_values())
    # Every block starts with 0xff bytes there (-1 as int32), not what the slot's previous block left.
    out = grid_selftest(emulated, "unwritten_static_shared", monkeypatch, resident=4)
    assert torch.equal(out[: BLOCKS * THREADS], torch.full((BLOCKS * THREADS,), -1, dtype=torch.int32))


def test_emulator_interleaves_blocks_that_share_global_memory(emulated, monkeypatch):
    """A scratch all blocks use at once goes unnoticed when blocks run one after another, and is exposed
    when they are in flight together; so is a "last block" whose blocks count themselves done before all
    their threads have written their partials, while the correct order (write, fence, barrier, count)
    adds every partial whatever the order of the blocks."""
    sequential = grid_selftest(emulated, "shared_global_scratch", monkeypatch, resident=1)
    assert torch.equal(sequential[: BLOCKS * THREADS], own_block_values())
    interleaved = grid_selftest(emulated, "shared_global_scratch", monkeypatch, resident=4)
    assert not torch.equal(interleaved[: BLOCKS * THREADS], own_block_values())
    total_at = BLOCKS * THREADS + THREADS
    sequential = grid_selftest(emulated, "last_block_sum_counted_early", monkeypatch, resident=1)
    assert sequential[total_at] == BLOCKS * THREADS
    totals = {"last_block_sum": [], "last_block_sum_counted_early": []}
    for seed in range(10):
        monkeypatch.setenv("RSF_EMU_SEED", str(seed))
        for name, found in totals.items():
            found.append(int(grid_selftest(emulated, name, monkeypatch, resident=4)[total_at]))
    assert totals["last_block_sum"] == [BLOCKS * THREADS] * 10
    assert any(t != BLOCKS * THREADS for t in totals["last_block_sum_counted_early"]), totals


def test_kernels_under_address_sanitizer():
    """Every op once with the emulator built under AddressSanitizer (a separate process with libasan
    preloaded): no access past a tensor, a dynamic shared memory block or a stack."""
    script = Path(cuda_emulator.__file__).with_name("sanitized_run.py")
    result = subprocess.run([sys.executable, str(script)], env=cuda_emulator.asan_environment(),
                            capture_output=True, text=True, timeout=1200)
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "sanitized run: ok" in result.stdout, report[-6000:]
    assert "ERROR: AddressSanitizer" not in report, report[-6000:]
