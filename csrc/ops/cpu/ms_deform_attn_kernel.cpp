// CPU kernels of ms_deform_attn (forward and backward).
//
// Algorithm: for every (batch, query, head) and every (level, point), the bilinear corner indices and
// weights are computed once and then applied to all C channels of the head with a contiguous,
// vectorisable inner loop over channels (value is (B, S, H, C), so one corner is C contiguous values).
// Accumulation in at::opmath_type (fp32 for fp16/bf16/fp32, fp64 for fp64).
//
// Parallelism: the forward splits (batch x query) across threads. The backward splits (batch x head):
// every (b, h) scatters into its own slice value[b, :, h, :] of grad_value, so there are no races and
// the result is deterministic; the location/weight gradients of a (b, q, h) belong to one thread too.
// For fp16/bf16 the value gradient is accumulated in an fp32 buffer and rounded once at the end.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../../common/checks.h"
#include "../ms_deform_attn.h"

namespace rankseg_fast::ms_deform_attn {
namespace {

// Bilinear footprint of one sampling point: its four corners (y0,x0), (y0,x1), (y1,x0), (y1,x1) with
// their token offsets within the level, weights, and whether they lie on the map (zero padding).
template <typename T>
struct Footprint {
  T lx, ly;  // fractional position inside the cell, kept for the location gradient
  T weight[4];
  int64_t token[4];
  bool inside[4];
};

// Returns false when the point lies entirely outside the map (it contributes nothing).
template <typename T>
inline bool footprint(T loc_x, T loc_y, int32_t height, int32_t width, Footprint<T>* f) {
  const T x = loc_x * width - T(0.5);
  const T y = loc_y * height - T(0.5);
  if (!(x > T(-1) && y > T(-1) && x < T(width) && y < T(height))) return false;
  const T fx = std::floor(x), fy = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  f->lx = x - fx;
  f->ly = y - fy;
  const T hx = T(1) - f->lx, hy = T(1) - f->ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const T ws[4] = {hy * hx, hy * f->lx, f->ly * hx, f->ly * f->lx};
  for (int k = 0; k < 4; ++k) {
    f->inside[k] = xs[k] >= 0 && xs[k] < width && ys[k] >= 0 && ys[k] < height;
    f->token[k] = ys[k] * width + xs[k];
    f->weight[k] = ws[k];
  }
  return true;
}

template <typename scalar_t, typename coord_t>
void forward_impl(const at::Tensor& value, const at::Tensor& locations, const at::Tensor& weights,
                  const Sizes& s, const LevelShapes& levels, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v = value.const_data_ptr<scalar_t>();
  const coord_t* loc = locations.const_data_ptr<coord_t>();
  const coord_t* attw = weights.const_data_ptr<coord_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t H = s.num_heads, C = s.channels, L = s.num_levels, P = s.num_points;

  at::parallel_for(0, s.batch * s.num_queries, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    Footprint<acc_t> f;
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / s.num_queries;
      for (int64_t h = 0; h < H; ++h) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t point0 = (bq * H + h) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          for (int64_t p = 0; p < P; ++p) {
            const int64_t pt = point0 + l * P + p;
            if (!footprint<acc_t>(loc[2 * pt], loc[2 * pt + 1], levels.height[l], levels.width[l],
                                  &f))
              continue;
            const acc_t a = static_cast<acc_t>(attw[pt]);
            for (int k = 0; k < 4; ++k) {
              if (!f.inside[k]) continue;
              const scalar_t* vk = v + ((b * s.num_keys + levels.start[l] + f.token[k]) * H + h) * C;
              const acc_t w = a * f.weight[k];
              for (int64_t c = 0; c < C; ++c) acc[c] += w * static_cast<acc_t>(vk[c]);
            }
          }
        }
        scalar_t* o = out + (bq * H + h) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

// grad_value_acc is grad_value itself for fp32/fp64, an fp32 buffer for fp16/bf16.
template <typename scalar_t, typename coord_t>
void backward_impl(const at::Tensor& grad_output, const at::Tensor& value,
                   const at::Tensor& locations, const at::Tensor& weights, const Sizes& s,
                   const LevelShapes& levels, at::Tensor& grad_value_acc, at::Tensor& grad_locations,
                   at::Tensor& grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* v = value.const_data_ptr<scalar_t>();
  const coord_t* loc = locations.const_data_ptr<coord_t>();
  const coord_t* attw = weights.const_data_ptr<coord_t>();
  acc_t* gv = grad_value_acc.mutable_data_ptr<acc_t>();
  coord_t* gloc = grad_locations.mutable_data_ptr<coord_t>();
  coord_t* gattw = grad_weights.mutable_data_ptr<coord_t>();
  const int64_t H = s.num_heads, C = s.channels, L = s.num_levels, P = s.num_points;
  const int64_t Q = s.num_queries;

  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gout(C);
    Footprint<acc_t> f;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t bqh = (b * Q + q) * H + h;
        const scalar_t* go = g + bqh * C;
        for (int64_t c = 0; c < C; ++c) gout[c] = static_cast<acc_t>(go[c]);
        for (int64_t l = 0; l < L; ++l) {
          const int32_t height = levels.height[l], width = levels.width[l];
          for (int64_t p = 0; p < P; ++p) {
            const int64_t pt = bqh * L * P + l * P + p;
            if (!footprint<acc_t>(loc[2 * pt], loc[2 * pt + 1], height, width, &f)) {
              gloc[2 * pt] = gloc[2 * pt + 1] = gattw[pt] = coord_t(0);
              continue;
            }
            const acc_t a = static_cast<acc_t>(attw[pt]);
            const acc_t hx = acc_t(1) - f.lx, hy = acc_t(1) - f.ly;
            // d(sample)/dx and d(sample)/dy weights of the corners (y0,x0),(y0,x1),(y1,x0),(y1,x1).
            const acc_t dx[4] = {-hy, hy, -f.ly, f.ly};
            const acc_t dy[4] = {-hx, -f.lx, hx, f.lx};
            acc_t grad_a = 0, grad_x = 0, grad_y = 0;
            for (int k = 0; k < 4; ++k) {
              if (!f.inside[k]) continue;
              const int64_t row = (b * s.num_keys + levels.start[l] + f.token[k]) * H + h;
              const scalar_t* vk = v + row * C;
              acc_t* gvk = gv + row * C;
              acc_t dot = 0;
              const acc_t scatter = a * f.weight[k];
#pragma omp simd reduction(+ : dot)
              for (int64_t c = 0; c < C; ++c) {
                dot += gout[c] * static_cast<acc_t>(vk[c]);
                gvk[c] += scatter * gout[c];
              }
              grad_a += f.weight[k] * dot;
              grad_x += dx[k] * dot;
              grad_y += dy[k] * dot;
            }
            gattw[pt] = static_cast<coord_t>(grad_a);
            gloc[2 * pt] = static_cast<coord_t>(grad_x * a * width);
            gloc[2 * pt + 1] = static_cast<coord_t>(grad_y * a * height);
          }
        }
      }
    }
  });
}

