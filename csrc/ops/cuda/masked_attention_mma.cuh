// Tensor-core building blocks of the fp16/bf16 masked_attention kernels (sm_80+): the warp-wide
// mma.sync m16n8k16 (fp32 accumulators) and the fragment loads and packs around it.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A (16 x 16, row-major), 4 registers of 2 elements: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//     a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9];
//   B (16 x 8, k x n), 2 registers: b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g];
//   C (16 x 8, fp32), 4 values: c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1].
// The lower-indexed element of a pair sits in the low 16 bits. A row-major 16 x 16 block of A and a
// column of B therefore read 32-bit words at [row][2t] and [row][2t + 8], and the C fragments of two
// neighbouring n-tiles (columns 0-7 and 8-15) are exactly the A fragment of a 16 x 16 block once packed
// to 16 bits (flash-attention-2's register reuse of P): see c_pair_to_a().
//
// Shared tiles hold raw 16-bit values with a row stride of (columns + 8) elements: the stride in 32-bit
// words is then 4 (mod 32) for the column counts used (16, 32, 64), so the 8 rows x 4 words of an 8 x 8
// block (one ldmatrix phase) fall in 32 different banks, and every row start stays 16-byte aligned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "masked_attention_common.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

constexpr int kMmaRowsPerWarp = 16;                    // the m of m16n8k16
constexpr int kMmaRows = kWarps * kMmaRowsPerWarp;     // rows (queries, or keys in dK/dV) per block
constexpr int kMmaPad = 8;                             // shared row padding, elements

template <typename scalar_t>
constexpr bool kIsHalfOrBf16 = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

// The tensor-core path: 16-bit inputs, head dims up to 64 (larger ones run out of registers).
template <typename scalar_t, int DMAX>
constexpr bool kMmaSupported = kIsHalfOrBf16<scalar_t> && DMAX <= 64;

// c += a * b for one 16 x 8 x 16 tile; fp16 or bf16 operands by scalar_t, fp32 accumulators.
template <typename scalar_t>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(RANKSEG_FAST_CUDA_EMULATOR)  // the CPU emulator of tests/cuda_emulator
  rsf_emu::mma_m16n8k16(std::is_same_v<scalar_t, c10::BFloat16>, c, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched: the host picks these kernels only on sm_80+
#else
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// Two fp32 values rounded (to nearest even) to fp16 / bf16 and packed, lo in the low half.
template <typename scalar_t>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  uint32_t bits;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &v, sizeof(bits));
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&bits, &v, sizeof(bits));
  }
  return bits;
}

// The A fragment of a 16 x 16 block whose fp32 values are the C fragments of n-tiles 2s (columns 0-7)
// and 2s + 1 (columns 8-15).
template <typename scalar_t>
__device__ __forceinline__ void c_pair_to_a(const float (&left)[4], const float (&right)[4], uint32_t (&a)[4]) {
  a[0] = pack_pair<scalar_t>(left[0], left[1]);
  a[1] = pack_pair<scalar_t>(left[2], left[3]);
  a[2] = pack_pair<scalar_t>(right[0], right[1]);
  a[3] = pack_pair<scalar_t>(right[2], right[3]);
}

// ldmatrix.x4 from shared memory: lane 8 m + i passes the 16-byte aligned address of row i of 8 x 8 matrix
// m; lane (g, t) receives elements [g][2t, 2t + 1] of matrix m in r[m], or with TRANS [2t][g], [2t + 1][g].
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row_address) {
#if defined(RANKSEG_FAST_CUDA_EMULATOR)
  rsf_emu::ldmatrix_x4(TRANS, r, row_address);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched: the host picks these kernels only on sm_80+
#else
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row_address));
  if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  }
#endif
}

