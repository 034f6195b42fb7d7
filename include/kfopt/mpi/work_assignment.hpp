#pragma once
/// \file work_assignment.hpp
/// \brief Which rank computes which expensive task (e.g. the eigendecomposition or damped
/// inverse of each Kronecker factor at a K-FAC refresh): greedy longest-processing-time-first
/// (Graham 1969), as KAISA assigns factor inversions to workers (Pauloski et al. 2021).
///
/// Tasks are taken in order of decreasing cost (ties: lower index first) and each goes to the
/// rank with the smallest load so far (ties: lower rank). The result depends only on the costs
/// and P, so every rank computes the same assignment locally, with no communication, as long
/// as all ranks pass the same costs (derived from shapes, never from timings). Graham's bound:
/// the largest load is at most (4/3 − 1/(3P)) × the best possible one.
///
/// \code
///   std::vector<double> costs;                      // one entry per factor to refresh
///   for (auto n : factor_sizes) costs.push_back(kfopt::mpi::eigendecomposition_cost(n));
///   const auto plan = kfopt::mpi::assign_greedy(costs, comm.size());
///   for (std::size_t i : plan.tasks_of[comm.rank()]) { ...compute task i... }
///   for (std::size_t i = 0; i < costs.size(); ++i) { ...broadcast task i from plan.owner[i]... }
/// \endcode
///
/// Cost: O(T log T + T P) for T tasks (sort, then a scan of the P loads per task).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "kfopt/core/error.hpp"

namespace kfopt {
namespace mpi {

/// Flops of one symmetric n×n eigendecomposition (tridiagonalization and the QR/divide-and-
/// conquer back-transformation, about 9n³), the usual cost of a K-FAC factor refresh.
inline double eigendecomposition_cost(Eigen::Index n) {
  const double m = static_cast<double>(n);
  return 9.0 * m * m * m;
}

/// Flops of one Cholesky-based inverse of an n×n SPD matrix (factor n³/3, invert 2n³/3).
inline double cholesky_inverse_cost(Eigen::Index n) {
  const double m = static_cast<double>(n);
  return m * m * m;
}

/// An assignment of T tasks to P ranks.
struct WorkAssignment {
  std::vector<int> owner;                           ///< owner[i] ∈ [0, P) computes task i
  std::vector<double> load;                         ///< load[r] = Σ costs of r's tasks
  std::vector<std::vector<std::size_t>> tasks_of;   ///< tasks of rank r, by increasing index

  /// The largest load (the refresh's critical path, in the costs' units).
  double makespan() const {
    return load.empty() ? 0.0 : *std::max_element(load.begin(), load.end());
  }
};

/// Greedy longest-first assignment of tasks with the given costs to `ranks` ranks (see the
/// file comment). Throws InvalidInputError for ranks < 1 or a negative or non-finite cost.
inline WorkAssignment assign_greedy(const std::vector<double>& costs, int ranks) {
  constexpr const char* op = "kfopt::mpi::assign_greedy";
  if (ranks < 1) {
    throw InvalidInputError(std::string(op) + ": needs at least one rank, got " +
                            std::to_string(ranks));
  }
  for (std::size_t i = 0; i < costs.size(); ++i) {
    if (!std::isfinite(costs[i]) || costs[i] < 0.0) {
      throw InvalidInputError(std::string(op) + ": costs[" + std::to_string(i) + "]" +
                              " = " + std::to_string(costs[i]) + ", must be finite and >= 0");
    }
  }
  std::vector<std::size_t> order(costs.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });

  WorkAssignment plan;
  plan.owner.assign(costs.size(), 0);
  plan.load.assign(static_cast<std::size_t>(ranks), 0.0);
  plan.tasks_of.resize(static_cast<std::size_t>(ranks));
  for (const std::size_t task : order) {
    const auto least = static_cast<std::size_t>(
        std::min_element(plan.load.begin(), plan.load.end()) - plan.load.begin());
    plan.owner[task] = static_cast<int>(least);
    plan.load[least] += costs[task];
  }
  for (std::size_t i = 0; i < costs.size(); ++i) {
    plan.tasks_of[static_cast<std::size_t>(plan.owner[i])].push_back(i);
  }
  return plan;
}

}  // namespace mpi
}  // namespace kfopt
