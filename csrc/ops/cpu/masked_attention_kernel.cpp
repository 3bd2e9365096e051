// CPU kernels of masked_attention (forward and backward).
//
// Mask: a pre-pass packs mask_logits once per (b, q) into visible-key words (masked_attention.h),
// applying the all-blocked-row rule there; the attention kernels read only the words, so the mask is
// never repeated per head and no kernel needs to know the rule.
//
// Algorithm: q, k, v are converted once to the statistics dtype (fp32 for fp16/bf16/fp32, fp64 for
// fp64) in a (B, H, rows, D) layout, q pre-scaled by 1/sqrt(D). The forward splits (batch x head x
// block of kQueryBlock queries) across threads; each task computes its score block S = q k^T
// (kQueryBlock x L, BLAS), sets blocked keys to -inf (words with every key visible are skipped), takes
// an exact two-pass softmax (row max, exp, sum; vectorised ATen ops on the cache-resident block) and
// writes out = (E v) / sum with E = exp(S - max), and lse = max + log(sum). Nothing of size (B, H, Q, L) is ever materialised.
// The backward splits (batch x head): each task owns dK, dV of its (b, h) (no races, deterministic),
// walks the query blocks and recomputes P = exp(S - lse), then dV += P^T dO, dS = P * (dO v^T - delta)
// with delta = rowsum(dO * out) (flash-attention's identity, from the forward output), dQ = dS k / sqrt(D)
// and dK += dS^T q / sqrt(D).
//
// Accumulation dtype: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64; outputs are rounded once.
// Numerics caveat: for fp16/bf16, delta uses the rounded forward output, as flash-attention does.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../masked_attention.h"

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

// (B, H, rows, D) -> a new contiguous (B, rows, H * D) tensor in dtype.
at::Tensor heads_last(const at::Tensor& t, at::ScalarType dtype) {
  const int64_t B = t.size(0), H = t.size(1), rows = t.size(2), D = t.size(3);
  at::Tensor result = at::empty({B, rows, H * D}, t.options().dtype(dtype));
  result.view({B, rows, H, D}).copy_(t.transpose(1, 2));
  return result;
}

// In place on scores (rows x L, contiguous): blocked keys -> -inf.
template <typename acc_t>
void mask_scores(at::Tensor& scores, const uint32_t* words, int64_t num_words) {
  const int64_t rows = scores.size(0), L = scores.size(1);
  acc_t* s = scores.mutable_data_ptr<acc_t>();
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    const uint32_t* row_words = words + i * num_words;
    for (int64_t w = 0; w < num_words; ++w) {
      const uint32_t word = row_words[w];
      if (word == ~uint32_t{0}) continue;
      acc_t* chunk = s + i * L + w * kKeysPerWord;
      const int64_t n = std::min<int64_t>(kKeysPerWord, L - w * kKeysPerWord);
      for (int64_t k = 0; k < n; ++k) {
        if (!((word >> k) & 1u)) chunk[k] = kNegInf;
      }
    }
  }
}

// q (B,H,Q,D) pre-scaled by 1/sqrt(D), k, v (B,H,L,D), all acc_t; words (B,Q,W).
// Writes out (B,H,Q,D) and lse (B,H,Q), acc_t.
template <typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const uint32_t* words,
                  const Sizes& s, at::Tensor& out, at::Tensor& lse) {
  const int64_t H = s.num_heads, Q = s.num_queries, W = s.words_per_row();
  const int64_t blocks = (Q + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, s.batch * H * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (H * blocks), h = task / blocks % H;
      const int64_t q0 = task % blocks * kQueryBlock, nq = std::min(kQueryBlock, Q - q0);
      at::Tensor scores = at::mm(q[b][h].narrow(0, q0, nq), k[b][h].t());  // (nq, L)
      mask_scores<acc_t>(scores, words + (b * Q + q0) * W, W);
      const at::Tensor row_max = scores.amax(1, /*keepdim=*/true);  // finite: every row sees a key
      scores.sub_(row_max).exp_();
      const at::Tensor row_sum = scores.sum(1, /*keepdim=*/true);
      at::Tensor out_block = out[b][h].narrow(0, q0, nq);
      at::mm_out(out_block, scores, v[b][h]).div_(row_sum);
      lse[b][h].narrow(0, q0, nq).copy_((row_max + row_sum.log()).squeeze(1));
    }
  });
}

