"""ms_deform_attn: kernels against the fp64 grid_sample reference, autograd, the op contract, bad inputs."""

from __future__ import annotations

import pytest
import torch

import rankseg_fast
from rankseg_fast.ops import ms_deform_attn, use_impl
from rankseg_fast.ops.reference import ms_deform_attn_reference
from rankseg_fast.testing.ms_deform_attn import R50_ADE_512, SWIN_L_ADE_640, Case, make_inputs
from rankseg_fast.testing import DEVICES, assert_close_scaled, needs_cuda, needs_ops

pytestmark = needs_ops

CASES = {
    "tiny": Case(levels=((4, 6), (3, 2)), batch=2, queries=7, heads=3, channels=5, points=3),
    "single_level": Case(levels=((9, 7),), batch=2, queries=11, heads=2, channels=8, points=2),
    "outside": Case(levels=((5, 5), (2, 3)), batch=1, queries=40, heads=2, channels=4, low=-0.8, high=1.8),
    "odd_channels": Case(levels=((6, 5), (3, 3)), batch=2, queries=9, heads=4, channels=7, points=1),
    "r50_ade512": Case(levels=R50_ADE_512, batch=1, queries=700),
    "swinl_ade640": Case(levels=SWIN_L_ADE_640, batch=2, queries=500),
}


def run_with_grads(fn, inputs, grad_output):
    """Output of fn(*inputs) and the gradients of <output, grad_output> w.r.t. value, locations, weights."""
    leaves = [t.detach().requires_grad_(True) if i in (0, 3, 4) else t for i, t in enumerate(inputs)]
    output = fn(*leaves)
    grads = torch.autograd.grad(output, (leaves[0], leaves[3], leaves[4]), grad_output)
    return (output, *grads)


def reference_fp64(inputs, grad_output):
    """The reference on the same (already rounded) inputs, computed in fp64 on the CPU."""
    inputs64 = [t.detach().cpu().double() if t.is_floating_point() else t.cpu() for t in inputs]
    return run_with_grads(ms_deform_attn_reference, inputs64, grad_output.detach().cpu().double())


NAMES = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_name", list(CASES))
def test_kernel_matches_reference_fp64(device, case_name):
    inputs = make_inputs(CASES[case_name], torch.float64, device=device)
    grad_output = torch.randn(inputs[0].shape[0], inputs[3].shape[1], inputs[0].shape[2] * inputs[0].shape[3],
                              dtype=torch.float64, device=device)
    actual = run_with_grads(ms_deform_attn, inputs, grad_output)
    expected = reference_fp64(inputs, grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.device.type == device and a.dtype == torch.float64
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{case_name} {name}: {m}")


# (value dtype, coordinate dtype); factors are multiples of the dtype's unit roundoff times max|expected|.
PRECISIONS = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,coord_dtype", PRECISIONS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case_name", ["tiny", "outside", "swinl_ade640"])
def test_low_precision_against_fp64(device, dtype, coord_dtype, case_name):
    inputs = make_inputs(CASES[case_name], dtype, coord_dtype, device=device, seed=1)
    B, Q, HC = inputs[0].shape[0], inputs[3].shape[1], inputs[0].shape[2] * inputs[0].shape[3]
    grad_output = torch.randn(B, Q, HC, device=device).to(dtype)
    actual = run_with_grads(ms_deform_attn, inputs, grad_output)
    expected = reference_fp64(inputs, grad_output)
    assert actual[0].dtype == dtype and actual[1].dtype == dtype
    assert actual[2].dtype == coord_dtype and actual[3].dtype == coord_dtype
    # Accumulation is fp32; one rounding to the output dtype per element (a few for fp32 sums).
    factors = {torch.float32: 256.0, torch.float16: 4.0, torch.bfloat16: 4.0}
    for name, a, e in zip(NAMES, actual, expected):
        result_dtype = a.dtype
        assert_close_scaled(a, e, result_dtype, factors[result_dtype], f"{case_name} {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    case = CASES["tiny"]
    value, shapes, starts, locations, weights = make_inputs(case, torch.float64, device=device)
    # Same numbers behind permuted / strided storage.
    value_nc = value.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2)
    locations_nc = torch.stack([locations, torch.zeros_like(locations)], 0)[0]
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not value_nc.is_contiguous() and not weights_nc.is_contiguous()
    shapes_nc = torch.stack([shapes, shapes], 0)[0].t().contiguous().t()
    grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                              dtype=torch.float64, device=device)
    grad_output_nc = grad_output.transpose(0, 1).contiguous().transpose(0, 1)
    actual = run_with_grads(ms_deform_attn, (value_nc, shapes_nc, starts, locations_nc, weights_nc), grad_output_nc)
    expected = reference_fp64((value, shapes, starts, locations, weights), grad_output)
    for name, a, e in zip(NAMES, actual, expected):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,queries", [(0, 5), (2, 0)])
