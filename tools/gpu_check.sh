#!/usr/bin/env bash
# On a GPU machine that has its own CUDA torch (no package registry): build the CUDA extension in
# place against that torch, run the CUDA tests, the CUDA benchmarks and the kernel profiles
# (benchmarks/profile_kernels.py). Logs and the benchmark JSON go to ${OUT:-gpu_out}/.
# Usage: bash tools/gpu_check.sh [extra pytest args for the benchmarks]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" RANKSEG_FAST_CUDA=1 PYTHONUNBUFFERED=1
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tee "$out/build.log"
# Device time is scarce: a failing step is recorded and the later ones still run; the exit status is
# that of the first failure.
status=0
run() { "$@" || { rc=$?; echo "gpu_check: '$*' failed ($rc)"; [ "$status" -ne 0 ] || status=$rc; }; }
run bash -o pipefail -c "python -m pytest -q tests -m cuda 2>&1 | tee '$out/tests_cuda.log'"
run bash -o pipefail -c "python -m pytest -q benchmarks --benchmark-only -m cuda --benchmark-json='$out/bench_cuda.json' \
  --benchmark-columns=min,median,mean,rounds $* 2>&1 | tee '$out/bench_cuda.log'"
run bash -o pipefail -c "python benchmarks/profile_kernels.py --device cuda 2>&1 | tee '$out/profile_cuda.log'"
exit "$status"
