// Small generic device helpers shared by the CUDA kernels of every op:
//   * acc_type_t<T>: the type to accumulate T in (float for half/bf16/float, double for double);
//   * to_acc / from_acc: explicit conversions (valid under -D__CUDA_NO_HALF_CONVERSIONS__ and
//     -D__CUDA_NO_BFLOAT16_CONVERSIONS__, they go through c10::Half / c10::BFloat16);
//   * AlignedVec / load_vec / store_vec: one N-element vector access (16 bytes for 8 x half/bf16,
//     4 x float, 2 x double); the caller guarantees the pointer is aligned to sizeof(T) * N;
//   * atomic_add / atomic_add_vec: float and double atomics; vector float atomics on sm_90+;
//   * group_lane_mask / group_allreduce_sum: butterfly reduction over an aligned power-of-two
//     sub-warp of a 1-D block.
// Every sm_XX-only intrinsic is behind an `#if __CUDA_ARCH__ >= XX` guard with a fallback, so these
// helpers compile for any architecture from sm_70 on.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace rankseg_fast::cuda {

// ---------------------------------------------------------------------------------------------
// Accumulation type and conversions.

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_type_t = typename AccType<T>::type;

// T -> Acc. c10::Half / c10::BFloat16 convert through their `operator float` (__half2float / a shift).
template <typename Acc, typename T>
__device__ __forceinline__ Acc to_acc(T x) {
  if constexpr (std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>) {
    return static_cast<Acc>(static_cast<float>(x));
  } else {
    return static_cast<Acc>(x);
  }
}

// Acc -> T, round to nearest even.
template <typename T, typename Acc>
__device__ __forceinline__ T from_acc(Acc x) {
  if constexpr (std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>) {
    return T(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

// ---------------------------------------------------------------------------------------------
// Vector loads and stores.

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVec {
  static_assert(N >= 1 && (N & (N - 1)) == 0, "AlignedVec: N must be a power of two");
  T val[N];
};

// Loads p[0..N) with one vector access and converts to Acc. p must be aligned to sizeof(T) * N.
template <int N, typename T, typename Acc>
__device__ __forceinline__ void load_vec(const T* p, Acc (&out)[N]) {
  const AlignedVec<T, N> v = *reinterpret_cast<const AlignedVec<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = to_acc<Acc>(v.val[k]);
}

// Converts in[0..N) to T and stores it with one vector access. p must be aligned to sizeof(T) * N.
template <int N, typename T, typename Acc>
__device__ __forceinline__ void store_vec(T* p, const Acc (&in)[N]) {
  AlignedVec<T, N> v;
#pragma unroll
  for (int k = 0; k < N; ++k) v.val[k] = from_acc<T>(in[k]);
  *reinterpret_cast<AlignedVec<T, N>*>(p) = v;
}

// ---------------------------------------------------------------------------------------------
// Atomics (global memory). The return values are unused, so these compile to RED instructions.

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }

__device__ __forceinline__ void atomic_add(double* p, double v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 600
  atomicAdd(p, v);
#else
  // Compare-and-swap fallback for architectures without a native double atomicAdd.
  unsigned long long* addr = reinterpret_cast<unsigned long long*>(p);
  unsigned long long old = *addr, assumed;
  do {
    assumed = old;
    old = atomicCAS(addr, assumed,
                    __double_as_longlong(v + __longlong_as_double(static_cast<long long>(assumed))));
  } while (assumed != old);
#endif
}

// Adds v[0..N) to p[0..N). On sm_90+ (CUDA 12+ toolkits, which declare the float2 / float4 overloads)
// float uses 16-byte (N % 4 == 0) or 8-byte (N % 2 == 0) vector atomics, which require p to be
// aligned to 16 / 8 bytes; elsewhere it issues N scalar atomics.
template <int N>
__device__ __forceinline__ void atomic_add_vec(float* p, const float (&v)[N]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDACC_VER_MAJOR__) && \
    __CUDACC_VER_MAJOR__ >= 12
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int k = 0; k < N; k += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + k), make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]));
    }
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int k = 0; k < N; k += 2) {
      atomicAdd(reinterpret_cast<float2*>(p + k), make_float2(v[k], v[k + 1]));
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) atomicAdd(p + k, v[k]);
  }
#else
#pragma unroll
  for (int k = 0; k < N; ++k) atomicAdd(p + k, v[k]);
#endif
}

template <int N>
__device__ __forceinline__ void atomic_add_vec(double* p, const double (&v)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) atomic_add(p + k, v[k]);
}

// ---------------------------------------------------------------------------------------------
// Sub-warp ("group") reductions. A group is 2^log2_size consecutive lanes of a warp, aligned to
// its size (size <= 32), in a 1-D block whose size is a multiple of 32.

// Mask of the lanes of the calling thread's group, for the *_sync intrinsics: only the group's
// lanes must take part, so whole groups may exit early or branch on group-uniform conditions.
__device__ __forceinline__ unsigned group_lane_mask(int log2_size) {
  if (log2_size >= 5) return 0xffffffffu;
  const unsigned size = 1u << log2_size;
  const unsigned lane = threadIdx.x & 31u;
  return ((1u << size) - 1u) << (lane & ~(size - 1u));
}

// Butterfly all-reduce of N values at once (one loop, N independent shuffles per step): every lane
// of the group ends with the group's sums. All lanes in `mask` must call it together.
template <typename T, int N>
__device__ __forceinline__ void group_allreduce_sum(T (&v)[N], unsigned mask, int log2_size) {
  for (int offset = (1 << log2_size) >> 1; offset > 0; offset >>= 1) {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] += __shfl_xor_sync(mask, v[k], offset);
  }
}

template <typename T>
__device__ __forceinline__ T group_allreduce_sum(T v, unsigned mask, int log2_size) {
  T a[1] = {v};
  group_allreduce_sum(a, mask, log2_size);
  return a[0];
}

}  // namespace rankseg_fast::cuda
