// Masked attention, CUDA backward kernels (flash-attention-2 style recomputation, SIMT fp32, no atomics).
//
// With s = q.k / sqrt(D) (natural units), P = exp(s - lse) on visible keys (0 elsewhere) and
// delta = <dO, out> per (b, h, query):  dV_j = sum_i P_ij dO_i,  dS_ij = P_ij (dO_i.v_j - delta_i),
// dQ_i = sum_j dS_ij k_j / sqrt(D),  dK_j = sum_i dS_ij q_i / sqrt(D).
//
// dq kernel: one block per (block of kRows queries, b, h, split of the keys), as the forward: computes
// delta of its rows (from dO and the forward's out; split 0 writes it for the dkdv kernel), then streams
// its split's key tiles of 32 through pipelined_tiles (skipping tiles no row of the block sees),
// recomputes P, forms dS and accumulates its partial dQ in registers; the dq_reduce kernel sums the
// splits' partials and scales.
// Mapping: lane j <-> key j of the tile for P and dS; lane l <-> channels l, l + 32, ... of dQ; the
// reduce kernel runs one thread per (b, h, query, channel).
//
// dkdv kernel: one block per (block of kRows keys, b, h) streams query tiles of 32 through pipelined_tiles
// (skipping tiles in which no query sees any of the block's keys: the block's keys share one mask word;
// the tile's words and statistics are staged in shared memory with its Q and dO), recomputes P and dS
// and accumulates dK and dV of its keys in registers; it runs after the dq kernel (same stream) and
// reads its delta. Mapping: lane i <-> query i of the tile for P and dS; lane l <-> channels of dK, dV.
//
// Accumulation dtype: fp32; each gradient is rounded once. Every gradient element is written by exactly
// one thread: deterministic, no atomics. Numerics caveat: for fp16/bf16, delta is computed from the
// rounded forward output (as flash-attention does).
#pragma once

#include <cstdint>

#include "masked_attention_common.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

