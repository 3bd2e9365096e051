// CPU kernels of masked_attention (forward and backward).
//
// Mask: a pre-pass packs mask_logits once per (b, q) into visible-key words (masked_attention.h),
// applying the all-blocked-row rule there; the attention kernels read only the words, so the mask is
// never repeated per head and no kernel needs to know the rule.
//
// Algorithm: the kernels see (B, H, rows, D) tensors in the statistics dtype (fp32 for fp16/bf16/fp32,
// fp64 for fp64): for fp32/fp64 inputs and outputs these are strided views of the (B, rows, H * D) tensors
// themselves (BLAS reads and writes a head's rows H * D apart: no copies), for fp16/bf16 converted copies;
// q is always a copy, pre-scaled by 1/sqrt(D). The forward splits (batch x head x
// block of kQueryBlock queries) across threads; each task computes its score block S = q k^T
// (kQueryBlock x L, BLAS), takes the masked softmax of each row in two vectorised passes (mask and max,
// then exp and sum; softmax_rows.h, at the machine's vector width) and writes out = (E v) / sum with
// E = exp(S - max), and lse = max + log(sum). Nothing of size (B, H, Q, L) is ever materialised.
// The backward splits (batch x head): each task owns dK, dV of its (b, h) (no races, deterministic),
// walks the query blocks and recomputes P = exp(S - lse) (one vectorised pass with dS), then dV += P^T dO,
// dS = P * (dO v^T - delta)
// with delta = rowsum(dO * out) (flash-attention's identity, from the forward output), dQ = dS k / sqrt(D)
// and dK += dS^T q / sqrt(D).
//
// Accumulation dtype: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64; outputs are rounded once.
// Numerics caveats: for fp16/bf16, delta uses the rounded forward output, as flash-attention does; the
// fp32 exp is a polynomial within a few ulp of expf (fp64 uses std::exp).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../../common/checks.h"
#include "../masked_attention.h"
#include "softmax_rows.h"

namespace rankseg_fast::masked_attention {
namespace {

constexpr int64_t kQueryBlock = 64;

// Packs one row of L logits into ceil(L / 32) visible-key words, applying the all-blocked-row rule.
template <typename mask_t>
void pack_row(const mask_t* logits, int64_t L, uint32_t* words) {
  using cmp_t = at::opmath_type<mask_t>;  // exact for every float dtype (no rounding of small logits)
  const int64_t num_words = (L + kKeysPerWord - 1) / kKeysPerWord;
  uint32_t any = 0;
  for (int64_t w = 0; w < num_words; ++w) {
    const int64_t n = std::min<int64_t>(kKeysPerWord, L - w * kKeysPerWord);
    uint32_t word = 0;
    for (int64_t k = 0; k < n; ++k) {
      const bool blocked = static_cast<cmp_t>(logits[w * kKeysPerWord + k]) < cmp_t(0);
      word |= static_cast<uint32_t>(!blocked) << k;
    }
    words[w] = word;
    any |= word;
  }
  if (any != 0) return;
  for (int64_t w = 0; w < num_words; ++w) {
    const int64_t n = std::min<int64_t>(kKeysPerWord, L - w * kKeysPerWord);
    words[w] = n == kKeysPerWord ? ~uint32_t{0} : (uint32_t{1} << n) - 1u;
  }
}

// (B, Q, L) logits -> (B, Q, ceil(L / 32)) int32 visible-key words.
at::Tensor pack_visible_keys(const at::Tensor& mask_logits, const Sizes& s) {
  at::Tensor words = at::empty({s.batch, s.num_queries, s.words_per_row()},
                               mask_logits.options().dtype(at::kInt));
  const at::Tensor logits = mask_logits.contiguous();
  const int64_t L = s.num_keys, num_words = s.words_per_row();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_attention", [&] {
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    uint32_t* out = reinterpret_cast<uint32_t*>(words.mutable_data_ptr<int32_t>());
    at::parallel_for(0, s.batch * s.num_queries, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) pack_row(x + row * L, L, out + row * num_words);
    });
  });
  return words;
}

// (B, rows, H * D) -> a new contiguous (B, H, rows, D) tensor in dtype.
at::Tensor heads_first(const at::Tensor& t, int64_t num_heads, at::ScalarType dtype) {
  const int64_t B = t.size(0), rows = t.size(1), D = t.size(2) / num_heads;
  return at::empty({B, num_heads, rows, D}, t.options().dtype(dtype))
      .copy_(t.view({B, rows, num_heads, D}).transpose(1, 2));
}

// (B, rows, H * D) as (B, H, rows, D) in dtype: a view of t itself when t is contiguous in dtype (a head's
// rows are H * D apart, which BLAS takes as the leading dimension: no copy), else heads_first. The view is
// detached: at::parallel_for's worker threads do not inherit the caller's below-autograd dispatch state,
// and ATen's out= matmuls refuse arguments that require grad.
at::Tensor heads_view(const at::Tensor& t, int64_t num_heads, at::ScalarType dtype) {
  if (t.scalar_type() != dtype || !t.is_contiguous()) return heads_first(t, num_heads, dtype);
  const int64_t B = t.size(0), rows = t.size(1), D = t.size(2) / num_heads;
  return t.detach().view({B, rows, num_heads, D}).transpose(1, 2);
}

