"""Checks the libtorch (CMake) build: loads librankseg_fast_ops.so on its own, without the Python
package's extension, and compares its ms_deform_attn with the pure-PyTorch reference in fp64.

Usage: python tools/check_cmake_build.py BUILD_DIR
"""

import importlib.util
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_reference():
    # Loaded by path: importing the package would register the same ops a second time.
    path = ROOT / "rankseg_fast" / "ops" / "reference" / "ms_deform_attn.py"
    spec = importlib.util.spec_from_file_location("ms_deform_attn_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ms_deform_attn_reference


def main(build_dir: str) -> None:
    library = pathlib.Path(build_dir) / "librankseg_fast_ops.so"
    torch.ops.load_library(str(library))
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[4, 6], [3, 2]])
    starts = torch.tensor([0, 24])
    value = torch.randn(2, 30, 3, 5, generator=generator, dtype=torch.float64)
    locations = torch.rand(2, 7, 3, 2, 3, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(2, 7, 3, 2, 3, generator=generator, dtype=torch.float64)
    actual = torch.ops.rankseg_fast.ms_deform_attn(value, shapes, starts, locations, weights)
    expected = load_reference()(value, shapes, starts, locations, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    print(f"cmake build OK: {library.name} matches the reference")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
