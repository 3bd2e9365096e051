// Masked attention, CUDA forward kernels (flash-decoding style split over keys, SIMT fp32).
//
// Algorithm: masked_attention_forward_kernel: one block per (block of kRows queries, b * H + h, split of
// the keys) streams its split's key tiles of 32 with an online softmax, through pipelined_tiles (the
// next K/V tile is copied into the other shared buffer while this one is computed; a tile no row of the
// block sees is neither copied nor computed). Per tile: lane j computes the base-2 scores of key j for
// the warp's rows (q pre-scaled by log2(e)/sqrt(D)), blocked keys become -inf, the warp updates the
// running max m and sum l (shuffle reductions) and rescales its accumulators, and the tile's
// probabilities are broadcast through shared memory for o += p v. Each block writes its unnormalised
// partial (o, m, l) per row (m = -inf, l = 0, o = 0 when the split has no visible key for the row).
// masked_attention_combine_kernel merges the splits of each row: M = max m_s, L = sum l_s 2^(m_s - M),
// out = sum o_s 2^(m_s - M) / L, lse = (M + log2 L) ln 2 (natural units), which the backward uses.
// Splitting the keys keeps every SM busy for the few hundred queries of Mask2Former.
//
// Thread-to-data mapping: 4 warps x kRowsPerWarp query rows; lane j <-> key j of the tile for scores,
// lane l <-> channels l, l + 32, ... for the output accumulators (TileShape in masked_attention_common).
// The combine kernel runs one thread per (b, h, query, channel).
//
// Accumulation dtype: fp32 for fp16/bf16/fp32 inputs (scores, statistics, accumulators, partials); the
// output is rounded once. The all-blocked-row rule is already applied in the mask words, so every row
// sees at least one key in some split and L > 0. Numerics caveat: exp2f of fp32 base-2 scores, a few ulp
// of fp32 away from the reference's expf.
#pragma once

#include <cstdint>

#include "masked_attention_common.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

// Minimum blocks per SM: left alone, ptxas gives the D = 32 kernel 128 registers (4 blocks per SM) where
// 96 do without spilling.
template <typename scalar_t, int DMAX>
__global__ void __launch_bounds__(kThreads, DMAX <= 32 ? 5 : 3)
    masked_attention_forward_kernel(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key,
                                    const scalar_t* __restrict__ value, const uint32_t* __restrict__ words,
                                    float* __restrict__ partial_o, float* __restrict__ partial_m,
                                    float* __restrict__ partial_l, Problem p) {
  using Shape = TileShape<DMAX>;
  constexpr int R = Shape::kRowsPerWarp, C = Shape::kChannelsPerLane, S = Shape::kStride, NB = Shape::kBuffers;
  __shared__ __align__(16) float q_s[Shape::kRows * DMAX];
  __shared__ __align__(16) float k_s[NB][kTile * S];
  __shared__ __align__(16) float v_s[NB][kTile * S];
  __shared__ __align__(16) float p_s[kWarps][R][kTile];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto [bh, b, h, E, chan0] = head_of_block(p);
  const int64_t q0 = int64_t(blockIdx.x) * Shape::kRows;
  const scalar_t* key_bh = key + b * p.keys * E + chan0;
  const scalar_t* value_bh = value + b * p.keys * E + chan0;

  load_tile<Shape::kRows, DMAX, DMAX>(query + b * p.queries * E + chan0, E, q0, p.queries,
                                      static_cast<int>(p.head_dim), p.scale_log2, q_s);

  const uint32_t* row_words[R];
  bool row_valid[R];
  float m[R], l[R], o[R][C];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t q = q0 + warp * R + r;
    row_valid[r] = q < p.queries;
    row_words[r] = words + (b * p.queries + (row_valid[r] ? q : 0)) * p.words;
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < C; ++c) o[r][c] = 0.f;
  }

  // Its first barrier also publishes q_s.
  pipelined_key_tiles_simt<R, DMAX, S>(p, key_bh, value_bh, E, row_words, row_valid, k_s, v_s,
                                       [&](const float* k_tile, const float* v_tile, const uint32_t (&word)[R]) {
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.f;
    dot_lane_row<R, DMAX, S>(q_s + warp * R * DMAX, k_tile, lane, s);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool visible = (word[r] >> lane) & 1u;
      const float x = visible ? s[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      const float prob = visible ? exp2f(x - m_new) : 0.f;
      const float alpha = m[r] == -INFINITY ? 0.f : exp2f(m[r] - m_new);
      l[r] = l[r] * alpha + warp_sum(prob);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < C; ++c) o[r][c] *= alpha;
      p_s[warp][r][lane] = prob;
    }
    __syncwarp();
    accumulate_weighted_tile<R, C, DMAX, S>(p_s[warp], v_tile, lane, o);
    __syncwarp();
  });

  // Partials of split z live at rows (z * B * H + b * H + h) * Q + q of (splits, B * H, Q[, D]).
  const int64_t first_row = (int64_t(blockIdx.z) * p.batch * p.heads + bh) * p.queries + q0 + warp * R;
  store_partial_rows(partial_o, first_row, row_valid, p.head_dim, lane, o);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (row_valid[r] && lane == 0) {
      partial_m[first_row + r] = m[r];
      partial_l[first_row + r] = l[r];
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    masked_attention_combine_kernel(const float* __restrict__ partial_o, const float* __restrict__ partial_m,
                                    const float* __restrict__ partial_l, int64_t splits,
                                    scalar_t* __restrict__ out, float* __restrict__ lse, Problem p) {
  const int64_t rows = p.batch * p.heads * p.queries;  // (b * H + h) * Q + q
  const int64_t i = global_thread();
  if (i >= rows * p.head_dim) return;
  const int64_t row = i / p.head_dim, d = i % p.head_dim;
  float max_m = -INFINITY;
  for (int64_t z = 0; z < splits; ++z) max_m = fmaxf(max_m, partial_m[z * rows + row]);
  float sum = 0.f, acc = 0.f;
  for (int64_t z = 0; z < splits; ++z) {
    const float weight = exp2f(partial_m[z * rows + row] - max_m);  // 0 for a split that saw no key
    sum += partial_l[z * rows + row] * weight;
    acc += partial_o[(z * rows + row) * p.head_dim + d] * weight;
  }
  const int64_t bh = row / p.queries, q = row % p.queries;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  out[(b * p.queries + q) * p.heads * p.head_dim + h * p.head_dim + d] = from_acc<scalar_t>(acc / sum);
  if (d == 0) lse[row] = (max_m + log2f(sum)) * kLn2;
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