// An output (B, rows, H * D) in dtype that the kernels write as (B, H, rows, D) in acc: `heads` is a view
// of `result` when dtype is acc, else an acc buffer that `finish()` converts once.
struct HeadsOutput {
  at::Tensor result, heads;

  HeadsOutput(const at::Tensor& like, int64_t rows, int64_t num_heads, int64_t head_dim, at::ScalarType acc) {
    const int64_t B = like.size(0);
    if (like.scalar_type() == acc) {
      result = at::empty({B, rows, num_heads * head_dim}, like.options());
      heads = result.view({B, rows, num_heads, head_dim}).transpose(1, 2);
    } else {
      heads = at::empty({B, num_heads, rows, head_dim}, like.options().dtype(acc));
    }
  }

  at::Tensor finish(at::ScalarType dtype) const {
    if (result.defined()) return result;
    const int64_t B = heads.size(0), H = heads.size(1), rows = heads.size(2), D = heads.size(3);
    at::Tensor converted = at::empty({B, rows, H * D}, heads.options().dtype(dtype));
    converted.view({B, rows, H, D}).copy_(heads.transpose(1, 2));
    return converted;
  }
};

// q (B,H,Q,D) pre-scaled by 1/sqrt(D), k, v (B,H,L,D), all acc_t; words (B,Q,W).
// Writes out (B,H,Q,D) and lse (B,H,Q) (contiguous), acc_t. The (Q, D) / (L, D) matrices of a head may be
// row-strided views (unit channel stride), as BLAS takes them.
template <typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const uint32_t* words,
                  const Sizes& s, at::Tensor& out, at::Tensor& lse) {
  const int64_t H = s.num_heads, Q = s.num_queries, L = s.num_keys, D = s.head_dim, W = s.words_per_row();
  const int64_t blocks = (Q + kQueryBlock - 1) / kQueryBlock;
  acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
  at::parallel_for(0, s.batch * H * blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor scores = at::empty({kQueryBlock, L}, q.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / blocks, b = bh / H, h = bh % H;
      const int64_t q0 = task % blocks * kQueryBlock, nq = std::min(kQueryBlock, Q - q0);
      at::Tensor block = scores.narrow(0, 0, nq);
      at::mm_out(block, q[b][h].narrow(0, q0, nq), k[b][h].t());
      at::Tensor out_block = out[b][h].narrow(0, q0, nq);
      acc_t inv_sum[kQueryBlock];
      for (int64_t i = 0; i < nq; ++i) {
        // Every row sees a key (the all-blocked-row rule is in the words): max is finite, sum >= 1.
        const auto [max, sum] =
            rows::softmax_row(block.mutable_data_ptr<acc_t>() + i * L, words + (b * Q + q0 + i) * W, L);
        inv_sum[i] = acc_t(1) / sum;
        lse_ptr[bh * Q + q0 + i] = max + std::log(sum);
      }
      at::mm_out(out_block, block, v[b][h]);
      acc_t* o = out_block.mutable_data_ptr<acc_t>();
      const int64_t row_stride = out_block.stride(0);
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t d = 0; d < D; ++d) o[i * row_stride + d] *= inv_sum[i];
      }
    }
  });
}

// Inputs in acc_t, heads first (a head's matrices may be row-strided views, as in forward_impl): q (B,H,Q,D)
// pre-scaled by 1/sqrt(D), go (B,H,Q,D), k, v (B,H,L,D), lse, delta (B,H,Q) contiguous. Writes every
// element of dq (B,H,Q,D), dk and dv (B,H,L,D): the first query block overwrites dk and dv, the others add.
template <typename acc_t>
void backward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& go,
                   const at::Tensor& lse, const at::Tensor& delta, const uint32_t* words, const Sizes& s,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t H = s.num_heads, Q = s.num_queries, L = s.num_keys, W = s.words_per_row();
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
  const acc_t* delta_ptr = delta.const_data_ptr<acc_t>();
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    at::Tensor probs_buffer = at::empty({kQueryBlock, L}, q.options());
    at::Tensor grad_buffer = at::empty({kQueryBlock, L}, q.options());
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const at::Tensor k_bh = k[b][h], v_bh = v[b][h];
      at::Tensor dk_bh = dk[b][h], dv_bh = dv[b][h];
      for (int64_t q0 = 0; q0 < Q; q0 += kQueryBlock) {
        const int64_t nq = std::min(kQueryBlock, Q - q0);
        const at::Tensor q_blk = q[b][h].narrow(0, q0, nq), go_blk = go[b][h].narrow(0, q0, nq);
        at::Tensor probs = probs_buffer.narrow(0, 0, nq), grad_scores = grad_buffer.narrow(0, 0, nq);
        at::mm_out(probs, q_blk, k_bh.t());
        at::mm_out(grad_scores, go_blk, v_bh.t());  // dP
        for (int64_t i = 0; i < nq; ++i) {  // P, and dS = P (dP - delta)
          const int64_t row = bh * Q + q0 + i;
          rows::softmax_grad_row(probs.mutable_data_ptr<acc_t>() + i * L, grad_scores.mutable_data_ptr<acc_t>() + i * L,
                                 words + (b * Q + q0 + i) * W, L, lse_ptr[row], delta_ptr[row]);
        }
        const int beta = q0 == 0 ? 0 : 1;  // beta 0 ignores the uninitialised memory
        dv_bh.addmm_(probs.t(), go_blk, beta);
        dq[b][h].narrow(0, q0, nq).addmm_(grad_scores, k_bh, /*beta=*/0, /*alpha=*/scale);
        dk_bh.addmm_(grad_scores.t(), q_blk, beta);  // q_blk already carries the scale
      }
    }
  });
}

