// CPU kernel of linear_assignment.
//
// Algorithm: the shortest-augmenting-path Hungarian method with potentials (Kuhn-Munkres in the
// Jonker-Volgenant formulation), O(R^2 M) per problem. The smaller side of a problem (R vertices: the
// valid targets when there are at most Q of them, else the queries) is added one vertex at a time; a
// Dijkstra-like scan over the M vertices of the larger side, on reduced costs c(i, j) - u(i) - v(j) >= 0,
// finds the cheapest augmenting path, and the potentials u, v are updated so that reduced costs stay
// non-negative and are zero on matched edges. After R augmentations the matching is optimal.
//
// Parallelism: one problem per task of at::parallel_for (grain 1), each task with its own workspace.
// Numerics: potentials and reduced costs in float64 for float32 and float64 costs. Ties are broken by
// the lowest index (strict comparisons while scanning in increasing order), so results are deterministic
// and equal to the CUDA kernel's. A problem with a non-finite cost in a valid column gets ok = false
// and no pairs, as on the CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../../common/checks.h"
#include "../linear_assignment.h"

namespace rankseg_fast::linear_assignment {
namespace {

// Per-task scratch, reused across the problems of a task. Vertices are 1-based; index 0 of the larger
// side is the virtual root of the augmenting-path search.
struct Workspace {
  std::vector<int64_t> targets;        // the valid target (column) indices of the problem
  std::vector<double> u, v, min_reduced;
  std::vector<int64_t> match;          // match[j]: smaller-side vertex matched to j (0: free)
  std::vector<int64_t> way;            // way[j]: previous larger-side vertex on the shortest path to j
  std::vector<char> visited;
};

// Solves one problem. cost: (Q, T) row-major; valid: (T,). Writes the pairs (ascending query) to
// query_out / target_out, which hold T slots prefilled with -1. Returns false when a cost in a valid
// column is not finite (nothing written).
template <typename scalar_t>
bool solve_problem(const scalar_t* cost, const bool* valid, int64_t Q, int64_t T, int64_t* query_out,
                   int64_t* target_out, Workspace& w) {
  w.targets.clear();
  for (int64_t t = 0; t < T; ++t) {
    if (valid[t]) w.targets.push_back(t);
  }
  const int64_t n = static_cast<int64_t>(w.targets.size());
  for (int64_t q = 0; q < Q; ++q) {
    for (const int64_t t : w.targets) {
      if (!std::isfinite(static_cast<double>(cost[q * T + t]))) return false;
    }
  }
  if (n == 0 || Q == 0) return true;

  const bool targets_first = n <= Q;  // the smaller side is augmented
  const int64_t R = targets_first ? n : Q;
  const int64_t M = targets_first ? Q : n;
  const int64_t* targets = w.targets.data();
  auto edge = [&](int64_t i, int64_t j) -> double {  // 1-based (smaller side i, larger side j)
    const int64_t q = targets_first ? j - 1 : i - 1;
    const int64_t t = targets[targets_first ? i - 1 : j - 1];
    return static_cast<double>(cost[q * T + t]);
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();
  w.u.assign(R + 1, 0.0);
  w.v.assign(M + 1, 0.0);
  w.match.assign(M + 1, 0);
  w.way.assign(M + 1, 0);
  double* u = w.u.data();
  double* v = w.v.data();
  int64_t* match = w.match.data();
  int64_t* way = w.way.data();

  for (int64_t i = 1; i <= R; ++i) {
    w.min_reduced.assign(M + 1, kInf);
    w.visited.assign(M + 1, 0);
    double* min_reduced = w.min_reduced.data();
    char* visited = w.visited.data();
    match[0] = i;
    int64_t j0 = 0;
    do {  // Dijkstra step: settle the cheapest unvisited larger-side vertex j1
      visited[j0] = 1;
      const int64_t i0 = match[j0];
      double delta = kInf;
      int64_t j1 = 0;
      for (int64_t j = 1; j <= M; ++j) {
        if (visited[j]) continue;
        const double reduced = edge(i0, j) - u[i0] - v[j];
        if (reduced < min_reduced[j]) {
          min_reduced[j] = reduced;
          way[j] = j0;
        }
        if (min_reduced[j] < delta) {
          delta = min_reduced[j];
          j1 = j;
        }
      }
      for (int64_t j = 0; j <= M; ++j) {
        if (visited[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          min_reduced[j] -= delta;
        }
      }
      j0 = j1;
    } while (match[j0] != 0);
    do {  // augment along the path back to the root
      const int64_t prev = way[j0];
      match[j0] = match[prev];
      j0 = prev;
    } while (j0 != 0);
  }

  if (targets_first) {  // larger side = queries: scan them in order
    int64_t slot = 0;
    for (int64_t j = 1; j <= M; ++j) {
      if (match[j] == 0) continue;
      query_out[slot] = j - 1;
      target_out[slot] = targets[match[j] - 1];
      ++slot;
    }
  } else {  // smaller side = queries: every query is matched, slot q holds query q
    for (int64_t j = 1; j <= M; ++j) {
      if (match[j] == 0) continue;
      query_out[match[j] - 1] = match[j] - 1;
      target_out[match[j] - 1] = targets[j - 1];
    }
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_assignment_cpu(const at::Tensor& cost,
                                                                     const at::Tensor& valid) {
  const Sizes s = check_inputs(cost, valid);
  RSF_CHECK_VALUE(cost.device().is_cpu(), "linear_assignment: the CPU kernel got `cost` on ",
                    cost.device());
  const auto index_options = cost.options().dtype(at::kLong);
  at::Tensor query_index = at::full({s.problems, s.targets}, -1, index_options);
  at::Tensor target_index = at::full({s.problems, s.targets}, -1, index_options);
  at::Tensor ok = at::ones({s.problems}, cost.options().dtype(at::kBool));
  if (s.problems == 0 || s.targets == 0) return {query_index, target_index, ok};

  const at::Tensor cost_c = cost.contiguous();
  const at::Tensor valid_c = valid.contiguous();
  const bool* valid_ptr = valid_c.const_data_ptr<bool>();
  int64_t* query_ptr = query_index.mutable_data_ptr<int64_t>();
  int64_t* target_ptr = target_index.mutable_data_ptr<int64_t>();
  bool* ok_ptr = ok.mutable_data_ptr<bool>();
  const int64_t Q = s.queries, T = s.targets;

  AT_DISPATCH_FLOATING_TYPES(cost_c.scalar_type(), "linear_assignment", [&] {
    const scalar_t* cost_ptr = cost_c.const_data_ptr<scalar_t>();
    at::parallel_for(0, s.problems, 1, [&](int64_t begin, int64_t end) {
      Workspace w;
      for (int64_t p = begin; p < end; ++p) {
        ok_ptr[p] = solve_problem<scalar_t>(cost_ptr + p * Q * T, valid_ptr + p * T, Q, T,
                                            query_ptr + p * T, target_ptr + p * T, w);
      }
    });
  });
  return {query_index, target_index, ok};
}

}  // namespace
}  // namespace rankseg_fast::linear_assignment

TORCH_LIBRARY_IMPL(rankseg_fast, CPU, m) {
  m.impl("linear_assignment", &rankseg_fast::linear_assignment::linear_assignment_cpu);
}
