// CUDA backend of masked_attention and _masked_attention_backward: validation (shared with every
// backend), dtype and head-dim dispatch, launch configuration and output allocation. The kernels live in
// masked_attention_mask.cuh (mask pre-pass), masked_attention_forward.cuh and masked_attention_backward.cuh.
//
// Mask: mask_logits are packed once per (b, q) into visible-key words by a pre-pass kernel (one warp per
// row, one ballot per 32 keys, all-blocked-row rule applied there, no host sync); the attention kernels
// read only the words: 1 bit per (b, q, key) instead of a (B, H, Q, L) mask.
// Dispatch: query dtype in {fp32, fp16, bf16} (fp64 is refused: the Python op runs the reference for it)
// x head dim D rounded up to DMAX in {16, 32, 64, 128} (larger D is refused with a clear error); the mask
// logits may have any float dtype. fp16/bf16 with DMAX <= 64 run the tensor-core kernels
// (masked_attention_*_mma.cuh) when the binary loaded for the device is sm_80+, everything else the SIMT
// fp32 kernels; both families share the mask pre-pass, the partial layouts and the combine / reduce
// kernels. Launch: 128-thread blocks, grid (row blocks, B * H, key splits): the forward and dq kernels
// split the keys so that about kBlocksPerSm blocks per SM run (fp32 partials, merged by a combine /
// reduce kernel); the dkdv kernel has a block per 8-64 keys and needs no split.
// No host synchronisation, no kernel launch for empty problems.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <utility>
#include <type_traits>

#include "../../common/checks.h"
#include "../masked_attention.h"
#include "masked_attention_backward.cuh"
#include "masked_attention_backward_mma.cuh"
#include "masked_attention_forward.cuh"
#include "masked_attention_forward_mma.cuh"
#include "masked_attention_mask.cuh"

namespace rankseg_fast::masked_attention {
namespace {

using cuda_impl::kThreads;
using cuda_impl::kWarps;
using cuda_impl::Problem;
using cuda_impl::TileShape;

constexpr const char* kOp = "masked_attention";
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kBlocksPerSm = 8;        // blocks per SM the key split aims for
constexpr int64_t kMinTilesPerSplit = 4;   // at least 128 keys per split

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How to split `tiles` key tiles among blocks when `base_blocks` blocks exist without a split.
struct KeySplit {
  int64_t splits, tiles_per_split;
};

KeySplit choose_split(int64_t base_blocks, int64_t tiles, const at::Tensor& on) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, on.get_device()));
  const int64_t wanted = ceil_div(kBlocksPerSm * sms, base_blocks);
  const int64_t splits = std::max<int64_t>(1, std::min(wanted, ceil_div(tiles, kMinTilesPerSplit)));
  const int64_t tiles_per_split = ceil_div(tiles, splits);
  return {ceil_div(tiles, tiles_per_split), tiles_per_split};  // no empty split
}

void check_cuda_support(const at::Tensor& query, const Sizes& s) {
  RSF_CHECK_VALUE(query.is_cuda(), kOp, ": the CUDA kernel got `query` on ", query.device());
  RSF_CHECK_TYPE(query.scalar_type() != at::kDouble, kOp,
                   ": the CUDA kernel has no float64 version (rankseg_fast.ops.masked_attention runs the "
                   "reference for float64 CUDA tensors)");
  RSF_CHECK_VALUE(s.head_dim <= 128, kOp, ": head dim ", s.head_dim,
                    " (channels / num_heads) is too large: the CUDA kernel supports at most 128");
  RSF_CHECK_VALUE(s.batch * s.num_heads <= kMaxGridY, kOp, ": batch * num_heads = ",
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
  p.tiles_per_split = p.words;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  p.scale_log2 = p.scale * cuda_impl::kLog2e;
  return p;
}

// The tensor-core kernels load rows in 16-byte chunks: head_dim % 8 == 0 (so every head starts 16-byte
// aligned inside a row of E = heads * head_dim channels) and 16-byte aligned tensors. Real models have
// 32-channel heads and fresh allocations; odd head dims and views at odd offsets run the SIMT kernels.
bool tensor_core_layout(const Sizes& s, std::initializer_list<at::Tensor> tensors) {
  if (s.head_dim % 8 != 0) return false;
  for (const at::Tensor& t : tensors) {
    if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) return false;
  }
  return true;
}

