// CUDA backend of masked_attention and _masked_attention_backward: validation (shared with every
// backend), dtype and head-dim dispatch, launch configuration and output allocation. The kernels live in
// masked_attention_mask.cuh (mask pre-pass), masked_attention_forward.cuh and masked_attention_backward.cuh.
//
// Mask: mask_logits are packed once per (b, q) into visible-key words by a pre-pass kernel (one warp per
// row, one ballot per 32 keys, all-blocked-row rule applied there, no host sync); the attention kernels
// read only the words: 1 bit per (b, q, key) instead of a (B, H, Q, L) mask.
// Dispatch: query dtype in {fp32, fp16, bf16} (fp64 is refused: the Python op runs the reference for it)
// x head dim D rounded up to DMAX in {16, 32, 64, 128} (larger D is refused with a clear error); the mask
// logits may have any float dtype. Launch: 128-thread blocks, grid (row blocks, B * H).
// No host synchronisation, no kernel launch for empty problems.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../masked_attention.h"
#include "masked_attention_backward.cuh"
#include "masked_attention_forward.cuh"
#include "masked_attention_mask.cuh"

namespace rankseg_fast::masked_attention {
namespace {

using cuda_impl::kThreads;
using cuda_impl::kWarps;
using cuda_impl::Problem;
using cuda_impl::TileShape;

constexpr const char* kOp = "masked_attention";
constexpr int64_t kMaxGridY = 65535;

void check_cuda_support(const at::Tensor& query, const Sizes& s) {
  TORCH_CHECK_VALUE(query.is_cuda(), kOp, ": the CUDA kernel got `query` on ", query.device());
  TORCH_CHECK_TYPE(query.scalar_type() != at::kDouble, kOp,
                   ": the CUDA kernel has no float64 version (rankseg_fast.ops.masked_attention runs the "
                   "reference for float64 CUDA tensors)");
  TORCH_CHECK_VALUE(s.head_dim <= 128, kOp, ": head dim ", s.head_dim,
                    " (channels / num_heads) is too large: the CUDA kernel supports at most 128");
  TORCH_CHECK_VALUE(s.batch * s.num_heads <= kMaxGridY, kOp, ": batch * num_heads = ",
                    s.batch * s.num_heads, " exceeds the ", kMaxGridY, " the CUDA kernel supports");
}

Problem make_problem(const Sizes& s) {
  Problem p{};
  p.batch = s.batch;
  p.queries = s.num_queries;
  p.keys = s.num_keys;
  p.heads = s.num_heads;
  p.head_dim = s.head_dim;
  p.words = s.words_per_row();
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  p.scale_log2 = p.scale * cuda_impl::kLog2e;
  return p;
}

unsigned int blocks_for(int64_t rows, int64_t rows_per_block) {
  return static_cast<unsigned int>((rows + rows_per_block - 1) / rows_per_block);
}

// Runs fn.template operator()<scalar_t, DMAX>() for the query dtype and the head dim rounded up.
template <typename Fn>
void dispatch(const at::Tensor& query, int64_t head_dim, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), kOp, [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (head_dim <= 16) {
        fn.template operator()<scalar_t, 16>();
      } else if (head_dim <= 32) {
        fn.template operator()<scalar_t, 32>();
      } else if (head_dim <= 64) {
        fn.template operator()<scalar_t, 64>();
      } else {
        fn.template operator()<scalar_t, 128>();
      }
    }
  });
}

// (B, Q, L) logits -> (B, Q, ceil(L / 32)) int32 visible-key words, on the current stream.
at::Tensor pack_visible_keys(const at::Tensor& mask_logits, const Sizes& s, cudaStream_t stream) {
  at::Tensor words =
      at::empty({s.batch, s.num_queries, s.words_per_row()}, mask_logits.options().dtype(at::kInt));
  const int64_t rows = s.batch * s.num_queries;
  const at::Tensor logits = mask_logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), kOp, [&] {
    cuda_impl::pack_visible_keys_kernel<scalar_t><<<blocks_for(rows, kWarps), kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(words.mutable_data_ptr<int32_t>()),
        rows, s.num_keys, s.words_per_row());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return words;
}