at::Tensor ms_deform_attn_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index,
                              const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights) {
  LevelShapes levels;
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, &levels);
  RSF_CHECK(value.device().is_cpu(), "ms_deform_attn: CPU kernel called with `value` on ",
              value.device());
  at::Tensor output = at::empty({s.batch, s.num_queries, s.num_heads * s.channels}, value.options());
  if (output.numel() == 0) return output;
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   w = attention_weights.contiguous();
  if (v.numel() == 0) return output.zero_();
  dispatch_dtypes(v, loc, [&]<typename scalar_t, typename coord_t>() {
    forward_impl<scalar_t, coord_t>(v, loc, w, s, levels, output);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  LevelShapes levels;
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, &levels);
  check_grad_output(grad_output, value, s);
  RSF_CHECK(value.device().is_cpu(), "ms_deform_attn: CPU kernel called with `value` on ",
              value.device());
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  at::Tensor grad_value_acc =
      at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  at::Tensor grad_locations = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  at::Tensor grad_weights = at::zeros(attention_weights.sizes(), attention_weights.options());
  if (grad_output.numel() != 0 && value.numel() != 0) {
    const at::Tensor go = grad_output.contiguous(), v = value.contiguous(),
                     loc = sampling_locations.contiguous(), w = attention_weights.contiguous();
    dispatch_dtypes(v, loc, [&]<typename scalar_t, typename coord_t>() {
      backward_impl<scalar_t, coord_t>(go, v, loc, w, s, levels, grad_value_acc, grad_locations,
                                       grad_weights);
    });
  }
  at::Tensor grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace
}  // namespace rankseg_fast::ms_deform_attn

TORCH_LIBRARY_IMPL(rankseg_fast, CPU, m) {
  m.impl("ms_deform_attn", &rankseg_fast::ms_deform_attn::ms_deform_attn_cpu);
  m.impl("_ms_deform_attn_backward", &rankseg_fast::ms_deform_attn::ms_deform_attn_backward_cpu);
}
