"""Helpers shared by the tests and the benchmarks: devices (CPU always, CUDA when present), tolerances
scaled to the precision, and problem builders with realistic shapes (one module per op). Needs pytest."""

from __future__ import annotations

import pytest
import torch

from rankseg_fast import extension

CUDA_AVAILABLE = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device on this machine")
needs_ops = pytest.mark.skipif(not extension.HAS_OPS, reason=f"extension not built: {extension.LOAD_ERROR}")

# CPU always; CUDA cases carry the `cuda` mark and are skipped (with the reason shown) without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])]

# Unit roundoff of each dtype: tolerances are multiples of it.
EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, factor: float, name: str):
    """Asserts |actual - expected| <= factor * eps(dtype) * max|expected| everywhere (compared in fp64)."""
    actual64, expected64 = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual64.shape == expected64.shape, f"{name}: shape {actual64.shape} != {expected64.shape}"
    if expected64.numel() == 0:
        return
    scale = max(expected64.abs().max().item(), 1e-30)
    tolerance = factor * EPS[dtype] * scale
    error = (actual64 - expected64).abs().max().item()
    assert error <= tolerance, f"{name}: max error {error:.3e} exceeds {tolerance:.3e} ({dtype}, scale {scale:.3e})"
