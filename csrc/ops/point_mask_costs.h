// point_mask_costs: the mask and dice costs of the Hungarian matcher for every (prediction, image),
// sampled at shared points, in one call. The contract shared by the schema, the CPU and the CUDA kernels.
//
//   pred_masks    (L, B, Q, h, w)  float32 / float16 / bfloat16   predicted mask logits
//   target_masks  (B, T, H, W)     float32                         GT masks (fractional values allowed)
//   target_valid  (B, T)           bool                            which targets take part
//   coords        (L, B, P, 2)     float32                         (x, y) points in [0, 1]^2, P >= 1
//   mask_weight, dice_weight       floats
//   -> cost       (L, B, Q, T)     float32
//
// With x_p = bilinear sample of pred_masks[l, b, q] and t_p of target_masks[b, j] at coords[l, b, p]
// (grid_sample semantics: align_corners=False, zero padding outside the map), and the sums over p:
//   cost[l, b, q, j] = mask_weight * (sum softplus(x) - sum x t) / P
//                    + dice_weight * (1 - (2 sum sigmoid(x) t + 1) / (sum sigmoid(x) + sum t + 1))
// for valid targets, and 0 in the columns of invalid ones. Sampled values and every sum are fp32.
// A non-finite prediction makes the costs of its query non-finite (the solver then reports it).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

// Dispatch over the dtypes of pred_masks that the kernels take (float32, float16, bfloat16).
#define RSF_DISPATCH_PRED_TYPES(TYPE, NAME, ...)                        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace rankseg_fast::point_mask_costs {

// Sizes of a validated call.
struct Sizes {
  int64_t layers, batch, queries, pred_height, pred_width;  // L, B, Q, h, w
  int64_t targets, height, width, points;                   // T, H, W, P
};

// Validates every input (ranks, shapes, dtypes, devices, P >= 1, 32-bit map offsets) and returns the sizes.
Sizes check_inputs(const at::Tensor& pred_masks, const at::Tensor& target_masks, const at::Tensor& target_valid,
                   const at::Tensor& coords);

// The four taps of a bilinear sample, in the order nw, ne, sw, se: offsets into one (height, width) map and
// weights. A tap outside the map (or any tap of a non-finite point) has weight 0 and offset 0, so summing
// weight * map[offset] over the four taps is grid_sample's zero-padded value for a finite map.
struct Taps {
  int32_t offset[4];
  float weight[4];
};

// Taps of the normalised point (cx, cy) on a (height, width) map; pixel centres sit at (i + 0.5) / size.
C10_HOST_DEVICE inline Taps bilinear_taps(float cx, float cy, int64_t height, int64_t width) {
  const float ix = cx * static_cast<float>(width) - 0.5f;
  const float iy = cy * static_cast<float>(height) - 0.5f;
  const float x0 = ::floorf(ix), y0 = ::floorf(iy);
  const float fx = ix - x0, fy = iy - y0;
  const float xs[2] = {x0, x0 + 1.0f}, ys[2] = {y0, y0 + 1.0f};
  const float wx[2] = {1.0f - fx, fx}, wy[2] = {1.0f - fy, fy};
  // Float comparisons first (false for NaN), so no out-of-range float is ever converted to an integer.
  const float max_x = static_cast<float>(width - 1), max_y = static_cast<float>(height - 1);
  Taps taps;
  for (int k = 0; k < 4; ++k) {
    const float x = xs[k & 1], y = ys[k >> 1];
    const bool inside = x >= 0.0f && x <= max_x && y >= 0.0f && y <= max_y;
    taps.offset[k] = inside ? static_cast<int32_t>(y) * static_cast<int32_t>(width) + static_cast<int32_t>(x) : 0;
    taps.weight[k] = inside ? wx[k & 1] * wy[k >> 1] : 0.0f;
  }
  return taps;
}

// The cost of one (query, target) pair from its sums (see the contract above).
C10_HOST_DEVICE inline float pair_cost(float softplus_sum, float x_dot_t, float sigmoid_sum, float sigmoid_dot_t,
                                       float target_sum, float inv_points, float mask_weight, float dice_weight) {
  const float mask = (softplus_sum - x_dot_t) * inv_points;
  const float dice = 1.0f - (2.0f * sigmoid_dot_t + 1.0f) / (sigmoid_sum + target_sum + 1.0f);
  return mask_weight * mask + dice_weight * dice;
}

}  // namespace rankseg_fast::point_mask_costs
