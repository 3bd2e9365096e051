// Row loops of the masked_attention CPU kernels: the masked softmax of one score row (forward) and one row
// of P and dS (backward). fp32 rows run on GCC vectors as wide as the registers of the ISA they are compiled
// for: the loops are written once for N lanes and compiled for AVX2 + FMA (8) and the target's baseline (4),
// and AVX2 is chosen at run time when the CPU has it (a portable build still runs at AVX2 width; a vector
// wider than the compiled ISA is split into slow pieces, hence one width per ISA). Measured on our AMD EPYC:
// 0.53 ns per element for either loop with AVX2, 2.0 ns with the baseline; an AVX-512 entry point was
// 0.37 ns forward but 6.9 ns backward there, so it is left out. fp64 rows (gradcheck) run scalar loops.
//
// Mask: row_words holds the visible-key bits of the row (bit j % 32 of word j / 32; no bits past L), as
// packed by the kernels' pre-pass. exp: a Cody-Waite range reduction and a degree-6 polynomial, within a few
// ulp of expf on [-87, 88] and exactly 0 below -87, so blocked keys (-inf) contribute exact zeros.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

// The vector helpers are always inlined into the per-ISA entry points, so the "vector argument / return
// changes the ABI" notes do not apply (not popped: GCC reports them at the end of the translation unit).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rankseg_fast::masked_attention::rows {

#define RSF_LANES_INLINE __attribute__((always_inline)) inline

template <int N>
struct Lanes {
  typedef float Floats __attribute__((vector_size(4 * N)));
  typedef int32_t Ints __attribute__((vector_size(4 * N)));
};

template <int N>
RSF_LANES_INLINE typename Lanes<N>::Floats splat(float x) {
  return typename Lanes<N>::Floats{} + x;
}

template <int N>
RSF_LANES_INLINE typename Lanes<N>::Floats exp_lanes(typename Lanes<N>::Floats x) {
  using Floats = typename Lanes<N>::Floats;
  using Ints = typename Lanes<N>::Ints;
  const Floats low = splat<N>(-87.f), high = splat<N>(88.f);
  const Floats clamped_low = x < low ? low : x;
  const Floats clamped = clamped_low > high ? high : clamped_low;
  const Floats magic = splat<N>(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const Floats n = (clamped * 1.44269504088896341f + magic) - magic;
  const Floats r = (clamped - n * 0.693145751953125f) - n * 1.428606765330187045e-6f;  // x - n ln2
  Floats p = splat<N>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const Ints two_n_bits = (__builtin_convertvector(n, Ints) + 127) << 23;
  return x < low ? Floats{} : p * (Floats)two_n_bits;  // the bits as floats: 2^n
}

// Lane l is nonzero iff key j + l is visible (j a multiple of N, N <= 32).
template <int N>
RSF_LANES_INLINE typename Lanes<N>::Ints visible_lanes(const uint32_t* row_words, int64_t j) {
  using Ints = typename Lanes<N>::Ints;
  Ints lane;
  for (int l = 0; l < N; ++l) lane[l] = l;
  const int32_t bits = static_cast<int32_t>(row_words[j / 32] >> (j % 32));
  return (Ints{} + bits) >> lane & 1;
}

// Lanes [0, n) from p, the others `fill`; n = N is one vector load.
template <int N, bool kFull>
RSF_LANES_INLINE typename Lanes<N>::Floats load(const float* p, int64_t n, float fill) {
  typename Lanes<N>::Floats v = splat<N>(fill);
  std::memcpy(&v, p, sizeof(float) * (kFull ? N : n));
  return v;
}

template <int N, bool kFull>
RSF_LANES_INLINE void store(float* p, const typename Lanes<N>::Floats& v, int64_t n) {
  std::memcpy(p, &v, sizeof(float) * (kFull ? N : n));
}

// Softmax pass 1 on keys [j, j + n): blocked keys -> -inf in place; returns the lane-wise max with `max`.
template <int N, bool kFull>
RSF_LANES_INLINE typename Lanes<N>::Floats mask_max_chunk(float* row, const uint32_t* row_words, int64_t j,
                                                          int64_t n, typename Lanes<N>::Floats max) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  typename Lanes<N>::Floats x = load<N, kFull>(row + j, n, neg_inf);
  x = visible_lanes<N>(row_words, j) != 0 ? x : splat<N>(neg_inf);
  store<N, kFull>(row + j, x, n);
  return max > x ? max : x;
}

// Softmax pass 2 on keys [j, j + n): x -> e^(x - max) in place; returns the lane-wise sum with `sum`.
template <int N, bool kFull>
RSF_LANES_INLINE typename Lanes<N>::Floats exp_sum_chunk(float* row, int64_t j, int64_t n, float max,
                                                         typename Lanes<N>::Floats sum) {
  const auto e = exp_lanes<N>(load<N, kFull>(row + j, n, -std::numeric_limits<float>::infinity()) - max);
  store<N, kFull>(row + j, e, n);
  return sum + e;
}

