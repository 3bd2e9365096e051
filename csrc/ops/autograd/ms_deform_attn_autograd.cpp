// Autograd of ms_deform_attn, registered for the Autograd dispatch key (every device): the forward runs the
// device kernel below autograd and saves its inputs; the backward runs _ms_deform_attn_backward (gradients
// of value, sampling locations and attention weights). C++ rather than torch.library.register_autograd:
// no Python per call (see rank_logits_autograd.cpp).
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_common.h"

namespace rankseg_fast::ms_deform_attn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MSDeformAttnFunction : public torch::autograd::Function<MSDeformAttnFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& value, const at::Tensor& spatial_shapes,
                            const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = autograd::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&)>(
        "rankseg_fast::ms_deform_attn");
    ctx->save_for_backward({value, spatial_shapes, level_start_index, sampling_locations, attention_weights});
    return op.call(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    autograd::check_once_differentiable("ms_deform_attn");
    static const auto op = autograd::find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&)>("rankseg_fast::_ms_deform_attn_backward");
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_value, grad_locations, grad_weights] =
        op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4]);
    // Tensor arguments: value 0, spatial_shapes 1, level_start_index 2, sampling_locations 3, attention_weights 4.
    return {autograd::if_needed(ctx, 0, grad_value), at::Tensor(), at::Tensor(),
            autograd::if_needed(ctx, 3, grad_locations), autograd::if_needed(ctx, 4, grad_weights)};
  }
};

at::Tensor ms_deform_attn_autograd(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                   const at::Tensor& attention_weights) {
  return MSDeformAttnFunction::apply(value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights);
}

}  // namespace
}  // namespace rankseg_fast::ms_deform_attn

TORCH_LIBRARY_IMPL(rankseg_fast, Autograd, m) {
  m.impl("ms_deform_attn", &rankseg_fast::ms_deform_attn::ms_deform_attn_autograd);
}
