// CUDA backend of ms_deform_attn and _ms_deform_attn_backward: validation (shared with every backend),
// dtype dispatch, launch configuration and output allocation. The kernels live in
// ms_deform_attn_forward.cuh / ms_deform_attn_backward.cuh.
//
// Dispatch: value dtype in {fp32, fp64, fp16, bf16} x coordinate dtype in {value dtype, fp32}, and a
// channel vector width VEC: 16 bytes of value (8 x fp16/bf16, 4 x fp32, 2 x fp64) when C % VEC == 0
// and every tensor the kernel accesses by vectors is 16-byte aligned, else 1.
// Launch: 256-thread blocks of groups of G = min(32, next_pow2(C / VEC)) lanes, one group per (b, q, h).
// The backward accumulates grad_value in a zeroed fp32 buffer for fp16/bf16 values (cast once at the
// end), directly in the zeroed fp32 / fp64 grad_value otherwise.
// No host synchronisation (beyond what check_inputs needs for metadata living on the GPU), no kernel
// launch for empty problems.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "../../common/checks.h"
#include "../ms_deform_attn.h"
#include "ms_deform_attn_backward.cuh"
#include "ms_deform_attn_forward.cuh"

namespace rankseg_fast::ms_deform_attn {
namespace {

using cuda_impl::kThreads;

constexpr const char* kOp = "ms_deform_attn";
constexpr int kVecBytes = 16;

bool is_aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(bytes) == 0;
}

// log2 of the group size: the smallest power of two >= num_vecs, at most 32 lanes.
int log2_group_size(int64_t num_vecs) {
  int log2 = 0;
  while (log2 < 5 && (int64_t{1} << log2) < num_vecs) ++log2;
  return log2;
}

// Launch geometry shared by both kernels.
struct Launch {
  int64_t num_groups;  // B * Q * H
  int log2_group;
  unsigned int blocks;
};

Launch make_launch(const Sizes& s, int vec) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  RSF_CHECK_VALUE(s.channels <= kIntMax && s.num_heads <= kIntMax &&
                  2 * s.num_levels * s.num_points <= kIntMax,
              kOp, ": channels (", s.channels, "), heads (", s.num_heads, ") and 2 * levels * points (",
              2 * s.num_levels * s.num_points, ") must each fit in int32");
  // The kernels address inside the value of one batch element with 32-bit offsets.
  RSF_CHECK_VALUE(s.num_keys * s.num_heads * s.channels <= kIntMax, kOp,
              ": `value` has ", s.num_keys * s.num_heads * s.channels,
              " elements per batch element (keys * heads * channels); the CUDA kernels support "
              "at most 2^31 - 1");
  Launch launch{};
  launch.num_groups = s.batch * s.num_queries * s.num_heads;
  launch.log2_group = log2_group_size(s.channels / vec);
  const int64_t threads = launch.num_groups << launch.log2_group;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  RSF_CHECK_VALUE(blocks <= kIntMax, kOp, ": batch * queries * heads = ", launch.num_groups,
              " is too large for one launch");
  launch.blocks = static_cast<unsigned int>(blocks);
  return launch;
}

