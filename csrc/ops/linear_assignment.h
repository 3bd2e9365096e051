// Batched exact linear assignment (the solver of the Hungarian mask matcher): the contract shared by the
// schema, the CPU and the CUDA kernels.
//
//   cost          (P, Q, T) float32 / float64   one Q x T cost matrix per problem (queries x targets)
//   valid         (P, T)    bool                 which targets (columns) of each problem take part
//   -> query_index  (P, T) int64   slot k holds the k-th matched pair of the problem, in ascending query
//      target_index (P, T) int64   order; -1 past the min(Q, n_valid) pairs
//      ok           (P,)   bool    false when a cost of a valid column is NaN or +-inf; that problem's
//                                  slots are then all -1 (the caller raises: `mask_match` names the
//                                  prediction and image, with one read of the flags on either device)
//
// Each problem is solved exactly (minimum total cost, as scipy.optimize.linear_sum_assignment on the
// valid columns): with n valid targets, n <= Q gives every valid target one distinct query, n > Q gives
// every query one distinct valid target. Ties are broken deterministically (lowest index first), and
// the CPU and CUDA kernels take the same decisions, both accumulating in float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rankseg_fast::linear_assignment {

// Problem sizes, taken from validated inputs.
struct Sizes {
  int64_t problems, queries, targets;
};

// Validates cost (P, Q, T) float32/float64 and valid (P, T) bool on the same device.
Sizes check_inputs(const at::Tensor& cost, const at::Tensor& valid);

}  // namespace rankseg_fast::linear_assignment
