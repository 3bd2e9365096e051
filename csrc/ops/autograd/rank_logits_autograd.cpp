// Autograd of rank_logits and rank_scatter, registered for the Autograd dispatch key (every device): the
// forward runs the device kernel below autograd and saves what the backward op needs; the backward runs
// _rank_logits_backward / _rank_scatter_backward. C++ rather than torch.library.register_autograd: the
// Python path added ~80 us of host time to every forward+backward on our CPU, more than the kernels
// themselves take on a GPU at the model's sizes.
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_common.h"

namespace rankseg_fast::rank_logits {
namespace {

using autograd::TensorList4;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RankLogitsFunction : public torch::autograd::Function<RankLogitsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& class_logits, const at::Tensor& scores,
                               int64_t k, const at::Tensor& weight, const at::Tensor& bias, double eps) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = autograd::find_op<TensorList4(const at::Tensor&, const at::Tensor&, int64_t,
                                                         const at::Tensor&, const at::Tensor&, double)>(
        "rankseg_fast::rank_logits");
    auto [ranked, rank_index, mean, rstd] = op.call(class_logits, scores, k, weight, bias, eps);
    ctx->save_for_backward({class_logits, rank_index, weight, mean, rstd});
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.scalar_type());
    ctx->mark_non_differentiable({rank_index, mean, rstd});
    return {ranked, rank_index, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    autograd::check_once_differentiable("rank_logits");
    static const auto op =
        autograd::find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
            const at::Tensor&)>("rankseg_fast::_rank_logits_backward");
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_logits, grad_weight, grad_bias] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4]);
    const auto bias_dtype = static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
    // Tensor arguments: class_logits 0, scores 1, weight 2, bias 3.
    return {autograd::if_needed(ctx, 0, grad_logits), at::Tensor(), at::Tensor(),
            autograd::if_needed(ctx, 2, grad_weight),
            ctx->needs_input_grad(3) ? grad_bias.to(bias_dtype) : at::Tensor(), at::Tensor()};
  }
};

class RankScatterFunction : public torch::autograd::Function<RankScatterFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& ranked, const at::Tensor& rank_index,
                            int64_t num_classes, double fill) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        autograd::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double)>("rankseg_fast::rank_scatter");
    ctx->save_for_backward({rank_index});
    return op.call(ranked, rank_index, num_classes, fill);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    autograd::check_once_differentiable("rank_scatter");
    static const auto op = autograd::find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>(
        "rankseg_fast::_rank_scatter_backward");
    return {op.call(grads[0], ctx->get_saved_variables()[0]), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

TensorList4 rank_logits_autograd(const at::Tensor& class_logits, const at::Tensor& scores, int64_t k,
                                 const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const variable_list out = RankLogitsFunction::apply(class_logits, scores, k, weight, bias, eps);
  return {out[0], out[1], out[2], out[3]};
}

at::Tensor rank_scatter_autograd(const at::Tensor& ranked, const at::Tensor& rank_index, int64_t num_classes,
                                 double fill) {
  return RankScatterFunction::apply(ranked, rank_index, num_classes, fill);
}

}  // namespace
}  // namespace rankseg_fast::rank_logits

TORCH_LIBRARY_IMPL(rankseg_fast, Autograd, m) {
  m.impl("rank_logits", &rankseg_fast::rank_logits::rank_logits_autograd);
  m.impl("rank_scatter", &rankseg_fast::rank_logits::rank_scatter_autograd);
}
