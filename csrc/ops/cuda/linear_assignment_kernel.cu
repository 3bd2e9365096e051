// CUDA backend of linear_assignment: validation (shared with every backend), dtype dispatch, launch
// configuration and output allocation. The kernel lives in linear_assignment_solver.cuh.
//
// Launch: one block per problem, blockDim = max(Q, T) + 1 rounded up to a multiple of 32, at most 256
// threads; (max(Q, T) + 1) * 33 + 4 T bytes of dynamic shared memory for the solver state (at most 48
// KiB, i.e. Q and T up to about 1400), plus Q * T cost scalars when they fit in the device's opt-in
// shared memory per block (Mask2Former's 100-200 queries x up to ~100 targets do on sm_80+), else the
// kernel stages the costs in a global scratch. No host synchronisation: problems with non-finite costs
// are reported through the `ok` output, which the caller checks where it synchronises anyway.
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
  const size_t state = cuda_impl::state_bytes(s.queries, s.targets);
  RSF_CHECK_VALUE(state <= kMaxSharedBytes, kOp, ": `cost` ", shape_str(cost),
                    " has too many queries or targets for the CUDA kernel (it keeps (max(Q, T) + 1) * 33"
                    " + 4 T bytes of state in 48 KiB of shared memory)");
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cost.get_device()));

  at::Tensor query_index = at::empty({s.problems, s.targets}, index_options);
  at::Tensor target_index = at::empty({s.problems, s.targets}, index_options);
  at::Tensor ok = at::empty({s.problems}, cost.options().dtype(at::kBool));
  const at::Tensor cost_c = cost.contiguous();
  const at::Tensor valid_c = valid.contiguous();
  const int64_t side = std::max(s.queries, s.targets) + 1;
  const int threads = static_cast<int>(
      std::min<int64_t>(cuda_impl::kMaxThreads, (side + cuda_impl::kWarpSize - 1) /
                                                    cuda_impl::kWarpSize * cuda_impl::kWarpSize));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(cost_c.scalar_type(), kOp, [&] {
    const auto kernel = cuda_impl::linear_assignment_kernel<scalar_t>;
    size_t shared = state + cuda_impl::staged_cost_bytes<scalar_t>(s.queries, s.targets);
    at::Tensor staging;  // undefined: the costs are staged in shared memory
    if (shared > static_cast<size_t>(optin)) {
      shared = state;
      staging = at::empty({s.problems, s.queries * s.targets}, cost_c.options());
    } else if (shared > kMaxSharedBytes) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    }
    kernel<<<static_cast<unsigned int>(s.problems), threads, shared, stream>>>(
        cost_c.const_data_ptr<scalar_t>(), valid_c.const_data_ptr<bool>(), static_cast<int>(s.queries),
        static_cast<int>(s.targets), staging.defined() ? staging.mutable_data_ptr<scalar_t>() : nullptr,
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