template <typename scalar_t, typename coord_t>
void launch_forward(const at::Tensor& value, const at::Tensor& locations, const at::Tensor& weights,
                    at::Tensor& output, const LevelShapes& levels, const Sizes& s,
                    cudaStream_t stream) {
  constexpr int kVec = kVecBytes / static_cast<int>(sizeof(scalar_t));
  const bool vectorized = s.channels % kVec == 0 && is_aligned(value.const_data_ptr(), kVecBytes) &&
                          is_aligned(output.const_data_ptr(), kVecBytes);
  const Launch launch = make_launch(s, vectorized ? kVec : 1);
  const auto* value_ptr = value.const_data_ptr<scalar_t>();
  const auto* loc_ptr = locations.const_data_ptr<coord_t>();
  const auto* weight_ptr = weights.const_data_ptr<coord_t>();
  auto* out_ptr = output.mutable_data_ptr<scalar_t>();
  const int64_t queries_x_heads = s.num_queries * s.num_heads;
  if (vectorized) {
    cuda_impl::ms_deform_attn_forward_kernel<scalar_t, coord_t, kVec>
        <<<launch.blocks, kThreads, 0, stream>>>(
            value_ptr, loc_ptr, weight_ptr, out_ptr, levels, launch.num_groups, queries_x_heads,
            static_cast<int>(s.num_heads), s.num_keys, static_cast<int>(s.channels),
            static_cast<int>(s.num_points), launch.log2_group);
  } else {
    cuda_impl::ms_deform_attn_forward_kernel<scalar_t, coord_t, 1>
        <<<launch.blocks, kThreads, 0, stream>>>(
            value_ptr, loc_ptr, weight_ptr, out_ptr, levels, launch.num_groups, queries_x_heads,
            static_cast<int>(s.num_heads), s.num_keys, static_cast<int>(s.channels),
            static_cast<int>(s.num_points), launch.log2_group);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename coord_t>
void launch_backward(const at::Tensor& grad_output, const at::Tensor& value,
                     const at::Tensor& locations, const at::Tensor& weights,
                     at::Tensor& grad_value_acc, at::Tensor& grad_locations,
                     at::Tensor& grad_weights, const LevelShapes& levels, const Sizes& s,
                     cudaStream_t stream) {
  using acc_t = rankseg_fast::cuda::acc_type_t<scalar_t>;
  // A lane's channel chunk is one 16-byte vector atomic of the accumulator (4 floats), whatever the
  // value dtype: with 16 bytes of fp16/bf16 values (8 channels) a lane issued two atomics per corner
  // and the launch had half the threads, which made the half-precision backward slower than fp32.
  constexpr int kVec = kVecBytes / static_cast<int>(sizeof(acc_t));
  constexpr int kValueBytes = kVec * static_cast<int>(sizeof(scalar_t));
  const bool vectorized = s.channels % kVec == 0 &&
                          is_aligned(value.const_data_ptr(), kValueBytes) &&
                          is_aligned(grad_output.const_data_ptr(), kValueBytes) &&
                          is_aligned(grad_value_acc.const_data_ptr(), kVecBytes);
  const Launch launch = make_launch(s, vectorized ? kVec : 1);
  const auto* grad_out_ptr = grad_output.const_data_ptr<scalar_t>();
  const auto* value_ptr = value.const_data_ptr<scalar_t>();
  const auto* loc_ptr = locations.const_data_ptr<coord_t>();
  const auto* weight_ptr = weights.const_data_ptr<coord_t>();
  auto* grad_value_ptr = grad_value_acc.mutable_data_ptr<acc_t>();
  auto* grad_loc_ptr = grad_locations.mutable_data_ptr<coord_t>();
  auto* grad_weight_ptr = grad_weights.mutable_data_ptr<coord_t>();
  const int64_t queries_x_heads = s.num_queries * s.num_heads;
  if (vectorized) {
    cuda_impl::ms_deform_attn_backward_kernel<scalar_t, coord_t, kVec>
        <<<launch.blocks, kThreads, 0, stream>>>(
            grad_out_ptr, value_ptr, loc_ptr, weight_ptr, grad_value_ptr, grad_loc_ptr,
            grad_weight_ptr, levels, launch.num_groups, queries_x_heads,
            static_cast<int>(s.num_heads), s.num_keys, static_cast<int>(s.channels),
            static_cast<int>(s.num_points), launch.log2_group);
  } else {
    cuda_impl::ms_deform_attn_backward_kernel<scalar_t, coord_t, 1>
        <<<launch.blocks, kThreads, 0, stream>>>(
            grad_out_ptr, value_ptr, loc_ptr, weight_ptr, grad_value_ptr, grad_loc_ptr,
            grad_weight_ptr, levels, launch.num_groups, queries_x_heads,
            static_cast<int>(s.num_heads), s.num_keys, static_cast<int>(s.channels),
            static_cast<int>(s.num_points), launch.log2_group);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor ms_deform_attn_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index,
                               const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights) {
  LevelShapes levels{};
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, &levels);
  RSF_CHECK_VALUE(value.is_cuda(), kOp, ": the CUDA kernel got `value` on ", value.device());
  const c10::cuda::CUDAGuard device_guard(value.device());

  at::Tensor output =
      at::empty({s.batch, s.num_queries, s.num_heads * s.channels}, value.options());
  if (output.numel() == 0) return output;

  const at::Tensor value_c = value.contiguous();
  const at::Tensor loc_c = sampling_locations.contiguous();
  const at::Tensor weight_c = attention_weights.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  dispatch_dtypes(value_c, loc_c, [&]<typename scalar_t, typename coord_t>() {
    launch_forward<scalar_t, coord_t>(value_c, loc_c, weight_c, output, levels, s, stream);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  LevelShapes levels{};
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, &levels);
  check_grad_output(grad_output, value, s);
  RSF_CHECK_VALUE(value.is_cuda(), kOp, ": the CUDA kernel got `value` on ", value.device());
  const c10::cuda::CUDAGuard device_guard(value.device());

  const at::ScalarType value_dtype = value.scalar_type();
  const bool half_value = value_dtype == at::kHalf || value_dtype == at::kBFloat16;
  // fp16 / bf16 gradients are accumulated in fp32 and cast at the end.
  const at::ScalarType acc_dtype = half_value ? at::kFloat : value_dtype;
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_dtype));

  const at::Tensor& coords = sampling_locations;
  at::Tensor grad_locations;
  at::Tensor grad_weights;
  const bool work = attention_weights.numel() > 0 && s.channels > 0;
  if (work) {
    // Contiguous (options() carries no memory format); the kernel writes every element.
    grad_locations = at::empty(coords.sizes(), coords.options());
    grad_weights = at::empty(attention_weights.sizes(), attention_weights.options());
  } else {
    // Nothing to launch: no point, or no channel (then every gradient of the points is zero).
    grad_locations = at::zeros(coords.sizes(), coords.options());
    grad_weights = at::zeros(attention_weights.sizes(), attention_weights.options());
  }

  if (work) {
    const at::Tensor grad_output_c = grad_output.contiguous();
    const at::Tensor value_c = value.contiguous();
    const at::Tensor loc_c = sampling_locations.contiguous();
    const at::Tensor weight_c = attention_weights.contiguous();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtypes(value_c, loc_c, [&]<typename scalar_t, typename coord_t>() {
      launch_backward<scalar_t, coord_t>(grad_output_c, value_c, loc_c, weight_c, grad_value_acc,
                                         grad_locations, grad_weights, levels, s, stream);
    });
  }

  at::Tensor grad_value = half_value ? grad_value_acc.to(value_dtype) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace
}  // namespace rankseg_fast::ms_deform_attn

TORCH_LIBRARY_IMPL(rankseg_fast, CUDA, m) {
  m.impl("ms_deform_attn", &rankseg_fast::ms_deform_attn::ms_deform_attn_cuda);
  m.impl("_ms_deform_attn_backward", &rankseg_fast::ms_deform_attn::ms_deform_attn_backward_cuda);
}
