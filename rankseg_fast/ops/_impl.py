"""The one switch between the C++/CUDA kernels and the pure-PyTorch references for the whole package.

`set_impl("reference")` (or the environment variable RANKSEG_FAST_IMPL=reference) routes every op of
`rankseg_fast.ops` to its reference; `set_impl("kernel")` (the default) to the compiled kernels where
they exist for the tensors' device, with one warning per device when they do not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from rankseg_fast import extension

IMPLS = ("kernel", "reference")


def _validated(name: str) -> str:
    if name not in IMPLS:
        raise ValueError(f"rankseg_fast: unknown op implementation {name!r}; choose one of {IMPLS}")
    return name


_impl = _validated(os.environ.get("RANKSEG_FAST_IMPL", "kernel"))


def set_impl(name: str) -> None:
    """Selects "kernel" (compiled ops, the default) or "reference" (pure PyTorch) for every op."""
    global _impl
    _impl = _validated(name)


def get_impl() -> str:
    return _impl


@contextlib.contextmanager
def use_impl(name: str) -> Iterator[None]:
    """Context manager form of `set_impl`, restoring the previous choice on exit."""
    previous = get_impl()
    set_impl(name)
    try:
        yield
    finally:
        set_impl(previous)


def use_kernel(tensor: torch.Tensor) -> bool:
    """True when the compiled kernel should run for an op whose main input is `tensor`."""
    if _impl == "reference":
        return False
    device = tensor.device.type
    if device == "cpu" and extension.HAS_OPS:
        return True
    if device == "cuda" and extension.HAS_CUDA_KERNELS:
        return True
    extension.warn_fallback(device)
    return False
