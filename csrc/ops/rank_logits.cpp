// Schemas of rank_logits, rank_scatter and their backwards, and the input validation every backend
// runs first (messages mirror the reference in rankseg_fast/ops/reference/rank_logits.py).
#include "rank_logits.h"

#include <torch/library.h>

#include "../common/checks.h"

namespace rankseg_fast::rank_logits {
namespace {

constexpr const char* kOp = "rank_logits";
constexpr const char* kScatterOp = "rank_scatter";

bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  RSF_CHECK_TYPE(is_float(t.scalar_type()), op, ": `", name,
                   "` must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

void check_rank_index(const at::Tensor& rank_index, int64_t batch, const char* op) {
  check_defined(rank_index, op, "rank_index");
  check_rank(rank_index, 2, op, "rank_index", "(batch, k + 1)");
  RSF_CHECK_TYPE(rank_index.scalar_type() == at::kLong, op, ": `rank_index` must be int64, got ",
                   rank_index.scalar_type());
  RSF_CHECK_VALUE(rank_index.size(1) >= 2, op,
                    ": `rank_index` must have k + 1 >= 2 columns, got shape ", shape_str(rank_index));
  RSF_CHECK_VALUE(rank_index.size(0) == batch, op, ": `rank_index` has ", rank_index.size(0),
                    " rows but the batch has ", batch, " images");
}

// ranked / grad_output (..., B, Q, last) -> (leading, B, Q).
ScatterSizes scatter_sizes(const at::Tensor& t, const char* name, const char* layout) {
  check_defined(t, kScatterOp, name);
  RSF_CHECK_VALUE(t.dim() >= 3, kScatterOp, ": `", name, "` must have shape ", layout, ", got ",
                    shape_str(t));
  check_float(t, kScatterOp, name);
  ScatterSizes s{};
  s.batch = t.size(-3);
  s.queries = t.size(-2);
  s.leading = 1;
  for (int64_t d = 0; d < t.dim() - 3; ++d) s.leading *= t.size(d);
  return s;
}

}  // namespace

Sizes check_inputs(const at::Tensor& class_logits, const at::Tensor& scores, int64_t k,
                   const at::Tensor& weight, const at::Tensor& bias) {
  check_defined(class_logits, kOp, "class_logits");
  check_defined(scores, kOp, "scores");
  check_defined(weight, kOp, "weight");
  check_defined(bias, kOp, "bias");
  check_rank(class_logits, 4, kOp, "class_logits", "(layers, batch, queries, classes + 1)");
  check_rank(scores, 2, kOp, "scores", "(batch, classes)");
  check_float(class_logits, kOp, "class_logits");
  check_float(scores, kOp, "scores");
  Sizes s{};
  s.batch = scores.size(0);
  s.classes = scores.size(1);
  RSF_CHECK_VALUE(s.classes >= 1, kOp, ": `scores` must have at least one class, got shape ",
                    shape_str(scores));
  RSF_CHECK_VALUE(class_logits.size(1) == s.batch && class_logits.size(3) == s.classes + 1, kOp,
                    ": `class_logits` must have shape (layers, batch=", s.batch,
                    ", queries, classes + 1=", s.classes + 1, ") to match `scores` ",
                    shape_str(scores), ", got ", shape_str(class_logits));
  RSF_CHECK_VALUE(k >= 1 && k <= s.classes, kOp, ": `k` must be in [1, num_classes=", s.classes,
                    "], got ", k);
  s.k = k;
  s.layers = class_logits.size(0);
  s.queries = class_logits.size(2);
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    check_rank(*t, 1, kOp, name, "(k + 1,)");
    check_float(*t, kOp, name);
    RSF_CHECK_VALUE(t->size(0) == k + 1, kOp, ": `", name, "` must have shape (k + 1,) = (",
                      k + 1, ",) for k=", k, ", got ", shape_str(*t));
  }
  check_same_device(scores, class_logits, kOp, "scores", "class_logits");
  check_same_device(weight, class_logits, kOp, "weight", "class_logits");
  check_same_device(bias, class_logits, kOp, "bias", "class_logits");
  return s;
}

Sizes check_backward_inputs(const at::Tensor& grad_ranked, const at::Tensor& class_logits,
                            const at::Tensor& rank_index, const at::Tensor& weight,
                            const at::Tensor& mean, const at::Tensor& rstd) {
  check_defined(grad_ranked, kOp, "grad_ranked");
  check_defined(class_logits, kOp, "class_logits");
  check_defined(weight, kOp, "weight");
  check_defined(mean, kOp, "mean");
  check_defined(rstd, kOp, "rstd");
  check_rank(class_logits, 4, kOp, "class_logits", "(layers, batch, queries, classes + 1)");
  check_float(class_logits, kOp, "class_logits");
  Sizes s{};
  s.layers = class_logits.size(0);
  s.batch = class_logits.size(1);
  s.queries = class_logits.size(2);
  s.classes = class_logits.size(3) - 1;
  check_rank_index(rank_index, s.batch, kOp);
  s.k = rank_index.size(1) - 1;
  RSF_CHECK_VALUE(s.k <= s.classes, kOp, ": `rank_index` has k + 1 = ", s.k + 1,
                    " columns but `class_logits` has only ", s.classes + 1, " classes");
  const int64_t ranked_shape[4] = {s.layers, s.batch, s.queries, s.k + 1};
  RSF_CHECK_VALUE(grad_ranked.sizes() == at::IntArrayRef(ranked_shape), kOp,
                    ": `grad_ranked` must have shape (layers, batch, queries, k + 1) = ",
                    at::IntArrayRef(ranked_shape), ", got ", shape_str(grad_ranked));
  RSF_CHECK_TYPE(grad_ranked.scalar_type() == class_logits.scalar_type(), kOp,
                   ": `grad_ranked` dtype ", grad_ranked.scalar_type(),
                   " differs from `class_logits` dtype ", class_logits.scalar_type());
  check_rank(weight, 1, kOp, "weight", "(k + 1,)");
  check_float(weight, kOp, "weight");
  check_size(weight, 0, s.k + 1, kOp, "weight", "k + 1");
  const at::ScalarType stats_dtype = acc_dtype(class_logits.scalar_type());
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, std::pair{&rstd, "rstd"}}) {
    RSF_CHECK_VALUE(t->sizes() == at::IntArrayRef(ranked_shape, 3), kOp, ": `", name,
                      "` must have shape (layers, batch, queries) = ", at::IntArrayRef(ranked_shape, 3),
                      ", got ", shape_str(*t));
    RSF_CHECK_TYPE(t->scalar_type() == stats_dtype, kOp, ": `", name, "` must be ", stats_dtype,
                     " for ", class_logits.scalar_type(), " logits, got ", t->scalar_type());
    check_same_device(*t, class_logits, kOp, name, "class_logits");
  }
  check_same_device(grad_ranked, class_logits, kOp, "grad_ranked", "class_logits");
  check_same_device(rank_index, class_logits, kOp, "rank_index", "class_logits");
  check_same_device(weight, class_logits, kOp, "weight", "class_logits");
  return s;
}

