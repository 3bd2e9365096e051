#!/usr/bin/env bash
# On a GPU machine that has its own CUDA torch (no package registry): build the CUDA extension in place
# against that torch, run the CUDA tests, the CUDA benchmarks (with their speed-up table, benchmarks/speedups.py)
# and the profiles (benchmarks/profile_kernels.py, benchmarks/profile_train_step.py). Logs, the benchmark JSON,
# speedups.md and the built extension go to ${OUT:-gpu_out}/.
#
# Usage: bash tools/gpu_check.sh [build] [tests] [bench] [profile]      (no step named: all four)
#   BENCH_ARGS="-k masked_attention"   extra pytest arguments for the benchmarks
#
# One device call may run 10 minutes and an idle machine is given back after 30 s, so the steps can go in
# separate calls: `build` leaves the stripped extension in $OUT; put it in gpu_build/ (git-ignored) and
# carry that folder, and the next call's `build` installs it instead of compiling. Empty gpu_build/ after
# any change under csrc/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(build tests bench profile)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" RANKSEG_FAST_CUDA=1 PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

# Device time is scarce: a failing step is recorded and the later ones still run; the exit status is
# that of the first failure.
status=0
run() { "$@" || { rc=$?; echo "gpu_check: '$*' failed ($rc)"; [ "$status" -ne 0 ] || status=$rc; }; }

build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
  local prebuilt
  prebuilt=$(ls gpu_build/_C.*.so 2>/dev/null | head -n 1 || true)
  if [ -n "$prebuilt" ]; then
    cp "$prebuilt" rankseg_fast/ && echo "gpu_check: installed the prebuilt $prebuilt" | tee "$out/build.log"
  else
    local start=$SECONDS
    python setup.py -q build_ext --inplace 2>&1 | tee "$out/build.log"
    echo "gpu_check: built in $((SECONDS - start)) s" | tee -a "$out/build.log"
    local so
    so=$(ls rankseg_fast/_C.*.so | head -n 1)
    strip --strip-debug -o "$out/$(basename "$so")" "$so"
  fi
  python -c "from rankseg_fast import extension as e; assert e.HAS_CUDA_KERNELS, e.LOAD_ERROR or 'no CUDA kernels'"
}

for step in "${steps[@]}"; do
  case "$step" in
    build) build ;;  # the later steps are pointless without it: a failure stops the script
    tests) run bash -o pipefail -c "python -m pytest -q tests -m cuda 2>&1 | tee '$out/tests_cuda.log'" ;;
    bench) run bash -o pipefail -c "python -m pytest -q benchmarks --benchmark-only -m cuda \
      --benchmark-json='$out/bench_cuda.json' --benchmark-columns=min,median,mean,rounds ${BENCH_ARGS:-} 2>&1 \
      | tee '$out/bench_cuda.log'"
      run bash -o pipefail -c "python benchmarks/speedups.py '$out/bench_cuda.json' | tee '$out/speedups.md'" ;;
    profile) run bash -o pipefail -c "python benchmarks/profile_kernels.py --device cuda 2>&1 \
      | tee '$out/profile_cuda.log'"
      run bash -o pipefail -c "python benchmarks/profile_train_step.py --device cuda 2>&1 \
      | tee '$out/profile_train_step.log'" ;;
    *) echo "gpu_check: unknown step '$step' (build, tests, bench, profile)" >&2; exit 2 ;;
  esac
done
exit "$status"
