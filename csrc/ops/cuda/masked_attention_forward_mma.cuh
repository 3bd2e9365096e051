// Masked attention, CUDA forward on tensor cores (fp16/bf16, head dim <= 64, sm_80+).
//
// Algorithm: as masked_attention_forward_kernel (flash-decoding split over keys, online softmax, the
// block skips key tiles that none of its rows sees, unnormalised partials (o, m, l) merged by
// masked_attention_combine_kernel), with the two products on mma.sync m16n8k16 and everything else in
// registers (flash-attention-2 style): a block has 64 queries, a warp 16; per key tile of 32 (one mask
// word per row) the block stages K and V (row-major) in shared memory; each warp computes
// S = Q K^T (16 x 32, fp32 accumulators; Q's fragments stay in registers for the whole split), applies
// the mask bits and the base-2 scale, updates the running max / sum of its rows (quad shuffles), packs P
// to 16 bits straight from the accumulator registers and accumulates O += P V.
//
// Mapping (masked_attention_mma.cuh): lane (g, t) holds rows g and g + 8 of its warp's 16, keys 8 j + 2 t
// (+1) of n-tile j of S, and channels 8 n + 2 t (+1) of n-tile n of O. The row sum l is kept per lane
// (only the lane's keys) and reduced over the quad at the end.
//
// Accumulation dtype: fp32 (scores, statistics, O); P is rounded to the input dtype for the P V product
// (as flash-attention does); partials are fp32. Numerics caveat: besides P's rounding, exp2f of base-2
// fp32 scores as the SIMT kernel.
#pragma once

#include <cstdint>

#include "masked_attention_mma.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

// Minimum blocks per SM: without it ptxas gives the D = 32 kernel 109 registers (4 blocks per SM) once the
// next tile's mask words are held across the loop; capped it fits 96 (5 blocks, as before), no spills.
template <typename scalar_t, int DMAX>
__global__ void __launch_bounds__(kThreads, DMAX <= 32 ? 5 : 4)
    masked_attention_forward_mma_kernel(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key,
                                        const scalar_t* __restrict__ value, const uint32_t* __restrict__ words,
                                        float* __restrict__ partial_o, float* __restrict__ partial_m,
                                        float* __restrict__ partial_l, Problem p) {
  static_assert(kMmaSupported<scalar_t, DMAX> && DMAX % 16 == 0, "tensor-core forward: fp16/bf16, DMAX 16..64");
  constexpr int KB = DMAX / 16;  // 16-channel k-blocks of Q K^T
  constexpr int NO = DMAX / 8;   // 8-channel n-tiles of O
  constexpr int NS = kTile / 8;  // 8-key n-tiles of S
  constexpr int kStride = DMAX + kMmaPad;
  __shared__ __align__(16) uint16_t k_s[2][kTile * kStride];  // [buffer][key][channel]
  __shared__ __align__(16) uint16_t v_s[2][kTile * kStride];  // [buffer][key][channel]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t2 = (lane % 4) * 2;
  const auto [bh, b, h, E, chan0] = head_of_block(p);
  const int head_dim = static_cast<int>(p.head_dim);
  const uint16_t* key_bh = reinterpret_cast<const uint16_t*>(key) + b * p.keys * E + chan0;
  const uint16_t* value_bh = reinterpret_cast<const uint16_t*>(value) + b * p.keys * E + chan0;

  // This lane's two rows: lo = row g of the warp's 16, hi = row g + 8.
  const int64_t q_lo = int64_t(blockIdx.x) * kMmaRows + warp * kMmaRowsPerWarp + g, q_hi = q_lo + 8;
  const bool valid_lo = q_lo < p.queries, valid_hi = q_hi < p.queries;
  const uint16_t* query_b = reinterpret_cast<const uint16_t*>(query) + b * p.queries * E + chan0;
  uint32_t q_frag[KB][4];
  load_a_rows<KB>(valid_lo ? query_b + q_lo * E : nullptr, valid_hi ? query_b + q_hi * E : nullptr, head_dim, lane,
                  q_frag);
  const uint32_t* words_lo = words + (b * p.queries + (valid_lo ? q_lo : 0)) * p.words;
  const uint32_t* words_hi = words + (b * p.queries + (valid_hi ? q_hi : 0)) * p.words;

  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  pipelined_key_tiles<DMAX>(p, key_bh, value_bh, E, words_lo, valid_lo, words_hi, valid_hi, k_s, v_s,
                            [&](const uint16_t* k_tile, const uint16_t* v_tile, uint32_t word_lo, uint32_t word_hi) {
    float s[NS][4];
    mma_rows_by_tile<scalar_t>(q_frag, k_tile, kStride, lane, s);
    // Base-2 scores of visible keys, -inf elsewhere; the tile's row maxima.
    float max_lo = -INFINITY, max_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < NS; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int k = j * 8 + t2 + e;
        s[j][e] = (word_lo >> k) & 1u ? s[j][e] * p.scale_log2 : -INFINITY;
        s[j][2 + e] = (word_hi >> k) & 1u ? s[j][2 + e] * p.scale_log2 : -INFINITY;
        max_lo = fmaxf(max_lo, s[j][e]);
        max_hi = fmaxf(max_hi, s[j][2 + e]);
      }
    }
    const float new_lo = fmaxf(m_lo, quad_max(max_lo)), new_hi = fmaxf(m_hi, quad_max(max_hi));
    const float alpha_lo = m_lo == -INFINITY ? 0.f : exp2f(m_lo - new_lo);
    const float alpha_hi = m_hi == -INFINITY ? 0.f : exp2f(m_hi - new_hi);
    m_lo = new_lo;
    m_hi = new_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int j = 0; j < NS; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int k = j * 8 + t2 + e;
        s[j][e] = (word_lo >> k) & 1u ? exp2f(s[j][e] - new_lo) : 0.f;
        s[j][2 + e] = (word_hi >> k) & 1u ? exp2f(s[j][2 + e] - new_hi) : 0.f;
        sum_lo += s[j][e];
        sum_hi += s[j][2 + e];
      }
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
      o[n][0] *= alpha_lo;
      o[n][1] *= alpha_lo;
      o[n][2] *= alpha_hi;
      o[n][3] *= alpha_hi;
    }
    mma_acc_by_tile<scalar_t>(s, v_tile, kStride, lane, o);  // O += P V
  });

  l_lo = quad_sum(l_lo);
  l_hi = quad_sum(l_hi);
  // Partials of split z live at rows (z * B * H + b * H + h) * Q + q of (splits, B * H, Q[, D]).
  const int64_t row0 = (int64_t(blockIdx.z) * p.batch * p.heads + bh) * p.queries;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const bool valid = half == 0 ? valid_lo : valid_hi;
    if (!valid) continue;
    const int64_t row = row0 + (half == 0 ? q_lo : q_hi);
#pragma unroll
    for (int n = 0; n < NO; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = n * 8 + t2 + e;
        if (d < head_dim) partial_o[row * p.head_dim + d] = o[n][2 * half + e];
      }
    }
    if (t2 == 0) {
      partial_m[row] = half == 0 ? m_lo : m_hi;
      partial_l[row] = half == 0 ? l_lo : l_hi;
    }
  }
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
