// CUDA kernel of point_mask_costs: point sampling, sigmoid / softplus and the two cost GEMMs in one pass,
// without materialising the (L, B, Q, P) samples.
//
// Grid: x = prediction-image pair (l, b), y = tile of kTileQ queries, z = tile of kTileT target columns;
// 256 threads. A block whose target tile holds no valid target exits at once (its columns stay 0).
// The block walks the P points in chunks of kChunk:
//   1. one thread per point computes the chunk's bilinear taps on the prediction grid and on the GT grid;
//   2. every warp samples one query map (or one GT map) at the chunk's 32 consecutive points (the points
//      are sorted by y in mask_match, so a warp reads a few neighbouring rows), keeps x, sigmoid(x) and t in
//      shared memory and adds softplus(x), sigmoid(x) and t to per-thread row sums;
//   3. each thread accumulates a 4 x 4 (query, target) tile of x t^T and sigmoid(x) t^T from shared memory.
// The row sums are reduced across each warp at the end and every thread writes its 16 costs.
// Points past P, queries past Q and invalid or absent targets contribute exact zeros. Accumulation is fp32.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../../common/checks.h"
#include "../../common/cuda_utils.cuh"
#include "../point_mask_costs.h"

namespace rankseg_fast::point_mask_costs {
namespace {

constexpr const char* kOp = "point_mask_costs";
constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kTileQ = 64, kTileT = 64, kChunk = 32;  // kChunk = warp size: one lane per point
constexpr int kMicro = 4;                             // each thread: kMicro queries x kMicro targets
constexpr int kRowsPerWarp = kTileQ / kWarps;         // maps sampled per warp and chunk (queries or targets)
constexpr int kStride = kTileQ + 4;                   // shared row stride: 16-byte aligned, fewer conflicts
static_assert(kTileQ == kTileT && kTileQ / kMicro * (kTileT / kMicro) == kThreads, "tile / thread layout");

// Bilinear sample of one map with the taps of one point (0 where every tap is outside).
template <typename scalar_t>
__device__ __forceinline__ float sample(const scalar_t* __restrict__ map, const Taps& taps) {
  float value = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) value += taps.weight[k] * cuda::to_acc<float>(map[taps.offset[k]]);
  return value;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 2)
    point_mask_costs_kernel(const scalar_t* __restrict__ pred, const float* __restrict__ target,
                            const bool* __restrict__ valid, const float* __restrict__ coords, Sizes s,
                            float mask_weight, float dice_weight, float* __restrict__ cost) {
  __shared__ __align__(16) float x_tile[kChunk][kStride];
  __shared__ __align__(16) float sig_tile[kChunk][kStride];
  __shared__ __align__(16) float t_tile[kChunk][kStride];
  __shared__ Taps pred_taps[kChunk], target_taps[kChunk];
  __shared__ bool column_valid[kTileT];
  __shared__ float softplus_sum[kTileQ], sigmoid_sum[kTileQ], target_sum[kTileT];

  const int64_t pair = blockIdx.x, b = pair % s.batch;
  const int q0 = blockIdx.y * kTileQ, t0 = blockIdx.z * kTileT;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  int any_valid = 0;
  if (tid < kTileT) {
    const bool v = t0 + tid < s.targets && valid[b * s.targets + t0 + tid];
    column_valid[tid] = v;
    any_valid = v;
  }
  if (!__syncthreads_or(any_valid)) return;

  // This thread samples rows warp + kWarps * k (k < kRowsPerWarp) of the query tile and of the target tile.
  const int64_t pred_size = s.pred_height * s.pred_width, target_size = s.height * s.width;
  const scalar_t* query_maps = pred + (pair * s.queries + q0 + warp) * pred_size;
  const float* target_maps = target + (b * s.targets + t0 + warp) * target_size;
  float softplus_acc[kRowsPerWarp] = {}, sigmoid_acc[kRowsPerWarp] = {}, target_acc[kRowsPerWarp] = {};
  float x_dot_t[kMicro][kMicro] = {}, sig_dot_t[kMicro][kMicro] = {};
  const int my_q = (tid / (kTileT / kMicro)) * kMicro, my_t = (tid % (kTileT / kMicro)) * kMicro;
  const float* points = coords + pair * s.points * 2;

  for (int64_t p0 = 0; p0 < s.points; p0 += kChunk) {
    const int64_t p = p0 + lane;
    const bool in_range = p < s.points;
    if (tid < 2 * kChunk) {
      const float cx = in_range ? points[2 * p] : 0.0f, cy = in_range ? points[2 * p + 1] : 0.0f;
      if (tid < kChunk) {
        pred_taps[lane] = bilinear_taps(cx, cy, s.pred_height, s.pred_width);
      } else {
        target_taps[lane] = bilinear_taps(cx, cy, s.height, s.width);
      }
    }
    __syncthreads();
    const Taps my_pred_taps = pred_taps[lane], my_target_taps = target_taps[lane];
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
      const int row = warp + kWarps * k;
      float x = 0.0f, sig = 0.0f, t = 0.0f;
      if (in_range && q0 + row < s.queries) {
        x = sample(query_maps + kWarps * k * pred_size, my_pred_taps);
        // One exp for both: e = exp(-|x|); sigmoid = 1/(1+e) or e/(1+e); softplus = max(x, 0) + log1p(e).
        const float e = expf(-fabsf(x));
        const float inv = 1.0f / (1.0f + e);
        sig = x >= 0.0f ? inv : e * inv;
        softplus_acc[k] += fmaxf(x, 0.0f) + log1pf(e);
        sigmoid_acc[k] += sig;
      }
      if (in_range && column_valid[row]) {
        t = sample(target_maps + kWarps * k * target_size, my_target_taps);
        target_acc[k] += t;
      }
      x_tile[lane][row] = x;
      sig_tile[lane][row] = sig;
      t_tile[lane][row] = t;
    }
    __syncthreads();
#pragma unroll 4
    for (int i = 0; i < kChunk; ++i) {
      const float4 xv = *reinterpret_cast<const float4*>(&x_tile[i][my_q]);
      const float4 sv = *reinterpret_cast<const float4*>(&sig_tile[i][my_q]);
      const float4 tv = *reinterpret_cast<const float4*>(&t_tile[i][my_t]);
      const float xs[kMicro] = {xv.x, xv.y, xv.z, xv.w}, ss[kMicro] = {sv.x, sv.y, sv.z, sv.w};
      const float ts[kMicro] = {tv.x, tv.y, tv.z, tv.w};
#pragma unroll
      for (int a = 0; a < kMicro; ++a) {
#pragma unroll
        for (int c = 0; c < kMicro; ++c) {
          x_dot_t[a][c] = fmaf(xs[a], ts[c], x_dot_t[a][c]);
          sig_dot_t[a][c] = fmaf(ss[a], ts[c], sig_dot_t[a][c]);
        }
      }
    }
    __syncthreads();  // the next chunk overwrites the taps and tiles
  }