template <typename scalar_t, int DMAX>
__global__ void __launch_bounds__(kThreads)
    masked_attention_dq_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                               const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                               const uint32_t* __restrict__ words, const scalar_t* __restrict__ out,
                               const float* __restrict__ lse, float* __restrict__ delta,
                               float* __restrict__ partial_dq, Problem p) {
  using Shape = TileShape<DMAX>;
  constexpr int R = Shape::kRowsPerWarp, C = Shape::kChannelsPerLane, S = Shape::kStride, NB = Shape::kBuffers;
  __shared__ __align__(16) float q_s[Shape::kRows * DMAX];
  __shared__ __align__(16) float do_s[Shape::kRows * DMAX];
  __shared__ __align__(16) float k_s[NB][kTile * S];
  __shared__ __align__(16) float v_s[NB][kTile * S];
  __shared__ __align__(16) float ds_s[kWarps][R][kTile];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto [bh, b, h, E, chan0] = head_of_block(p);
  const int64_t q0 = int64_t(blockIdx.x) * Shape::kRows;
  const int head_dim = static_cast<int>(p.head_dim);
  const scalar_t* key_bh = key + b * p.keys * E + chan0;
  const scalar_t* value_bh = value + b * p.keys * E + chan0;

  load_tile<Shape::kRows, DMAX, DMAX>(query + b * p.queries * E + chan0, E, q0, p.queries, head_dim,
                                      p.scale_log2, q_s);
  load_tile<Shape::kRows, DMAX, DMAX>(grad_out + b * p.queries * E + chan0, E, q0, p.queries, head_dim, 1.f,
                                      do_s);
  __syncthreads();

  const uint32_t* row_words[R];
  bool row_valid[R];
  float lse2[R], row_delta[R], dq[R][C];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t q = q0 + warp * R + r;
    row_valid[r] = q < p.queries;
    const int64_t qc = row_valid[r] ? q : 0;
    row_words[r] = words + (b * p.queries + qc) * p.words;
    lse2[r] = row_valid[r] ? lse[bh * p.queries + q] * kLog2e : 0.f;
    // delta = <dO, out> over the head's channels (dO from shared memory, out from global).
    const scalar_t* out_row = out + (b * p.queries + qc) * E + chan0;
    float partial = 0.f;
    for (int d = lane; d < head_dim; d += 32) {
      partial += do_s[(warp * R + r) * DMAX + d] * to_acc<float>(out_row[d]);
    }
    row_delta[r] = warp_sum(partial);
    if (row_valid[r] && lane == 0 && blockIdx.z == 0) delta[bh * p.queries + q] = row_delta[r];
#pragma unroll
    for (int c = 0; c < C; ++c) dq[r][c] = 0.f;
  }

  pipelined_key_tiles_simt<R, DMAX, S>(p, key_bh, value_bh, E, row_words, row_valid, k_s, v_s,
                                       [&](const float* k_tile, const float* v_tile, const uint32_t (&word)[R]) {
    float s[R], dp[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = dp[r] = 0.f;
    dot_lane_row<R, DMAX, S>(q_s + warp * R * DMAX, k_tile, lane, s);
    dot_lane_row<R, DMAX, S>(do_s + warp * R * DMAX, v_tile, lane, dp);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool visible = (word[r] >> lane) & 1u;
      const float prob = visible ? exp2f(s[r] - lse2[r]) : 0.f;
      ds_s[warp][r][lane] = prob * (dp[r] - row_delta[r]);
    }
    __syncwarp();
    accumulate_weighted_tile<R, C, DMAX, S>(ds_s[warp], k_tile, lane, dq);
    __syncwarp();
  });

  // Partials of split z live at rows (z * B * H + b * H + h) * Q + q of (splits, B * H, Q, D).
  const int64_t first_row = (int64_t(blockIdx.z) * p.batch * p.heads + bh) * p.queries + q0 + warp * R;
  store_partial_rows(partial_dq, first_row, row_valid, p.head_dim, lane, dq);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    masked_attention_dq_reduce_kernel(const float* __restrict__ partial_dq, int64_t splits,
                                      scalar_t* __restrict__ grad_query, Problem p) {
  const int64_t rows = p.batch * p.heads * p.queries;  // (b * H + h) * Q + q
  const int64_t i = global_thread();
  if (i >= rows * p.head_dim) return;
  float sum = 0.f;
  for (int64_t z = 0; z < splits; ++z) sum += partial_dq[z * rows * p.head_dim + i];
  const int64_t row = i / p.head_dim, d = i % p.head_dim;
  const int64_t bh = row / p.queries, q = row % p.queries;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  grad_query[(b * p.queries + q) * p.heads * p.head_dim + h * p.head_dim + d] = from_acc<scalar_t>(sum * p.scale);
}

