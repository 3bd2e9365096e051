// RankSeg rank-space ops, CUDA kernel bodies (launchers in rank_logits_kernel.cu).
//
// Grid of the per-image kernels: blockIdx.y = image b, blockIdx.x = a chunk of `rows_per_block` rows
// of that image, a row being one (n, q) (or (leading index, q) for rank_scatter); the rows of image b
// are (n * B + b) * Q + q in memory. Blocks of kThreads = 256 threads = 8 warps.
//
// rank_logits_forward_kernel (one launch for every decoder layer):
//   1. ranking, in shared memory: the block loads the K scores of its image (as float, or double for
//      fp64 scores; exact) and every thread ranks classes c = tid, tid + 256, ... by counting the classes
//      that precede c: higher score, or NaN (above every number), or an equal score (NaN vs NaN too) at a
//      lower index. Ranks below k land in order[rank] = c; order[k] = K. O(K^2 / 256) comparisons per
//      block, all broadcast reads of shared memory; every block of the image recomputes it (no
//      inter-block communication), the x = 0 block writes rank_index.
//   2. one warp per row: three lane-strided passes over the gathered logits x[order[r]] (L1-resident):
//      mean, biased variance of the centred values (two-pass, not E[x^2] - mean^2), then
//      (x - mean) * rstd * weight[r] + bias[r]; warp shuffle all-reduces. Lane 0 stores mean and rstd.
// rank_logits_backward_kernel (one launch):
//   row phase, one warp per row: xhat = (x[order[r]] - mean) * rstd, gw = g * weight, then
//      dx[order[r]] = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)); the classes outside the top-k
//      (inverse[c] < 0, from a shared class -> rank table) get 0, so grad_logits needs no memset.
//   column phase, one thread per rank r: partial sums over the block's rows of g * xhat (grad_weight)
//      and g (grad_bias), written to partial[block][2][k+1].
//   final phase, in the last block to finish (a counter zeroed before the launch; threadfence
//      reduction): grad_weight / grad_bias = the partials added over the blocks in block order (one
//      thread per output, 16 loads in flight): deterministic, no float atomics.
// rank_scatter_kernel: one thread per output element (row, c) of the block's rows, reading
//   ranked[row, inverse[c]] or writing `fill`. rank_scatter_backward_kernel: one thread per
//   (row, r) element of the gathered gradient.
//
// Accumulation: acc_type_t (fp32 for fp16/bf16/fp32 logits, fp64 for fp64); mean / rstd are stored in
// that type, weight and bias arrive converted to it. rstd = 1 / sqrt(var + eps) (not the approximate
// rsqrt). Rank indices outside [0, K], or repeated in a row, in the backward / scatter inputs trip a
// device assert.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "../../common/cuda_utils.cuh"

namespace rankseg_fast::rank_logits::cuda_impl {

using rankseg_fast::cuda::acc_type_t;
using rankseg_fast::cuda::from_acc;
using rankseg_fast::cuda::group_allreduce_sum;
using rankseg_fast::cuda::to_acc;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Memory offset of row j (0 <= j < rows_per_image) of image b.
__device__ __forceinline__ int64_t row_offset(int j, int b, int B, int Q) {
  const int outer = j / Q, q = j - outer * Q;
  return (static_cast<int64_t>(outer) * B + b) * Q + q;
}

// True when class j (score kj) ranks before class c (score kc).
template <typename key_t>
__device__ __forceinline__ bool ranks_before(key_t kj, int j, key_t kc, int c) {
  const bool nan_j = isnan(kj), nan_c = isnan(kc);
  if (nan_j || nan_c) return nan_j && (!nan_c || j < c);
  return kj > kc || (kj == kc && j < c);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  return group_allreduce_sum(v, kFullMask, 5);
}

// Dynamic shared memory: key_t keys[K], then int order[k + 1].
template <typename scalar_t, typename score_t>
__global__ void __launch_bounds__(kThreads) rank_logits_forward_kernel(
    const scalar_t* __restrict__ logits, const score_t* __restrict__ scores,
    const acc_type_t<scalar_t>* __restrict__ weight, const acc_type_t<scalar_t>* __restrict__ bias,
    scalar_t* __restrict__ ranked, int64_t* __restrict__ rank_index,
    acc_type_t<scalar_t>* __restrict__ mean, acc_type_t<scalar_t>* __restrict__ rstd, int B, int Q,
    int K, int k, int rows_per_image, int rows_per_block, acc_type_t<scalar_t> eps) {
  using acc_t = acc_type_t<scalar_t>;
  using key_t = acc_type_t<score_t>;
  extern __shared__ __align__(16) unsigned char shared[];
  key_t* keys = reinterpret_cast<key_t*>(shared);
  int* order = reinterpret_cast<int*>(keys + K);
  const int b = blockIdx.y, tid = threadIdx.x;
  const int ranks = k + 1;

  for (int c = tid; c < K; c += kThreads) keys[c] = to_acc<key_t>(scores[static_cast<int64_t>(b) * K + c]);
  __syncthreads();
  for (int c = tid; c < K; c += kThreads) {
    const key_t kc = keys[c];
    int rank = 0;
    for (int j = 0; j < K; ++j) rank += ranks_before(keys[j], j, kc, c);
    if (rank < k) order[rank] = c;
  }
  if (tid == 0) order[k] = K;
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int r = tid; r < ranks; r += kThreads) rank_index[static_cast<int64_t>(b) * ranks + r] = order[r];
  }

  const int lane = tid & 31, warp = tid >> 5;
  const int row_begin = blockIdx.x * rows_per_block;
  const int row_end = min(row_begin + rows_per_block, rows_per_image);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(ranks);
  for (int j = row_begin + warp; j < row_end; j += kWarps) {
    const int64_t row = row_offset(j, b, B, Q);
    const scalar_t* x = logits + row * (K + 1);
    acc_t sum = 0;
#pragma unroll 4  // the gathers of a row are independent: keep several in flight
    for (int r = lane; r < ranks; r += 32) sum += to_acc<acc_t>(x[order[r]]);
    const acc_t mu = warp_sum(sum) * inv_n;
    acc_t sq = 0;
    for (int r = lane; r < ranks; r += 32) {
      const acc_t d = to_acc<acc_t>(x[order[r]]) - mu;
      sq += d * d;
    }
    const acc_t inv = acc_t(1) / sqrt(warp_sum(sq) * inv_n + eps);
    scalar_t* out = ranked + row * ranks;
    for (int r = lane; r < ranks; r += 32) {
      out[r] = from_acc<scalar_t>((to_acc<acc_t>(x[order[r]]) - mu) * inv * weight[r] + bias[r]);
    }
    if (lane == 0) {
      mean[row] = mu;
      rstd[row] = inv;
    }
  }
}

