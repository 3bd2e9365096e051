// RankSeg rank-space ops: the contract shared by the schemas, the CPU and the CUDA kernels.
//
// rank_logits
//   class_logits  (N, B, Q, K+1)  N decoder predictions, index K = no-object; fp32/fp64/fp16/bf16
//   scores        (B, K)          multi-label scores, any float dtype; only their order matters
//   k             1 <= k <= K
//   weight, bias  (k+1,)          per-rank LayerNorm affine, any float dtype
//   -> ranked     (N, B, Q, k+1)  LayerNorm over the ranks of class_logits[..., rank_index[b]]
//      rank_index (B, k+1) int64  the k best classes (descending score, equal scores: lower index
//                                 first, NaN ranks above every number), then K
//      mean, rstd (N, B, Q)       per-row statistics for the backward, fp32 (fp64 for fp64 logits)
// _rank_logits_backward(grad_ranked, class_logits, rank_index, weight, mean, rstd)
//   -> grad_logits (N, B, Q, K+1) (zero outside the top-k), grad_weight and grad_bias (k+1,) in the
//      weight's dtype (the Python autograd casts grad_bias to the bias' dtype).
//
// rank_scatter: ranked (..., B, Q, k+1) -> (..., B, Q, K+1) in class order, `fill` outside the top-k;
// its backward gathers the class-order gradient back into rank order.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rankseg_fast::rank_logits {

// Sizes of a validated rank_logits call.
struct Sizes {
  int64_t layers, batch, queries, classes, k;  // N, B, Q, K, k
  int64_t ranks() const { return k + 1; }
  int64_t rows() const { return layers * batch * queries; }
};

// Sizes of a validated rank_scatter call; rows of image b are l * batch * queries + b * queries + q.
struct ScatterSizes {
  int64_t leading, batch, queries, classes, ranks;  // prod(...), B, Q, K, k+1
  int64_t rows() const { return leading * batch * queries; }
};

// The dtype of the row statistics and of every accumulation: fp64 for fp64 logits, else fp32.
inline at::ScalarType acc_dtype(at::ScalarType logits_dtype) {
  return logits_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Validates a rank_logits call (ranks, shapes, dtypes, devices, k) and returns its sizes.
Sizes check_inputs(const at::Tensor& class_logits, const at::Tensor& scores, int64_t k,
                   const at::Tensor& weight, const at::Tensor& bias);

// Validates a _rank_logits_backward call against the forward it belongs to and returns its sizes.
Sizes check_backward_inputs(const at::Tensor& grad_ranked, const at::Tensor& class_logits,
                            const at::Tensor& rank_index, const at::Tensor& weight,
                            const at::Tensor& mean, const at::Tensor& rstd);

// Validates a rank_scatter call and returns its sizes.
ScatterSizes check_scatter_inputs(const at::Tensor& ranked, const at::Tensor& rank_index,
                                  int64_t num_classes);

// Validates a _rank_scatter_backward call (grad_output (..., B, Q, K+1)) and returns its sizes.
ScatterSizes check_scatter_backward_inputs(const at::Tensor& grad_output,
                                           const at::Tensor& rank_index);

// Runs fn.template operator()<scalar_t>() for a floating dtype (fp32, fp64, fp16, bf16).
template <typename Fn>
void dispatch_float(at::ScalarType dtype, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rank_logits",
                                  [&] { fn.template operator()<scalar_t>(); });
}

}  // namespace rankseg_fast::rank_logits
