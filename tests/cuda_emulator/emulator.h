// A CPU emulator of the CUDA execution model, for testing our CUDA launchers and kernels on machines
// without a GPU. Every .cu file is compiled as host C++ with this header forced in first (-include):
// the launch syntax is rewritten to `kernel ->* rsf_emu::Launch(grid, block, shared, stream)(args...)`
// (see __init__.py), and the kernel then runs here: up to $RSF_EMU_RESIDENT blocks (default 4) in flight
// at once, each on its own OS thread with its threads as cooperative fibers, one fiber running at a time.
//
// What is emulated faithfully: __syncthreads (and its _or/_and forms), __syncwarp, warp shuffles and
// votes as real warp-wide exchanges (every lane of the mask must arrive, or the launch reports a
// deadlock), __shared__ memory shared by the threads of a block, static and dynamic (both filled with
// 0xff bytes, a NaN pattern, at every block start), atomics, mma.sync m16n8k16 with fp16/bf16
// operands and fp32 accumulators, ldmatrix (fragment layouts per the PTX ISA, computed independently
// of our kernels' own index maps), cp.async (half the copies deferred to the thread's wait), and the
// launch limits (a block's dynamic shared memory above 48 KiB needs cudaFuncSetAttribute, up to the opt-in
// maximum $RSF_EMU_SMEM_OPTIN, default sm_90's 227 KiB).
// Blocks start in a shuffled order; the resident blocks take turns at random whenever one of them
// completes a __syncthreads or a thread does an integer atomic (after which the block is set aside every
// other time, until no other resident block can run), so blocks that share global memory interleave: a
// scratch two blocks use at once, or a "last block" that reads the others' results before they are
// written, gives wrong numbers. A block's threads run in a shuffled order between barriers, so code that
// relies on an unsynchronised order tends to fail. Static __shared__ variables are thread_local: one
// copy per resident block.
// What is not: timing, memory-model subtleties (everything is sequentially consistent, so a missing
// __threadfence goes unnoticed), interleavings of blocks between those points, and
// architecture-specific paths behind `#if __CUDA_ARCH__` (__CUDA_ARCH__ is undefined here, so the
// generic fallbacks compile). cudaFuncGetAttributes reports binaryVersion = $RSF_EMU_SM (default 90)
// and the SM count is $RSF_EMU_SMS (default 4), so tests can steer the launchers' choices.
#pragma once

// The real headers first, in their host-compiler form (their include guards keep them from being
// read again after the keywords are redefined below); emulator.cpp defines the runtime API calls used.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static thread_local  // one instance per resident block's OS thread, shared by its fibers
#define __forceinline__ inline
#define __launch_bounds__(...)

#define RANKSEG_FAST_CUDA_EMULATOR 1

namespace rsf_emu {

// ------------------------------------------------------------------------------------------------
// Launch.

struct Config {
  dim3 grid, block;
  size_t shared_bytes;
  const void* kernel = nullptr;  // for its dynamic shared memory limit (cudaFuncSetAttribute)
};

// Runs body() once per thread of every block of the grid; throws std::runtime_error on a deadlock,
// __trap or an exception inside the kernel. An invalid configuration sets the error
// cudaGetLastError() returns, as a real launch does.
void run_kernel(const Config& config, const std::function<void()>& body);

template <typename... Args>
struct BoundLaunch {
  Config config;
  std::tuple<Args...> args;
};

struct Launch {
  Config config;
  Launch(dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t = nullptr)
      : config{grid, block, shared_bytes} {}
  template <typename... Args>
  BoundLaunch<std::decay_t<Args>...> operator()(Args&&... args) const {
    return {config, std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
  }
};

// `kernel<<<...>>>(args)` after the rewrite: `kernel ->* Launch(...)(args)` (an operator no library
// overloads for arbitrary types, binding tighter than any the launch arguments use).
template <typename... Params, typename... Args>
void operator->*(void (*kernel)(Params...), const BoundLaunch<Args...>& launch) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  Config config = launch.config;
  config.kernel = reinterpret_cast<const void*>(kernel);
  run_kernel(config, [&] {
    std::apply([&](const Args&... args) { kernel(static_cast<Params>(args)...); }, launch.args);
  });
}

// ------------------------------------------------------------------------------------------------
// Built-in variables and the current thread.

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
int lane_id();

// The dynamic shared memory of the running block (`extern __shared__ T name[]` after the rewrite).
void* dynamic_shared_bytes();
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

// ------------------------------------------------------------------------------------------------
// Collectives. A warp collective stores each lane's bytes, waits for every lane of `mask`, then
// returns the bytes of all 32 lanes (valid until the warp's next collective).

void block_barrier();
int block_reduce_or(int predicate);
int block_reduce_and(int predicate);
const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t bytes);
void warp_barrier(unsigned mask);
void switch_point();  // lets the other resident blocks run before the caller goes on
[[noreturn]] void trap(const char* what);

