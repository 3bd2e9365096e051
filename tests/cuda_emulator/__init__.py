"""Our CUDA launchers and kernels, built for the CPU emulator (emulator.h) so that CI exercises them.

`load()` mirrors csrc/ into build/rankseg_fast_cuda_emulated/csrc with four mechanical rewrites of the CUDA sources
(launch syntax, `extern __shared__`, the library namespace and dispatch key, the `is_cuda()` device
checks), compiles each op's schema file and CUDA launcher with the host compiler against the emulator,
and returns `torch.ops.rankseg_fast_emulated`: the same ops, taking CPU tensors as device memory and
running the CUDA kernels thread by thread. Slow (every thread is a fiber): keep shapes small.

Environment read by the emulator at each launch: RSF_EMU_SM (binaryVersion the launchers see,
default 90: tensor-core paths), RSF_EMU_SMS (SM count, default 4), RSF_EMU_SEED (block and thread
order, default 0), RSF_EMU_RESIDENT (blocks in flight at once, default 4; 1 runs one block after another),
RSF_EMU_SMEM_OPTIN (the opt-in dynamic shared memory per block the device reports, default sm_90's 232448
bytes).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import torch
from torch.utils import cpp_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAMESPACE = "rankseg_fast_emulated"
OPS = ("linear_assignment", "masked_attention", "ms_deform_attn", "point_mask_costs", "rank_logits")

# (pattern, replacement, files it must match in: "cu" for every CUDA launcher, "schema" for every
# op's schema file). A rewrite that stops matching fails the build instead of silently testing less.
_REWRITES = [
    (re.compile(r"<<<(.*?)>>>", re.S), r" ->* ::rsf_emu::Launch(\1)", "cu"),
    (
        re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:][\w:\s]*?)\s+(\w+)\[\];"),
        r"\1* const \2 = ::rsf_emu::dynamic_shared<\1>();",
        None,
    ),
    (re.compile(r"TORCH_LIBRARY_IMPL\(rankseg_fast, CUDA,"), f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU,", "cu"),
    (re.compile(r"TORCH_LIBRARY_FRAGMENT\(rankseg_fast,"), f"TORCH_LIBRARY_FRAGMENT({NAMESPACE},", "schema"),
    (re.compile(r"\.is_cuda\(\)"), ".is_cpu()", "cu"),
]


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include directory (the emulator uses its host-side headers), or None."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    for home in homes:
        if home and (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home) / "include"
    return None


def emulated_text(text: str, kind: str | None, name: str) -> str:
    for pattern, replacement, required_in in _REWRITES:
        text, count = pattern.subn(replacement, text)
        if kind is not None and required_in == kind and count == 0:
            raise RuntimeError(f"cuda_emulator: rewrite {pattern.pattern!r} no longer matches {name}")
    return text


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _mirror(build: Path) -> list[Path]:
    """Rewritten copy of csrc/ under build/csrc; returns the sources to compile."""
    csrc = ROOT / "csrc"
    sources = []
    for path in sorted(csrc.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(csrc)
        kind = "cu" if path.suffix == ".cu" else None
        if relative.parent == Path("ops") and path.suffix == ".cpp":
            kind = "schema"
        target = build / "csrc" / relative
        if kind == "cu":
            target = target.with_suffix(".emulated.cpp")
        _write_if_changed(target, emulated_text(path.read_text(), kind, str(relative)))
        if kind is not None and path.stem.removesuffix("_kernel") in OPS:
            sources.append(target)
    return sources


@functools.cache
def load(sanitize: bool = False):
    """Builds (incrementally) and loads the emulated CUDA ops; returns their torch.ops namespace.

    sanitize=True builds them with AddressSanitizer (its own build directory); the process must then run
    with libasan preloaded (see asan_environment()). One of the two builds per process."""
    include = cuda_include_dir()
    if include is None:
        raise RuntimeError("cuda_emulator: no CUDA toolkit headers found (set CUDA_HOME)")
    name = "rankseg_fast_cuda_emulated" + ("_asan" if sanitize else "")
    build = ROOT / "build" / name
    selftest = build / "selftest_kernels.emulated.cpp"
    _write_if_changed(selftest, emulated_text((HERE / "selftest_kernels.cu").read_text(), None, "selftest_kernels.cu"))
    sources = _mirror(build) + [selftest, HERE / "emulator.cpp"]
    asan = ["-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else []
    cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        extra_include_paths=[str(HERE / "include"), str(HERE), str(include)],
        extra_cflags=["-O1", "-include", str(HERE / "emulator.h"), "-Wno-attributes", *asan],
        extra_ldflags=asan,
        build_directory=str(build),
        is_python_module=False,
        verbose=os.environ.get("RSF_EMU_VERBOSE") == "1",
    )
    return getattr(torch.ops, NAMESPACE)


def asan_environment() -> dict[str, str]:
    """Environment for a Python process that loads the sanitized build: the host compiler's libasan
    preloaded (Python itself is not instrumented), leak checks off (the interpreter keeps memory)."""
    libasan = subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return {**os.environ, "LD_PRELOAD": libasan.stdout.strip(), "ASAN_OPTIONS": "detect_leaks=0"}