void check_cpu(const at::Tensor& query) {
  RSF_CHECK_VALUE(query.device().is_cpu(), "masked_attention: CPU kernel called with `query` on ",
                    query.device());
}

std::tuple<at::Tensor, at::Tensor> masked_attention_cpu(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const at::Tensor& mask_logits,
                                                        int64_t num_heads) {
  const Sizes s = check_inputs(query, key, value, mask_logits, num_heads);
  check_cpu(query);
  const at::NoGradGuard no_grad;  // the ATen ops below are the kernel's internals, never part of a graph
  const at::ScalarType acc = stats_dtype(query.scalar_type());
  if (query.numel() == 0) {  // nothing to attend with (B, Q or E is 0); lse is 0 when only E is
    return {at::empty(query.sizes(), query.options()),
            at::zeros({s.batch, s.num_heads, s.num_queries}, query.options().dtype(acc))};
  }
  at::Tensor lse = at::empty({s.batch, s.num_heads, s.num_queries}, query.options().dtype(acc));
  const at::Tensor words = pack_visible_keys(mask_logits, s);
  const at::Tensor q = heads_first(query, num_heads, acc).mul_(1.0 / std::sqrt(double(s.head_dim)));
  const at::Tensor k = heads_view(key, num_heads, acc), v = heads_view(value, num_heads, acc);
  const HeadsOutput out(query, s.num_queries, num_heads, s.head_dim, acc);
  AT_DISPATCH_FLOATING_TYPES(acc, "masked_attention", [&] {
    at::Tensor heads = out.heads;
    forward_impl<scalar_t>(q, k, v, reinterpret_cast<const uint32_t*>(words.const_data_ptr<int32_t>()),
                           s, heads, lse);
  });
  return {out.finish(query.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& mask_logits, const at::Tensor& out, const at::Tensor& lse, int64_t num_heads) {
  const Sizes s = check_inputs(query, key, value, mask_logits, num_heads);
  check_backward_inputs(grad_output, out, lse, query, s);
  check_cpu(query);
  const at::NoGradGuard no_grad;  // the ATen ops below are the kernel's internals, never part of a graph
  if (query.numel() == 0) {  // no query attends: every key and value gradient is zero
    return {at::zeros(query.sizes(), query.options()), at::zeros(key.sizes(), key.options()),
            at::zeros(value.sizes(), value.options())};
  }
  const at::ScalarType acc = stats_dtype(query.scalar_type());
  const HeadsOutput dq(query, s.num_queries, num_heads, s.head_dim, acc);
  const HeadsOutput dk(key, s.num_keys, num_heads, s.head_dim, acc), dv(value, s.num_keys, num_heads, s.head_dim, acc);
  const at::Tensor words = pack_visible_keys(mask_logits, s);
  const at::Tensor q = heads_first(query, num_heads, acc).mul_(1.0 / std::sqrt(double(s.head_dim)));
  const at::Tensor k = heads_view(key, num_heads, acc), v = heads_view(value, num_heads, acc),
                   go = heads_view(grad_output, num_heads, acc);
  // delta[b, h, q] = <dO, out> over the head's channels.
  const at::Tensor delta = (go * heads_view(out, num_heads, acc)).sum(-1);
  const at::Tensor lse_c = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "masked_attention_backward", [&] {
    at::Tensor dq_heads = dq.heads, dk_heads = dk.heads, dv_heads = dv.heads;
    backward_impl<scalar_t>(q, k, v, go, lse_c, delta,
                            reinterpret_cast<const uint32_t*>(words.const_data_ptr<int32_t>()), s, dq_heads,
                            dk_heads, dv_heads);
  });
  const at::ScalarType dtype = query.scalar_type();
  return {dq.finish(dtype), dk.finish(dtype), dv.finish(dtype)};
}

}  // namespace
}  // namespace rankseg_fast::masked_attention

TORCH_LIBRARY_IMPL(rankseg_fast, CPU, m) {
  m.impl("masked_attention", &rankseg_fast::masked_attention::masked_attention_cpu);
  m.impl("_masked_attention_backward", &rankseg_fast::masked_attention::masked_attention_backward_cpu);
}
