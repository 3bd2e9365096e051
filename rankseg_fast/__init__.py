"""rankseg_fast: fast, faithful Mask2Former + RankSeg.

Importing the package never touches a GPU and never fails because the compiled extension is missing:
the pure-PyTorch references then serve every op (see `rankseg_fast.ops.set_impl`).
"""

from rankseg_fast import ops
from rankseg_fast.extension import BUILD_INFO, HAS_CUDA_KERNELS, HAS_OPS

__version__ = "0.1.0"
__all__ = ["ops", "BUILD_INFO", "HAS_OPS", "HAS_CUDA_KERNELS", "__version__"]
