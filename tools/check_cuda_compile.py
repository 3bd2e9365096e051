#!/usr/bin/env python
"""Compile every .cu file under csrc/ with nvcc (-c only), to check the CUDA sources without a GPU.

Uses torch's include paths (a CPU build of torch is enough: nvcc adds the CUDA includes itself), the
flags torch.utils.cpp_extension passes to nvcc, and one -gencode per architecture.

Environment:
  RANKSEG_FAST_CHECK_ARCHS   architectures, separated by ';', ',' or spaces (default "75;80;90");
                             "8.0" and "sm_80" are read as 80, a suffix such as "90a" is kept.
  RANKSEG_FAST_CHECK_FLAGS   extra nvcc flags, split like a shell command line (e.g. "-Xptxas -v").
  NVCC                       the nvcc to run (default: `nvcc` on PATH, else $CUDA_HOME/bin/nvcc,
                             else /usr/local/cuda/bin/nvcc).

Prints one line per file (OK / FAIL and the seconds it took), nvcc's messages under it when there
are any, and exits with status 1 if any file fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"

# What torch.utils.cpp_extension passes to nvcc (COMMON_NVCC_FLAGS and the extension defines; the
# -D_GLIBCXX_USE_CXX11_ABI value is read from torch in torch_flags()).
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
    "-DTORCH_EXTENSION_NAME=_C",
    "-std=c++20",
    "-Xcompiler",
    "-fPIC",
]
# A CPU wheel of torch ships the c10/cuda headers without their generated cmake config header.
EXTRA_FLAGS = ["-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]


def find_nvcc() -> str:
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(str(Path(cuda_home) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    sys.exit("check_cuda_compile: nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)")


def gencode_flags() -> list[str]:
    spec = os.environ.get("RANKSEG_FAST_CHECK_ARCHS", "75;80;90")
    archs = [
        a.strip().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        for a in re.split(r"[;,\s]+", spec)
        if a.strip()
    ]
    if not archs:
        sys.exit(f"check_cuda_compile: no architecture in RANKSEG_FAST_CHECK_ARCHS={spec!r}")
    flags = []
    for a in archs:
        if not re.fullmatch(r"\d+[a-z]?", a):
            sys.exit(f"check_cuda_compile: bad architecture {a!r} in RANKSEG_FAST_CHECK_ARCHS")
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    return flags


def torch_flags() -> list[str]:
    """Torch's include directories and its C++ ABI define."""
    try:
        import torch
        from torch.utils.cpp_extension import include_paths
    except ImportError as e:  # pragma: no cover - environment problem
        sys.exit(f"check_cuda_compile: cannot import torch ({e}); activate the project's venv")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    flags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    for p in include_paths():  # CPU paths only: nvcc knows its own CUDA include directory
        flags += ["-I", p]
    return flags


def main() -> int:
    sources = sorted(CSRC.rglob("*.cu"))
    if not sources:
        print(f"check_cuda_compile: no .cu file under {CSRC}")
        return 0
    nvcc = find_nvcc()
    gencode = gencode_flags()
    n_archs = len(gencode) // 2
    threads = max(1, min(n_archs, os.cpu_count() or 1))
    common = (
        TORCH_NVCC_FLAGS
        + EXTRA_FLAGS
        + torch_flags()
        + ["-I", str(CSRC)]
        + gencode
        + [f"--threads={threads}"]  # nvcc compiles the architectures in parallel
        + shlex.split(os.environ.get("RANKSEG_FAST_CHECK_FLAGS", ""))
    )
    print(f"nvcc: {nvcc}; targets: {' '.join(gencode[1::2])}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rankseg_fast_cuda_check_") as tmp:
        for i, src in enumerate(sources):
            rel = src.relative_to(REPO)
            obj = Path(tmp) / f"{i}_{src.stem}.o"
            cmd = [nvcc, "-c", str(src), "-o", str(obj)] + common
            start = time.monotonic()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            seconds = time.monotonic() - start
            ok = proc.returncode == 0
            failed += not ok
            print(f"{'OK  ' if ok else 'FAIL'} {rel} ({seconds:.1f} s)", flush=True)
            messages = (proc.stdout + proc.stderr).strip()
            if messages:
                print("\n".join("    " + line for line in messages.splitlines()), flush=True)
            if not ok:
                print("    command: " + shlex.join(cmd), flush=True)
    print(f"{len(sources) - failed} of {len(sources)} file(s) compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