constexpr size_t kWarpSlotBytes = 32;

template <typename T>
T shuffle_from(unsigned mask, T value, int source_lane) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kWarpSlotBytes, "shuffle of an unsupported type");
  const unsigned char* slots = warp_exchange(mask, &value, sizeof(T));
  T out;
  std::memcpy(&out, slots + static_cast<size_t>(source_lane) * kWarpSlotBytes, sizeof(T));
  return out;
}

// d = a * b + c for one m16n8k16 tile: a 16 x 16 (row), b 16 x 8 (col), fp16 or bf16 in 32-bit pairs.
void mma_m16n8k16(bool bf16, float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8 m + i gives the (16-byte aligned) address of
// row i of 8 x 8 matrix m; lane (g = lane / 4, t = lane % 4) gets r[m] = elements (g, 2t) and (g, 2t + 1)
// of matrix m, or with trans (2t, g) and (2t + 1, g), the first in the low 16 bits.
void ldmatrix_x4(bool trans, uint32_t (&r)[4], const void* row_address);

// cp.async.cg.shared.global 16 bytes, src_bytes of them read (the rest zero). Of a thread's copies every
// other one lands at once and the others only at its next cp_async_wait_all (cp.async.wait_all): code
// that reads a destination before its wait and a barrier, or overwrites a buffer other threads still
// read, sees wrong bytes. A thread that ends with copies it never waited for is reported.
void cp_async_16(void* dst, const void* src, int src_bytes);
void cp_async_wait_all();

}  // namespace rsf_emu

#define threadIdx (::rsf_emu::thread_idx())
#define blockIdx (::rsf_emu::block_idx())
#define blockDim (::rsf_emu::block_dim())
#define gridDim (::rsf_emu::grid_dim())
#define warpSize 32

using std::isfinite;  // device code calls these unqualified (CUDA declares them globally)
using std::max;
using std::min;
using std::isinf;
using std::isnan;

// ------------------------------------------------------------------------------------------------
// Intrinsics used by our kernels.

inline void __syncthreads() { ::rsf_emu::block_barrier(); }
inline int __syncthreads_or(int p) { return ::rsf_emu::block_reduce_or(p); }
inline int __syncthreads_and(int p) { return ::rsf_emu::block_reduce_and(p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::rsf_emu::warp_barrier(mask); }
inline void __threadfence() {}  // sequentially consistent
[[noreturn]] inline void __trap() { ::rsf_emu::trap("__trap() called"); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = ::rsf_emu::lane_id();
  return ::rsf_emu::shuffle_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::rsf_emu::lane_id();
  const int src = lane ^ lane_mask;
  return ::rsf_emu::shuffle_from(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::rsf_emu::lane_id();
  const int src = lane + static_cast<int>(delta);
  return ::rsf_emu::shuffle_from(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const int mine = predicate != 0;
  const unsigned char* slots = ::rsf_emu::warp_exchange(mask, &mine, sizeof(mine));
  unsigned bits = 0;
  for (int lane = 0; lane < 32; ++lane) {
    int p = 0;
    std::memcpy(&p, slots + lane * ::rsf_emu::kWarpSlotBytes, sizeof(p));
    if ((mask >> lane & 1u) && p) bits |= 1u << lane;
  }
  return bits;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }

// One fiber runs at a time and switches only at collectives and integer atomics, so plain
// read-modify-writes are atomic. Integer atomics are how blocks coordinate (counters, flags): the other
// resident blocks may run right after one; floating-point ones only accumulate.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  if constexpr (std::is_integral_v<T>) ::rsf_emu::switch_point();
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  if constexpr (std::is_integral_v<T>) ::rsf_emu::switch_point();
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  if constexpr (std::is_integral_v<T>) ::rsf_emu::switch_point();
  return old;
}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline long long __double_as_longlong(double x) {
  long long r;
  std::memcpy(&r, &x, sizeof(r));
  return r;
}
inline double __longlong_as_double(long long x) {
  double r;
  std::memcpy(&r, &x, sizeof(r));
  return r;
}
