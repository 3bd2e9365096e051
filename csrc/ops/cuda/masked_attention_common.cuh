// Shared pieces of the masked_attention CUDA kernels: tile geometry, problem sizes, warp reductions and
// the cooperative tile load into shared memory.
//
// Every kernel runs 4 warps per block. Tiles along the "other" dimension are 32 wide (32 keys in the
// forward and dQ kernels, 32 queries in the dK/dV kernel), so one tile of one row is exactly one mask
// word and lane j of a warp owns element j of the tile. A warp owns kRowsPerWarp rows (queries, or keys
// in dK/dV); lane l owns the head channels d = l, l + 32, ... of its rows' accumulators.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../../common/cuda_utils.cuh"

namespace rankseg_fast::masked_attention::cuda_impl {

using rankseg_fast::cuda::from_acc;
using rankseg_fast::cuda::to_acc;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Geometry for head dims up to DMAX (16, 32, 64 or 128). Shared tiles hold fp32; with DMAX = 128 two rows
// per warp keep every kernel under the 48 KiB of static shared memory.
template <int DMAX>
struct TileShape {
  static constexpr int kRowsPerWarp = DMAX <= 64 ? 4 : 2;
  static constexpr int kRows = kWarps * kRowsPerWarp;      // rows per block
  static constexpr int kChannelsPerLane = (DMAX + 31) / 32;  // accumulator channels per lane
  // Padded row of the 32-row tiles that lane j reads as row j, 4 channels per 16-byte load: with kStride / 4
  // odd the 8 lanes of a quarter warp (one shared-memory wavefront) hit 8 different 16-byte bank groups.
  static constexpr int kStride = DMAX + 4;
  static_assert((kStride / 4) % 2 == 1, "tile rows of lanes j and j + 1..7 would share a bank group");
  // Streamed 32-row tiles are double-buffered (pipelined_tiles) where two fit in the 48 KiB of static
  // shared memory next to the rest: up to DMAX = 64.
  static constexpr int kBuffers = DMAX <= 64 ? 2 : 1;
};

// Sizes of one call. Inputs are contiguous: query/out/grads (B, Q, E), key/value (B, L, E), E = H * D,
// lse/delta (B, H, Q) fp32, mask words (B, Q, words).
struct Problem {
  int64_t batch, queries, keys, heads, head_dim, words;
  int64_t tiles_per_split;  // key tiles (= mask words) per split of the forward and dq kernels (grid z)
  float scale;       // 1 / sqrt(D)
  float scale_log2;  // scale * log2(e): scores are kept in base 2 so that exp2f applies
};

// The (image, head) of the calling block (blockIdx.y = b * heads + h): row length E = heads * head_dim
// of query/key/value/out, and the first channel of head h in a row.
struct HeadOfBlock {
  int64_t bh, b, h, E, chan0;
};

__device__ __forceinline__ HeadOfBlock head_of_block(const Problem& p) {
  const int64_t bh = blockIdx.y, h = bh % p.heads;
  return {bh, bh / p.heads, h, p.heads * p.head_dim, h * p.head_dim};
}

// The key tiles (mask words) [begin, end) of the calling block's key split (blockIdx.z).
struct TileRange {
  int64_t begin, end;
};

__device__ __forceinline__ TileRange split_tiles(const Problem& p) {
  const int64_t begin = int64_t(blockIdx.z) * p.tiles_per_split;
  return {begin, begin + p.tiles_per_split < p.words ? begin + p.tiles_per_split : p.words};
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Index of the calling thread in a 1-D grid.
__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }

// Block-cooperative load of rows [row0, row0 + ROWS) x channels [0, DMAX) of a matrix whose row r starts
// at src + r * row_stride, converted to fp32 and multiplied by `factor`, into dst[r * STRIDE + d]; rows
// >= num_rows and channels >= head_dim are zero (so dot products may run over DMAX unguarded).
template <int ROWS, int DMAX, int STRIDE, typename scalar_t>
__device__ __forceinline__ void load_tile(const scalar_t* __restrict__ src, int64_t row_stride, int64_t row0,
                                          int64_t num_rows, int head_dim, float factor, float* dst) {
  for (int i = threadIdx.x; i < ROWS * DMAX; i += kThreads) {
    const int r = i / DMAX, d = i % DMAX;
    const int64_t row = row0 + r;
    float x = 0.f;
    if (row < num_rows && d < head_dim) x = to_acc<float>(src[row * row_stride + d]) * factor;
    dst[r * STRIDE + d] = x;
  }
}

// 4 consecutive floats of shared memory in one 16-byte load (p 16-byte aligned).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }

// s[r] += sum over d < DMAX of rows[r * DMAX + d] * tile[lane * S + d]: a warp's R rows (shared, the same
// address in every lane: broadcast) dotted with the lane's row of a shared 32-row tile (scores q.k,
// dO.v), 4 channels per 16-byte load. Each s[r] accumulates in channel order, one fma per channel.
template <int R, int DMAX, int S>
__device__ __forceinline__ void dot_lane_row(const float* rows, const float* tile, int lane, float (&s)[R]) {
#pragma unroll 8
  for (int d = 0; d < DMAX; d += 4) {
    const float4 t = load4(tile + lane * S + d);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 x = load4(rows + r * DMAX + d);
      s[r] += x.x * t.x;
      s[r] += x.y * t.y;
      s[r] += x.z * t.z;
      s[r] += x.w * t.w;
    }
  }
}

