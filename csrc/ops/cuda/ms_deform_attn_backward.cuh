// Multi-scale deformable attention, CUDA backward kernel.
//
// Algorithm: for every point (b, q, h, l, p) inside the early-out region, with attention weight a,
// corner weights w00 = hy*hx, w01 = hy*lx, w10 = ly*hx, w11 = ly*lx, corner values v.. (zero outside
// the map) and upstream gradient g[c] = grad_output[b, q, h*C + c]:
//   grad_value[corner, c]   += a * w_corner * g[c]                          (scatter: atomics)
//   grad_attention_weights   = sum_c g[c] * bilinear[c]
//   grad_loc_x               = W_l * a * sum_c g[c] * (hy * (v01 - v00) + ly * (v11 - v10))[c]
//   grad_loc_y               = H_l * a * sum_c g[c] * (hx * (v10 - v00) + lx * (v11 - v01))[c]
// (d/dloc = size * d/dpixel since pixel = loc * size - 0.5). Points in the early-out region get zero
// location and weight gradients and touch no grad_value.
//
// Thread-to-data mapping: as the forward (see ms_deform_attn_forward.cuh): a group of G = 2^log2_group
// lanes (aligned sub-warp) owns one (b, q, h) and lane i owns the channel vectors v = i, i + G, ...
// of VEC channels. Each lane keeps its first grad_output vector in registers for all points (the only
// one when C <= 32 * VEC) and reloads further ones (C > 32 * VEC) per point. Per point, each lane
// forms its partial sums of the three channel reductions, the group all-reduces them with
// __shfl_xor_sync over the group's lane mask (whether a point is inside is group-uniform: every lane
// reads the same coordinates), and lane 0 stores grad_loc / grad_attn: each (b, q, h, l, p) belongs to
// exactly one group, so those stores need no atomics and every element is written once.
// grad_value is scattered with atomics into an acc_t buffer (float for fp16/bf16/fp32 values, double
// for fp64): per corner and VEC-channel chunk, VEC / 4 16-byte float4 atomics on sm_90+ (float2 or
// scalar when VEC is 2 or 1), VEC scalar atomics on older GPUs and for double; corners outside the
// map issue no atomic. No atomic is skipped for a zero contribution. The launcher takes VEC = 16 bytes
// of acc_t (4 channels for every float-accumulated dtype: one float4 atomic per corner).
//
// Accumulation dtype: float (double for fp64); grad_value of fp16/bf16 values is accumulated in a
// zero-initialised fp32 buffer and cast once by the launcher.
//
// Numerics caveats: the atomics make grad_value's summation order, hence its last bits,
// nondeterministic. The bilinear derivative follows floor(): at an exactly integer pixel coordinate
// it is the one-sided derivative towards x0 + 1 (as in grid_sample and the reference kernel).
#pragma once

#include <cstdint>

#include "../../common/cuda_utils.cuh"
#include "../ms_deform_attn.h"
#include "ms_deform_attn_forward.cuh"

namespace rankseg_fast::ms_deform_attn::cuda_impl {

using rankseg_fast::cuda::atomic_add_vec;
using rankseg_fast::cuda::group_allreduce_sum;
using rankseg_fast::cuda::group_lane_mask;

// Minimum resident blocks per SM asked of ptxas: caps the backward at 80 registers (768 threads per
// SM); ptxas reports no spills at this bound for sm_75 / sm_80 / sm_90, but does at 4 blocks.
constexpr int kBackwardMinBlocks = 3;

// Backward of one point for one VEC-channel chunk: adds this chunk's partial sums of the three
// channel reductions to sums[0] (weight), sums[1], sums[2] (pixel x, y; without the factor a) and
// scatters a * w_corner * g into grad_value. `value_l` / `grad_value_l` point at channel c of the
// level's first token of (b, h).
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void backward_point_chunk(const scalar_t* value_l, acc_t* grad_value_l,
                                                     const BilinearPoint<acc_t>& pt, const acc_t a,
                                                     const acc_t (&g)[VEC], acc_t (&sums)[3]) {
  // Every channel reduction is linear in the corners: with s_ij = sum_c g[c] * v_ij[c],
  //   sum_c g * bilinear = w00 s00 + w01 s01 + w10 s10 + w11 s11,
  //   sum_c g * d/dx     = hy (s01 - s00) + ly (s11 - s10),
  //   sum_c g * d/dy     = hx (s10 - s00) + lx (s11 - s01),
  // so each corner is reduced to one dot product as soon as it arrives.
  acc_t v00[VEC], v01[VEC], v10[VEC], v11[VEC];
  load_corners<VEC>(value_l, pt, v00, v01, v10, v11);
  acc_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    s00 += g[k] * v00[k];
    s01 += g[k] * v01[k];
    s10 += g[k] * v10[k];
    s11 += g[k] * v11[k];
  }
  const acc_t w00 = pt.hy * pt.hx;
  const acc_t w01 = pt.hy * pt.lx;
  const acc_t w10 = pt.ly * pt.hx;
  const acc_t w11 = pt.ly * pt.lx;
  sums[0] += w00 * s00 + w01 * s01 + w10 * s10 + w11 * s11;
  sums[1] += pt.hy * (s01 - s00) + pt.ly * (s11 - s10);
  sums[2] += pt.hx * (s10 - s00) + pt.lx * (s11 - s01);

