"""Build of rankseg_fast._C: a C++ CPU extension on a CPU torch, CPU + CUDA on a CUDA torch.

Environment switches:
  RANKSEG_FAST_CUDA=auto|1|0  build the CUDA kernels when torch has CUDA and nvcc is found (auto, the
                              default), always (1: fail if impossible), or never (0).
  TORCH_CUDA_ARCH_LIST        the GPU architectures to compile for (e.g. "8.0;9.0"), as in PyTorch.
  RANKSEG_FAST_DEBUG=1        -O0 -g instead of -O3.
Build with `pip install --no-build-isolation .` so the extension compiles against the installed torch.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - build-time guidance only
    sys.exit(
        "rankseg_fast: torch must be installed before building (pip install torch), and the build must "
        "see it: use `pip install --no-build-isolation .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    mode = os.environ.get("RANKSEG_FAST_CUDA", "auto").strip().lower()
    if mode not in {"auto", "1", "0"}:
        sys.exit(f"rankseg_fast: RANKSEG_FAST_CUDA must be auto, 1 or 0, got {mode!r}")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if mode == "1" and not possible:
        sys.exit(
            "rankseg_fast: RANKSEG_FAST_CUDA=1 but CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}"
        )
    return possible and mode != "0"


def _extension():
    debug = os.environ.get("RANKSEG_FAST_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fopenmp"]  # at::parallel_for is header-inlined OpenMP in torch's CPU builds
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    use_cuda = _want_cuda()
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if use_cuda:
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        defines = [("RANKSEG_FAST_WITH_CUDA", None), ("RANKSEG_FAST_CUDA_ARCHS", f'"{archs}"')]
        nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        print(
            f"rankseg_fast: building CPU + CUDA kernels (torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"nvcc at {CUDA_HOME}, TORCH_CUDA_ARCH_LIST={archs or '<torch default>'})",
            flush=True,
        )
        return CUDAExtension(
            "rankseg_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=defines,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    print(
        f"rankseg_fast: building CPU kernels only (torch {torch.__version__}, "
        f"torch CUDA {torch.version.cuda}, CUDA_HOME {CUDA_HOME}, "
        f"RANKSEG_FAST_CUDA={os.environ.get('RANKSEG_FAST_CUDA', 'auto')})",
        flush=True,
    )
    return CppExtension(
        "rankseg_fast._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["rankseg_fast", "rankseg_fast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=os.environ.get("USE_NINJA", "1") == "1")},
)