// 16 bytes from global to shared memory (both 16-byte aligned), copied asynchronously on sm_80+
// (cp.async.cg), or 16 zero bytes when `read` is false (src is not read then). They land by the thread's
// next cp_async_wait_all; before sm_80 the copy is an ordinary load and store.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool read) {
#if defined(RANKSEG_FAST_CUDA_EMULATOR)
  rsf_emu::cp_async_16(dst, src, read ? 16 : 0);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  *static_cast<uint4*>(dst) = read ? *static_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
#else
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src), "r"(read ? 16 : 0));
#endif
}

// Waits for the calling thread's cp_async_16 copies; a barrier after it publishes them to the block.
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(RANKSEG_FAST_CUDA_EMULATOR)
  rsf_emu::cp_async_wait_all();
#elif !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// The tile loop of every attention kernel, software-pipelined, over tiles [begin, end) (key tiles of the
// block's split, or query tiles in dK/dV). stage(tile) starts copying a tile into buffer tile % BUFFERS
// of the caller's shared tiles (cp_async_16, or plain stores); body(tile, word) computes on that buffer.
// With two buffers, iteration `tile` runs body(tile) while the copies of tile + 1 land in the other
// buffer, one barrier per tile; with one, tile + 1 is staged after body(tile) and a second barrier. A
// tile is staged and computed only if some thread of the block has a nonzero word for it:
// read_words(tile, word) gives the calling thread's W mask words of a tile (0 for a tile >= end), read
// one iteration before the barrier that decides, so that their global round trip is hidden too.
// read_words(tile + 1) always follows stage(tile), so a caller may keep per-tile values it reads there
// for its stage().
template <int W, int BUFFERS = 2, typename ReadWords, typename Stage, typename Body>
__device__ __forceinline__ void pipelined_tiles(int64_t begin, int64_t end, ReadWords&& read_words, Stage&& stage,
                                                Body&& body) {
  static_assert(BUFFERS == 1 || BUFFERS == 2, "one or two buffers");
  const auto any = [](const uint32_t (&w)[W]) {
    uint32_t bits = 0u;
#pragma unroll
    for (int i = 0; i < W; ++i) bits |= w[i];
    return bits != 0u;
  };
  uint32_t now[W], next[W];
  read_words(begin, now);
  bool now_staged = __syncthreads_or(any(now));
  if (now_staged) stage(begin);
  read_words(begin + 1, next);
  for (int64_t tile = begin; tile < end; ++tile) {
    cp_async_wait_all();
    // Publishes this tile's buffer to the block, and every warp is done with the other buffer.
    const bool next_staged = __syncthreads_or(any(next));
    uint32_t word[W];
#pragma unroll
    for (int i = 0; i < W; ++i) word[i] = now[i], now[i] = next[i];
    const bool staged = now_staged;
    now_staged = next_staged;
    if constexpr (BUFFERS == 2) {
      if (next_staged) stage(tile + 1);
      read_words(tile + 2, next);
      if (staged) body(tile, word);  // block-uniform
    } else {
      if (staged) body(tile, word);
      __syncthreads();  // the buffer is free again
      if (next_staged) stage(tile + 1);
      read_words(tile + 2, next);
    }
  }
}

// Word `tile` of a row's mask words; 0 for a row past the queries or a tile at or past `end` (pipelined_tiles
// reads the words of the two tiles after the current one, past the end of the range too).
__device__ __forceinline__ uint32_t tile_word(const uint32_t* row_words, bool valid, int64_t tile, int64_t end) {
  return valid && tile < end ? row_words[tile] : 0u;
}

// tile_word of each of a warp's R rows into word[].
template <int R>
__device__ __forceinline__ void row_tile_words(const uint32_t* (&row_words)[R], const bool (&row_valid)[R],
                                               int64_t tile, int64_t end, uint32_t (&word)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) word[r] = tile_word(row_words[r], row_valid[r], tile, end);
}