// Loads rank_index[b] into order[ranks] and builds inverse[K + 1] (-1 for classes outside the top-k);
// asserts that the classes are in range and distinct.
__device__ __forceinline__ void load_rank_tables(const int64_t* __restrict__ rank_index, int b,
                                                 int ranks, int classes_plus_one, int* order,
                                                 int* inverse) {
  for (int c = threadIdx.x; c < classes_plus_one; c += kThreads) inverse[c] = -1;
  __syncthreads();
  for (int r = threadIdx.x; r < ranks; r += kThreads) {
    const int64_t c = rank_index[static_cast<int64_t>(b) * ranks + r];
    CUDA_KERNEL_ASSERT(c >= 0 && c < classes_plus_one);
    if (order != nullptr) order[r] = static_cast<int>(c);
    const int earlier = atomicExch(&inverse[c], r);
    CUDA_KERNEL_ASSERT(earlier == -1);  // a class ranked twice: one of its ranks would be lost
  }
  __syncthreads();
}

// Dynamic shared memory: int order[k + 1], then int inverse[K + 1].
// partial: (gridDim.y * gridDim.x, 2, k + 1), per block the grad_weight and grad_bias partial sums.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) rank_logits_backward_kernel(
    const scalar_t* __restrict__ grad_ranked, const scalar_t* __restrict__ logits,
    const int64_t* __restrict__ rank_index, const acc_type_t<scalar_t>* __restrict__ weight,
    const acc_type_t<scalar_t>* __restrict__ mean, const acc_type_t<scalar_t>* __restrict__ rstd,
    scalar_t* __restrict__ grad_logits, acc_type_t<scalar_t>* __restrict__ partial,
    unsigned int* __restrict__ blocks_done, acc_type_t<scalar_t>* __restrict__ grad_weight,
    acc_type_t<scalar_t>* __restrict__ grad_bias, int B, int Q, int K, int ranks, int rows_per_image,
    int rows_per_block) {
  using acc_t = acc_type_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char shared[];
  int* order = reinterpret_cast<int*>(shared);
  int* inverse = order + ranks;
  const int b = blockIdx.y, tid = threadIdx.x;
  load_rank_tables(rank_index, b, ranks, K + 1, order, inverse);

  const int lane = tid & 31, warp = tid >> 5;
  const int row_begin = blockIdx.x * rows_per_block;
  const int row_end = min(row_begin + rows_per_block, rows_per_image);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(ranks);
  for (int j = row_begin + warp; j < row_end; j += kWarps) {
    const int64_t row = row_offset(j, b, B, Q);
    const scalar_t* x = logits + row * (K + 1);
    const scalar_t* g = grad_ranked + row * ranks;
    const acc_t mu = mean[row], inv = rstd[row];
    acc_t dot_g = 0, dot_gx = 0;
#pragma unroll 4  // independent loads of g, weight and the gathered x in flight
    for (int r = lane; r < ranks; r += 32) {
      const acc_t gw = to_acc<acc_t>(g[r]) * weight[r];
      dot_g += gw;
      dot_gx += gw * (to_acc<acc_t>(x[order[r]]) - mu) * inv;
    }
    dot_g = warp_sum(dot_g) * inv_n;
    dot_gx = warp_sum(dot_gx) * inv_n;
    scalar_t* dx = grad_logits + row * (K + 1);
    for (int r = lane; r < ranks; r += 32) {
      const int c = order[r];
      const acc_t xhat = (to_acc<acc_t>(x[c]) - mu) * inv;
      const acc_t gw = to_acc<acc_t>(g[r]) * weight[r];
      dx[c] = from_acc<scalar_t>(inv * (gw - dot_g - xhat * dot_gx));
    }
    for (int c = lane; c <= K; c += 32) {
      if (inverse[c] < 0) dx[c] = from_acc<scalar_t>(acc_t(0));
    }
  }

  acc_t* block_partial =
      partial + (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * 2 * ranks;
  for (int r = tid; r < ranks; r += kThreads) {
    const int c = order[r];
    acc_t sum_gx = 0, sum_g = 0;
#pragma unroll 8  // independent loads of 8 rows in flight; the sums keep their sequential order
    for (int j = row_begin; j < row_end; ++j) {
      const int64_t row = row_offset(j, b, B, Q);
      const acc_t gv = to_acc<acc_t>(grad_ranked[row * ranks + r]);
      sum_gx += gv * (to_acc<acc_t>(logits[row * (K + 1) + c]) - mean[row]) * rstd[row];
      sum_g += gv;
    }
    block_partial[r] = sum_gx;
    block_partial[ranks + r] = sum_g;
  }

  // The last block to finish adds every block's partials. The fence orders this block's partial writes
  // before its count; __ldcg reads the other blocks' partials from L2, past this SM's L1.
  __shared__ bool last_block;
  __threadfence();
  __syncthreads();
  const int blocks = gridDim.x * gridDim.y;
  if (tid == 0) last_block = atomicAdd(blocks_done, 1u) == static_cast<unsigned>(blocks - 1);
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  // One thread per output (coalesced across threads), the blocks in order; 16 independent loads in flight
  // per thread, so the chain is ~blocks / 16 L2 round trips rather than one per block.
  for (int i = tid; i < 2 * ranks; i += kThreads) {
    acc_t sum = 0;
#pragma unroll 16
    for (int blk = 0; blk < blocks; ++blk) sum += __ldcg(partial + static_cast<int64_t>(blk) * 2 * ranks + i);
    if (i < ranks) {
      grad_weight[i] = sum;
    } else {
      grad_bias[i - ranks] = sum;
    }
  }
}

// Dynamic shared memory: int inverse[K + 1].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) rank_scatter_kernel(
    const scalar_t* __restrict__ ranked, const int64_t* __restrict__ rank_index,
    scalar_t* __restrict__ out, int B, int Q, int classes_plus_one, int ranks, int rows_per_image,
    int rows_per_block, scalar_t fill) {
  extern __shared__ __align__(16) unsigned char shared[];
  int* inverse = reinterpret_cast<int*>(shared);
  const int b = blockIdx.y;
  load_rank_tables(rank_index, b, ranks, classes_plus_one, nullptr, inverse);
  const int row_begin = blockIdx.x * rows_per_block;
  const int rows = min(row_begin + rows_per_block, rows_per_image) - row_begin;
  const int64_t elements = static_cast<int64_t>(rows) * classes_plus_one;
  for (int64_t e = threadIdx.x; e < elements; e += kThreads) {
    const int j = row_begin + static_cast<int>(e / classes_plus_one);
    const int c = static_cast<int>(e % classes_plus_one);
    const int64_t row = row_offset(j, b, B, Q);
    const int r = inverse[c];
    out[row * classes_plus_one + c] = r >= 0 ? ranked[row * ranks + r] : fill;
  }
}

// grad_ranked[row, r] = grad_output[row, rank_index[b(row), r]] over every (row, r); grid-stride.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) rank_scatter_backward_kernel(
    const scalar_t* __restrict__ grad_output, const int64_t* __restrict__ rank_index,
    scalar_t* __restrict__ grad_ranked, int64_t elements, int B, int Q, int classes_plus_one,
    int ranks) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < elements;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = e / ranks;
    const int r = static_cast<int>(e - row * ranks);
    const int b = static_cast<int>((row / Q) % B);
    const int64_t c = rank_index[static_cast<int64_t>(b) * ranks + r];
    CUDA_KERNEL_ASSERT(c >= 0 && c < classes_plus_one);
    grad_ranked[e] = grad_output[row * classes_plus_one + c];
  }
}

}  // namespace rankseg_fast::rank_logits::cuda_impl
