"""Loads the compiled extension `rankseg_fast._C`, which registers the ops under `torch.ops.rankseg_fast`.

Never touches a GPU: whether CUDA kernels exist is read from how the library was built.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which the extension links against)

try:
    from rankseg_fast import _C  # noqa: F401  (loading the library registers the ops)

    BUILD_INFO: dict = dict(_C.build_info())
    LOAD_ERROR: str | None = None
except ImportError as error:  # not built, or built against another torch
    BUILD_INFO = {"cuda": False, "cuda_archs": "", "torch_version": None}
    LOAD_ERROR = f"{type(error).__name__}: {error}"

HAS_OPS: bool = LOAD_ERROR is None
HAS_CUDA_KERNELS: bool = HAS_OPS and bool(BUILD_INFO["cuda"])

_warned: set[str] = set()


def warn_fallback(device_type: str) -> None:
    """Warns once per device type that the pure-PyTorch references run instead of the kernels."""
    if device_type in _warned:
        return
    _warned.add(device_type)
    if not HAS_OPS:
        reason = (
            f"the compiled extension rankseg_fast._C could not be loaded ({LOAD_ERROR}); rebuild it with "
            "`pip install --no-build-isolation .` against the installed torch"
        )
    elif device_type == "cuda":
        reason = (
            "rankseg_fast._C was built without CUDA kernels; rebuild on a machine with a CUDA torch and nvcc "
            "(RANKSEG_FAST_CUDA=1 makes the build fail instead of silently skipping CUDA)"
        )
    else:
        reason = f"rankseg_fast has no kernels for {device_type!r} tensors"
    warnings.warn(
        f"rankseg_fast: using the slow pure-PyTorch reference ops on {device_type}: {reason}.",
        RuntimeWarning,
        stacklevel=3,
    )