// Two B fragments, (n-tile n0, k-block k0) and (n1, k1), b[f][0] = B[16 kf + 2t, +1][8 nf + g] and b[f][1]
// the same 8 k further, with one ldmatrix.x4 from a shared tile of row stride `stride` elements that holds
// B n-major (K_MAJOR false: tile[n][k], the fragments are the 8 x 8 blocks at tile[8 nf][16 kf (+ 8)]) or
// k-major (K_MAJOR true: tile[k][n], the transposed blocks at tile[16 kf (+ 8)][8 nf]). The padded stride
// puts the 8 rows of a block in 8 different groups of 4 banks.
template <bool K_MAJOR>
__device__ __forceinline__ void load_b_pair(const uint16_t* tile, int stride, int n0, int k0, int n1, int k1, int lane,
                                            uint32_t (&b)[2][2]) {
  const int m = lane / 8, f = m / 2;  // lane 8 m + i: row i of matrix m = half m % 2 of fragment f
  const int n = f == 0 ? n0 : n1, k = f == 0 ? k0 : k1, i = lane % 8;
  const int row = K_MAJOR ? k * 16 + (m % 2) * 8 + i : n * 8 + i;
  const int col = K_MAJOR ? n * 8 : k * 16 + (m % 2) * 8;
  uint32_t r[4];
  ldmatrix_x4<K_MAJOR>(r, tile + row * stride + col);
  b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// c = a * tile^T: the 16 x (8 NS) fp32 product of a warp's 16-row A fragments (KB k-blocks of 16 channels)
// with the first 8 NS rows of a shared tile stored row-major (tile[row][channel]), one C fragment per 8 rows.
// The NS * KB B fragments (n-tile j, k-block kb) are loaded two at a time in (j, kb) order.
template <typename scalar_t, int KB, int NS>
__device__ __forceinline__ void mma_rows_by_tile(const uint32_t (&a)[KB][4], const uint16_t* tile, int stride,
                                                 int lane, float (&c)[NS][4]) {
  static_assert(NS * KB % 2 == 0, "B fragments are loaded in pairs");
#pragma unroll
  for (int j = 0; j < NS; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
#pragma unroll
  for (int f = 0; f < NS * KB; f += 2) {
    uint32_t b[2][2];
    load_b_pair<false>(tile, stride, f / KB, f % KB, (f + 1) / KB, (f + 1) % KB, lane, b);
    mma_16816<scalar_t>(c[f / KB], a[f % KB], b[0]);
    mma_16816<scalar_t>(c[(f + 1) / KB], a[(f + 1) % KB], b[1]);
  }
}

// acc += c * tile: c is a 16 x (8 NS) product in C fragments (packed to 16 bits as the A operand), tile a
// shared (8 NS) x (8 NO) matrix stored row-major (tile[row][column], e.g. V[key][channel]).
template <typename scalar_t, int NS, int NO>
__device__ __forceinline__ void mma_acc_by_tile(const float (&c)[NS][4], const uint16_t* tile, int stride, int lane,
                                                float (&acc)[NO][4]) {
  static_assert(NO % 2 == 0, "B fragments are loaded in pairs");
#pragma unroll
  for (int kb = 0; kb < NS / 2; ++kb) {
    uint32_t a[4];
    c_pair_to_a<scalar_t>(c[2 * kb], c[2 * kb + 1], a);
#pragma unroll
    for (int n = 0; n < NO; n += 2) {
      uint32_t b[2][2];
      load_b_pair<true>(tile, stride, n, kb, n + 1, kb, lane, b);
      mma_16816<scalar_t>(acc[n], a, b[0]);
      mma_16816<scalar_t>(acc[n + 1], a, b[1]);
    }
  }
}

// Two neighbouring 16-bit elements [d, d + 1] of a global row (zero at or past `limit`), packed.
__device__ __forceinline__ uint32_t global_pair(const uint16_t* row, int d, int limit) {
  const uint32_t lo = d < limit ? row[d] : 0u;
  const uint32_t hi = d + 1 < limit ? row[d + 1] : 0u;
  return lo | (hi << 16);
}

// A fragments of rows r0 + g and r0 + g + 8 of a (rows, head_dim) matrix slice, for every 16-channel
// k-block: a[kb] covers channels [16 kb, 16 kb + 16), zero past head_dim; a null row pointer is a zero row.
template <int KB>
__device__ __forceinline__ void load_a_rows(const uint16_t* row_lo, const uint16_t* row_hi, int head_dim, int lane,
                                            uint32_t (&a)[KB][4]) {
  const int c = (lane % 4) * 2;
#pragma unroll
  for (int kb = 0; kb < KB; ++kb) {
    a[kb][0] = row_lo ? global_pair(row_lo, kb * 16 + c, head_dim) : 0u;
    a[kb][1] = row_hi ? global_pair(row_hi, kb * 16 + c, head_dim) : 0u;
    a[kb][2] = row_lo ? global_pair(row_lo, kb * 16 + c + 8, head_dim) : 0u;
    a[kb][3] = row_hi ? global_pair(row_hi, kb * 16 + c + 8, head_dim) : 0u;
  }
}

// Block-cooperative asynchronous copy (cp_async_16) of rows [row0, row0 + ROWS) x channels [0, DMAX) of
// a 16-bit matrix (row r at src + r * row_stride) into shared memory, row-major (dst[r * (DMAX + kMmaPad)
// + d]), zero past num_rows / head_dim: the kernels stage the next tile while they compute on the current
// one. Each thread moves 8 channels at a time (a 32 x 32 tile: one copy per thread), which needs 16-byte
// aligned rows and head_dim % 8 == 0: the launcher runs the SIMT kernels for inputs without that layout
// (see tensor_core_layout).
template <int ROWS, int DMAX>
__device__ __forceinline__ void stage_tile_16(const uint16_t* __restrict__ src, int64_t row_stride, int64_t row0,
                                              int64_t num_rows, int head_dim, uint16_t* dst) {
  constexpr int kStride = DMAX + kMmaPad;
  constexpr int kChunks = DMAX / 8;  // 16-byte chunks per row
  static_assert(DMAX % 8 == 0 && kStride % 8 == 0, "16-byte chunks of a shared row stay aligned");
  for (int i = threadIdx.x; i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks, d0 = (i % kChunks) * 8;
    const int64_t row = row0 + r;
    const bool inside = row < num_rows && d0 < head_dim;
    cp_async_16(dst + r * kStride + d0, inside ? src + row * row_stride + d0 : src, inside);
  }
}

// The key-tile loop of the tensor-core forward and dQ kernels (pipelined_tiles over the block's key
// split): body(k_tile, v_tile, word_lo, word_hi) computes on a K/V tile pair staged by stage_tile_16 in
// k_s / v_s[tile % 2], for every tile a row of the block sees, skipping warps whose 16 rows see none of
// its keys; words_lo / words_hi are the mask words of the lane's rows g and g + 8 (valid_*: the row
// exists), K/V rows are row_stride apart.
template <int DMAX, typename Body>
__device__ __forceinline__ void pipelined_key_tiles(const Problem& p, const uint16_t* key_bh, const uint16_t* value_bh,
                                                    int64_t row_stride, const uint32_t* words_lo, bool valid_lo,
                                                    const uint32_t* words_hi, bool valid_hi,
                                                    uint16_t (&k_s)[2][kTile * (DMAX + kMmaPad)],
                                                    uint16_t (&v_s)[2][kTile * (DMAX + kMmaPad)], Body&& body) {
  const int head_dim = static_cast<int>(p.head_dim);
  const auto [t_begin, t_end] = split_tiles(p);
  pipelined_tiles<2>(
      t_begin, t_end,
      [&](int64_t tile, uint32_t (&word)[2]) {
        word[0] = tile_word(words_lo, valid_lo, tile, t_end);
        word[1] = tile_word(words_hi, valid_hi, tile, t_end);
      },
      [&](int64_t tile) {
        stage_tile_16<kTile, DMAX>(key_bh, row_stride, tile * kTile, p.keys, head_dim, k_s[tile % 2]);
        stage_tile_16<kTile, DMAX>(value_bh, row_stride, tile * kTile, p.keys, head_dim, v_s[tile % 2]);
      },
      [&](int64_t tile, const uint32_t (&word)[2]) {
        // Warp-uniform: a warp's rows, and so its words, are the same in every lane.
        if (__any_sync(0xffffffffu, (word[0] | word[1]) != 0)) body(k_s[tile % 2], v_s[tile % 2], word[0], word[1]);
      });
}

// Max / sum over the 4 lanes of a quad (the lanes holding one row of a C fragment).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
