// Kernels that check the CUDA emulator itself (tests/test_cuda_emulated.py): the intrinsics give the
// documented values, and kernels that break the rules are reported instead of silently running.
// Compiled only for the emulator (it is not under csrc/), through the same source rewrites.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

constexpr int kThreads = 64;  // two warps

// out[block][thread][0..9]: the values of one thread, for the test to recompute.
__global__ void intrinsics_kernel(int32_t* out) {
  extern __shared__ int32_t scratch[];
  const int t = threadIdx.x, lane = t % 32;
  const int block = blockIdx.y * gridDim.x + blockIdx.x;
  int32_t* mine = out + (block * blockDim.x + t) * 10;
  scratch[t] = 100 * block + t;
  if (t == 0) scratch[kThreads] = 0;
  __syncthreads();
  mine[0] = scratch[(t + 1) % kThreads];               // shared memory, after a barrier
  mine[1] = __shfl_xor_sync(0xffffffffu, t, 5);        // lane ^ 5
  mine[2] = __shfl_down_sync(0xffffffffu, t, 3);       // lane + 3, own value past the warp
  mine[3] = __shfl_sync(0xffffffffu, t, 7);            // lane 7 of the warp
  mine[4] = static_cast<int32_t>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  mine[5] = __any_sync(0xffffffffu, t == 40);          // true in warp 1 only
  mine[6] = __syncthreads_or(t == 63);
  mine[7] = __syncthreads_and(t != 0);
  // Sub-warp groups of 8 lanes reduce independently, with their own masks.
  const unsigned group_mask = 0xffu << (lane & ~7);
  int32_t sum = t;
  for (int offset = 4; offset > 0; offset >>= 1) sum += __shfl_xor_sync(group_mask, sum, offset);
  mine[8] = sum;
  mine[9] = atomicAdd(scratch + kThreads, 1);  // each block's threads take 0 .. 63 in some order
}

// One warp reads the four 8 x 8 matrices (rows 0 / 8, columns 0 / 8) of a 16 x 24 shared matrix of
// 16-bit values 256 i + j with ldmatrix.x4, plain and transposed: out[lane][trans][matrix].
// `misalign` shifts every row address by one element (not 16-byte aligned: reported).
__global__ void ldmatrix_kernel(int32_t* out, int misalign) {
  constexpr int kStride = 24;
  __shared__ __align__(16) uint16_t tile[16 * kStride];
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * kStride; i += 32) tile[i] = static_cast<uint16_t>(256 * (i / kStride) + i % kStride);
  __syncwarp();
  const int m = lane / 8, row = (m % 2) * 8 + lane % 8, col = (m / 2) * 8;
  for (int trans = 0; trans < 2; ++trans) {
    uint32_t r[4];
    rsf_emu::ldmatrix_x4(trans == 1, r, tile + row * kStride + col + misalign);
    for (int k = 0; k < 4; ++k) out[(lane * 2 + trans) * 4 + k] = static_cast<int32_t>(r[k]);
  }
}

// Every thread queues two 16-byte copies and ends without waiting for them.
__global__ void cp_async_without_wait_kernel(int32_t* out) {
  __shared__ __align__(16) int32_t staged[kThreads * 8];
  for (int k = 0; k < 2; ++k) rsf_emu::cp_async_16(staged + (threadIdx.x * 2 + k) * 4, out, 16);
}

__global__ void lane_skips_shuffle_kernel(int32_t* out) {
  int32_t v = threadIdx.x;
  if (threadIdx.x % 32 != 0) v = __shfl_xor_sync(0xffffffffu, v, 1);  // lane 0 never arrives
  out[threadIdx.x] = v;
}

__global__ void mask_without_caller_kernel(int32_t* out) {
  out[threadIdx.x] = __shfl_sync(1u, static_cast<int32_t>(threadIdx.x), 0);
}

__global__ void trap_kernel(int32_t* out) {
  if (threadIdx.x == 5) __trap();
  out[threadIdx.x] = 1;
}

// Each thread reads a value another warp writes, without the barrier between.
__global__ void missing_barrier_kernel(int32_t* out) {
  extern __shared__ int32_t scratch[];
  scratch[threadIdx.x] = threadIdx.x;
  out[threadIdx.x] = scratch[(threadIdx.x + 32) % kThreads];
}

// Blocks that share memory across the grid. out holds kBlocks * kThreads results, then the global words
// the blocks share: kThreads scratch slots, a total and a counter.
constexpr int kBlocks = 8;

