// Masked multi-head attention: the contract shared by the schema, the CPU and the CUDA kernels.
//
//   query        (B, Q, E)   E = H * D; head h uses channels [h*D, (h+1)*D); fp32/fp64/fp16/bf16
//   key, value   (B, L, E)   query's dtype and device, L >= 1
//   mask_logits  (B, Q, L)   any of those float dtypes; key j visible to query q iff !(logit < 0)
//                            (>= 0, and NaN counts as visible, as in the reference); a row that blocks
//                            every key sees every key. Given once per (b, q), shared by all heads.
//   -> out       (B, Q, E)   query's dtype: per head softmax(q k^T / sqrt(D) over visible keys) v
//   -> lse       (B, H, Q)   log-sum-exp of the scaled visible scores of each row, in the statistics
//                            dtype (fp64 for fp64 inputs, fp32 otherwise); the backward recomputes the
//                            probabilities from it.
//
// Both backends first pack the mask once per (b, q) into visible-key words: an int32 tensor
// (B, Q, ceil(L / 32)) whose bit (j % 32) of word j / 32 is set iff key j is visible after the
// all-blocked-row rule; bits of keys >= L are zero.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rankseg_fast::masked_attention {

constexpr int64_t kKeysPerWord = 32;

// Problem sizes, taken from validated inputs.
struct Sizes {
  int64_t batch, num_queries, num_keys, num_heads, head_dim;
  int64_t words_per_row() const { return (num_keys + kKeysPerWord - 1) / kKeysPerWord; }
};

// Validates every input (ranks, sizes, dtypes, devices, num_heads) with the messages of the Python
// reference's check_masked_attention_inputs, and returns the sizes.
Sizes check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                   const at::Tensor& mask_logits, int64_t num_heads);

// Validates the backward's extra inputs: grad_output and out (B, Q, E) in query's dtype, lse (B, H, Q)
// in the statistics dtype, all on query's device.
void check_backward_inputs(const at::Tensor& grad_output, const at::Tensor& out,
                           const at::Tensor& lse, const at::Tensor& query, const Sizes& sizes);

// fp64 for fp64 inputs, fp32 for fp32/fp16/bf16: the dtype of lse and of every accumulation.
at::ScalarType stats_dtype(at::ScalarType input_dtype);

}  // namespace rankseg_fast::masked_attention
