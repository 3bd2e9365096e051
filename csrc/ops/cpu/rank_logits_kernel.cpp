// CPU kernels of rank_logits, rank_scatter and their backwards.
//
// Ranking: per image, std::partial_sort of the class indices under a strict total order: higher score
// first, NaN above every number, equal scores (and NaN vs NaN) by the lower class index. That is
// exactly the order of the reference's stable descending torch.sort. Scores are compared in fp64
// (exact for every float input dtype).
//
// rank_logits forward: rows (n, b, q) split across threads; a row gathers its k+1 logits into a local
// buffer, then two passes (mean, then the biased variance of the centred values) in at::opmath_type
// (fp32 for fp16/bf16/fp32, fp64 for fp64), then the per-rank affine. The row sums are `omp simd`
// reductions (several partial sums, so their rounding differs from a sequential sum by a few ulps).
// Backward: rows are cut into fixed chunks of kChunkRows; every chunk writes the class-order gradient
// of its rows (zero outside the top-k) and its own partial sums of grad_weight / grad_bias, which are
// then added in chunk order: the result does not depend on the number of threads.
// rank_scatter / its backward: a plain scatter / gather per row, split across threads.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

#include "../../common/checks.h"
#include "../rank_logits.h"

namespace rankseg_fast::rank_logits {
namespace {

constexpr int64_t kChunkRows = 256;

// True when class a ranks before class b (see the header comment).
inline bool ranks_before(const double* key, int64_t a, int64_t b) {
  const double ka = key[a], kb = key[b];
  const bool nan_a = std::isnan(ka), nan_b = std::isnan(kb);
  if (nan_a || nan_b) return nan_a && (!nan_b || a < b);
  return ka > kb || (ka == kb && a < b);
}

// (B, k+1) int64: the k best classes of each image, then K.
at::Tensor rank_order_cpu(const at::Tensor& scores, const Sizes& s) {
  const at::Tensor keys = scores.to(at::kDouble).contiguous();
  at::Tensor rank_index = at::empty({s.batch, s.ranks()}, scores.options().dtype(at::kLong));
  const double* key = keys.const_data_ptr<double>();
  int64_t* out = rank_index.mutable_data_ptr<int64_t>();
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(s.classes);
    for (int64_t b = begin; b < end; ++b) {
      const double* row = key + b * s.classes;
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + s.k, order.end(),
                        [row](int64_t x, int64_t y) { return ranks_before(row, x, y); });
      std::copy(order.begin(), order.begin() + s.k, out + b * s.ranks());
      out[b * s.ranks() + s.k] = s.classes;
    }
  });
  return rank_index;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& logits, const at::Tensor& rank_index, const at::Tensor& weight,
                  const at::Tensor& bias, double eps, const Sizes& s, at::Tensor& ranked,
                  at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t* index = rank_index.const_data_ptr<int64_t>();
  const acc_t* w = weight.const_data_ptr<acc_t>();
  const acc_t* beta = bias.const_data_ptr<acc_t>();
  scalar_t* out = ranked.mutable_data_ptr<scalar_t>();
  acc_t* mean_out = mean.mutable_data_ptr<acc_t>();
  acc_t* rstd_out = rstd.mutable_data_ptr<acc_t>();
  const int64_t R = s.ranks(), C = s.classes + 1, BQ = s.batch * s.queries;
  at::parallel_for(0, s.rows(), 64, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> v(R);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t* idx = index + ((row % BQ) / s.queries) * R;
      const scalar_t* xr = x + row * C;
      for (int64_t r = 0; r < R; ++r) v[r] = static_cast<acc_t>(xr[idx[r]]);
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t r = 0; r < R; ++r) sum += v[r];
      const acc_t mu = sum / R;
      acc_t sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t r = 0; r < R; ++r) sq += (v[r] - mu) * (v[r] - mu);
      const acc_t inv = acc_t(1) / std::sqrt(sq / R + static_cast<acc_t>(eps));
      scalar_t* o = out + row * R;
