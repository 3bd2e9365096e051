// Masked attention, CUDA backward on tensor cores (fp16/bf16, head dim <= 64, sm_80+).
//
// The formulas and the kernel split are those of masked_attention_backward.cuh (dq kernel with a key
// split and fp32 partials summed by masked_attention_dq_reduce_kernel, then a dkdv kernel per key block,
// no atomics, each gradient element written once); the products run on mma.sync m16n8k16 with fp32
// accumulators and P / dS packed to 16 bits straight from the accumulator registers
// (masked_attention_mma.cuh). Shared tiles are row-major copies of the global rows; ldmatrix reads the
// B fragments from them, transposing (.trans) where the product needs the other orientation.
//
// dq kernel: a block has 64 queries (16 per warp) of one (b, h) and one key split. Q and dO fragments
// stay in registers; per key tile of 32 the block stages K and V in shared memory,
// each warp computes S = Q K^T and dP = dO V^T (16 x 32), P = 2^(S scale log2(e) - lse log2(e)) on
// visible keys, dS = P (dP - delta) and dQ += dS K. delta = <dO, out> per row is computed first (two lanes
// per row) and written by split 0 for the dkdv kernel.
//
// dkdv kernel: a block has 64 keys (16 per warp, inside two mask words) of one (b, h); it streams query
// tiles of 32 (skipping tiles where no query sees a key of the block) with Q, dO, and per-query lse,
// delta and the block's two mask words in shared memory. Each warp computes
// S^T = K Q^T and dP^T = V dO^T (16 keys x 32 queries; K and V fragments stay in registers), P^T, dS^T, and
// accumulates dV += P^T dO and dK += dS^T Q.
//
// Accumulation dtype: fp32; P and dS are rounded to the input dtype as operands of the second products
// (as flash-attention does); gradients are rounded once.
#pragma once

#include <cstdint>

#include "masked_attention_mma.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

template <typename scalar_t, int DMAX>
__global__ void __launch_bounds__(kThreads)
    masked_attention_dq_mma_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                   const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                   const uint32_t* __restrict__ words, const scalar_t* __restrict__ out,
                                   const float* __restrict__ lse, float* __restrict__ delta,
                                   float* __restrict__ partial_dq, Problem p) {
  static_assert(kMmaSupported<scalar_t, DMAX> && DMAX % 16 == 0, "tensor-core backward: fp16/bf16, DMAX 16..64");
  constexpr int KB = DMAX / 16, NO = DMAX / 8, NS = kTile / 8;
  constexpr int kStride = DMAX + kMmaPad;
  __shared__ __align__(16) uint16_t k_s[2][kTile * kStride];  // [buffer][key][channel]
  __shared__ __align__(16) uint16_t v_s[2][kTile * kStride];  // [buffer][key][channel]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t2 = (lane % 4) * 2;
  const auto [bh, b, h, E, chan0] = head_of_block(p);
  const int head_dim = static_cast<int>(p.head_dim);
  const int64_t warp_q0 = int64_t(blockIdx.x) * kMmaRows + warp * kMmaRowsPerWarp;
  const int64_t q_lo = warp_q0 + g, q_hi = q_lo + 8;
  const bool valid_lo = q_lo < p.queries, valid_hi = q_hi < p.queries;
  const int64_t row_offset = b * p.queries * E + chan0;
  const uint16_t* query_b = reinterpret_cast<const uint16_t*>(query) + row_offset;
  const uint16_t* grad_out_b = reinterpret_cast<const uint16_t*>(grad_out) + row_offset;
  const uint16_t* key_bh = reinterpret_cast<const uint16_t*>(key) + b * p.keys * E + chan0;
  const uint16_t* value_bh = reinterpret_cast<const uint16_t*>(value) + b * p.keys * E + chan0;

  // delta of the warp's row lane / 2 from channels of parity lane % 2; rows g and g + 8 then sit in lanes
  // 2 g and 2 g + 16.
  float row_delta = 0.f;
  {
    const int64_t q = warp_q0 + lane / 2;
    if (q < p.queries) {
      const scalar_t* do_row = grad_out + row_offset + q * E;
      const scalar_t* out_row = out + row_offset + q * E;
      for (int d = lane % 2; d < head_dim; d += 2) row_delta += to_acc<float>(do_row[d]) * to_acc<float>(out_row[d]);
    }
    row_delta += __shfl_xor_sync(0xffffffffu, row_delta, 1);
    if (q < p.queries && lane % 2 == 0 && blockIdx.z == 0) delta[bh * p.queries + q] = row_delta;
  }
  const float delta_lo = __shfl_sync(0xffffffffu, row_delta, 2 * g);
  const float delta_hi = __shfl_sync(0xffffffffu, row_delta, 2 * g + 16);
  const float lse2_lo = valid_lo ? lse[bh * p.queries + q_lo] * kLog2e : 0.f;
  const float lse2_hi = valid_hi ? lse[bh * p.queries + q_hi] * kLog2e : 0.f;

  uint32_t q_frag[KB][4], do_frag[KB][4];
  load_a_rows<KB>(valid_lo ? query_b + q_lo * E : nullptr, valid_hi ? query_b + q_hi * E : nullptr, head_dim, lane,
                  q_frag);
  load_a_rows<KB>(valid_lo ? grad_out_b + q_lo * E : nullptr, valid_hi ? grad_out_b + q_hi * E : nullptr, head_dim,
                  lane, do_frag);
  const uint32_t* words_lo = words + (b * p.queries + (valid_lo ? q_lo : 0)) * p.words;
  const uint32_t* words_hi = words + (b * p.queries + (valid_hi ? q_hi : 0)) * p.words;

  float dq[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  pipelined_key_tiles<DMAX>(p, key_bh, value_bh, E, words_lo, valid_lo, words_hi, valid_hi, k_s, v_s,
                            [&](const uint16_t* k_tile, const uint16_t* v_tile, uint32_t word_lo, uint32_t word_hi) {
    float s[NS][4], dp[NS][4];
    mma_rows_by_tile<scalar_t>(q_frag, k_tile, kStride, lane, s);
    mma_rows_by_tile<scalar_t>(do_frag, v_tile, kStride, lane, dp);
    // s becomes dS = P (dP - delta).
#pragma unroll
    for (int j = 0; j < NS; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int k = j * 8 + t2 + e;
        const float p_lo = (word_lo >> k) & 1u ? exp2f(s[j][e] * p.scale_log2 - lse2_lo) : 0.f;
        const float p_hi = (word_hi >> k) & 1u ? exp2f(s[j][2 + e] * p.scale_log2 - lse2_hi) : 0.f;
        s[j][e] = p_lo * (dp[j][e] - delta_lo);
        s[j][2 + e] = p_hi * (dp[j][2 + e] - delta_hi);
      }
    }
    mma_acc_by_tile<scalar_t>(s, k_tile, kStride, lane, dq);  // dQ += dS K
  });

  // Partials of split z live at rows (z * B * H + b * H + h) * Q + q of (splits, B * H, Q, D).
  const int64_t row0 = (int64_t(blockIdx.z) * p.batch * p.heads + bh) * p.queries;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half == 0 ? valid_lo : valid_hi)) continue;
    float* row = partial_dq + (row0 + (half == 0 ? q_lo : q_hi)) * p.head_dim;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = n * 8 + t2 + e;
        if (d < head_dim) row[d] = dq[n][2 * half + e];
      }
    }
  }
}

