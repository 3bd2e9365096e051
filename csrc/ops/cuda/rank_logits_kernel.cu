// CUDA backend of rank_logits, _rank_logits_backward, rank_scatter and _rank_scatter_backward:
// validation (shared with every backend), dtype dispatch, launch geometry and output allocation. The
// kernels and their thread mapping are described in rank_logits_kernels.cuh.
//
// Launches: forward 1 (all decoder layers at once); backward 1 (rows, per-block weight/bias partial
// sums and their fixed-order reduction by the last block; a 4-byte memset zeroes its block counter first)
// plus a dtype cast of grad_weight / grad_bias when the weight is not in the accumulation dtype; rank_scatter 1; its backward 1. Weight and bias are
// converted to the accumulation dtype first (a no-op for fp32 parameters, the AMP case). No host
// synchronisation; no launch for empty problems.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../../common/checks.h"
#include "../rank_logits.h"
#include "rank_logits_kernels.cuh"

namespace rankseg_fast::rank_logits {
namespace {

using cuda_impl::kThreads;

constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
constexpr int64_t kSharedBytes = 48 * 1024;  // default dynamic shared memory limit of a block
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kForwardRowsPerBlock = 32;
constexpr int64_t kBackwardRowsPerBlock = 128;
constexpr int64_t kScatterRowsPerBlock = 64;

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  RSF_CHECK_VALUE(t.is_cuda(), op, ": the CUDA kernel got `", name, "` on ", t.device());
}

// Geometry of a per-image launch: grid (chunks, batch); checks the 32-bit limits of the kernels.
struct ImageGrid {
  int rows_per_image, rows_per_block;
  dim3 grid;
};

ImageGrid image_grid(int64_t batch, int64_t rows_per_image, int64_t rows_per_block,
                     int64_t classes_plus_one, const char* op) {
  RSF_CHECK_VALUE(batch <= kMaxGridY, op, ": the CUDA kernels support at most ", kMaxGridY,
                    " images, got ", batch);
  RSF_CHECK_VALUE(rows_per_image <= kIntMax && classes_plus_one <= kIntMax, op,
                    ": layers * queries (", rows_per_image, ") and classes + 1 (", classes_plus_one,
                    ") must each fit in int32");
  const int64_t chunks = std::max<int64_t>(1, (rows_per_image + rows_per_block - 1) / rows_per_block);
  return {static_cast<int>(rows_per_image), static_cast<int>(rows_per_block),
          dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(batch))};
}