// Inputs in acc_t, heads first: q (B,H,Q,D) pre-scaled by 1/sqrt(D), go (B,H,Q,D), k, v (B,H,L,D),
// lse, delta (B,H,Q).
// Writes dq (B,H,Q,D) and accumulates into the zeroed dk, dv (B,H,L,D).
template <typename acc_t>
void backward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& go,
                   const at::Tensor& lse, const at::Tensor& delta, const uint32_t* words, const Sizes& s,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t H = s.num_heads, Q = s.num_queries, W = s.words_per_row();
  const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(s.head_dim));
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const at::Tensor k_bh = k[b][h], v_bh = v[b][h];
      at::Tensor dk_bh = dk[b][h], dv_bh = dv[b][h];
      for (int64_t q0 = 0; q0 < Q; q0 += kQueryBlock) {
        const int64_t nq = std::min(kQueryBlock, Q - q0);
        const at::Tensor q_blk = q[b][h].narrow(0, q0, nq), go_blk = go[b][h].narrow(0, q0, nq);
        at::Tensor probs = at::mm(q_blk, k_bh.t());  // (nq, L)
        mask_scores<acc_t>(probs, words + (b * Q + q0) * W, W);
        probs.sub_(lse[b][h].narrow(0, q0, nq).unsqueeze(1)).exp_();
        dv_bh.addmm_(probs.t(), go_blk);
        at::Tensor grad_scores = at::mm(go_blk, v_bh.t());  // dP, then dS in place
        grad_scores.sub_(delta[b][h].narrow(0, q0, nq).unsqueeze(1)).mul_(probs);
        at::Tensor dq_blk = dq[b][h].narrow(0, q0, nq);
        at::mm_out(dq_blk, grad_scores, k_bh).mul_(scale);
        dk_bh.addmm_(grad_scores.t(), q_blk);  // q_blk already carries the scale
      }
    }
  });
}

void check_cpu(const at::Tensor& query) {
  TORCH_CHECK_VALUE(query.device().is_cpu(), "masked_attention: CPU kernel called with `query` on ",
                    query.device());
}

std::tuple<at::Tensor, at::Tensor> masked_attention_cpu(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const at::Tensor& mask_logits,
                                                        int64_t num_heads) {
  const Sizes s = check_inputs(query, key, value, mask_logits, num_heads);
  check_cpu(query);
  const at::ScalarType acc = stats_dtype(query.scalar_type());
  if (query.numel() == 0) {  // nothing to attend with (B, Q or E is 0); lse is 0 when only E is
    return {at::empty(query.sizes(), query.options()),
            at::zeros({s.batch, s.num_heads, s.num_queries}, query.options().dtype(acc))};
  }
  at::Tensor lse = at::empty({s.batch, s.num_heads, s.num_queries}, query.options().dtype(acc));
  const at::Tensor words = pack_visible_keys(mask_logits, s);
  const at::Tensor q = heads_first(query, num_heads, acc).mul_(1.0 / std::sqrt(double(s.head_dim)));
  const at::Tensor k = heads_first(key, num_heads, acc), v = heads_first(value, num_heads, acc);
  at::Tensor out = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES(acc, "masked_attention", [&] {
    forward_impl<scalar_t>(q, k, v, reinterpret_cast<const uint32_t*>(words.const_data_ptr<int32_t>()),
                           s, out, lse);
  });
  return {heads_last(out, query.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& mask_logits, const at::Tensor& out, const at::Tensor& lse, int64_t num_heads) {
  const Sizes s = check_inputs(query, key, value, mask_logits, num_heads);
  check_backward_inputs(grad_output, out, lse, query, s);
  check_cpu(query);
  const at::ScalarType acc = stats_dtype(query.scalar_type());
  at::Tensor dq = at::zeros({s.batch, s.num_heads, s.num_queries, s.head_dim}, query.options().dtype(acc));
  at::Tensor dk = at::zeros({s.batch, s.num_heads, s.num_keys, s.head_dim}, query.options().dtype(acc));
  at::Tensor dv = at::zeros_like(dk);
  if (query.numel() != 0) {
    const at::Tensor words = pack_visible_keys(mask_logits, s);
    const at::Tensor q = heads_first(query, num_heads, acc).mul_(1.0 / std::sqrt(double(s.head_dim)));
    const at::Tensor k = heads_first(key, num_heads, acc), v = heads_first(value, num_heads, acc),
                     go = heads_first(grad_output, num_heads, acc);
    // delta[b, h, q] = <dO, out> over the head's channels.
    const at::Tensor delta = (go * heads_first(out, num_heads, acc)).sum(-1);
    const at::Tensor lse_c = lse.contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc, "masked_attention_backward", [&] {
      backward_impl<scalar_t>(q, k, v, go, lse_c, delta,
                              reinterpret_cast<const uint32_t*>(words.const_data_ptr<int32_t>()), s, dq, dk,
                              dv);
    });
  }
  const at::ScalarType dtype = query.scalar_type();
  return {heads_last(dq, dtype), heads_last(dk, dtype), heads_last(dv, dtype)};
}

}  // namespace
}  // namespace rankseg_fast::masked_attention

TORCH_LIBRARY_IMPL(rankseg_fast, CPU, m) {
  m.impl("masked_attention", &rankseg_fast::masked_attention::masked_attention_cpu);
  m.impl("_masked_attention_backward", &rankseg_fast::masked_attention::masked_attention_backward_cpu);
}