def test_zero_size(device, batch, queries):
    case = Case(levels=((3, 4), (2, 2)), batch=batch, queries=queries, heads=2, channels=4, points=2)
    inputs = make_inputs(case, torch.float32, device=device)
    grad_output = torch.randn(batch, queries, 8, device=device)
    actual = run_with_grads(ms_deform_attn, inputs, grad_output)
    assert actual[0].shape == (batch, queries, 8)
    for grad, source in zip(actual[1:], (inputs[0], inputs[3], inputs[4])):
        assert grad.shape == source.shape and grad.dtype == source.dtype
        assert not grad.any()  # nothing sampled: all gradients are zero


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_fp64(device):
    case = Case(levels=((3, 5), (2, 2)), batch=2, queries=3, heads=2, channels=3, points=2, low=-0.2, high=1.2)
    value, shapes, starts, locations, weights = make_inputs(case, torch.float64, device=device, seed=3,
                                                            requires_grad=True)

    def fn(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(fn, (value, locations, weights), eps=1e-6, atol=1e-6)


def _opcheck_samples(device):
    tiny = CASES["tiny"]
    yield make_inputs(tiny, torch.float64, device=device, requires_grad=True)
    yield make_inputs(tiny, torch.float32, device=device)
    yield make_inputs(tiny, torch.bfloat16, torch.float32, device=device, requires_grad=True)
    yield make_inputs(CASES["odd_channels"], torch.float16, device=device, requires_grad=True)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for sample in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.rankseg_fast.ms_deform_attn.default, sample)
        value, shapes, starts, locations, weights = sample
        grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                                  device=device).to(value.dtype)
        torch.library.opcheck(
            torch.ops.rankseg_fast._ms_deform_attn_backward.default,
            (grad_output, value.detach(), shapes, starts, locations.detach(), weights.detach()),
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (lambda a: {**a, "value": a["value"][0]}, ValueError, r"`value` must have 4 dimensions"),
        (lambda a: {**a, "sampling_locations": a["sampling_locations"][..., 0]}, ValueError,
         r"`sampling_locations` must have 6 dimensions"),
        (lambda a: {**a, "attention_weights": a["attention_weights"][:, :, :, :, :1]}, ValueError,
         r"`attention_weights` must have shape"),
        (lambda a: {**a, "spatial_shapes": a["spatial_shapes"][:, 0]}, ValueError,
         r"`spatial_shapes` must have 2 dimensions"),
        (lambda a: {**a, "level_start_index": a["level_start_index"] + 1}, ValueError,
         r"`level_start_index` does not match `spatial_shapes`"),
        (lambda a: {**a, "spatial_shapes": a["spatial_shapes"] * 2, "level_start_index": a["level_start_index"] * 4},
         ValueError,
         r"`spatial_shapes` describe \d+ tokens .* but `value` has \d+"),
        (lambda a: {**a, "value": a["value"][:, :-1]}, ValueError, r"but `value` has \d+"),
        (lambda a: {**a, "level_start_index": a["level_start_index"][:1]}, ValueError, r"`level_start_index`"),
        (lambda a: {**a, "value": a["value"].int()}, TypeError, r"`value` must be float32"),
        (lambda a: {**a, "spatial_shapes": a["spatial_shapes"].float()}, TypeError, r"`spatial_shapes` must be int64"),
        (lambda a: {**a, "attention_weights": a["attention_weights"].double()}, TypeError, r"share one dtype"),
        (lambda a: {**a, "sampling_locations": a["sampling_locations"].double(),
                    "attention_weights": a["attention_weights"].double()}, TypeError, r"must be float32 or the dtype"),
        (lambda a: {**a, "sampling_locations": a["sampling_locations"].to("meta")}, ValueError,
         r"`sampling_locations` is on meta but `value` is on"),
    ],
)
def test_bad_inputs_name_the_problem(device, impl, mutate, error, pattern):
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    good = dict(zip(names, make_inputs(CASES["tiny"], torch.float32, device=device)))
    bad = mutate(good)
    with use_impl(impl), pytest.raises(error, match=pattern):
        ms_deform_attn(*(bad[n] for n in names))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_mixed_cpu_and_cuda_inputs_are_refused(impl):
    value, shapes, starts, locations, weights = make_inputs(CASES["tiny"], torch.float32, device="cuda")
    with use_impl(impl):
        with pytest.raises(ValueError, match=r"`attention_weights` is on cpu but `value` is on cuda"):
            ms_deform_attn(value, shapes, starts, locations, weights.cpu())
        # Metadata on the value's device is accepted (it costs one small copy) and gives the same result.
        torch.testing.assert_close(
            ms_deform_attn(value, shapes.cuda(), starts.cuda(), locations, weights),
            ms_deform_attn(value, shapes, starts, locations, weights),
        )


def test_reference_and_kernel_switch():
    inputs = make_inputs(CASES["tiny"], torch.float64)
    with use_impl("reference"):
        assert rankseg_fast.ops.get_impl() == "reference"
        reference = ms_deform_attn(*inputs)
    kernel = ms_deform_attn(*inputs)
    torch.testing.assert_close(kernel, reference)
    with pytest.raises(ValueError, match="unknown op implementation 'fast'"):
        rankseg_fast.ops.set_impl("fast")


def test_missing_kernels_fall_back_with_one_warning(monkeypatch):
    from rankseg_fast import extension

    monkeypatch.setattr(extension, "HAS_OPS", False)
    monkeypatch.setattr(extension, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(extension, "_warned", set())
    inputs = make_inputs(CASES["tiny"], torch.float64)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference ops on cpu.*simulated"):
        fallback = ms_deform_attn(*inputs)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(*inputs)  # the warning is given once
    torch.testing.assert_close(fallback, ms_deform_attn_reference(*inputs))