const uint32_t* word_ptr(const at::Tensor& words) {
  return reinterpret_cast<const uint32_t*>(words.const_data_ptr<int32_t>());
}

std::tuple<at::Tensor, at::Tensor> masked_attention_cuda(const at::Tensor& query, const at::Tensor& key,
                                                         const at::Tensor& value, const at::Tensor& mask_logits,
                                                         int64_t num_heads) {
  const Sizes s = check_inputs(query, key, value, mask_logits, num_heads);
  check_cuda_support(query, s);
  const c10::cuda::CUDAGuard device_guard(query.device());
  at::Tensor out = at::empty(query.sizes(), query.options());
  if (query.numel() == 0) {  // nothing to attend with (B, Q or E is 0); lse is 0 when only E is
    return {out, at::zeros({s.batch, s.num_heads, s.num_queries}, query.options().dtype(at::kFloat))};
  }
  at::Tensor lse = at::empty({s.batch, s.num_heads, s.num_queries}, query.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor words = pack_visible_keys(mask_logits, s, stream);
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const Problem p = make_problem(s);
  dispatch(q, s.head_dim, [&]<typename scalar_t, int DMAX>() {
    const dim3 grid(blocks_for(s.num_queries, TileShape<DMAX>::kRows), static_cast<unsigned int>(s.batch * num_heads));
    cuda_impl::masked_attention_forward_kernel<scalar_t, DMAX><<<grid, kThreads, 0, stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), word_ptr(words),
        out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& mask_logits, const at::Tensor& out, const at::Tensor& lse, int64_t num_heads) {
  const Sizes s = check_inputs(query, key, value, mask_logits, num_heads);
  check_backward_inputs(grad_output, out, lse, query, s);
  check_cuda_support(query, s);
  const c10::cuda::CUDAGuard device_guard(query.device());
  if (query.numel() == 0) {  // no query attends: every key and value gradient is zero
    return {at::zeros(query.sizes(), query.options()), at::zeros(key.sizes(), key.options()),
            at::zeros(value.sizes(), value.options())};
  }
  // Contiguous (options() carries no memory format); the kernels write every element.
  at::Tensor grad_query = at::empty(query.sizes(), query.options());
  at::Tensor grad_key = at::empty(key.sizes(), key.options());
  at::Tensor grad_value = at::empty(value.sizes(), value.options());
  at::Tensor delta = at::empty({s.batch, s.num_heads, s.num_queries}, query.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor words = pack_visible_keys(mask_logits, s, stream);
  const at::Tensor go = grad_output.contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous(), o = out.contiguous(), lse_c = lse.contiguous();
  const Problem p = make_problem(s);
  dispatch(q, s.head_dim, [&]<typename scalar_t, int DMAX>() {
    constexpr int64_t rows = TileShape<DMAX>::kRows;
    const unsigned int bh = static_cast<unsigned int>(s.batch * num_heads);
    cuda_impl::masked_attention_dq_kernel<scalar_t, DMAX><<<dim3(blocks_for(s.num_queries, rows), bh), kThreads,
                                                             0, stream>>>(
        go.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), word_ptr(words), o.const_data_ptr<scalar_t>(), lse_c.const_data_ptr<float>(),
        delta.mutable_data_ptr<float>(), grad_query.mutable_data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda_impl::masked_attention_dkdv_kernel<scalar_t, DMAX><<<dim3(blocks_for(s.num_keys, rows), bh), kThreads,
                                                               0, stream>>>(
        go.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), word_ptr(words), lse_c.const_data_ptr<float>(), delta.const_data_ptr<float>(),
        grad_key.mutable_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_query, grad_key, grad_value};
}

}  // namespace
}  // namespace rankseg_fast::masked_attention

TORCH_LIBRARY_IMPL(rankseg_fast, CUDA, m) {
  m.impl("masked_attention", &rankseg_fast::masked_attention::masked_attention_cuda);
  m.impl("_masked_attention_backward", &rankseg_fast::masked_attention::masked_attention_backward_cuda);
}
