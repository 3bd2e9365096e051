// CPU kernel of point_mask_costs.
//
// One task per (prediction l, image b) (at::parallel_for, grain 1), each with its own buffers:
//   1. the bilinear taps of its P points on the prediction grid, computed once and shared by every query;
//   2. its valid targets sampled at the points, t (n, P) (sampled beforehand, one task per GT map for all L
//      point sets: a GT map is much larger than a prediction and is then read from memory once), their sums;
//   3. per block of kQueryBlock queries: x (nq, P) sampled; sigmoid and softplus by ATen's vectorised
//      kernels (single-threaded inside the task); their row sums; x t^T and sigmoid(x) t^T by BLAS;
//   4. the block's costs written into the valid columns (the others stay 0).
// The points are read in the caller's order: mask_match sorts them by y, so consecutive samples read
// neighbouring rows of each map.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../common/checks.h"
#include "../point_mask_costs.h"

namespace rankseg_fast::point_mask_costs {
namespace {

constexpr const char* kOp = "point_mask_costs";
constexpr int64_t kQueryBlock = 16;
constexpr int kMapsAtOnce = 4;

// out[m][p] = the bilinear sample of maps[m] (M maps of map_size elements, consecutive) with taps[p], for
// p < P: the taps of a point are read once for all M maps.
template <int M, typename scalar_t>
void sample_maps(const scalar_t* maps, int64_t map_size, const Taps* taps, int64_t P, float* out) {
  for (int64_t p = 0; p < P; ++p) {
    const Taps& t = taps[p];
    for (int m = 0; m < M; ++m) {
      const scalar_t* map = maps + m * map_size;
      out[m * P + p] = t.weight[0] * static_cast<float>(map[t.offset[0]]) +
                       t.weight[1] * static_cast<float>(map[t.offset[1]]) +
                       t.weight[2] * static_cast<float>(map[t.offset[2]]) +
                       t.weight[3] * static_cast<float>(map[t.offset[3]]);
    }
  }
}

// out (n, P) = the n consecutive maps sampled with taps, kMapsAtOnce maps per pass.
template <typename scalar_t>
void sample_rows(const scalar_t* maps, int64_t n, int64_t map_size, const Taps* taps, int64_t P, float* out) {
  int64_t i = 0;
  for (; i + kMapsAtOnce <= n; i += kMapsAtOnce) {
    sample_maps<kMapsAtOnce>(maps + i * map_size, map_size, taps, P, out + i * P);
  }
  for (; i < n; ++i) sample_maps<1>(maps + i * map_size, map_size, taps, P, out + i * P);
}

// The valid targets of every image, numbered consecutively: image b owns [first[b], first[b + 1]).
struct ValidTargets {
  std::vector<int64_t> image, column, first;
};

ValidTargets list_valid_targets(const bool* valid, int64_t B, int64_t T) {
  ValidTargets v;
  for (int64_t b = 0; b < B; ++b) {
    v.first.push_back(static_cast<int64_t>(v.column.size()));
    for (int64_t j = 0; j < T; ++j) {
      if (valid[b * T + j]) {
        v.image.push_back(b);
        v.column.push_back(j);
      }
    }
  }
  v.first.push_back(static_cast<int64_t>(v.column.size()));
  return v;
}

// sampled (L, N, P): every valid target sampled at the points of every prediction. One task per target, which
// reads its GT map for all L point sets in a row, so each map comes from memory once, not L times.
void sample_targets(const float* target, const float* coords, const Sizes& s, const ValidTargets& v,
                    float* sampled) {
  const int64_t L = s.layers, B = s.batch, P = s.points, N = static_cast<int64_t>(v.column.size());
  const int64_t map_size = s.height * s.width;
  std::vector<Taps> taps(L * B * P);
  at::parallel_for(0, L * B * P, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      taps[i] = bilinear_taps(coords[2 * i], coords[2 * i + 1], s.height, s.width);
    }
  });
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t b = v.image[c];
      const float* map = target + (b * s.targets + v.column[c]) * map_size;
      for (int64_t l = 0; l < L; ++l) {
        sample_maps<1>(map, map_size, taps.data() + (l * B + b) * P, P, sampled + (l * N + c) * P);
      }
    }
  });
}