  // Scatter into grad_value; the corner pointers are formed only for corners inside the map.
  const uint32_t off01 = pt.off00 + pt.col_stride;
  const uint32_t off10 = pt.off00 + pt.row_stride;
  const uint32_t off11 = off10 + pt.col_stride;
  acc_t t[VEC];
  if (pt.ok00) {
    const acc_t aw = a * w00;
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = aw * g[k];
    atomic_add_vec<VEC>(grad_value_l + pt.off00, t);
  }
  if (pt.ok01) {
    const acc_t aw = a * w01;
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = aw * g[k];
    atomic_add_vec<VEC>(grad_value_l + off01, t);
  }
  if (pt.ok10) {
    const acc_t aw = a * w10;
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = aw * g[k];
    atomic_add_vec<VEC>(grad_value_l + off10, t);
  }
  if (pt.ok11) {
    const acc_t aw = a * w11;
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = aw * g[k];
    atomic_add_vec<VEC>(grad_value_l + off11, t);
  }
}

// grad_output (B, Q, H * C), value (B, S, H, C), sampling_locations (B, Q, H, L, P, 2),
// attention_weights (B, Q, H, L, P): contiguous inputs. grad_value (B, S, H, C) in acc_t, zeroed by
// the caller; grad_sampling_locations / grad_attention_weights: contiguous, fully overwritten (by
// lane 0 of each group, whatever C). num_groups = B * Q * H.
template <typename scalar_t, typename coord_t, int VEC>
__global__ void __launch_bounds__(kThreads, kBackwardMinBlocks)
    ms_deform_attn_backward_kernel(const scalar_t* __restrict__ grad_output,
                                   const scalar_t* __restrict__ value,
                                   const coord_t* __restrict__ sampling_locations,
                                   const coord_t* __restrict__ attention_weights,
                                   acc_type_t<scalar_t>* __restrict__ grad_value,
                                   coord_t* __restrict__ grad_sampling_locations,
                                   coord_t* __restrict__ grad_attention_weights,
                                   const LevelShapes levels, const int64_t num_groups,
                                   const int64_t queries_x_heads, const int num_heads,
                                   const int64_t num_keys, const int channels,
                                   const int num_points, const int log2_group) {
  using acc_t = acc_type_t<scalar_t>;
  const int group_size = 1 << log2_group;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (kThreads >> log2_group) +
                        (static_cast<int>(threadIdx.x) >> log2_group);
  // A whole group leaves together, so the group-masked shuffles below stay well formed.
  if (group >= num_groups) return;
  const unsigned mask = group_lane_mask(log2_group);
  const int lane = static_cast<int>(threadIdx.x) & (group_size - 1);
  const int num_vecs = channels / VEC;
  const bool has_chunk = lane < num_vecs;  // false for idle lanes of a group wider than C / VEC

  const int64_t batch = group / queries_x_heads;
  const int head = static_cast<int>(group % num_heads);
  const int32_t hc = num_heads * channels;  // S * H * C < 2^31 (launcher)
  const int64_t bh_offset = batch * num_keys * hc + head * channels;
  const scalar_t* value_bh = value + bh_offset;
  acc_t* grad_value_bh = grad_value + bh_offset;
  const scalar_t* gout = grad_output + group * channels;
  const int num_levels = levels.num_levels;
  const int64_t num_lp = static_cast<int64_t>(num_levels) * num_points;
  const coord_t* loc = sampling_locations + group * num_lp * 2;
  const coord_t* attn = attention_weights + group * num_lp;
  coord_t* grad_loc = grad_sampling_locations + group * num_lp * 2;
  coord_t* grad_attn = grad_attention_weights + group * num_lp;

  // This lane's first grad_output vector, kept in registers across all points.
  const int c_first = lane * VEC;
  acc_t g_first[VEC];
  if (has_chunk) {
    load_vec<VEC>(gout + c_first, g_first);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) g_first[k] = static_cast<acc_t>(0);
  }

  int idx = 0;  // l * num_points + p
  for (int l = 0; l < num_levels; ++l) {
    const int height = levels.height[l];
    const int width = levels.width[l];
    const int32_t level_offset = static_cast<int32_t>(levels.start[l]) * hc;
    const scalar_t* value_l = value_bh + level_offset;
    acc_t* grad_value_l = grad_value_bh + level_offset;
    for (int p = 0; p < num_points; ++p, ++idx) {
      // sums[0]: weight gradient; sums[1], sums[2]: pixel-x / pixel-y gradients without the factor a.
      acc_t sums[3] = {0, 0, 0};
      acc_t a = 0;
      BilinearPoint<acc_t> pt;
      // Group-uniform: all lanes read the same location.
      if (bilinear_point(to_acc<acc_t>(loc[2 * idx]), to_acc<acc_t>(loc[2 * idx + 1]), height,
                         width, hc, pt)) {
        a = to_acc<acc_t>(attn[idx]);
        if (has_chunk) {
          backward_point_chunk<VEC>(value_l + c_first, grad_value_l + c_first, pt, a, g_first,
                                    sums);
          for (int v = lane + group_size; v < num_vecs; v += group_size) {
            const int c = v * VEC;
            acc_t g[VEC];
            load_vec<VEC>(gout + c, g);
            backward_point_chunk<VEC>(value_l + c, grad_value_l + c, pt, a, g, sums);
          }
        }
        group_allreduce_sum(sums, mask, log2_group);
      }
      if (lane == 0) {
        grad_loc[2 * idx] = from_acc<coord_t>(sums[1] * a * static_cast<acc_t>(width));
        grad_loc[2 * idx + 1] = from_acc<coord_t>(sums[2] * a * static_cast<acc_t>(height));
        grad_attn[idx] = from_acc<coord_t>(sums[0]);
      }
    }
  }
}

}  // namespace rankseg_fast::ms_deform_attn::cuda_impl
