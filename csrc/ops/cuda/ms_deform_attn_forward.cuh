// Multi-scale deformable attention, CUDA forward kernel (+ the bilinear set-up the backward reuses).
//
// Algorithm: out[b, q, h*C + c] = sum_{l, p} w[b,q,h,l,p] * bilinear(value[b, level l, h, c], x, y)
// with x = loc_x * W_l - 0.5, y = loc_y * H_l - 0.5 (align_corners=False) and zero padding; a point
// with x <= -1, x >= W_l, y <= -1 or y >= H_l (or a NaN coordinate) contributes nothing.
//
// Thread-to-data mapping: a "group" of G = 2^log2_group consecutive lanes (G <= 32, aligned inside a
// warp) owns one (b, q, h); lane i owns the channel vectors [v*VEC, v*VEC + VEC) for v = i, i + G, ...
// below C / VEC (one vector per lane whenever C <= 32 * VEC). VEC is a template parameter: 16 bytes of
// `value` (8 x fp16/bf16, 4 x fp32, 2 x fp64) when C % VEC == 0 and the pointers are 16-byte aligned,
// else 1 (the launcher decides). Every lane recomputes the coordinates and the four corner weights of
// each point (the loads of the locations / weights are broadcasts within the group), gathers the four
// corners with one vector load each (corners outside the map are skipped), accumulates in registers
// and writes its output vector once. Lanes need no communication in the forward.
//
// Accumulation dtype: float for fp16/bf16/fp32 values, double for fp64 (acc_type_t); locations and
// weights are converted to that type before any arithmetic.
//
// Numerics caveats: the pixel coordinate is computed as loc * size - 0.5 in the accumulation type (the
// compiler may fuse it into one FMA), which can differ from grid_sample's ((2 loc - 1 + 1) * size - 1)/2
// by an ulp; fp16 / bf16 coordinates (when the caller passes them) are only as precise as their dtype.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../../common/cuda_utils.cuh"
#include "../ms_deform_attn.h"

namespace rankseg_fast::ms_deform_attn::cuda_impl {

using rankseg_fast::cuda::acc_type_t;
using rankseg_fast::cuda::from_acc;
using rankseg_fast::cuda::load_vec;
using rankseg_fast::cuda::store_vec;
using rankseg_fast::cuda::to_acc;

// Threads per block of both kernels; a multiple of 32, so every group lies inside one warp.
constexpr int kThreads = 256;
// Minimum resident blocks per SM asked of ptxas: caps the forward at 64 registers per thread (1024
// resident threads per SM); ptxas reports no spills at this bound for sm_75 / sm_80 / sm_90.
constexpr int kForwardMinBlocks = 4;

// Geometry of one sampling point on one level.
template <typename acc_t>
struct BilinearPoint {
  acc_t lx, ly;          // x - x0, y - y0, in [0, 1)
  acc_t hx, hy;          // 1 - lx, 1 - ly
  // Element offsets from the level's first token of one (b, h), in wrapping uint32 arithmetic: the
  // launcher checks S * H * C < 2^31, so the offset of every in-map corner is exact (off00 itself
  // wraps around when y0 or x0 is -1; it is then used only through the in-map corners it leads to).
  uint32_t off00;        // corner (y0, x0): (y0 * W + x0) * H * C
  uint32_t col_stride;   // from corner (., x0) to (., x1): H * C
  uint32_t row_stride;   // from corner (y0, .) to (y1, .): W * H * C
  bool ok00, ok01, ok10, ok11;  // corner (y0|y1, x0|x1) lies inside the map
};

template <typename acc_t>
__device__ __forceinline__ acc_t floor_acc(acc_t v) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return ::floor(v);
  } else {
    return ::floorf(v);
  }
}

// Computes the geometry of the point (loc_x, loc_y) on a level of size height x width whose tokens are
// hc = H * C elements apart. Returns false, leaving `pt` unset, when the point contributes nothing
// (the early-out region, NaN included); then no corner may be read.
template <typename acc_t>
__device__ __forceinline__ bool bilinear_point(acc_t loc_x, acc_t loc_y, int height, int width,
                                               int32_t hc, BilinearPoint<acc_t>& pt) {
  const acc_t w = static_cast<acc_t>(width);
  const acc_t h = static_cast<acc_t>(height);
  const acc_t x = loc_x * w - static_cast<acc_t>(0.5);
  const acc_t y = loc_y * h - static_cast<acc_t>(0.5);
  // Written so that NaN fails the test.
  if (!(x > static_cast<acc_t>(-1) && y > static_cast<acc_t>(-1) && x < w && y < h)) return false;
  const acc_t xf = floor_acc(x);
  const acc_t yf = floor_acc(y);
  const int x0 = static_cast<int>(xf);  // in [-1, width - 1]
  const int y0 = static_cast<int>(yf);  // in [-1, height - 1]
  pt.lx = x - xf;
  pt.ly = y - yf;
  pt.hx = static_cast<acc_t>(1) - pt.lx;
  pt.hy = static_cast<acc_t>(1) - pt.ly;
  pt.col_stride = static_cast<uint32_t>(hc);
  pt.row_stride = static_cast<uint32_t>(width) * static_cast<uint32_t>(hc);
  // y0 * width + x0 lies in [-width - 1, S - 1]: no int32 overflow.
  pt.off00 = static_cast<uint32_t>(y0 * width + x0) * static_cast<uint32_t>(hc);
  // (x0 < width and y0 < height only matter if the size is not exact in acc_t, i.e. > 2^24 in float.)
  const bool x0_in = x0 >= 0 && x0 < width, x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0 && y0 < height, y1_in = y0 + 1 < height;
  pt.ok00 = y0_in && x0_in;
  pt.ok01 = y0_in && x1_in;
  pt.ok10 = y1_in && x0_in;
  pt.ok11 = y1_in && x1_in;
  return true;
}

