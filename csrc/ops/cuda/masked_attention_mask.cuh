// Mask pre-pass of masked_attention on CUDA: packs mask_logits (B, Q, L) into visible-key words
// (B, Q, ceil(L / 32)) uint32, once per (b, q) and shared by all heads (masked_attention.h).
//
// Algorithm and mapping: one warp per (b, q) row walks the row 32 keys at a time; lane j tests key
// 32 w + j (visible iff !(logit < 0), so NaN is visible) and __ballot_sync assembles the word, written by
// lane 0. The warp ORs its words; if the row has no visible key (all-blocked-row rule) it rewrites the
// row with every key < L visible. Reads are coalesced; the row rule needs no host sync.
// Comparison dtype: fp32 for fp16/bf16/fp32 logits (exact), fp64 for fp64 (no rounding of tiny logits).
#pragma once

#include <cstdint>

#include "masked_attention_common.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

template <typename mask_t>
__global__ void __launch_bounds__(kThreads)
    pack_visible_keys_kernel(const mask_t* __restrict__ logits, uint32_t* __restrict__ words, int64_t rows,
                             int64_t keys, int64_t words_per_row) {
  using cmp_t = rankseg_fast::cuda::acc_type_t<mask_t>;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps only: the ballots below involve full warps
  const mask_t* x = logits + row * keys;
  uint32_t* out = words + row * words_per_row;
  uint32_t any = 0;
  for (int64_t w = 0; w < words_per_row; ++w) {
    const int64_t k = w * kTile + lane;
    const bool visible = k < keys && !(to_acc<cmp_t>(x[k]) < cmp_t(0));
    const uint32_t word = __ballot_sync(0xffffffffu, visible);
    if (lane == 0) out[w] = word;
    any |= word;
  }
  if (any != 0) return;  // warp-uniform: every lane holds the same ballots
  __syncwarp();          // order lane 0's writes above before the rewrite by other lanes
  for (int64_t w = lane; w < words_per_row; w += 32) {
    const int64_t n = keys - w * kTile;
    out[w] = n >= kTile ? 0xffffffffu : (1u << n) - 1u;
  }
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
