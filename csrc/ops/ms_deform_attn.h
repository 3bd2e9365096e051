// Multi-scale deformable attention: the contract shared by the schema, the CPU and the CUDA kernels.
//
//   value               (B, S, H, C)        S = sum_l H_l * W_l tokens of all levels, level-major
//   spatial_shapes      (L, 2) int64        (H_l, W_l) per level; CPU or the value's device
//   level_start_index   (L,)   int64        exclusive prefix sum of H_l * W_l
//   sampling_locations  (B, Q, H, L, P, 2)  (x, y) in [0, 1] of the level's image; outside = zero padding
//   attention_weights   (B, Q, H, L, P)
//   -> output           (B, Q, H * C)
//
// Bilinear sampling with the align_corners=False convention: pixel coordinate = loc * size - 0.5.
// value is fp32/fp64/fp16/bf16; sampling_locations and attention_weights share one dtype, either the
// value's dtype or fp32 (so AMP users keep fp32 coordinates next to half-precision values).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rankseg_fast::ms_deform_attn {

constexpr int64_t kMaxLevels = 16;

// Per-level geometry, read once on the host and passed to kernels by value (no device copy).
struct LevelShapes {
  int32_t num_levels;
  int32_t height[kMaxLevels];
  int32_t width[kMaxLevels];
  int64_t start[kMaxLevels];
};

// Problem sizes, taken from validated inputs.
struct Sizes {
  int64_t batch, num_keys, num_heads, channels, num_queries, num_levels, num_points;
};

// Validates every input (ranks, sizes, dtypes, devices, level metadata vs the value length) and returns
// the sizes and the level geometry. If the metadata tensors live on a GPU this costs one small
// device-to-host copy; pass them on the CPU to avoid it.
Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, LevelShapes* levels);

// Validates grad_output (B, Q, H * C) against the forward sizes and the value's dtype and device.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const Sizes& sizes);

// Runs fn.template operator()<scalar_t, coord_t>() for the value dtype and the coordinate dtype (the
// value's own dtype, or fp32 next to a lower-precision value); check_inputs has validated the pair.
template <typename Fn>
void dispatch_dtypes(const at::Tensor& value, const at::Tensor& locations, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn", [&] {
    if (locations.scalar_type() == value.scalar_type()) {
      fn.template operator()<scalar_t, scalar_t>();
    } else {
      fn.template operator()<scalar_t, float>();
    }
  });
}

}  // namespace rankseg_fast::ms_deform_attn
