// Schema of ms_deform_attn and its backward, and the input validation every backend runs first.
#include "ms_deform_attn.h"

#include <ATen/ops/_to_copy.h>
#include <torch/library.h>

#include "../common/checks.h"

namespace rankseg_fast::ms_deform_attn {
namespace {

constexpr const char* kOp = "ms_deform_attn";

bool is_supported_value_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool is_index_dtype(at::ScalarType t) { return t == at::kLong || t == at::kInt; }

// Copies a small integer tensor to the host as int64 (a no-op view when it already is).
at::Tensor host_int64(const at::Tensor& t) {
  return t.to(at::TensorOptions().device(at::kCPU).dtype(at::kLong)).contiguous();
}

void read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                 int64_t num_keys, LevelShapes* levels) {
  const at::Tensor shapes = host_int64(spatial_shapes);
  const at::Tensor starts = host_int64(level_start_index);
  const int64_t* hw = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  const int64_t num_levels = shapes.size(0);
  levels->num_levels = static_cast<int32_t>(num_levels);
  int64_t total = 0;
  for (int64_t l = 0; l < num_levels; ++l) {
    const int64_t h = hw[2 * l], w = hw[2 * l + 1];
    RSF_CHECK_VALUE(h > 0 && w > 0 && h <= INT32_MAX && w <= INT32_MAX, kOp,
                ": `spatial_shapes` level ", l, " has size (", h, ", ", w,
                "); every level needs a positive height and width");
    RSF_CHECK_VALUE(st[l] == total, kOp, ": `level_start_index` does not match `spatial_shapes`: level ",
                l, " starts at ", st[l], " but the levels before it hold ", total, " tokens");
    levels->height[l] = static_cast<int32_t>(h);
    levels->width[l] = static_cast<int32_t>(w);
    levels->start[l] = total;
    total += h * w;
  }
  RSF_CHECK_VALUE(total == num_keys, kOp, ": `spatial_shapes` describe ", total,
              " tokens (sum of H_l * W_l) but `value` has ", num_keys, " (its dimension 1)");
}

}  // namespace

Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, LevelShapes* levels) {
  check_defined(value, kOp, "value");
  check_defined(spatial_shapes, kOp, "spatial_shapes");
  check_defined(level_start_index, kOp, "level_start_index");
  check_defined(sampling_locations, kOp, "sampling_locations");
  check_defined(attention_weights, kOp, "attention_weights");

  check_rank(value, 4, kOp, "value", "(batch, keys, heads, channels)");
  check_rank(spatial_shapes, 2, kOp, "spatial_shapes", "(levels, 2)");
  check_rank(level_start_index, 1, kOp, "level_start_index", "(levels,)");
  check_rank(sampling_locations, 6, kOp, "sampling_locations",
             "(batch, queries, heads, levels, points, 2)");
  check_rank(attention_weights, 5, kOp, "attention_weights",
             "(batch, queries, heads, levels, points)");

  Sizes s{};
  s.batch = value.size(0);
  s.num_keys = value.size(1);
  s.num_heads = value.size(2);
  s.channels = value.size(3);
  s.num_levels = spatial_shapes.size(0);
  s.num_queries = sampling_locations.size(1);
  s.num_points = sampling_locations.size(4);

  check_size(spatial_shapes, 1, 2, kOp, "spatial_shapes", "(height, width)");
  check_size(level_start_index, 0, s.num_levels, kOp, "level_start_index", "levels");
  RSF_CHECK_VALUE(s.num_levels >= 1 && s.num_levels <= kMaxLevels, kOp, ": `spatial_shapes` has ",
              s.num_levels, " levels; between 1 and ", kMaxLevels, " are supported");
  check_size(sampling_locations, 0, s.batch, kOp, "sampling_locations", "batch, as in `value`");
  check_size(sampling_locations, 2, s.num_heads, kOp, "sampling_locations", "heads, as in `value`");
  check_size(sampling_locations, 3, s.num_levels, kOp, "sampling_locations",
             "levels, as in `spatial_shapes`");
  check_size(sampling_locations, 5, 2, kOp, "sampling_locations", "(x, y)");
  const int64_t expected_weights[5] = {s.batch, s.num_queries, s.num_heads, s.num_levels,
                                       s.num_points};
  RSF_CHECK_VALUE(attention_weights.sizes() == at::IntArrayRef(expected_weights), kOp,
              ": `attention_weights` must have shape (batch, queries, heads, levels, points) = ",
              dims_str(expected_weights), " to match `sampling_locations` ",
              shape_str(sampling_locations), ", got ", shape_str(attention_weights));

  check_same_device(sampling_locations, value, kOp, "sampling_locations", "value");
  check_same_device(attention_weights, value, kOp, "attention_weights", "value");
  for (const auto& [t, name] : {std::pair{&spatial_shapes, "spatial_shapes"},
                                std::pair{&level_start_index, "level_start_index"}}) {
    RSF_CHECK_VALUE(t->device().is_cpu() || t->device() == value.device(), kOp, ": `", name,
                "` is on ", t->device(), " but `value` is on ", value.device(),
                "; put it on the CPU (no sync) or on the value's device");
    RSF_CHECK_TYPE(is_index_dtype(t->scalar_type()), kOp, ": `", name,
                "` must be int64 (or int32), got ", t->scalar_type());
  }

  RSF_CHECK_TYPE(is_supported_value_dtype(value.scalar_type()), kOp,
              ": `value` must be float32, float64, float16 or bfloat16, got ", value.scalar_type());
  RSF_CHECK_TYPE(sampling_locations.scalar_type() == attention_weights.scalar_type(), kOp,
              ": `sampling_locations` (", sampling_locations.scalar_type(),
              ") and `attention_weights` (", attention_weights.scalar_type(),
              ") must share one dtype");
  RSF_CHECK_TYPE(sampling_locations.scalar_type() == value.scalar_type() ||
                  sampling_locations.scalar_type() == at::kFloat,
              kOp, ": `sampling_locations` and `attention_weights` must be float32 or the dtype of "
              "`value` (", value.scalar_type(), "), got ", sampling_locations.scalar_type());

  read_levels(spatial_shapes, level_start_index, s.num_keys, levels);
  return s;
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const Sizes& s) {
  check_defined(grad_output, kOp, "grad_output");
  const int64_t expected[3] = {s.batch, s.num_queries, s.num_heads * s.channels};
  RSF_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), kOp,
              ": `grad_output` must have shape (batch, queries, heads * channels) = ",
              dims_str(expected), ", got ", shape_str(grad_output));
  check_same_device(grad_output, value, kOp, "grad_output", "value");
  RSF_CHECK_TYPE(grad_output.scalar_type() == value.scalar_type(), kOp, ": `grad_output` dtype ",
              grad_output.scalar_type(), " differs from `value` dtype ", value.scalar_type());
}

}  // namespace rankseg_fast::ms_deform_attn

TORCH_LIBRARY_FRAGMENT(rankseg_fast, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "_ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
}