template <typename scalar_t, int DMAX>
__global__ void __launch_bounds__(kThreads)
    masked_attention_dkdv_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                 const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                 const uint32_t* __restrict__ words, const float* __restrict__ lse,
                                 const float* __restrict__ delta, scalar_t* __restrict__ grad_key,
                                 scalar_t* __restrict__ grad_value, Problem p) {
  using Shape = TileShape<DMAX>;
  constexpr int R = Shape::kRowsPerWarp, C = Shape::kChannelsPerLane, S = Shape::kStride, NB = Shape::kBuffers;
  static_assert(kTile % Shape::kRows == 0, "a block's keys must lie in one mask word");
  __shared__ __align__(16) float k_s[Shape::kRows * DMAX];
  __shared__ __align__(16) float v_s[Shape::kRows * DMAX];
  __shared__ __align__(16) float q_t[NB][kTile * S];
  __shared__ __align__(16) float do_t[NB][kTile * S];
  __shared__ __align__(16) float p_s[kWarps][R][kTile];
  __shared__ __align__(16) float ds_s[kWarps][R][kTile];
  __shared__ float lse2_s[NB][kTile], delta_s[NB][kTile];  // per query of the tile
  __shared__ uint32_t word_s[NB][kTile];                    // the block's mask word, per query of the tile

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const auto [bh, b, h, E, chan0] = head_of_block(p);
  const int64_t k0 = int64_t(blockIdx.x) * Shape::kRows;
  const int head_dim = static_cast<int>(p.head_dim);
  const int64_t word_index = k0 / kTile;
  const int bit0 = static_cast<int>(k0 % kTile);
  const uint32_t block_bits = ((1u << Shape::kRows) - 1u) << bit0;
  const scalar_t* query_b = query + b * p.queries * E + chan0;
  const scalar_t* grad_out_b = grad_out + b * p.queries * E + chan0;

  // Keys pre-scaled so that q . k_s is the base-2 score.
  load_tile<Shape::kRows, DMAX, DMAX>(key + b * p.keys * E + chan0, E, k0, p.keys, head_dim, p.scale_log2, k_s);
  load_tile<Shape::kRows, DMAX, DMAX>(value + b * p.keys * E + chan0, E, k0, p.keys, head_dim, 1.f, v_s);

  float dk[R][C], dv[R][C];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < C; ++c) dk[r][c] = dv[r][c] = 0.f;
  }

  // pipelined_tiles over the query tiles. Lane i reads the mask word (the block's bits) and the statistics
  // of query i of a tile (0 past the queries; the same in every warp), and warp 0 stores them with the
  // tile's Q / dO.
  float ahead_lse2 = 0.f, ahead_delta = 0.f;
  uint32_t ahead_word = 0u;
  const auto read_query = [&](int64_t tile, uint32_t (&word)[1]) {
    const int64_t q = tile * kTile + lane;
    const bool q_valid = q < p.queries;
    ahead_word = word[0] = q_valid ? words[(b * p.queries + q) * p.words + word_index] & block_bits : 0u;
    ahead_lse2 = q_valid ? lse[bh * p.queries + q] * kLog2e : 0.f;
    ahead_delta = q_valid ? delta[bh * p.queries + q] : 0.f;
  };
  const auto stage = [&](int64_t tile) {
    const int buffer = static_cast<int>(tile % NB);
    if (warp == 0) {
      word_s[buffer][lane] = ahead_word;
      lse2_s[buffer][lane] = ahead_lse2;
      delta_s[buffer][lane] = ahead_delta;
    }
    stage_tile<kTile, DMAX, S>(query_b, E, tile * kTile, p.queries, head_dim, q_t[buffer]);
    stage_tile<kTile, DMAX, S>(grad_out_b, E, tile * kTile, p.queries, head_dim, do_t[buffer]);
  };
  const int64_t tiles = (p.queries + kTile - 1) / kTile;
  pipelined_tiles<1, NB>(0, tiles, read_query, stage, [&](int64_t tile, const uint32_t (&)[1]) {
    const int buffer = static_cast<int>(tile % NB);
    const uint32_t word = word_s[buffer][lane];
    const float lse2 = lse2_s[buffer][lane], q_delta = delta_s[buffer][lane];
    const float* q_tile = q_t[buffer];
    const float* do_tile = do_t[buffer];
    float s[R], dp[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = dp[r] = 0.f;
    dot_lane_row<R, DMAX, S>(k_s + warp * R * DMAX, q_tile, lane, s);
    dot_lane_row<R, DMAX, S>(v_s + warp * R * DMAX, do_tile, lane, dp);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool visible = (word >> (bit0 + warp * R + r)) & 1u;  // keys >= L have no bit
      const float prob = visible ? exp2f(s[r] - lse2) : 0.f;
      p_s[warp][r][lane] = prob;
      ds_s[warp][r][lane] = prob * (dp[r] - q_delta);
    }
    __syncwarp();
    accumulate_weighted_tile<R, C, DMAX, S>(p_s[warp], do_tile, lane, dv);
    accumulate_weighted_tile<R, C, DMAX, S>(ds_s[warp], q_tile, lane, dk);
    __syncwarp();
  });

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t k = k0 + warp * R + r;
    if (k >= p.keys) continue;
    scalar_t* dk_row = grad_key + (b * p.keys + k) * E + chan0;
    scalar_t* dv_row = grad_value + (b * p.keys + k) * E + chan0;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int d = c * 32 + lane;
      if (d >= head_dim) continue;
      dk_row[d] = from_acc<scalar_t>(dk[r][c] * p.scale);
      dv_row[d] = from_acc<scalar_t>(dv[r][c]);
    }
  }
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
