// Helpers of the C++ autograd functions (csrc/ops/autograd/*_autograd.cpp): typed handles of the ops they
// call below autograd, and the "gradient only where needed" return.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>

#include <tuple>

#include "../../common/checks.h"

namespace rankseg_fast::autograd {

using TensorList4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The typed dispatcher handle of op `name` ("rankseg_fast::<op>", overload ""); looked up once per call site
// (function-local statics), after the library has registered its schemas.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// `grad` if the autograd function's tensor argument number `tensor_index` needs a gradient, else undefined.
// The index counts tensor arguments only (the function's edges), while the backward returns one entry
// per argument, tensors or not.
inline at::Tensor if_needed(torch::autograd::AutogradContext* ctx, size_t tensor_index, const at::Tensor& grad) {
  return ctx->needs_input_grad(tensor_index) ? grad : at::Tensor();
}

// The backward ops have no derivatives of their own. With create_graph=True the backward would run under
// grad mode and hand back gradients whose second derivatives are silently missing; refuse it instead, and
// say how to get a twice-differentiable graph.
inline void check_once_differentiable(const char* op) {
  RSF_CHECK(!c10::GradMode::is_enabled(), "rankseg_fast.ops.", op,
            ": the fused kernels are differentiable once (no double backward), so a backward pass through them "
            "cannot use create_graph=True; run this part with rankseg_fast.ops.set_impl(\"reference\") (pure "
            "PyTorch) for higher-order gradients");
}

}  // namespace rankseg_fast::autograd