// Loads VEC channels of one corner (as acc_t), or zeros when the corner lies outside the map.
// `base` points at channel c of the level's first token; `base + off` is VEC-aligned when ok.
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_corner(const scalar_t* base, uint32_t off, bool ok,
                                            acc_t (&v)[VEC]) {
  if (ok) {
    load_vec<VEC>(base + off, v);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = static_cast<acc_t>(0);
  }
}

// Loads the four corners of a point (zeros outside the map).
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_corners(const scalar_t* base, const BilinearPoint<acc_t>& pt,
                                             acc_t (&v00)[VEC], acc_t (&v01)[VEC],
                                             acc_t (&v10)[VEC], acc_t (&v11)[VEC]) {
  const uint32_t off01 = pt.off00 + pt.col_stride;
  const uint32_t off10 = pt.off00 + pt.row_stride;
  const uint32_t off11 = off10 + pt.col_stride;
  load_corner<VEC>(base, pt.off00, pt.ok00, v00);
  load_corner<VEC>(base, off01, pt.ok01, v01);
  load_corner<VEC>(base, off10, pt.ok10, v10);
  load_corner<VEC>(base, off11, pt.ok11, v11);
}

// value (B, S, H, C), sampling_locations (B, Q, H, L, P, 2), attention_weights (B, Q, H, L, P),
// output (B, Q, H * C); all contiguous. num_groups = B * Q * H; queries_x_heads = Q * H.
template <typename scalar_t, typename coord_t, int VEC>
__global__ void __launch_bounds__(kThreads, kForwardMinBlocks)
    ms_deform_attn_forward_kernel(const scalar_t* __restrict__ value,
                                  const coord_t* __restrict__ sampling_locations,
                                  const coord_t* __restrict__ attention_weights,
                                  scalar_t* __restrict__ output, const LevelShapes levels,
                                  const int64_t num_groups, const int64_t queries_x_heads,
                                  const int num_heads, const int64_t num_keys, const int channels,
                                  const int num_points, const int log2_group) {
  using acc_t = acc_type_t<scalar_t>;
  const int group_size = 1 << log2_group;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (kThreads >> log2_group) +
                        (static_cast<int>(threadIdx.x) >> log2_group);
  if (group >= num_groups) return;
  const int lane = static_cast<int>(threadIdx.x) & (group_size - 1);
  const int num_vecs = channels / VEC;
  if (lane >= num_vecs) return;  // idle lane of a group wider than C / VEC

  const int64_t batch = group / queries_x_heads;
  const int head = static_cast<int>(group % num_heads);
  const int32_t hc = num_heads * channels;  // S * H * C < 2^31 (launcher)
  const scalar_t* value_bh = value + batch * num_keys * hc + head * channels;
  const int num_levels = levels.num_levels;
  const int64_t num_lp = static_cast<int64_t>(num_levels) * num_points;
  const coord_t* loc = sampling_locations + group * num_lp * 2;
  const coord_t* attn = attention_weights + group * num_lp;
  scalar_t* out = output + group * channels;

  for (int v = lane; v < num_vecs; v += group_size) {
    const int c = v * VEC;
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = static_cast<acc_t>(0);

    int idx = 0;  // l * num_points + p
    for (int l = 0; l < num_levels; ++l) {
      const int height = levels.height[l];
      const int width = levels.width[l];
      const scalar_t* value_l = value_bh + (static_cast<int32_t>(levels.start[l]) * hc + c);
      for (int p = 0; p < num_points; ++p, ++idx) {
        BilinearPoint<acc_t> pt;
        if (!bilinear_point(to_acc<acc_t>(loc[2 * idx]), to_acc<acc_t>(loc[2 * idx + 1]), height,
                            width, hc, pt)) {
          continue;
        }
        const acc_t a = to_acc<acc_t>(attn[idx]);
        acc_t v00[VEC], v01[VEC], v10[VEC], v11[VEC];
        load_corners<VEC>(value_l, pt, v00, v01, v10, v11);
        const acc_t aw00 = a * pt.hy * pt.hx;
        const acc_t aw01 = a * pt.hy * pt.lx;
        const acc_t aw10 = a * pt.ly * pt.hx;
        const acc_t aw11 = a * pt.ly * pt.lx;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          acc[k] += aw00 * v00[k] + aw01 * v01[k] + aw10 * v10[k] + aw11 * v11[k];
        }
      }
    }
    store_vec<VEC>(out + c, acc);
  }
}

}  // namespace rankseg_fast::ms_deform_attn::cuda_impl