// Picks the tensor-core kernel over the SIMT one when the tensor-core kernel exists for these template
// arguments, the inputs have its layout, and the code the device will run was compiled for sm_80+ (a
// build for older archs only would run its trapping fallback). Returns the kernel and the rows (queries
// or keys) a block covers.
template <typename Kernel>
std::pair<Kernel, int64_t> pick_kernel(Kernel simt, int64_t simt_rows, Kernel mma, bool layout_ok) {
  if (mma != nullptr && layout_ok) {
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(mma)));
    if (attributes.binaryVersion >= 80) return {mma, cuda_impl::kMmaRows};
  }
  return {simt, simt_rows};
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
  dispatch(q, s.head_dim, [&]<typename scalar_t, int DMAX>() {
    decltype(&cuda_impl::masked_attention_forward_kernel<scalar_t, DMAX>) mma_kernel = nullptr;
    if constexpr (cuda_impl::kMmaSupported<scalar_t, DMAX>) {
      mma_kernel = cuda_impl::masked_attention_forward_mma_kernel<scalar_t, DMAX>;
    }
    const auto [kernel, rows] = pick_kernel(cuda_impl::masked_attention_forward_kernel<scalar_t, DMAX>,
                                            TileShape<DMAX>::kRows, mma_kernel, tensor_core_layout(s, {q, k, v}));
    Problem p = make_problem(s);
    const int64_t bh = s.batch * num_heads, row_blocks = ceil_div(s.num_queries, rows);
    const KeySplit split = choose_split(row_blocks * bh, p.words, q);
    p.tiles_per_split = split.tiles_per_split;
    const at::TensorOptions f32 = q.options().dtype(at::kFloat);
    at::Tensor partial_o = at::empty({split.splits, bh, s.num_queries, s.head_dim}, f32);
    at::Tensor partial_m = at::empty({split.splits, bh, s.num_queries}, f32);
    at::Tensor partial_l = at::empty({split.splits, bh, s.num_queries}, f32);
    const dim3 grid(static_cast<unsigned int>(row_blocks), static_cast<unsigned int>(bh),
                    static_cast<unsigned int>(split.splits));
    kernel<<<grid, kThreads, 0, stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), word_ptr(words),
        partial_o.mutable_data_ptr<float>(), partial_m.mutable_data_ptr<float>(), partial_l.mutable_data_ptr<float>(),
        p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda_impl::masked_attention_combine_kernel<scalar_t>
        <<<blocks_for(partial_o[0].numel(), kThreads), kThreads, 0, stream>>>(
            partial_o.const_data_ptr<float>(), partial_m.const_data_ptr<float>(), partial_l.const_data_ptr<float>(),
            split.splits, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(), p);
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
  dispatch(q, s.head_dim, [&]<typename scalar_t, int DMAX>() {
    decltype(&cuda_impl::masked_attention_dq_kernel<scalar_t, DMAX>) mma_dq = nullptr;
    decltype(&cuda_impl::masked_attention_dkdv_kernel<scalar_t, DMAX>) mma_dkdv = nullptr;
    if constexpr (cuda_impl::kMmaSupported<scalar_t, DMAX>) {
      mma_dq = cuda_impl::masked_attention_dq_mma_kernel<scalar_t, DMAX>;
      mma_dkdv = cuda_impl::masked_attention_dkdv_mma_kernel<scalar_t, DMAX>;
    }
    constexpr int64_t simt_rows = TileShape<DMAX>::kRows;
    const bool layout_ok = tensor_core_layout(s, {go, q, k, v, o});
    const auto [dq_kernel, rows] =
        pick_kernel(cuda_impl::masked_attention_dq_kernel<scalar_t, DMAX>, simt_rows, mma_dq, layout_ok);
    const auto [dkdv_kernel, key_rows] =
        pick_kernel(cuda_impl::masked_attention_dkdv_kernel<scalar_t, DMAX>, simt_rows, mma_dkdv, layout_ok);
    Problem p = make_problem(s);
    const int64_t bh = s.batch * num_heads, row_blocks = ceil_div(s.num_queries, rows);
    const KeySplit split = choose_split(row_blocks * bh, p.words, q);
    p.tiles_per_split = split.tiles_per_split;
    at::Tensor partial_dq =
        at::empty({split.splits, bh, s.num_queries, s.head_dim}, q.options().dtype(at::kFloat));
    const dim3 dq_grid(static_cast<unsigned int>(row_blocks), static_cast<unsigned int>(bh),
                       static_cast<unsigned int>(split.splits));
    dq_kernel<<<dq_grid, kThreads, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), word_ptr(words), o.const_data_ptr<scalar_t>(), lse_c.const_data_ptr<float>(),
        delta.mutable_data_ptr<float>(), partial_dq.mutable_data_ptr<float>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda_impl::masked_attention_dq_reduce_kernel<scalar_t>
        <<<blocks_for(partial_dq[0].numel(), kThreads), kThreads, 0, stream>>>(
            partial_dq.const_data_ptr<float>(), split.splits, grad_query.mutable_data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 dkdv_grid(blocks_for(s.num_keys, key_rows), static_cast<unsigned int>(bh));
    dkdv_kernel<<<dkdv_grid, kThreads, 0, stream>>>(
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
