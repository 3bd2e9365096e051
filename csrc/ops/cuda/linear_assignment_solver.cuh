// CUDA kernel of linear_assignment: one thread block solves one problem.
//
// Algorithm: the same shortest-augmenting-path Hungarian method with potentials as the CPU kernel
// (Jonker-Volgenant formulation, O(R^2 M) work per problem): the R vertices of the smaller side (the
// valid targets when there are at most Q of them, else the queries) are added one at a time, each by a
// Dijkstra-like search over the M vertices of the larger side on non-negative reduced costs.
//
// Costs: after compacting the valid targets, the block copies the problem's edge costs once into an
// R x M matrix (row i: smaller-side vertex i + 1, column j: larger-side vertex j + 1), in shared memory
// when the launcher found room for it (Q * T scalars), else in a global scratch. Every Dijkstra step then
// reads one row of it: from shared memory, not an L2 round trip per step, and with no target-index
// indirection in either orientation.
//
// Thread mapping: thread k of the block owns the larger-side vertices j = k, k + blockDim, ... of every
// Dijkstra step. A step is (1) every thread relaxes its unvisited vertices with the edge costs of the
// vertex i0 just reached and keeps its minimum (lowest j on ties), (2) a warp-shuffle argmin, warp
// minima to shared memory, and every thread reduces those few minima itself (no second barrier),
// (3) every thread updates the potentials / tentative distances of its vertices. Two __syncthreads per
// step. Thread 0 alone compacts the valid targets, walks the augmenting path back and writes the pairs
// (all O(Q + T) work).
//
// Dynamic shared memory: the staged costs (when in shared memory), then float64 potentials u (smaller
// side), v and tentative distances (larger side), int32 match / way, the valid target list and the
// visited flags; Q * T * sizeof(scalar_t) rounded up to 8, plus (max(Q, T) + 1) * 33 + 4 T bytes.
//
// Numerics: float64 accumulation for float32 and float64 costs; the same comparisons in the same order
// as the CPU kernel, so both take the same tie-breaking decisions. A problem with a non-finite cost in
// a valid column gets ok = false and all slots -1 (no trap, no host synchronisation).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace rankseg_fast::linear_assignment::cuda_impl {

constexpr int kMaxThreads = 256;
constexpr int kWarpSize = 32;

// Dynamic shared memory of one block's solver state for Q queries and T targets (see the layout above).
inline size_t state_bytes(int64_t queries, int64_t targets) {
  const int64_t k = (queries > targets ? queries : targets) + 1;
  return static_cast<size_t>(k * (3 * sizeof(double) + 2 * sizeof(int) + 1) + targets * sizeof(int));
}

// Dynamic shared memory of the staged costs, which come first (rounded up to keep the state 8-aligned).
template <typename scalar_t>
__host__ __device__ inline size_t staged_cost_bytes(int64_t queries, int64_t targets) {
  return (static_cast<size_t>(queries * targets) * sizeof(scalar_t) + 7) / 8 * 8;
}