  cuda::group_allreduce_sum(softplus_acc, 0xffffffffu, 5);
  cuda::group_allreduce_sum(sigmoid_acc, 0xffffffffu, 5);
  cuda::group_allreduce_sum(target_acc, 0xffffffffu, 5);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
      const int row = warp + kWarps * k;
      softplus_sum[row] = softplus_acc[k];
      sigmoid_sum[row] = sigmoid_acc[k];
      target_sum[row] = target_acc[k];
    }
  }
  __syncthreads();
  const float inv_points = 1.0f / static_cast<float>(s.points);
#pragma unroll
  for (int a = 0; a < kMicro; ++a) {
    const int q = q0 + my_q + a;
    if (q >= s.queries) break;
    float* row = cost + (pair * s.queries + q) * s.targets;
#pragma unroll
    for (int c = 0; c < kMicro; ++c) {
      const int column = my_t + c;
      if (!column_valid[column]) continue;  // also false past T
      row[t0 + column] = pair_cost(softplus_sum[my_q + a], x_dot_t[a][c], sigmoid_sum[my_q + a], sig_dot_t[a][c],
                                   target_sum[column], inv_points, mask_weight, dice_weight);
    }
  }
}

at::Tensor point_mask_costs_cuda(const at::Tensor& pred_masks, const at::Tensor& target_masks,
                                 const at::Tensor& target_valid, const at::Tensor& coords, double mask_weight,
                                 double dice_weight) {
  const Sizes s = check_inputs(pred_masks, target_masks, target_valid, coords);
  RSF_CHECK_VALUE(pred_masks.is_cuda(), kOp, ": the CUDA kernel got `pred_masks` on ", pred_masks.device());
  const c10::cuda::CUDAGuard device_guard(pred_masks.device());
  at::Tensor cost = at::zeros({s.layers, s.batch, s.queries, s.targets}, pred_masks.options().dtype(at::kFloat));
  if (cost.numel() == 0) return cost;
  const int64_t pairs = s.layers * s.batch;
  const int64_t query_tiles = (s.queries + kTileQ - 1) / kTileQ, target_tiles = (s.targets + kTileT - 1) / kTileT;
  RSF_CHECK_VALUE(pairs <= std::numeric_limits<int32_t>::max() && query_tiles <= 65535 && target_tiles <= 65535,
                  kOp, ": too many (layers x batch) pairs, queries or targets for one launch: ", pairs, ", ",
                  s.queries, ", ", s.targets);
  const at::Tensor pred = pred_masks.contiguous(), target = target_masks.contiguous();
  const at::Tensor valid = target_valid.contiguous(), points = coords.contiguous();
  const dim3 grid(static_cast<unsigned>(pairs), static_cast<unsigned>(query_tiles),
                  static_cast<unsigned>(target_tiles));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  RSF_DISPATCH_PRED_TYPES(pred.scalar_type(), kOp, [&] {
    point_mask_costs_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        pred.const_data_ptr<scalar_t>(), target.const_data_ptr<float>(), valid.const_data_ptr<bool>(),
        points.const_data_ptr<float>(), s, static_cast<float>(mask_weight), static_cast<float>(dice_weight),
        cost.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return cost;
}

}  // namespace
}  // namespace rankseg_fast::point_mask_costs

TORCH_LIBRARY_IMPL(rankseg_fast, CUDA, m) {
  m.impl("point_mask_costs", &rankseg_fast::point_mask_costs::point_mask_costs_cuda);
}