void check_shared(int64_t bytes, const char* op, const char* what) {
  RSF_CHECK_VALUE(bytes <= kSharedBytes, op, ": the CUDA kernel keeps ", what, " in shared memory (",
                    bytes, " bytes), more than the ", kSharedBytes, " available; too many classes");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rank_logits_cuda(
    const at::Tensor& class_logits, const at::Tensor& scores, int64_t k, const at::Tensor& weight,
    const at::Tensor& bias, double eps) {
  const Sizes s = check_inputs(class_logits, scores, k, weight, bias);
  check_cuda(class_logits, "rank_logits", "class_logits");
  const c10::cuda::CUDAGuard device_guard(class_logits.device());
  const at::ScalarType acc = acc_dtype(class_logits.scalar_type());
  at::Tensor ranked = at::empty({s.layers, s.batch, s.queries, s.ranks()}, class_logits.options());
  at::Tensor rank_index = at::empty({s.batch, s.ranks()}, scores.options().dtype(at::kLong));
  at::Tensor mean = at::empty({s.layers, s.batch, s.queries}, class_logits.options().dtype(acc));
  at::Tensor rstd = at::empty_like(mean);
  if (s.batch == 0) return {ranked, rank_index, mean, rstd};

  // A warp's rows run one after another, each about one gather round trip: few rows per block give the
  // GPU enough warps (the ADE shape, 2000 rows per image, makes 63 blocks per image). Every block ranks
  // its image again, K * ceil(K / 256) shared reads per thread: K / 16 rows keep that a small share.
  const int64_t rows_per_block = std::max<int64_t>(kForwardRowsPerBlock, s.classes / 16);
  const ImageGrid g = image_grid(s.batch, s.layers * s.queries, rows_per_block, s.classes + 1, "rank_logits");
  const at::Tensor x = class_logits.contiguous(), sc = scores.contiguous();
  const at::Tensor w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(x.scalar_type(), [&]<typename scalar_t>() {
    using acc_t = cuda::acc_type_t<scalar_t>;
    dispatch_float(sc.scalar_type(), [&]<typename score_t>() {
      using key_t = cuda::acc_type_t<score_t>;
      const int64_t shared = s.classes * static_cast<int64_t>(sizeof(key_t)) + s.ranks() * 4;
      check_shared(shared, "rank_logits", "the scores of an image");
      cuda_impl::rank_logits_forward_kernel<scalar_t, score_t>
          <<<g.grid, kThreads, shared, stream>>>(
              x.const_data_ptr<scalar_t>(), sc.const_data_ptr<score_t>(), w.const_data_ptr<acc_t>(),
              b.const_data_ptr<acc_t>(), ranked.mutable_data_ptr<scalar_t>(),
              rank_index.mutable_data_ptr<int64_t>(), mean.mutable_data_ptr<acc_t>(),
              rstd.mutable_data_ptr<acc_t>(), static_cast<int>(s.batch), static_cast<int>(s.queries),
              static_cast<int>(s.classes), static_cast<int>(s.k), g.rows_per_image, g.rows_per_block,
              static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {ranked, rank_index, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rank_logits_backward_cuda(
    const at::Tensor& grad_ranked, const at::Tensor& class_logits, const at::Tensor& rank_index,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  const Sizes s = check_backward_inputs(grad_ranked, class_logits, rank_index, weight, mean, rstd);
  check_cuda(class_logits, "rank_logits", "class_logits");
  const c10::cuda::CUDAGuard device_guard(class_logits.device());
  const at::ScalarType acc = acc_dtype(class_logits.scalar_type());
  at::Tensor grad_logits = at::empty(class_logits.sizes(), class_logits.options());
  if (s.rows() == 0) {
    const at::Tensor zeros = at::zeros({s.ranks()}, weight.options());
    return {grad_logits, zeros, zeros.clone()};
  }
  const ImageGrid g = image_grid(s.batch, s.layers * s.queries, kBackwardRowsPerBlock,
                                 s.classes + 1, "rank_logits");
  const int64_t shared = (s.ranks() + s.classes + 1) * 4;
  check_shared(shared, "rank_logits", "the rank and class tables of an image");
  const int64_t blocks = static_cast<int64_t>(g.grid.x) * g.grid.y;
  at::Tensor partial = at::empty({blocks, 2, s.ranks()}, class_logits.options().dtype(acc));
  at::Tensor grad_weight = at::empty({s.ranks()}, class_logits.options().dtype(acc));
  at::Tensor grad_bias = at::empty({s.ranks()}, class_logits.options().dtype(acc));
  const at::Tensor go = grad_ranked.contiguous(), x = class_logits.contiguous();
  const at::Tensor idx = rank_index.contiguous(), w = weight.to(acc).contiguous();
  const at::Tensor mu = mean.contiguous(), inv = rstd.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // The backward kernel's block counter (see rank_logits_kernels.cuh), zeroed by a memset, not a kernel.
  at::Tensor blocks_done = at::empty({1}, class_logits.options().dtype(at::kInt));
  auto* blocks_done_ptr = reinterpret_cast<unsigned int*>(blocks_done.mutable_data_ptr<int32_t>());
  C10_CUDA_CHECK(cudaMemsetAsync(blocks_done_ptr, 0, sizeof(unsigned int), stream));
  dispatch_float(x.scalar_type(), [&]<typename scalar_t>() {
    using acc_t = cuda::acc_type_t<scalar_t>;
    cuda_impl::rank_logits_backward_kernel<scalar_t><<<g.grid, kThreads, shared, stream>>>(
        go.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
        w.const_data_ptr<acc_t>(), mu.const_data_ptr<acc_t>(), inv.const_data_ptr<acc_t>(),
        grad_logits.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), blocks_done_ptr,
        grad_weight.mutable_data_ptr<acc_t>(), grad_bias.mutable_data_ptr<acc_t>(), static_cast<int>(s.batch), static_cast<int>(s.queries), static_cast<int>(s.classes),
        static_cast<int>(s.ranks()), g.rows_per_image, g.rows_per_block);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_logits, grad_weight.to(weight.scalar_type()), grad_bias.to(weight.scalar_type())};
}

at::Tensor rank_scatter_cuda(const at::Tensor& ranked, const at::Tensor& rank_index,
                             int64_t num_classes, double fill) {
  const ScatterSizes s = check_scatter_inputs(ranked, rank_index, num_classes);
  check_cuda(ranked, "rank_scatter", "ranked");
  const c10::cuda::CUDAGuard device_guard(ranked.device());
  std::vector<int64_t> shape(ranked.sizes().begin(), ranked.sizes().end());
  shape.back() = num_classes + 1;
  at::Tensor out = at::empty(shape, ranked.options());
  if (out.numel() == 0) return out;
  const ImageGrid g = image_grid(s.batch, s.leading * s.queries, kScatterRowsPerBlock,
                                 num_classes + 1, "rank_scatter");
  const int64_t shared = (num_classes + 1) * 4;
  check_shared(shared, "rank_scatter", "the class table of an image");
  const at::Tensor src = ranked.contiguous(), idx = rank_index.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(src.scalar_type(), [&]<typename scalar_t>() {
    cuda_impl::rank_scatter_kernel<scalar_t><<<g.grid, kThreads, shared, stream>>>(
        src.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
        out.mutable_data_ptr<scalar_t>(), static_cast<int>(s.batch), static_cast<int>(s.queries),
        static_cast<int>(num_classes + 1), static_cast<int>(s.ranks), g.rows_per_image,
        g.rows_per_block, static_cast<scalar_t>(fill));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rank_scatter_backward_cuda(const at::Tensor& grad_output, const at::Tensor& rank_index) {
  const ScatterSizes s = check_scatter_backward_inputs(grad_output, rank_index);
  check_cuda(grad_output, "rank_scatter", "grad_output");
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  std::vector<int64_t> shape(grad_output.sizes().begin(), grad_output.sizes().end());
  shape.back() = s.ranks;
  at::Tensor grad_ranked = at::empty(shape, grad_output.options());
  const int64_t elements = grad_ranked.numel();
  if (elements == 0) return grad_ranked;
  RSF_CHECK_VALUE(s.batch <= kIntMax && s.queries <= kIntMax && s.classes + 1 <= kIntMax,
                    "rank_scatter: batch, queries and classes + 1 must each fit in int32");
  const int64_t blocks = std::min<int64_t>((elements + kThreads - 1) / kThreads, 65535);
  const at::Tensor go = grad_output.contiguous(), idx = rank_index.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(go.scalar_type(), [&]<typename scalar_t>() {
    cuda_impl::rank_scatter_backward_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            go.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
            grad_ranked.mutable_data_ptr<scalar_t>(), elements, static_cast<int>(s.batch),
            static_cast<int>(s.queries), static_cast<int>(s.classes + 1), static_cast<int>(s.ranks));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_ranked;
}

}  // namespace
}  // namespace rankseg_fast::rank_logits

TORCH_LIBRARY_IMPL(rankseg_fast, CUDA, m) {
  m.impl("rank_logits", &rankseg_fast::rank_logits::rank_logits_cuda);
  m.impl("_rank_logits_backward", &rankseg_fast::rank_logits::rank_logits_backward_cuda);
  m.impl("rank_scatter", &rankseg_fast::rank_logits::rank_scatter_cuda);
  m.impl("_rank_scatter_backward", &rankseg_fast::rank_logits::rank_scatter_backward_cuda);
}