ScatterSizes check_scatter_inputs(const at::Tensor& ranked, const at::Tensor& rank_index,
                                  int64_t num_classes) {
  ScatterSizes s = scatter_sizes(ranked, "ranked", "(..., batch, queries, k + 1)");
  check_rank_index(rank_index, s.batch, kScatterOp);
  s.ranks = rank_index.size(1);
  s.classes = num_classes;
  RSF_CHECK_VALUE(ranked.size(-1) == s.ranks, kScatterOp, ": `ranked` has ", ranked.size(-1),
                    " ranks but `rank_index` has ", s.ranks, " columns");
  RSF_CHECK_VALUE(s.ranks - 1 >= 1 && s.ranks - 1 <= num_classes, kScatterOp,
                    ": `rank_index` has k + 1 = ", s.ranks,
                    " columns, needs 1 <= k <= num_classes=", num_classes);
  check_same_device(rank_index, ranked, kScatterOp, "rank_index", "ranked");
  return s;
}

ScatterSizes check_scatter_backward_inputs(const at::Tensor& grad_output,
                                           const at::Tensor& rank_index) {
  ScatterSizes s = scatter_sizes(grad_output, "grad_output", "(..., batch, queries, classes + 1)");
  check_rank_index(rank_index, s.batch, kScatterOp);
  s.ranks = rank_index.size(1);
  s.classes = grad_output.size(-1) - 1;
  RSF_CHECK_VALUE(s.ranks - 1 <= s.classes, kScatterOp, ": `rank_index` has k + 1 = ", s.ranks,
                    " columns but `grad_output` has only ", s.classes + 1, " classes");
  check_same_device(rank_index, grad_output, kScatterOp, "rank_index", "grad_output");
  return s;
}

}  // namespace rankseg_fast::rank_logits

TORCH_LIBRARY_FRAGMENT(rankseg_fast, m) {
  m.def(
      "rank_logits(Tensor class_logits, Tensor scores, int k, Tensor weight, Tensor bias, "
      "float eps) -> (Tensor ranked, Tensor rank_index, Tensor mean, Tensor rstd)");
  m.def(
      "_rank_logits_backward(Tensor grad_ranked, Tensor class_logits, Tensor rank_index, "
      "Tensor weight, Tensor mean, Tensor rstd) "
      "-> (Tensor grad_logits, Tensor grad_weight, Tensor grad_bias)");
  m.def("rank_scatter(Tensor ranked, Tensor rank_index, int num_classes, float fill) -> Tensor");
  m.def("_rank_scatter_backward(Tensor grad_output, Tensor rank_index) -> Tensor");
}
