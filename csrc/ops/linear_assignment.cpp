// Schema of linear_assignment and the input validation every backend runs first.
#include "linear_assignment.h"

#include <torch/library.h>

#include "../common/checks.h"

namespace rankseg_fast::linear_assignment {

Sizes check_inputs(const at::Tensor& cost, const at::Tensor& valid) {
  constexpr const char* kOp = "linear_assignment";
  check_defined(cost, kOp, "cost");
  check_defined(valid, kOp, "valid");
  check_rank(cost, 3, kOp, "cost", "(problems, queries, targets)");
  check_rank(valid, 2, kOp, "valid", "(problems, targets)");
  RSF_CHECK_TYPE(cost.scalar_type() == at::kFloat || cost.scalar_type() == at::kDouble, kOp,
                   ": `cost` must be float32 or float64, got ", cost.scalar_type());
  RSF_CHECK_TYPE(valid.scalar_type() == at::kBool, kOp, ": `valid` must be bool, got ",
                   valid.scalar_type());
  const int64_t expected[2] = {cost.size(0), cost.size(2)};
  RSF_CHECK_VALUE(valid.sizes() == at::IntArrayRef(expected), kOp,
                    ": `valid` must have shape (problems, targets) = ", at::IntArrayRef(expected),
                    " to match `cost` ", shape_str(cost), ", got ", shape_str(valid));
  check_same_device(valid, cost, kOp, "valid", "cost");
  return Sizes{cost.size(0), cost.size(1), cost.size(2)};
}

}  // namespace rankseg_fast::linear_assignment

TORCH_LIBRARY_FRAGMENT(rankseg_fast, m) {
  m.def("linear_assignment(Tensor cost, Tensor valid) -> (Tensor, Tensor, Tensor)");
}