#pragma omp simd
      for (int64_t r = 0; r < R; ++r) o[r] = static_cast<scalar_t>((v[r] - mu) * inv * w[r] + beta[r]);
      mean_out[row] = mu;
      rstd_out[row] = inv;
    }
  });
}

// partial: (chunks, 2, k+1) accumulation buffer, row 0 = grad_weight, row 1 = grad_bias.
// One row of the backward, vectorisable (no loop-carried dependency): gw = g * w, and the chunk's partial
// sums of the weight and bias gradients, pw += g * xhat and pb += g.
template <typename scalar_t, typename acc_t>
void accumulate_row(const scalar_t* __restrict__ g, const acc_t* __restrict__ w, const acc_t* __restrict__ xhat,
                    int64_t R, acc_t* __restrict__ gw, acc_t* __restrict__ pw, acc_t* __restrict__ pb) {
  for (int64_t r = 0; r < R; ++r) {
    const acc_t gv = static_cast<acc_t>(g[r]);
    gw[r] = gv * w[r];
    pw[r] += gv * xhat[r];
    pb[r] += gv;
  }
}

// sum(gw) and sum(gw * xhat) over R, in kLanes independent partial sums (so the loop vectorises without
// reassociation flags), added up at the end.
template <typename acc_t>
void row_dots(const acc_t* __restrict__ gw, const acc_t* __restrict__ xhat, int64_t R, acc_t& sum_g,
              acc_t& sum_gx) {
  constexpr int64_t kLanes = 8;
  acc_t lane_g[kLanes] = {}, lane_gx[kLanes] = {};
  int64_t r = 0;
  for (; r + kLanes <= R; r += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      lane_g[j] += gw[r + j];
      lane_gx[j] += gw[r + j] * xhat[r + j];
    }
  }
  for (int64_t j = 0; r + j < R; ++j) {
    lane_g[j] += gw[r + j];
    lane_gx[j] += gw[r + j] * xhat[r + j];
  }
  sum_g = std::accumulate(lane_g, lane_g + kLanes, acc_t(0));
  sum_gx = std::accumulate(lane_gx, lane_gx + kLanes, acc_t(0));
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_ranked, const at::Tensor& logits,
                   const at::Tensor& rank_index, const at::Tensor& weight, const at::Tensor& mean,
                   const at::Tensor& rstd, const Sizes& s, at::Tensor& grad_logits,
                   at::Tensor& partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g = grad_ranked.const_data_ptr<scalar_t>();
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t* index = rank_index.const_data_ptr<int64_t>();
  const acc_t* w = weight.const_data_ptr<acc_t>();
  const acc_t* mean_in = mean.const_data_ptr<acc_t>();
  const acc_t* rstd_in = rstd.const_data_ptr<acc_t>();
  scalar_t* gx = grad_logits.mutable_data_ptr<scalar_t>();
  acc_t* part = partial.mutable_data_ptr<acc_t>();
  const int64_t R = s.ranks(), C = s.classes + 1, BQ = s.batch * s.queries;
  const int64_t chunks = partial.size(0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xhat(R), gw(R);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      acc_t* pw = part + chunk * 2 * R;
      acc_t* pb = pw + R;
      std::fill(pw, pw + 2 * R, acc_t(0));
      const int64_t row_end = std::min(s.rows(), (chunk + 1) * kChunkRows);
      for (int64_t row = chunk * kChunkRows; row < row_end; ++row) {
        const int64_t* idx = index + ((row % BQ) / s.queries) * R;
        const scalar_t* xr = x + row * C;
        const scalar_t* gr = g + row * R;
        const acc_t mu = mean_in[row], inv = rstd_in[row];
        for (int64_t r = 0; r < R; ++r) xhat[r] = (static_cast<acc_t>(xr[idx[r]]) - mu) * inv;
        accumulate_row(gr, w, xhat.data(), R, gw.data(), pw, pb);
        acc_t dot_g = 0, dot_gx = 0;
        row_dots(gw.data(), xhat.data(), R, dot_g, dot_gx);
        dot_g /= R;
        dot_gx /= R;
        scalar_t* out = gx + row * C;
        std::fill(out, out + C, scalar_t(0));
        for (int64_t r = 0; r < R; ++r) gw[r] = inv * (gw[r] - dot_g - xhat[r] * dot_gx);  // vectorised
        for (int64_t r = 0; r < R; ++r) out[idx[r]] = static_cast<scalar_t>(gw[r]);
      }
    }
  });
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  RSF_CHECK_VALUE(t.device().is_cpu(), op, ": the CPU kernel got `", name, "` on ", t.device());
}