// pred (L, B, Q, h, w), target (B, T, H, W), valid (B, T), coords (L, B, P, 2), all contiguous; cost (L, B, Q, T)
// zero-filled. First every valid target at every point set (sample_targets), then one task per (l, b).
template <typename scalar_t>
void costs_impl(const scalar_t* pred, const float* target, const bool* valid, const float* coords, const Sizes& s,
                float mask_weight, float dice_weight, float* cost) {
  const int64_t P = s.points, Q = s.queries, T = s.targets;
  const int64_t pred_map = s.pred_height * s.pred_width;
  const float inv_points = 1.0f / static_cast<float>(P);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const ValidTargets v = list_valid_targets(valid, s.batch, T);
  const int64_t N = static_cast<int64_t>(v.column.size());
  if (N == 0 || Q == 0) return;
  at::Tensor sampled = at::empty({s.layers, N, P}, options);
  sample_targets(target, coords, s, v, sampled.mutable_data_ptr<float>());
  at::parallel_for(0, s.layers * s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<Taps> taps(P);
    at::Tensor x = at::empty({kQueryBlock, P}, options), sig = at::empty_like(x), softplus = at::empty_like(x);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t l = task / s.batch, b = task % s.batch;
      const int64_t first = v.first[b], n = v.first[b + 1] - first;
      if (n == 0) continue;
      const float* points = coords + task * P * 2;
      for (int64_t p = 0; p < P; ++p) {
        taps[p] = bilinear_taps(points[2 * p], points[2 * p + 1], s.pred_height, s.pred_width);
      }
      const at::Tensor t = sampled[l].narrow(0, first, n);
      const at::Tensor t_sum = t.sum(1), t_transposed = t.t();
      const float* t_sum_ptr = t_sum.const_data_ptr<float>();
      for (int64_t q0 = 0; q0 < Q; q0 += kQueryBlock) {
        const int64_t nq = std::min(kQueryBlock, Q - q0);
        at::Tensor x_blk = x.narrow(0, 0, nq), sig_blk = sig.narrow(0, 0, nq), sp_blk = softplus.narrow(0, 0, nq);
        sample_rows(pred + (task * Q + q0) * pred_map, nq, pred_map, taps.data(), P, x_blk.mutable_data_ptr<float>());
        at::sigmoid_out(sig_blk, x_blk);
        at::softplus_out(sp_blk, x_blk, 1, 20);
        const at::Tensor sp_sum = sp_blk.sum(1), sig_sum = sig_blk.sum(1);
        const at::Tensor x_dot_t = at::mm(x_blk, t_transposed), sig_dot_t = at::mm(sig_blk, t_transposed);
        const float* xt = x_dot_t.const_data_ptr<float>();
        const float* st = sig_dot_t.const_data_ptr<float>();
        for (int64_t i = 0; i < nq; ++i) {
          const float sp_i = sp_sum.const_data_ptr<float>()[i], sig_i = sig_sum.const_data_ptr<float>()[i];
          float* row = cost + (task * Q + q0 + i) * T;
          for (int64_t k = 0; k < n; ++k) {
            row[v.column[first + k]] = pair_cost(sp_i, xt[i * n + k], sig_i, st[i * n + k], t_sum_ptr[k],
                                                 inv_points, mask_weight, dice_weight);
          }
        }
      }
    }
  });
}

at::Tensor point_mask_costs_cpu(const at::Tensor& pred_masks, const at::Tensor& target_masks,
                                const at::Tensor& target_valid, const at::Tensor& coords, double mask_weight,
                                double dice_weight) {
  const Sizes s = check_inputs(pred_masks, target_masks, target_valid, coords);
  RSF_CHECK_VALUE(pred_masks.device().is_cpu(), kOp, ": the CPU kernel got `pred_masks` on ", pred_masks.device());
  at::Tensor cost = at::zeros({s.layers, s.batch, s.queries, s.targets}, pred_masks.options().dtype(at::kFloat));
  if (cost.numel() == 0) return cost;
  const at::Tensor pred = pred_masks.contiguous(), target = target_masks.contiguous();
  const at::Tensor valid = target_valid.contiguous(), points = coords.contiguous();
  RSF_DISPATCH_PRED_TYPES(pred.scalar_type(), kOp, [&] {
    costs_impl<scalar_t>(pred.const_data_ptr<scalar_t>(), target.const_data_ptr<float>(),
                         valid.const_data_ptr<bool>(), points.const_data_ptr<float>(), s,
                         static_cast<float>(mask_weight), static_cast<float>(dice_weight),
                         cost.mutable_data_ptr<float>());
  });
  return cost;
}

}  // namespace
}  // namespace rankseg_fast::point_mask_costs

TORCH_LIBRARY_IMPL(rankseg_fast, CPU, m) {
  m.impl("point_mask_costs", &rankseg_fast::point_mask_costs::point_mask_costs_cpu);
}