template <typename scalar_t, int DMAX>
__global__ void __launch_bounds__(kThreads)
    masked_attention_dkdv_mma_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                     const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                     const uint32_t* __restrict__ words, const float* __restrict__ lse,
                                     const float* __restrict__ delta, scalar_t* __restrict__ grad_key,
                                     scalar_t* __restrict__ grad_value, Problem p) {
  static_assert(kMmaSupported<scalar_t, DMAX> && DMAX % 16 == 0, "tensor-core backward: fp16/bf16, DMAX 16..64");
  static_assert(kMmaRows == 2 * kTile, "a block's keys span two mask words");
  constexpr int KB = DMAX / 16, NO = DMAX / 8, NS = kTile / 8;
  constexpr int kStride = DMAX + kMmaPad;
  // Double-buffered per query tile (buffer tile % 2), as the key tiles of pipelined_key_tiles.
  __shared__ __align__(16) uint16_t q_s[2][kTile * kStride];   // [query][channel]
  __shared__ __align__(16) uint16_t do_s[2][kTile * kStride];  // [query][channel]
  __shared__ float lse2_s[2][kTile], delta_s[2][kTile];
  __shared__ uint32_t word_s[2][2][kTile];  // the block's two mask words, per query of the tile

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t2 = (lane % 4) * 2;
  const auto [bh, b, h, E, chan0] = head_of_block(p);
  const int head_dim = static_cast<int>(p.head_dim);
  const int64_t k0 = int64_t(blockIdx.x) * kMmaRows;
  const int64_t word0 = k0 / kTile;  // the block's keys lie in words word0 and word0 + 1
  const int64_t k_lo = k0 + warp * kMmaRowsPerWarp + g, k_hi = k_lo + 8;
  const bool valid_lo = k_lo < p.keys, valid_hi = k_hi < p.keys;
  // Bit of key k_lo in its word; k_hi's is 8 higher (the warp's 16 keys lie in one word).
  const int word_half = warp / 2, bit_lo = (warp % 2) * kMmaRowsPerWarp + g;
  const int64_t key_offset = b * p.keys * E + chan0;
  const uint16_t* key_b = reinterpret_cast<const uint16_t*>(key) + key_offset;
  const uint16_t* value_b = reinterpret_cast<const uint16_t*>(value) + key_offset;
  const uint16_t* query_b = reinterpret_cast<const uint16_t*>(query) + b * p.queries * E + chan0;
  const uint16_t* grad_out_b = reinterpret_cast<const uint16_t*>(grad_out) + b * p.queries * E + chan0;

  uint32_t k_frag[KB][4], v_frag[KB][4];
  load_a_rows<KB>(valid_lo ? key_b + k_lo * E : nullptr, valid_hi ? key_b + k_hi * E : nullptr, head_dim, lane, k_frag);
  load_a_rows<KB>(valid_lo ? value_b + k_lo * E : nullptr, valid_hi ? value_b + k_hi * E : nullptr, head_dim, lane,
                  v_frag);

  float dk[NO][4], dv[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) dk[n][i] = dv[n][i] = 0.f;
  }

  // pipelined_tiles over the query tiles. Threads 0..31 read the block's two mask words and the statistics
  // of query `threadIdx.x` of a tile (0 past the queries) and store them with the tile's Q / dO copies.
  float ahead_lse2 = 0.f, ahead_delta = 0.f;
  uint32_t ahead_word[2] = {0u, 0u};
  const auto read_query = [&](int64_t tile, uint32_t (&word)[2]) {
    const int64_t q = tile * kTile + threadIdx.x;
    word[0] = word[1] = 0u;
    ahead_lse2 = ahead_delta = 0.f;
    if (threadIdx.x < kTile && q < p.queries) {
      const uint32_t* row_words = words + (b * p.queries + q) * p.words;
      word[0] = row_words[word0];
      word[1] = word0 + 1 < p.words ? row_words[word0 + 1] : 0u;  // bits of keys >= L are 0
      ahead_lse2 = lse[bh * p.queries + q] * kLog2e;
      ahead_delta = delta[bh * p.queries + q];
    }
    ahead_word[0] = word[0];
    ahead_word[1] = word[1];
  };
  const auto stage = [&](int64_t tile) {
    const int buffer = static_cast<int>(tile % 2);
    if (threadIdx.x < kTile) {
      word_s[buffer][0][threadIdx.x] = ahead_word[0];
      word_s[buffer][1][threadIdx.x] = ahead_word[1];
      lse2_s[buffer][threadIdx.x] = ahead_lse2;
      delta_s[buffer][threadIdx.x] = ahead_delta;
    }
    stage_tile_16<kTile, DMAX>(query_b, E, tile * kTile, p.queries, head_dim, q_s[buffer]);
    stage_tile_16<kTile, DMAX>(grad_out_b, E, tile * kTile, p.queries, head_dim, do_s[buffer]);
  };
  const int64_t tiles = (p.queries + kTile - 1) / kTile;
  pipelined_tiles<2>(0, tiles, read_query, stage, [&](int64_t tile, const uint32_t (&)[2]) {
    const int buffer = static_cast<int>(tile % 2);
    const uint16_t* q_tile = q_s[buffer];
    const uint16_t* do_tile = do_s[buffer];
    // Skip the warp if no query of the tile sees one of its 16 keys (lane i checks query i).
    const uint32_t warp_bits = 0xffffu << ((warp % 2) * kMmaRowsPerWarp);
    if (!__any_sync(0xffffffffu, (word_s[buffer][word_half][lane] & warp_bits) != 0)) return;

    float s[NS][4], dp[NS][4];
    mma_rows_by_tile<scalar_t>(k_frag, q_tile, kStride, lane, s);    // S^T = K Q^T
    mma_rows_by_tile<scalar_t>(v_frag, do_tile, kStride, lane, dp);  // dP^T = V dO^T
    // s becomes P^T, dp becomes dS^T = P^T (dP^T - delta).
#pragma unroll
    for (int j = 0; j < NS; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int qi = j * 8 + t2 + e;
        const uint32_t word = word_s[buffer][word_half][qi];
        const float lse2 = lse2_s[buffer][qi], q_delta = delta_s[buffer][qi];
        const float p_lo = (word >> bit_lo) & 1u ? exp2f(s[j][e] * p.scale_log2 - lse2) : 0.f;
        const float p_hi = (word >> (bit_lo + 8)) & 1u ? exp2f(s[j][2 + e] * p.scale_log2 - lse2) : 0.f;
        s[j][e] = p_lo;
        s[j][2 + e] = p_hi;
        dp[j][e] = p_lo * (dp[j][e] - q_delta);
        dp[j][2 + e] = p_hi * (dp[j][2 + e] - q_delta);
      }
    }
    mma_acc_by_tile<scalar_t>(s, do_tile, kStride, lane, dv);  // dV += P^T dO
    mma_acc_by_tile<scalar_t>(dp, q_tile, kStride, lane, dk);  // dK += dS^T Q
  });

  scalar_t* dk_b = grad_key + key_offset;
  scalar_t* dv_b = grad_value + key_offset;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half == 0 ? valid_lo : valid_hi)) continue;
    const int64_t k = half == 0 ? k_lo : k_hi;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = n * 8 + t2 + e;
        if (d >= head_dim) continue;
        dk_b[k * E + d] = from_acc<scalar_t>(dk[n][2 * half + e] * p.scale);
        dv_b[k * E + d] = from_acc<scalar_t>(dv[n][2 * half + e]);
      }
    }
  }
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
