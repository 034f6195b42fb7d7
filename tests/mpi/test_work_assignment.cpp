// The greedy longest-first assignment of refresh work: a hand-worked case, Graham's bound
// against the best assignment found by enumerating all P^T of them, and the same plan on every
// rank without communication.
#include <catch2/catch.hpp>
#include <kfopt/mpi/work_assignment.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "mpi/mpi_test_support.hpp"

using kfopt::mpi::assign_greedy;
using kfopt_mpi_test::everywhere;

namespace {

/// The smallest possible makespan, by enumerating every assignment.
double best_makespan(const std::vector<double>& costs, int ranks) {
  const std::size_t T = costs.size();
  std::size_t total = 1;
  for (std::size_t i = 0; i < T; ++i) total *= static_cast<std::size_t>(ranks);
  double best = std::numeric_limits<double>::infinity();
  std::vector<double> load(static_cast<std::size_t>(ranks));
  for (std::size_t code = 0; code < total; ++code) {
    std::fill(load.begin(), load.end(), 0.0);
    std::size_t c = code;
    for (std::size_t i = 0; i < T; ++i) {
      load[c % static_cast<std::size_t>(ranks)] += costs[i];
      c /= static_cast<std::size_t>(ranks);
    }
    best = std::min(best, *std::max_element(load.begin(), load.end()));
  }
  return best;
}

}  // namespace

TEST_CASE("mpi: greedy assignment, a hand-worked case", "[mpi][assignment]") {
  // Sorted 9, 7, 5, 4, 3, 2 on 2 ranks: 9→0, 7→1, 5→1 (7 < 9), 4→0 (9 < 12), 3→1 (12 < 13),
  // 2→0 (13 < 15): loads 15 and 15.
  const std::vector<double> costs{3, 9, 2, 7, 4, 5};
  const auto plan = assign_greedy(costs, 2);
  CHECK(plan.owner == std::vector<int>{1, 0, 0, 1, 0, 1});
  CHECK(plan.load == std::vector<double>{15, 15});
  CHECK(plan.tasks_of[0] == std::vector<std::size_t>{1, 2, 4});
  CHECK(plan.tasks_of[1] == std::vector<std::size_t>{0, 3, 5});
  // Ties go to the lower index and the lower rank.
  const auto ties = assign_greedy({1, 1, 1, 1}, 3);
  CHECK(ties.owner == std::vector<int>{0, 1, 2, 0});
  // More ranks than tasks: the extra ranks get nothing.
  const auto idle = assign_greedy({5, 8}, 3);
  CHECK(idle.owner == std::vector<int>{1, 0});
  CHECK(idle.tasks_of[2].empty());
  CHECK(idle.makespan() == 8.0);
}

TEST_CASE("mpi: greedy assignment is within Graham's bound of the best one",
          "[mpi][assignment]") {
  std::mt19937_64 gen(2024);
  std::uniform_int_distribution<int> size(8, 200);
  for (int ranks : {2, 3, 4}) {
    for (int trial = 0; trial < 40; ++trial) {
      // Costs of eigendecompositions of factors of random sizes (7 tasks).
      std::vector<double> costs;
      for (int i = 0; i < 7; ++i) costs.push_back(kfopt::mpi::eigendecomposition_cost(size(gen)));
      const auto plan = assign_greedy(costs, ranks);
      const double best = best_makespan(costs, ranks);
      CHECK(plan.makespan() <= (4.0 / 3.0 - 1.0 / (3.0 * ranks)) * best * (1 + 1e-12));
      CHECK(plan.makespan() >= best);
      // Every task assigned exactly once, loads add up.
      double sum = 0.0, loads = 0.0;
      std::size_t listed = 0;
      for (double c : costs) sum += c;
      for (int r = 0; r < ranks; ++r) {
        loads += plan.load[static_cast<std::size_t>(r)];
        listed += plan.tasks_of[static_cast<std::size_t>(r)].size();
      }
      CHECK(std::abs(loads - sum) <= 1e-12 * sum);
      CHECK(listed == costs.size());
    }
  }
}

TEST_CASE("mpi: every rank computes the same assignment", "[mpi][assignment]") {
  kfopt::mpi::Communicator comm;
  std::vector<double> costs;
  for (int n : {784, 100, 101, 10, 33, 32, 257, 64, 65}) {
    costs.push_back(kfopt::mpi::eigendecomposition_cost(n));
  }
  const auto plan = assign_greedy(costs, comm.size());
  std::vector<double> owners(plan.owner.begin(), plan.owner.end());
  CHECK(kfopt_mpi_test::same_bytes_as_rank0(comm, owners));
  // The largest factor is alone on its rank when P >= 2 (it costs more than all others).
  if (comm.size() >= 2) {
    CHECK(plan.tasks_of[static_cast<std::size_t>(plan.owner[0])] == std::vector<std::size_t>{0});
  }
}

TEST_CASE("mpi: greedy assignment refuses bad input", "[mpi][assignment]") {
  const auto message = [](auto&& call) {
    try {
      call();
    } catch (const kfopt::InvalidInputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(message([] { assign_greedy({1.0}, 0); }).find("kfopt::mpi::assign_greedy") == 0);
  CHECK(message([] { assign_greedy({1.0, -2.0}, 2); }).find("costs[1]") != std::string::npos);
  CHECK(message([] { assign_greedy({std::nan("")}, 2); }).find("costs[0]") != std::string::npos);
}
