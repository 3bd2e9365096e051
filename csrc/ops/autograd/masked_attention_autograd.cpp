// Autograd of masked_attention, registered for the Autograd dispatch key (every device): the forward runs
// the device kernel below autograd and saves its inputs, out and lse; the backward runs
// _masked_attention_backward. C++ rather than torch.library.register_autograd: no Python per call (see
// rank_logits_autograd.cpp).
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_common.h"

namespace rankseg_fast::masked_attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaskedAttentionFunction : public torch::autograd::Function<MaskedAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const at::Tensor& mask_logits, int64_t num_heads) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = autograd::find_op<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>(
        "rankseg_fast::masked_attention");
    auto [out, lse] = op.call(query, key, value, mask_logits, num_heads);
    ctx->save_for_backward({query, key, value, mask_logits, out, lse});
    ctx->saved_data["num_heads"] = num_heads;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    autograd::check_once_differentiable("masked_attention");
    static const auto op = autograd::find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, int64_t)>("rankseg_fast::_masked_attention_backward");
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_query, grad_key, grad_value] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                                      saved[5], ctx->saved_data["num_heads"].toInt());
    // Tensor arguments: query 0, key 1, value 2, mask_logits 3.
    return {autograd::if_needed(ctx, 0, grad_query), autograd::if_needed(ctx, 1, grad_key),
            autograd::if_needed(ctx, 2, grad_value), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> masked_attention_autograd(const at::Tensor& query, const at::Tensor& key,
                                                             const at::Tensor& value, const at::Tensor& mask_logits,
                                                             int64_t num_heads) {
  const variable_list out = MaskedAttentionFunction::apply(query, key, value, mask_logits, num_heads);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace rankseg_fast::masked_attention

TORCH_LIBRARY_IMPL(rankseg_fast, Autograd, m) {
  m.impl("masked_attention", &rankseg_fast::masked_attention::masked_attention_autograd);
}