// (value, index) argmin with the lowest index winning ties.
__device__ __forceinline__ bool better(double value, int index, double best, int best_index) {
  return value < best || (value == best && index < best_index);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    linear_assignment_kernel(const scalar_t* __restrict__ cost, const bool* __restrict__ valid, int Q, int T,
                             scalar_t* __restrict__ staging, int64_t* __restrict__ query_out,
                             int64_t* __restrict__ target_out, bool* __restrict__ ok_out) {
  const double kInf = static_cast<double>(INFINITY);
  extern __shared__ double shared[];
  __shared__ double warp_best[kMaxThreads / kWarpSize];
  __shared__ int warp_best_index[kMaxThreads / kWarpSize];
  __shared__ int num_valid;

  const int K = (Q > T ? Q : T) + 1;
  const int64_t problem = blockIdx.x;
  // staging: a (problems, Q * T) global scratch, or null when the costs are staged in shared memory.
  scalar_t* const staged = staging != nullptr ? staging + problem * Q * T : reinterpret_cast<scalar_t*>(shared);
  double* u = staging != nullptr ? shared : shared + staged_cost_bytes<scalar_t>(Q, T) / 8;  // [K] 1-based
  double* v = u + K;                // [K] larger side, 0 = root
  double* distance = v + K;         // [K] tentative reduced distance of each larger-side vertex
  int* match = reinterpret_cast<int*>(distance + K);  // [K] smaller-side vertex matched to j (0: free)
  int* way = match + K;             // [K] predecessor of j on the shortest path
  int* targets = way + K;           // [T] valid target indices
  unsigned char* visited = reinterpret_cast<unsigned char*>(targets + T);  // [K]

  const int tid = threadIdx.x;
  const int threads = blockDim.x;
  const int warps = threads / kWarpSize;
  cost += problem * Q * T;
  valid += problem * T;
  query_out += problem * T;
  target_out += problem * T;

  for (int k = tid; k < T; k += threads) {
    query_out[k] = -1;
    target_out[k] = -1;
  }
  if (tid == 0) {
    int n = 0;
    for (int t = 0; t < T; ++t) {
      if (valid[t]) targets[n++] = t;
    }
    num_valid = n;
  }
  __syncthreads();
  const int n = num_valid;
  const bool targets_first = n <= Q;  // the smaller side is augmented
  const int R = targets_first ? n : Q;
  const int M = targets_first ? Q : n;
  // Stage the valid columns (read along the targets of a query row, for coalescing) into the R x M matrix.
  bool finite = true;
#pragma unroll 4
  for (int k = tid; k < Q * n; k += threads) {
    const int q = k / n, t = k % n;
    const scalar_t c = cost[q * T + targets[t]];
    finite = finite && isfinite(static_cast<double>(c));
    staged[targets_first ? t * M + q : q * M + t] = c;
  }
  const bool all_finite = __syncthreads_and(finite);  // also publishes the staged costs to the block
  if (tid == 0) ok_out[problem] = all_finite;
  if (!all_finite || n == 0 || Q == 0) return;

  for (int j = tid; j <= M; j += threads) {
    v[j] = 0.0;
    match[j] = 0;
    way[j] = 0;
  }
  for (int i = tid; i <= R; i += threads) u[i] = 0.0;

  for (int i = 1; i <= R; ++i) {
    for (int j = tid; j <= M; j += threads) {
      distance[j] = kInf;
      visited[j] = j == 0;
    }
    if (tid == 0) match[0] = i;
    __syncthreads();
    int j0 = 0;
    while (true) {
      // (1) relax the edges of i0 and find this thread's closest unvisited vertex.
      const int i0 = match[j0];
      const double u0 = u[i0];
      const scalar_t* row = staged + (i0 - 1) * M;
      double best = kInf;
      int best_index = INT32_MAX;
      for (int j = tid; j <= M; j += threads) {
        if (visited[j]) continue;
        const double edge = static_cast<double>(row[j - 1]);
        const double reduced = edge - u0 - v[j];
        if (reduced < distance[j]) {
          distance[j] = reduced;
          way[j] = j0;
        }
        if (better(distance[j], j, best, best_index)) {
          best = distance[j];
          best_index = j;
        }
      }
      // (2) block argmin: warp shuffles, then every thread reduces the warp minima.
      for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
        const double other = __shfl_down_sync(0xffffffffu, best, offset);
        const int other_index = __shfl_down_sync(0xffffffffu, best_index, offset);
        if (better(other, other_index, best, best_index)) {
          best = other;
          best_index = other_index;
        }
      }
      if ((tid & (kWarpSize - 1)) == 0) {
        warp_best[tid / kWarpSize] = best;
        warp_best_index[tid / kWarpSize] = best_index;
      }
      __syncthreads();
      double delta = warp_best[0];
      int j1 = warp_best_index[0];
      for (int w = 1; w < warps; ++w) {
        if (better(warp_best[w], warp_best_index[w], delta, j1)) {
          delta = warp_best[w];
          j1 = warp_best_index[w];
        }
      }
      // Read before the barrier below: once past it, thread 0 may augment (rewrite match) while a
      // slower thread has yet to decide whether to leave the loop.
      const bool path_ends = match[j1] == 0;
      // (3) potentials of the visited vertices, distances of the others; j1 becomes visited.
      for (int j = tid; j <= M; j += threads) {
        if (visited[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          distance[j] -= delta;
          if (j == j1) visited[j] = 1;
        }
      }
      __syncthreads();
      j0 = j1;
      if (path_ends) break;
    }
    if (tid == 0) {  // augment along the path back to the root
      do {
        const int prev = way[j0];
        match[j0] = match[prev];
        j0 = prev;
      } while (j0 != 0);
    }
    __syncthreads();
  }

  if (targets_first) {  // larger side = queries: thread 0 lists them in order
    if (tid == 0) {
      int slot = 0;
      for (int j = 1; j <= M; ++j) {
        if (match[j] == 0) continue;
        query_out[slot] = j - 1;
        target_out[slot] = targets[match[j] - 1];
        ++slot;
      }
    }
  } else {  // smaller side = queries: every query is matched, slot q holds query q
    for (int j = tid + 1; j <= M; j += threads) {
      if (match[j] == 0) continue;
      query_out[match[j] - 1] = match[j] - 1;
      target_out[match[j] - 1] = targets[j - 1];
    }
  }
}

}  // namespace rankseg_fast::linear_assignment::cuda_impl
