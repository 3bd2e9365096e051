// Schema of masked_attention and its backward, and the input validation every backend runs first.
#include "masked_attention.h"

#include <torch/library.h>

#include "../common/checks.h"

namespace rankseg_fast::masked_attention {
namespace {

constexpr const char* kOp = "masked_attention";

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_tensor(const at::Tensor& t, const char* name, const char* layout) {
  check_defined(t, kOp, name);
  check_rank(t, 3, kOp, name, layout);
  RSF_CHECK_TYPE(is_supported_dtype(t.scalar_type()), kOp, ": `", name,
                   "` must be a floating tensor (float32, float64, float16, bfloat16), got ",
                   t.scalar_type());
}

}  // namespace

at::ScalarType stats_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

Sizes check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                   const at::Tensor& mask_logits, int64_t num_heads) {
  check_tensor(query, "query", "(batch, queries, channels)");
  check_tensor(key, "key", "(batch, keys, channels)");
  check_tensor(value, "value", "(batch, keys, channels)");
  check_tensor(mask_logits, "mask_logits", "(batch, queries, keys)");
  RSF_CHECK_VALUE(num_heads > 0, kOp, ": `num_heads` must be a positive int, got ", num_heads);

  Sizes s{};
  s.batch = query.size(0);
  s.num_queries = query.size(1);
  s.num_keys = key.size(1);
  s.num_heads = num_heads;
  const int64_t E = query.size(2);
  RSF_CHECK_VALUE(E % num_heads == 0, kOp, ": `query` channels (", E,
                    ") must be divisible by num_heads (", num_heads, ")");
  s.head_dim = E / num_heads;
  RSF_CHECK_VALUE(key.size(0) == s.batch && key.size(2) == E, kOp,
                    ": `key` must have shape (batch=", s.batch, ", keys, channels=", E,
                    ") to match `query` ", shape_str(query), ", got ", shape_str(key));
  const int64_t kv_shape[3] = {s.batch, s.num_keys, E};
  RSF_CHECK_VALUE(value.sizes() == at::IntArrayRef(kv_shape), kOp, ": `value` must have shape ",
                    at::IntArrayRef(kv_shape), " to match `key` ", shape_str(key), ", got ",
                    shape_str(value));
  const int64_t mask_shape[3] = {s.batch, s.num_queries, s.num_keys};
  RSF_CHECK_VALUE(mask_logits.sizes() == at::IntArrayRef(mask_shape), kOp,
                    ": `mask_logits` must have shape (batch, queries, keys) = ",
                    at::IntArrayRef(mask_shape), " to match `query` ", shape_str(query),
                    " and `key` ", shape_str(key), ", got ", shape_str(mask_logits));
  RSF_CHECK_VALUE(s.num_keys > 0, kOp, ": `key` must have at least one key, got shape ",
                    shape_str(key));
  for (const auto& [t, name] : {std::pair{&key, "key"}, std::pair{&value, "value"}}) {
    RSF_CHECK_TYPE(t->scalar_type() == query.scalar_type(), kOp, ": `", name, "` dtype ",
                     t->scalar_type(), " differs from `query` dtype ", query.scalar_type());
  }
  check_same_device(key, query, kOp, "key", "query");
  check_same_device(value, query, kOp, "value", "query");
  check_same_device(mask_logits, query, kOp, "mask_logits", "query");
  return s;
}

void check_backward_inputs(const at::Tensor& grad_output, const at::Tensor& out,
                           const at::Tensor& lse, const at::Tensor& query, const Sizes& s) {
  for (const auto& [t, name] : {std::pair{&grad_output, "grad_output"}, std::pair{&out, "out"}}) {
    check_defined(*t, kOp, name);
    RSF_CHECK_VALUE(t->sizes() == query.sizes(), kOp, ": `", name, "` must have the shape of `query` ",
                      shape_str(query), ", got ", shape_str(*t));
    RSF_CHECK_TYPE(t->scalar_type() == query.scalar_type(), kOp, ": `", name, "` dtype ",
                     t->scalar_type(), " differs from `query` dtype ", query.scalar_type());
    check_same_device(*t, query, kOp, name, "query");
  }
  check_defined(lse, kOp, "lse");
  const int64_t lse_shape[3] = {s.batch, s.num_heads, s.num_queries};
  RSF_CHECK_VALUE(lse.sizes() == at::IntArrayRef(lse_shape), kOp,
                    ": `lse` must have shape (batch, heads, queries) = ", at::IntArrayRef(lse_shape),
                    ", got ", shape_str(lse));
  RSF_CHECK_TYPE(lse.scalar_type() == stats_dtype(query.scalar_type()), kOp, ": `lse` must be ",
                   stats_dtype(query.scalar_type()), " for `query` of dtype ", query.scalar_type(),
                   ", got ", lse.scalar_type());
  check_same_device(lse, query, kOp, "lse", "query");
}

}  // namespace rankseg_fast::masked_attention

TORCH_LIBRARY_FRAGMENT(rankseg_fast, m) {
  m.def(
      "masked_attention(Tensor query, Tensor key, Tensor value, Tensor mask_logits, int num_heads) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "_masked_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
      "Tensor mask_logits, Tensor out, Tensor lse, int num_heads) -> (Tensor, Tensor, Tensor)");
}