// Every row of rank_index must hold distinct classes in [0, K]: a repeated class would make the scatter
// keep one of its ranks and drop the other silently (cheap on the CPU; the CUDA kernels assert).
void check_rank_index(const at::Tensor& rank_index, int64_t classes, const char* op) {
  const at::Tensor idx = rank_index.contiguous();
  const int64_t* p = idx.const_data_ptr<int64_t>();
  const int64_t ranks = idx.size(-1);
  std::vector<int64_t> seen_in_row(classes + 1, -1);
  for (int64_t i = 0; i < idx.numel(); ++i) {
    const int64_t row = i / ranks;
    RSF_CHECK_VALUE(p[i] >= 0 && p[i] <= classes, op, ": `rank_index` holds ", p[i],
                      ", outside the classes [0, ", classes, "]");
    RSF_CHECK_VALUE(seen_in_row[p[i]] != row, op, ": `rank_index` row ", row, " holds class ", p[i],
                      " twice; each row must rank distinct classes");
    seen_in_row[p[i]] = row;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rank_logits_cpu(
    const at::Tensor& class_logits, const at::Tensor& scores, int64_t k, const at::Tensor& weight,
    const at::Tensor& bias, double eps) {
  const Sizes s = check_inputs(class_logits, scores, k, weight, bias);
  check_cpu(class_logits, "rank_logits", "class_logits");
  const at::ScalarType acc = acc_dtype(class_logits.scalar_type());
  at::Tensor rank_index = rank_order_cpu(scores, s);
  at::Tensor ranked = at::empty({s.layers, s.batch, s.queries, s.ranks()}, class_logits.options());
  at::Tensor mean = at::empty({s.layers, s.batch, s.queries}, class_logits.options().dtype(acc));
  at::Tensor rstd = at::empty_like(mean);
  if (ranked.numel() == 0) return {ranked, rank_index, mean, rstd};
  const at::Tensor x = class_logits.contiguous();
  const at::Tensor w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
  dispatch_float(x.scalar_type(), [&]<typename scalar_t>() {
    forward_impl<scalar_t>(x, rank_index, w, b, eps, s, ranked, mean, rstd);
  });
  return {ranked, rank_index, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rank_logits_backward_cpu(
    const at::Tensor& grad_ranked, const at::Tensor& class_logits, const at::Tensor& rank_index,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  const Sizes s = check_backward_inputs(grad_ranked, class_logits, rank_index, weight, mean, rstd);
  check_cpu(class_logits, "rank_logits", "class_logits");
  check_rank_index(rank_index, s.classes, "rank_logits");
  const at::ScalarType acc = acc_dtype(class_logits.scalar_type());
  at::Tensor grad_logits = at::empty(class_logits.sizes(), class_logits.options());
  const int64_t chunks = (s.rows() + kChunkRows - 1) / kChunkRows;
  at::Tensor partial = at::empty({chunks, 2, s.ranks()}, class_logits.options().dtype(acc));
  if (chunks > 0) {
    const at::Tensor g = grad_ranked.contiguous(), x = class_logits.contiguous();
    const at::Tensor idx = rank_index.contiguous(), w = weight.to(acc).contiguous();
    const at::Tensor mu = mean.contiguous(), inv = rstd.contiguous();
    dispatch_float(x.scalar_type(), [&]<typename scalar_t>() {
      backward_impl<scalar_t>(g, x, idx, w, mu, inv, s, grad_logits, partial);
    });
  }
  // Chunk partial sums added in chunk order (deterministic), in the accumulation dtype.
  at::Tensor grad_weight = at::zeros({s.ranks()}, partial.options());
  at::Tensor grad_bias = at::zeros({s.ranks()}, partial.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "rank_logits_backward_sum", [&] {
    const scalar_t* p = partial.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const scalar_t* pc = p + chunk * 2 * s.ranks();
      for (int64_t r = 0; r < s.ranks(); ++r) {
        gw[r] += pc[r];
        gb[r] += pc[s.ranks() + r];
      }
    }
  });
  return {grad_logits, grad_weight.to(weight.scalar_type()), grad_bias.to(weight.scalar_type())};
}

at::Tensor rank_scatter_cpu(const at::Tensor& ranked, const at::Tensor& rank_index,
                            int64_t num_classes, double fill) {
  const ScatterSizes s = check_scatter_inputs(ranked, rank_index, num_classes);
  check_cpu(ranked, "rank_scatter", "ranked");
  check_rank_index(rank_index, num_classes, "rank_scatter");
  std::vector<int64_t> shape(ranked.sizes().begin(), ranked.sizes().end());
  shape.back() = num_classes + 1;
  at::Tensor out = at::empty(shape, ranked.options());
  if (out.numel() == 0) return out;
  const at::Tensor src = ranked.contiguous(), idx = rank_index.contiguous();
  dispatch_float(src.scalar_type(), [&]<typename scalar_t>() {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    const int64_t* index = idx.const_data_ptr<int64_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t R = s.ranks, C = num_classes + 1, BQ = s.batch * s.queries;
    const scalar_t fill_value = static_cast<scalar_t>(fill);
    at::parallel_for(0, s.rows(), 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t* ir = index + ((row % BQ) / s.queries) * R;
        scalar_t* orow = o + row * C;
        std::fill(orow, orow + C, fill_value);
        for (int64_t r = 0; r < R; ++r) orow[ir[r]] = in[row * R + r];
      }
    });
  });
  return out;
}

at::Tensor rank_scatter_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rank_index) {
  const ScatterSizes s = check_scatter_backward_inputs(grad_output, rank_index);
  check_cpu(grad_output, "rank_scatter", "grad_output");
  check_rank_index(rank_index, s.classes, "rank_scatter");
  std::vector<int64_t> shape(grad_output.sizes().begin(), grad_output.sizes().end());
  shape.back() = s.ranks;
  at::Tensor grad_ranked = at::empty(shape, grad_output.options());
  if (grad_ranked.numel() == 0) return grad_ranked;
  const at::Tensor go = grad_output.contiguous(), idx = rank_index.contiguous();
  dispatch_float(go.scalar_type(), [&]<typename scalar_t>() {
    const scalar_t* in = go.const_data_ptr<scalar_t>();
    const int64_t* index = idx.const_data_ptr<int64_t>();
    scalar_t* o = grad_ranked.mutable_data_ptr<scalar_t>();
    const int64_t R = s.ranks, C = s.classes + 1, BQ = s.batch * s.queries;
    at::parallel_for(0, s.rows(), 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t* ir = index + ((row % BQ) / s.queries) * R;
        for (int64_t r = 0; r < R; ++r) o[row * R + r] = in[row * C + ir[r]];
      }
    });
  });
  return grad_ranked;
}

}  // namespace
}  // namespace rankseg_fast::rank_logits

TORCH_LIBRARY_IMPL(rankseg_fast, CPU, m) {
  m.impl("rank_logits", &rankseg_fast::rank_logits::rank_logits_cpu);
  m.impl("_rank_logits_backward", &rankseg_fast::rank_logits::rank_logits_backward_cpu);
  m.impl("rank_scatter", &rankseg_fast::rank_logits::rank_scatter_cpu);
  m.impl("_rank_scatter_backward", &rankseg_fast::rank_logits::rank_scatter_backward_cpu);
}