// Each block keeps its index in a static __shared__ array across a barrier (other blocks run meanwhile).
__global__ void static_shared_kernel(int32_t* out) {
  __shared__ int32_t own[kThreads];
  own[threadIdx.x] = 1000 * blockIdx.x + threadIdx.x;
  __syncthreads();
  out[blockIdx.x * kThreads + threadIdx.x] = own[(threadIdx.x + 1) % kThreads];
}

// Reads a static __shared__ array before writing it (the value the block starts with), then writes it.
__global__ void unwritten_static_shared_kernel(int32_t* out) {
  __shared__ int32_t stale[kThreads];
  out[blockIdx.x * kThreads + threadIdx.x] = stale[threadIdx.x];
  stale[threadIdx.x] = 1000 * blockIdx.x + threadIdx.x;
}

// A global scratch every block uses at once (a bug: it should be one per block): as static_shared_kernel,
// through global memory.
__global__ void shared_global_scratch_kernel(int32_t* out) {
  int32_t* scratch = out + kBlocks * kThreads;
  scratch[threadIdx.x] = 1000 * blockIdx.x + threadIdx.x;
  __syncthreads();
  out[blockIdx.x * kThreads + threadIdx.x] = scratch[(threadIdx.x + 1) % kThreads];
}

// Every thread writes a partial of 1 (in its result slot); the block that counts itself last adds all
// kBlocks * kThreads partials into the total. count_early (a bug): thread 0 counts its block without
// waiting for the block's other threads to write.
__global__ void last_block_sum_kernel(int32_t* out, bool count_early) {
  int32_t* sum = out + kBlocks * kThreads + kThreads;
  unsigned* done = reinterpret_cast<unsigned*>(sum + 1);
  __shared__ bool last;
  out[blockIdx.x * kThreads + threadIdx.x] = 1;
  if (!count_early) {
    __threadfence();
    __syncthreads();
  }
  if (threadIdx.x == 0) last = atomicAdd(done, 1u) == kBlocks - 1;
  __syncthreads();
  if (!last || threadIdx.x != 0) return;
  int32_t total = 0;
  for (int i = 0; i < kBlocks * kThreads; ++i) total += out[i];
  *sum = total;
}

void run(std::string name, const at::Tensor& out) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kInt, "emulator_selftest: out must be contiguous int32");
  int32_t* p = out.mutable_data_ptr<int32_t>();
  const size_t shared = (kThreads + 1) * sizeof(int32_t);
  if (name == "intrinsics") {
    intrinsics_kernel<<<dim3(3, 2), kThreads, shared>>>(p);
  } else if (name == "intrinsics_64k_shared") {  // above the default 48 KiB, after opting in
    C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(intrinsics_kernel),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
    intrinsics_kernel<<<dim3(3, 2), kThreads, 64 * 1024>>>(p);
  } else if (name == "shared_above_48k_without_opt_in") {
    missing_barrier_kernel<<<1, kThreads, 48 * 1024 + 4>>>(p);
  } else if (name == "ldmatrix" || name == "ldmatrix_misaligned") {
    ldmatrix_kernel<<<1, 32>>>(p, name == "ldmatrix" ? 0 : 1);
  } else if (name == "cp_async_without_wait") {
    cp_async_without_wait_kernel<<<1, kThreads>>>(p);
  } else if (name == "lane_skips_shuffle") {
    lane_skips_shuffle_kernel<<<1, kThreads>>>(p);
  } else if (name == "mask_without_caller") {
    mask_without_caller_kernel<<<1, kThreads>>>(p);
  } else if (name == "trap") {
    trap_kernel<<<1, kThreads>>>(p);
  } else if (name == "missing_barrier") {
    missing_barrier_kernel<<<1, kThreads, shared>>>(p);
  } else if (name == "static_shared") {
    static_shared_kernel<<<kBlocks, kThreads>>>(p);
  } else if (name == "unwritten_static_shared") {
    unwritten_static_shared_kernel<<<kBlocks, kThreads>>>(p);
  } else if (name == "shared_global_scratch") {
    shared_global_scratch_kernel<<<kBlocks, kThreads>>>(p);
  } else if (name == "last_block_sum" || name == "last_block_sum_counted_early") {
    last_block_sum_kernel<<<kBlocks, kThreads>>>(p, name == "last_block_sum_counted_early");
  } else if (name == "too_many_threads") {
    trap_kernel<<<1, 2048>>>(p);
  } else {
    throw std::invalid_argument("emulator_selftest: unknown kernel " + name);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rankseg_fast_emulated, m) {
  m.def("emulator_selftest(str name, Tensor(a!) out) -> ()", &run);
}