// Backward on keys [j, j + n): scores -> P, grad -> dS (see softmax_grad_row).
template <int N, bool kFull>
RSF_LANES_INLINE void grad_chunk(float* scores, float* grad, const uint32_t* row_words, int64_t j, int64_t n,
                                 float lse, float delta) {
  const auto e = exp_lanes<N>(load<N, kFull>(scores + j, n, 0.f) - lse);
  const auto p = visible_lanes<N>(row_words, j) != 0 ? e : typename Lanes<N>::Floats{};
  store<N, kFull>(scores + j, p, n);
  store<N, kFull>(grad + j, p * (load<N, kFull>(grad + j, n, 0.f) - delta), n);
}

template <int N>
RSF_LANES_INLINE std::pair<float, float> softmax_row_lanes(float* row, const uint32_t* row_words, int64_t L) {
  const int64_t full = L / N * N;
  auto max_lanes = splat<N>(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < full; j += N) max_lanes = mask_max_chunk<N, true>(row, row_words, j, N, max_lanes);
  if (full < L) max_lanes = mask_max_chunk<N, false>(row, row_words, full, L - full, max_lanes);
  float max = max_lanes[0];
  for (int l = 1; l < N; ++l) max = max > max_lanes[l] ? max : max_lanes[l];
  typename Lanes<N>::Floats sum_lanes{};
  for (int64_t j = 0; j < full; j += N) sum_lanes = exp_sum_chunk<N, true>(row, j, N, max, sum_lanes);
  if (full < L) sum_lanes = exp_sum_chunk<N, false>(row, full, L - full, max, sum_lanes);
  float sum = 0.f;
  for (int l = 0; l < N; ++l) sum += sum_lanes[l];
  return {max, sum};
}

template <int N>
RSF_LANES_INLINE void softmax_grad_row_lanes(float* scores, float* grad, const uint32_t* row_words, int64_t L,
                                             float lse, float delta) {
  const int64_t full = L / N * N;
  for (int64_t j = 0; j < full; j += N) grad_chunk<N, true>(scores, grad, row_words, j, N, lse, delta);
  if (full < L) grad_chunk<N, false>(scores, grad, row_words, full, L - full, lse, delta);
}

// One entry point per (loop, ISA); the lane count matches the ISA's registers.
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline std::pair<float, float> softmax_row_avx2(float* row, const uint32_t* w,
                                                                                   int64_t L) {
  return softmax_row_lanes<8>(row, w, L);
}
__attribute__((target("avx2,fma"))) inline void softmax_grad_row_avx2(float* s, float* g, const uint32_t* w,
                                                                     int64_t L, float lse, float delta) {
  softmax_grad_row_lanes<8>(s, g, w, L, lse, delta);
}
#endif

enum class Isa { kBase, kAvx2 };

// The widest vector ISA of this CPU that an entry point exists for; detected once. The environment variable
// RANKSEG_FAST_CPU_ISA=base forces the baseline loops (the tests use it to cover them on an AVX2 machine).
inline Isa machine_isa() {
  static const Isa isa = [] {
    const char* forced = std::getenv("RANKSEG_FAST_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "base") == 0) return Isa::kBase;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
    return Isa::kBase;
  }();
  return isa;
}

// In place: blocked keys -> 0, visible s_j -> e^(s_j - max). Returns (max over the visible keys, sum of the
// exponentials); at least one key must be visible.
inline std::pair<float, float> softmax_row(float* row, const uint32_t* row_words, int64_t L) {
#if defined(__x86_64__)
  switch (machine_isa()) {
    case Isa::kAvx2: return softmax_row_avx2(row, row_words, L);
    case Isa::kBase: break;
  }
#endif
  return softmax_row_lanes<4>(row, row_words, L);
}

inline std::pair<double, double> softmax_row(double* row, const uint32_t* row_words, int64_t L) {
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < L; ++j) {
    if (!((row_words[j / 32] >> (j % 32)) & 1u)) row[j] = -std::numeric_limits<double>::infinity();
    max = std::max(max, row[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < L; ++j) sum += row[j] = std::exp(row[j] - max);
  return {max, sum};
}

// In place: scores s_j -> P_j = e^(s_j - lse) on visible keys, 0 on blocked ones; grad dP_j ->
// dS_j = P_j (dP_j - delta).
inline void softmax_grad_row(float* scores, float* grad, const uint32_t* row_words, int64_t L, float lse,
                             float delta) {
#if defined(__x86_64__)
  switch (machine_isa()) {
    case Isa::kAvx2: return softmax_grad_row_avx2(scores, grad, row_words, L, lse, delta);
    case Isa::kBase: break;
  }
#endif
  softmax_grad_row_lanes<4>(scores, grad, row_words, L, lse, delta);
}

inline void softmax_grad_row(double* scores, double* grad, const uint32_t* row_words, int64_t L, double lse,
                             double delta) {
  for (int64_t j = 0; j < L; ++j) {
    scores[j] = (row_words[j / 32] >> (j % 32)) & 1u ? std::exp(scores[j] - lse) : 0.0;
    grad[j] = scores[j] * (grad[j] - delta);
  }
}

#undef RSF_LANES_INLINE

}  // namespace rankseg_fast::masked_attention::rows
