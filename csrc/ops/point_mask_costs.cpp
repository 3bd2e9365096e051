// Schema of point_mask_costs and the input validation every backend runs first.
#include "point_mask_costs.h"

#include <torch/library.h>

#include <limits>

#include "../common/checks.h"

namespace rankseg_fast::point_mask_costs {

Sizes check_inputs(const at::Tensor& pred_masks, const at::Tensor& target_masks, const at::Tensor& target_valid,
                   const at::Tensor& coords) {
  constexpr const char* kOp = "point_mask_costs";
  check_defined(pred_masks, kOp, "pred_masks");
  check_defined(target_masks, kOp, "target_masks");
  check_defined(target_valid, kOp, "target_valid");
  check_defined(coords, kOp, "coords");
  check_rank(pred_masks, 5, kOp, "pred_masks", "(layers, batch, queries, h, w)");
  check_rank(target_masks, 4, kOp, "target_masks", "(batch, targets, H, W)");
  check_rank(target_valid, 2, kOp, "target_valid", "(batch, targets)");
  check_rank(coords, 4, kOp, "coords", "(layers, batch, points, 2)");
  const auto pred_type = pred_masks.scalar_type();
  RSF_CHECK_TYPE(pred_type == at::kFloat || pred_type == at::kHalf || pred_type == at::kBFloat16, kOp,
                 ": `pred_masks` must be float32, float16 or bfloat16, got ", pred_type);
  RSF_CHECK_TYPE(target_masks.scalar_type() == at::kFloat, kOp, ": `target_masks` must be float32, got ",
                 target_masks.scalar_type());
  RSF_CHECK_TYPE(target_valid.scalar_type() == at::kBool, kOp, ": `target_valid` must be bool, got ",
                 target_valid.scalar_type());
  RSF_CHECK_TYPE(coords.scalar_type() == at::kFloat, kOp, ": `coords` must be float32, got ",
                 coords.scalar_type());
  check_same_device(target_masks, pred_masks, kOp, "target_masks", "pred_masks");
  check_same_device(target_valid, pred_masks, kOp, "target_valid", "pred_masks");
  check_same_device(coords, pred_masks, kOp, "coords", "pred_masks");

  const Sizes s{pred_masks.size(0), pred_masks.size(1), pred_masks.size(2), pred_masks.size(3),
                pred_masks.size(4), target_masks.size(1), target_masks.size(2), target_masks.size(3),
                coords.size(2)};
  check_size(target_masks, 0, s.batch, kOp, "target_masks", "batch, as in `pred_masks`");
  const int64_t valid_shape[2] = {s.batch, s.targets};
  RSF_CHECK_VALUE(target_valid.sizes() == at::IntArrayRef(valid_shape), kOp,
                  ": `target_valid` must have shape (batch, targets) = ", at::IntArrayRef(valid_shape),
                  " to match `target_masks` ", shape_str(target_masks), ", got ", shape_str(target_valid));
  RSF_CHECK_VALUE(coords.size(0) == s.layers && coords.size(1) == s.batch && coords.size(3) == 2, kOp,
                  ": `coords` must have shape (layers, batch, points, 2) with (layers, batch) = (", s.layers,
                  ", ", s.batch, ") of `pred_masks`, got ", shape_str(coords));
  RSF_CHECK_VALUE(s.points >= 1, kOp, ": needs at least one point, got `coords` ", shape_str(coords));
  RSF_CHECK_VALUE(s.pred_height > 0 && s.pred_width > 0 && s.height > 0 && s.width > 0, kOp,
                  ": the masks must not be empty, got `pred_masks` ", shape_str(pred_masks), " and `target_masks` ",
                  shape_str(target_masks));
  constexpr int64_t kMaxMap = std::numeric_limits<int32_t>::max();
  RSF_CHECK_VALUE(s.pred_height * s.pred_width <= kMaxMap && s.height * s.width <= kMaxMap, kOp,
                  ": each mask must have fewer than 2^31 pixels, got `pred_masks` ", shape_str(pred_masks),
                  " and `target_masks` ", shape_str(target_masks));
  return s;
}

}  // namespace rankseg_fast::point_mask_costs

TORCH_LIBRARY_FRAGMENT(rankseg_fast, m) {
  m.def("point_mask_costs(Tensor pred_masks, Tensor target_masks, Tensor target_valid, Tensor coords, "
        "float mask_weight, float dice_weight) -> Tensor");
}
