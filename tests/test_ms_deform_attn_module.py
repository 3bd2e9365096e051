"""MSDeformAttn module: reference parameter names and initialisation, kernel/reference equivalence,
torch.compile, and the package import contract."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rankseg_fast.ops import MSDeformAttn, use_impl
from rankseg_fast.testing import DEVICES, needs_ops
from rankseg_fast.testing.ms_deform_attn import level_metadata

LEVELS = ((4, 4), (2, 3), (1, 2))


def module_inputs(d_model=32, batch=2, device="cpu", box=False, seed=0):
    """(query, reference_points, input_flatten, spatial_shapes, level_start_index) for LEVELS."""
    generator = torch.Generator().manual_seed(seed)
    shapes, starts = level_metadata(LEVELS)
    tokens = int(shapes.prod(1).sum())
    query = torch.randn(batch, tokens, d_model, generator=generator)
    reference = torch.rand(batch, tokens, len(LEVELS), 4 if box else 2, generator=generator)
    flatten = torch.randn(batch, tokens, d_model, generator=generator)
    return query.to(device), reference.to(device), flatten.to(device), shapes, starts


def test_parameter_names_shapes_and_init():
    module = MSDeformAttn(d_model=256, n_levels=3, n_heads=8, n_points=4)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (192, 256), "sampling_offsets.bias": (192,),
        "attention_weights.weight": (96, 256), "attention_weights.bias": (96,),
        "value_proj.weight": (256, 256), "value_proj.bias": (256,),
        "output_proj.weight": (256, 256), "output_proj.bias": (256,),
    }
    assert not module.sampling_offsets.weight.any() and not module.attention_weights.weight.any()
    assert not module.attention_weights.bias.any()
    bias = module.sampling_offsets.bias.view(8, 3, 4, 2)
    compass = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32)
    for point in range(4):
        for level in range(3):
            torch.testing.assert_close(bias[:, level, point], compass * (point + 1), atol=1e-6, rtol=0)


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_module_kernel_equals_reference(device, box, padding):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2).to(device).double()
    # Non-trivial offsets and attention so every path of the op matters.
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0, 0.5)
        module.attention_weights.weight.normal_(0, 0.5)
    query, reference, flatten, shapes, starts = (t.double() if t.is_floating_point() else t
                                                  for t in module_inputs(device=device, box=box))
    mask = (torch.rand(flatten.shape[:2], device=device) < 0.2) if padding else None
    outputs = {}
    for impl in ("kernel", "reference"):
        module.zero_grad()
        with use_impl(impl):
            out = module(query, reference, flatten, shapes, starts, mask)
            out.square().sum().backward()
        outputs[impl] = (out, *[p.grad.clone() for p in module.parameters()])
    for a, b in zip(outputs["kernel"], outputs["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
def test_module_under_autocast_keeps_fp32_locations(device):
    """Under bf16 autocast the op receives bf16 values with fp32 locations and weights."""
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2).to(device)
    query, reference, flatten, shapes, starts = module_inputs(device=device)
    expected = module(query, reference, flatten, shapes, starts)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        actual = module(query, reference, flatten, shapes, starts)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, atol=0.05, rtol=0.05)


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2).to(device)
    compiled = torch.compile(module, fullgraph=True)
    query, reference, flatten, shapes, starts = module_inputs(device=device)
    flatten.requires_grad_(True)
    eager = module(query, reference, flatten, shapes, starts)
    (eager_grad,) = torch.autograd.grad(eager.sum(), flatten)
    out = compiled(query, reference, flatten, shapes, starts)
    (grad,) = torch.autograd.grad(out.sum(), flatten)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-5)


def test_module_rejects_wrong_level_count_and_reference_points():
    module = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    query, reference, flatten, shapes, starts = module_inputs()
    with pytest.raises(ValueError, match=r"`input_spatial_shapes` must have shape \(2, 2\)"):
        module(query, reference[:, :, :2], flatten, shapes, starts)
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    with pytest.raises(ValueError, match="`reference_points` last dimension must be 2 or 4"):
        module(query, reference[..., :1], flatten, shapes, starts)
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        MSDeformAttn(d_model=30, n_heads=4)


def test_import_never_touches_the_gpu():
    code = (
        "import torch, rankseg_fast, rankseg_fast.ops;"
        "assert not torch.cuda.is_initialized(), 'import initialised CUDA'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