// Block-cooperative staging of a 32-row tile for the SIMT kernels (rows [row0, row0 + ROWS) x channels
// [0, DMAX) into dst[r * S + d] as fp32, zero past num_rows / head_dim): fp32 inputs whose rows are
// 16-byte aligned go through cp_async_16 (4 channels per copy; they land by cp_async_wait_all), the
// others through load_tile (converted now).
template <int ROWS, int DMAX, int S, typename scalar_t>
__device__ __forceinline__ void stage_tile(const scalar_t* __restrict__ src, int64_t row_stride, int64_t row0,
                                           int64_t num_rows, int head_dim, float* dst) {
  static_assert(S % 4 == 0 && DMAX % 4 == 0, "16-byte chunks of a shared row stay aligned");
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (reinterpret_cast<uintptr_t>(src) % 16 == 0 && row_stride % 4 == 0 && head_dim % 4 == 0) {
      constexpr int kChunks = DMAX / 4;
      for (int i = threadIdx.x; i < ROWS * kChunks; i += kThreads) {
        const int r = i / kChunks, d0 = (i % kChunks) * 4;
        const int64_t row = row0 + r;
        const bool inside = row < num_rows && d0 < head_dim;
        cp_async_16(dst + r * S + d0, inside ? src + row * row_stride + d0 : src, inside);
      }
      return;
    }
  }
  load_tile<ROWS, DMAX, S>(src, row_stride, row0, num_rows, head_dim, 1.f, dst);
}

// The key-tile loop of the SIMT forward and dQ kernels (pipelined_tiles over the block's key split):
// body(k_tile, v_tile, word) computes on a K/V tile pair staged in k_s / v_s[tile % BUFFERS], for every
// tile a row of the block sees, skipping warps whose R rows (row_words / row_valid, as row_tile_words)
// see none of its keys; K/V rows are row_stride apart.
template <int R, int DMAX, int S, int BUFFERS, typename scalar_t, typename Body>
__device__ __forceinline__ void pipelined_key_tiles_simt(const Problem& p, const scalar_t* key_bh,
                                                         const scalar_t* value_bh, int64_t row_stride,
                                                         const uint32_t* (&row_words)[R], const bool (&row_valid)[R],
                                                         float (&k_s)[BUFFERS][kTile * S],
                                                         float (&v_s)[BUFFERS][kTile * S], Body&& body) {
  const int head_dim = static_cast<int>(p.head_dim);
  const auto [t_begin, t_end] = split_tiles(p);
  pipelined_tiles<R, BUFFERS>(
      t_begin, t_end,
      [&](int64_t tile, uint32_t (&word)[R]) { row_tile_words(row_words, row_valid, tile, t_end, word); },
      [&](int64_t tile) {
        stage_tile<kTile, DMAX, S>(key_bh, row_stride, tile * kTile, p.keys, head_dim, k_s[tile % BUFFERS]);
        stage_tile<kTile, DMAX, S>(value_bh, row_stride, tile * kTile, p.keys, head_dim, v_s[tile % BUFFERS]);
      },
      [&](int64_t tile, const uint32_t (&word)[R]) {
        uint32_t any = 0u;
#pragma unroll
        for (int r = 0; r < R; ++r) any |= word[r];
        // Warp-uniform: a warp's rows, and so its words, are the same in every lane.
        if (any != 0u) body(k_s[tile % BUFFERS], v_s[tile % BUFFERS], word);
      });
}

// acc[r][c] += sum over the kTile rows j of a shared tile (row stride S) of w[r][j] * tile[j][c * 32 + lane]:
// a warp's R rows of tile weights (P or dS, in shared memory) times the tile (V, K, dO or Q), each lane
// holding the channels lane, lane + 32, ... of the R result rows (the SIMT kernels).
// The weights are read 4 at a time (16-byte broadcast loads); each acc[r][c] accumulates in order of j.
template <int R, int C, int DMAX, int S>
__device__ __forceinline__ void accumulate_weighted_tile(const float (&w)[R][kTile], const float* tile, int lane,
                                                         float (&acc)[R][C]) {
#pragma unroll 2
  for (int j0 = 0; j0 < kTile; j0 += 4) {
    float w4[R][4];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 x = load4(&w[r][j0]);
      w4[r][0] = x.x, w4[r][1] = x.y, w4[r][2] = x.z, w4[r][3] = x.w;
    }
#pragma unroll
    for (int dj = 0; dj < 4; ++dj) {
#pragma unroll
      for (int c = 0; c < C; ++c) {
        if (c * 32 + lane >= DMAX) continue;  // DMAX = 16: lanes 16..31 own no channel
        const float x = tile[(j0 + dj) * S + c * 32 + lane];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][c] += w4[r][dj] * x;
      }
    }
  }
}

// Stores a warp's R lane-strided accumulator rows at rows first_row + r of a (rows, head_dim) fp32 partial,
// skipping rows past the queries.
template <int R, int C>
__device__ __forceinline__ void store_partial_rows(float* partial, int64_t first_row, const bool (&row_valid)[R],
                                                   int64_t head_dim, int lane, const float (&acc)[R][C]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (!row_valid[r]) continue;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int d = c * 32 + lane;
      if (d < head_dim) partial[(first_row + r) * head_dim + d] = acc[r][c];
    }
  }
}

}  // namespace rankseg_fast::masked_attention::cuda_impl
