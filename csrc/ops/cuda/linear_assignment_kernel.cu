// CUDA backend of linear_assignment: validation (shared with every backend), dtype dispatch, launch
// configuration and output allocation. The kernel lives in linear_assignment_solver.cuh.
//
// Launch: one block per problem, blockDim = max(Q, T) + 1 rounded up to a multiple of 32, at most 256
// threads; (max(Q, T) + 1) * 33 + 4 T bytes of dynamic shared memory (at most 48 KiB, i.e. Q and T up
// to about 1400). A (P, T, Q) transposed copy of the costs is made first so that the kernel reads
// coalesced rows in both orientations. No host synchronisation: problems with non-finite costs are
// reported through the `ok` output, which the caller checks where it synchronises anyway.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "../../common/checks.h"
#include "../linear_assignment.h"
#include "linear_assignment_solver.cuh"

namespace rankseg_fast::linear_assignment {
namespace {

constexpr const char* kOp = "linear_assignment";
constexpr size_t kMaxSharedBytes = 48 * 1024;

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_assignment_cuda(const at::Tensor& cost,
                                                                      const at::Tensor& valid) {
  const Sizes s = check_inputs(cost, valid);
  RSF_CHECK_VALUE(cost.is_cuda(), kOp, ": the CUDA kernel got `cost` on ", cost.device());
  const c10::cuda::CUDAGuard device_guard(cost.device());
  const auto index_options = cost.options().dtype(at::kLong);
  if (s.problems == 0 || s.targets == 0) {
    return {at::full({s.problems, s.targets}, -1, index_options),
            at::full({s.problems, s.targets}, -1, index_options),
            at::ones({s.problems}, cost.options().dtype(at::kBool))};
  }
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  RSF_CHECK_VALUE(s.problems <= kIntMax && s.queries * s.targets <= kIntMax, kOp,
                    ": `cost` ", shape_str(cost), " is too large: at most 2^31 - 1 problems and "
                    "queries * targets per problem");
  const size_t shared = cuda_impl::shared_bytes(s.queries, s.targets);
  RSF_CHECK_VALUE(shared <= kMaxSharedBytes, kOp, ": `cost` ", shape_str(cost),
                    " has too many queries or targets for the CUDA kernel (it keeps (max(Q, T) + 1) * 33"
                    " + 4 T bytes of state in 48 KiB of shared memory)");

  at::Tensor query_index = at::empty({s.problems, s.targets}, index_options);
  at::Tensor target_index = at::empty({s.problems, s.targets}, index_options);
  at::Tensor ok = at::empty({s.problems}, cost.options().dtype(at::kBool));
  const at::Tensor cost_c = cost.contiguous();
  const at::Tensor cost_t = cost_c.transpose(1, 2).contiguous();  // (P, T, Q)
  const at::Tensor valid_c = valid.contiguous();
  const int64_t side = std::max(s.queries, s.targets) + 1;
  const int threads = static_cast<int>(
      std::min<int64_t>(cuda_impl::kMaxThreads, (side + cuda_impl::kWarpSize - 1) /
                                                    cuda_impl::kWarpSize * cuda_impl::kWarpSize));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(cost_c.scalar_type(), kOp, [&] {
    cuda_impl::linear_assignment_kernel<scalar_t>
        <<<static_cast<unsigned int>(s.problems), threads, shared, stream>>>(
            cost_c.const_data_ptr<scalar_t>(), cost_t.const_data_ptr<scalar_t>(),
            valid_c.const_data_ptr<bool>(), static_cast<int>(s.queries), static_cast<int>(s.targets),
            query_index.mutable_data_ptr<int64_t>(), target_index.mutable_data_ptr<int64_t>(),
            ok.mutable_data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {query_index, target_index, ok};
}

}  // namespace
}  // namespace rankseg_fast::linear_assignment

TORCH_LIBRARY_IMPL(rankseg_fast, CUDA, m) {
  m.impl("linear_assignment", &rankseg_fast::linear_assignment::linear_assignment_cuda);
}
