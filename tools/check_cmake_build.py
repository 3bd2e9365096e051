"""Checks the libtorch (CMake) build: a child process loads librankseg_fast_ops.so on its own (the Python
package's extension would register the same ops twice) and runs its ms_deform_attn on fixed inputs; this
process compares the result with the package's pure-PyTorch reference in fp64.

Usage: python tools/check_cmake_build.py BUILD_DIR
"""

import pathlib
import subprocess
import sys
import tempfile

import torch

CHILD = """
import sys, torch
torch.ops.load_library(sys.argv[1])
inputs = torch.load(sys.argv[2])
torch.save(torch.ops.rankseg_fast.ms_deform_attn(*inputs), sys.argv[3])
"""


def fixed_inputs():
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[4, 6], [3, 2]])
    starts = torch.tensor([0, 24])
    value = torch.randn(2, 30, 3, 5, generator=generator, dtype=torch.float64)
    locations = torch.rand(2, 7, 3, 2, 3, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(2, 7, 3, 2, 3, generator=generator, dtype=torch.float64)
    return value, shapes, starts, locations, weights


def main(build_dir: str) -> None:
    library = pathlib.Path(build_dir) / "librankseg_fast_ops.so"
    inputs = fixed_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        inputs_path, output_path = pathlib.Path(tmp) / "inputs.pt", pathlib.Path(tmp) / "output.pt"
        torch.save(inputs, inputs_path)
        subprocess.run([sys.executable, "-c", CHILD, str(library), str(inputs_path), str(output_path)], check=True)
        actual = torch.load(output_path)
    from rankseg_fast.ops.reference import ms_deform_attn_reference

    torch.testing.assert_close(actual, ms_deform_attn_reference(*inputs), rtol=1e-12, atol=1e-12)
    print(f"cmake build OK: {library.name} matches the reference")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
