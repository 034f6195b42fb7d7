// Data-parallel Adam and FilterAdam through DataParallelGradients against one process on the
// whole global batch: linear regression with a closed-form gradient on seeded data. Every rank
// runs the one-process reference itself, so the comparison needs no communication.
#include <catch2/catch.hpp>
#include <kfopt/mpi/cost_model.hpp>
#include <kfopt/mpi/data_parallel_gradients.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/first_order/adam.hpp>

#include <Eigen/Core>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mpi/mpi_test_support.hpp"

using namespace kfopt_mpi_test;
using kfopt::Status;
using kfopt::mpi::Communicator;
using kfopt::mpi::DataParallelGradients;

namespace {

constexpr Eigen::Index kInputs = 5;
constexpr Eigen::Index kOutputs = 3;
constexpr Eigen::Index kGlobalBatch = 24;  // divisible by 1, 2, 3 and 4
constexpr int kSteps = 50;

/// The global batch of step t (the same on every rank): y = W* x + 0.1 noise.
struct Batch {
  Mat<double> X, Y;
};
Batch global_batch(int t) {
  std::mt19937_64 gen(7777u + static_cast<unsigned>(t));
  std::normal_distribution<double> normal(0.0, 1.0);
  Mat<double> W_true(kOutputs, kInputs);
  std::mt19937_64 gen_true(99);
  for (Eigen::Index k = 0; k < W_true.size(); ++k) W_true(k) = normal(gen_true);
  Batch b{Mat<double>(kInputs, kGlobalBatch), Mat<double>(kOutputs, kGlobalBatch)};
  for (Eigen::Index k = 0; k < b.X.size(); ++k) b.X(k) = normal(gen);
  b.Y = W_true * b.X;
  for (Eigen::Index k = 0; k < b.Y.size(); ++k) b.Y(k) += 0.1 * normal(gen) + 0.5;
  return b;
}

/// Examples [begin, begin + count) of the global batch belong to a rank.
struct Slice {
  Eigen::Index begin = 0, count = kGlobalBatch;
};
Slice equal_slice(int rank, int ranks) {
  return {rank * kGlobalBatch / ranks, kGlobalBatch / ranks};
}
/// Unequal slices, sizes proportional to rank + 1 (P = 3: 4, 8, 12).
Slice unequal_slice(int rank, int ranks) {
  const Eigen::Index unit = kGlobalBatch / (ranks * (ranks + 1) / 2);
  return {unit * rank * (rank + 1) / 2, unit * (rank + 1)};
}

/// A linear model y = W x + b with its gradient storage, registered in a ParameterSet, and one
/// optimizer over it. Not copyable: the ParameterSet points into the members.
template <typename Scalar, typename Optimizer>
struct Model {
  Mat<Scalar> W;
  Vec<Scalar> b;
  Mat<Scalar> dW;
  Vec<Scalar> db;
  kfopt::ParameterSet<Scalar> params;
  std::unique_ptr<Optimizer> opt;

  template <typename Options>
  explicit Model(const Options& options)
      : W(Mat<Scalar>::Zero(kOutputs, kInputs)),
        b(Vec<Scalar>::Zero(kOutputs)),
        dW(Mat<Scalar>::Zero(kOutputs, kInputs)),
        db(Vec<Scalar>::Zero(kOutputs)) {
    for (Eigen::Index k = 0; k < W.size(); ++k) W(k) = static_cast<Scalar>(0.1 * std::sin(k + 1.0));
    params.add("W", W, dW);
    params.add("b", b, db);
    opt = std::make_unique<Optimizer>(params, options);
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  /// Gradient of the mean loss (1/n) Σ ½‖W x + b − y‖² over the slice.
  void gradients(const Batch& batch, Slice s) {
    const Mat<double> X = batch.X.middleCols(s.begin, s.count);
    const Mat<double> Y = batch.Y.middleCols(s.begin, s.count);
    const Mat<double> R =
        (W.template cast<double>() * X).colwise() + b.template cast<double>() - Y;
    dW = (R * X.transpose() / static_cast<double>(s.count)).template cast<Scalar>();
    db = (R.rowwise().sum() / static_cast<double>(s.count)).template cast<Scalar>();
  }

  std::vector<double> parameters() const {
    std::vector<double> v;
    for (Eigen::Index k = 0; k < W.size(); ++k) v.push_back(static_cast<double>(W(k)));
    for (Eigen::Index k = 0; k < b.size(); ++k) v.push_back(static_cast<double>(b(k)));
    return v;
  }
};

template <typename Scalar>
void append(std::vector<double>& out, const kfopt::BlockBuffers<Scalar>& buffers) {
  for (const auto& m : buffers)
    for (Eigen::Index k = 0; k < m.size(); ++k) out.push_back(static_cast<double>(m(k)));
}
/// The step counters; the skip counter left out when comparing a refused step's before/after.
inline void append(std::vector<double>& out, const kfopt::StepCounters& c, bool with_skips) {
  out.push_back(static_cast<double>(c.steps));
  if (with_skips) out.push_back(static_cast<double>(c.skipped_nonfinite));
}

/// Parameters and the complete optimizer state, as doubles (exact for float and double).
template <typename Scalar>
std::vector<double> snapshot(const Model<Scalar, kfopt::Adam<Scalar>>& m, bool with_skips = true) {
  std::vector<double> v = m.parameters();
  const auto& s = m.opt->state();
  append(v, s.first_moment);
  append(v, s.second_moment);
  append(v, s.max_second_moment);
  append(v, s.counters, with_skips);
  return v;
}
template <typename Scalar>
std::vector<double> snapshot(const Model<Scalar, kfopt::FilterAdam<Scalar>>& m,
                             bool with_skips = true) {
  std::vector<double> v = m.parameters();
  const auto& s = m.opt->state();
  append(v, s.momentum);
  append(v, s.weight_variance);
  append(v, s.cross_covariance);
  append(v, s.momentum_variance);
  append(v, s.gradient_average);
  v.push_back(s.centering_weight);
  v.push_back(static_cast<double>(static_cast<int>(s.phase)));
  append(v, s.counters, with_skips);
  v.push_back(static_cast<double>(s.clamped_variances));
  return v;
}

/// max_k |a_k − b_k| / max_k |b_k| over the parameters.
double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0.0, scale = 0.0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    diff = std::max(diff, std::abs(a[k] - b[k]));
    scale = std::max(scale, std::abs(b[k]));
  }
  return a.size() == b.size() ? diff / scale : std::numeric_limits<double>::infinity();
}

kfopt::AdamOptions adam_options() {
  kfopt::AdamOptions o;
  o.learning_rate = 0.05;
  return o;
}
kfopt::FilterAdamOptions filter_adam_options() {
  kfopt::FilterAdamOptions o = kfopt::FilterAdamOptions::combined(0.05, 0.01);
  o.prior_variance = 1.0;
  o.fisher = kfopt::FisherEstimate::Centered;
  return o;
}

struct RunSettings {
  bool unequal = false;   ///< unequal local batches, average_weighted
  int nonfinite_step = -1;  ///< the step at which one rank's gradient holds a NaN
  int nonfinite_rank = 0;
};

/// One process on the whole global batch (the NaN step is skipped by the optimizer's guard,
/// as it is on the ranks).
template <typename Scalar, typename Optimizer, typename Options>
std::vector<double> train_one_process(const Options& options, RunSettings settings) {
  Model<Scalar, Optimizer> m(options);
  for (int t = 0; t < kSteps; ++t) {
    m.gradients(global_batch(t), Slice{});
    if (t == settings.nonfinite_step) m.dW(1, 2) = std::numeric_limits<Scalar>::quiet_NaN();
    const Status s = m.opt->step();
    if (t == settings.nonfinite_step) REQUIRE(s == Status::NonFiniteInput);
  }
  return snapshot(m);
}

struct ParallelResult {
  std::vector<double> state;           ///< parameters + optimizer state at the end
  bool statuses_as_expected = true;    ///< average()/step() statuses on this rank
  bool skipped_step_left_state = true; ///< the refused step changed nothing but its counter
  std::uint64_t allreduce_calls = 0;
  std::uint64_t allreduce_bytes = 0;
  std::uint64_t other_calls = 0;
  Eigen::Index parameters = 0;
};

template <typename Scalar, typename Optimizer, typename Options>
ParallelResult train_data_parallel(Communicator& comm, const Options& options,
                                   RunSettings settings) {
  Model<Scalar, Optimizer> m(options);
  DataParallelGradients<Scalar> sync(m.params, comm);
  const Slice slice = settings.unequal ? unequal_slice(comm.rank(), comm.size())
                                       : equal_slice(comm.rank(), comm.size());
  ParallelResult r;
  r.parameters = m.params.total_size();
  comm.reset_traffic();
  for (int t = 0; t < kSteps; ++t) {
    m.gradients(global_batch(t), slice);
    const bool inject = t == settings.nonfinite_step && comm.rank() == settings.nonfinite_rank;
    if (inject) m.db(1) = std::numeric_limits<Scalar>::infinity();
    const Status a = settings.unequal ? sync.average_weighted(static_cast<double>(slice.count))
                                      : sync.average();
    const bool skip = t == settings.nonfinite_step;
    r.statuses_as_expected = r.statuses_as_expected &&
                             a == (skip ? Status::NonFiniteInput : Status::Success) &&
                             sync.nonfinite_ranks() == (skip ? 1 : 0);
    std::vector<double> before;
    if (skip) before = snapshot(m, false);
    const Status s = m.opt->step();
    r.statuses_as_expected =
        r.statuses_as_expected && s == (skip ? Status::NonFiniteInput : Status::Success);
    if (skip) {
      // Parameters and state bit for bit as before; only the skip counter moved.
      r.skipped_step_left_state =
          snapshot(m, false) == before && m.opt->state().counters.skipped_nonfinite == 1;
    }
  }
  r.state = snapshot(m);
  const auto& traffic = comm.traffic();
  r.allreduce_calls = traffic[kfopt::mpi::Operation::Allreduce].calls;
  r.allreduce_bytes = traffic[kfopt::mpi::Operation::Allreduce].payload_bytes;
  r.other_calls = traffic.total().calls - r.allreduce_calls;
  return r;
}

/// Compares a data-parallel run with one process; returns the observed relative difference.
template <typename Scalar, typename Optimizer, typename Options>
double check_invariance(Communicator& comm, const Options& options, RunSettings settings,
                        double bound, const char* label) {
  const ParallelResult r = train_data_parallel<Scalar, Optimizer>(comm, options, settings);
  const std::vector<double> one = train_one_process<Scalar, Optimizer>(options, settings);
  const std::size_t n = static_cast<std::size_t>(r.parameters);
  const double rel = relative_difference(
      std::vector<double>(r.state.begin(), r.state.begin() + static_cast<std::ptrdiff_t>(n)),
      std::vector<double>(one.begin(), one.begin() + static_cast<std::ptrdiff_t>(n)));
  if (comm.is_root()) {
    std::printf("[mpi] %s, P = %d: max |theta_P - theta_1| / max |theta_1| = %.3g\n", label,
                comm.size(), rel);
  }
  CHECK(everywhere(comm, rel <= bound));
  CHECK(everywhere(comm, r.statuses_as_expected && r.skipped_step_left_state));
  // Every rank ends with bitwise identical parameters and optimizer state.
  CHECK(same_bytes_as_rank0(comm, r.state));
  // One fused all-reduce per step and nothing else; its payload is the cost model's N + 3.
  const auto per_step = static_cast<std::uint64_t>(
      kfopt::mpi::cost_model::gradient_message_count(r.parameters) * sizeof(Scalar));
  CHECK(everywhere(comm, r.allreduce_calls == static_cast<std::uint64_t>(kSteps) &&
                             r.other_calls == 0 && r.allreduce_bytes == kSteps * per_step));
  return rel;
}

}  // namespace

TEST_CASE("mpi: Adam and FilterAdam on P ranks with 1/P of the batch equal one process",
          "[mpi][data_parallel]") {
  Communicator comm;
  check_invariance<double, kfopt::Adam<double>>(comm, adam_options(), {}, 1e-12, "Adam");
  check_invariance<double, kfopt::FilterAdam<double>>(comm, filter_adam_options(), {}, 1e-12,
                                                      "FilterAdam");
  check_invariance<float, kfopt::Adam<float>>(comm, adam_options(), {}, 1e-4, "Adam<float>");
  check_invariance<float, kfopt::FilterAdam<float>>(comm, filter_adam_options(), {}, 1e-4,
                                                    "FilterAdam<float>");
}

TEST_CASE("mpi: average_weighted with unequal local batches equals one process",
          "[mpi][data_parallel]") {
  Communicator comm;
  RunSettings unequal;
  unequal.unequal = true;
  check_invariance<double, kfopt::Adam<double>>(comm, adam_options(), unequal, 1e-12,
                                                "Adam, unequal local batches");
  check_invariance<double, kfopt::FilterAdam<double>>(comm, filter_adam_options(), unequal,
                                                      1e-12, "FilterAdam, unequal local batches");
}

TEST_CASE("mpi: a non-finite gradient on one rank makes every rank skip the step",
          "[mpi][data_parallel]") {
  Communicator comm;
  RunSettings nan;
  nan.nonfinite_step = 20;
  nan.nonfinite_rank = comm.size() - 1;
  check_invariance<double, kfopt::Adam<double>>(comm, adam_options(), nan, 1e-12,
                                                "Adam, one rank non-finite at step 20");
  nan.nonfinite_rank = 0;
  check_invariance<double, kfopt::FilterAdam<double>>(comm, filter_adam_options(), nan, 1e-12,
                                                      "FilterAdam, rank 0 non-finite at step 20");
}

TEST_CASE("mpi: DataParallelGradients refuses invalid weights on every rank",
          "[mpi][data_parallel]") {
  Communicator comm;
  Model<double, kfopt::Adam<double>> m(adam_options());
  DataParallelGradients<double> sync(m.params, comm);
  m.gradients(global_batch(0), equal_slice(comm.rank(), comm.size()));
  const Mat<double> dW = m.dW;
  // The last rank passes a negative weight; every rank throws, gradients unchanged.
  bool threw = false;
  try {
    sync.average_weighted(comm.rank() == comm.size() - 1 ? -1.0 : 4.0);
  } catch (const kfopt::InvalidInputError& e) {
    threw = std::string(e.what()).find("kfopt::mpi::DataParallelGradients::average_weighted") !=
            std::string::npos;
  }
  CHECK(everywhere(comm, threw && m.dW == dW));
  // All weights zero: nobody has data.
  threw = false;
  try {
    sync.average_weighted(0.0);
  } catch (const kfopt::InvalidInputError&) {
    threw = true;
  }
  CHECK(everywhere(comm, threw && m.dW == dW));
  // A rank with weight 0 contributes nothing, even a NaN.
  if (comm.rank() == 0) m.dW(0, 0) = std::numeric_limits<double>::quiet_NaN();
  if (comm.size() > 1) {
    const Status s = sync.average_weighted(comm.rank() == 0 ? 0.0 : 1.0);
    CHECK(everywhere(comm, s == Status::Success && m.dW.allFinite()));
  }
}

TEST_CASE("mpi: DataParallelGradients::average allocates nothing per step", "[mpi][data_parallel]") {
  Communicator comm;
  Model<double, kfopt::Adam<double>> m(adam_options());
  DataParallelGradients<double> sync(m.params, comm);
  m.gradients(global_batch(0), equal_slice(comm.rank(), comm.size()));
  const long before = allocation_count();
  Eigen::internal::set_is_malloc_allowed(false);
  const Status s = sync.average();
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(everywhere(comm, s == Status::Success && allocation_count() == before));
}

TEST_CASE("mpi: the cost model's formulas", "[mpi][cost_model]") {
  namespace cm = kfopt::mpi::cost_model;
  // Ring all-reduce: 2(P−1)/P · m · s per rank.
  CHECK(cm::ring_allreduce_bytes_per_rank(1, 1000, 8) == 0.0);
  CHECK(cm::ring_allreduce_bytes_per_rank(2, 1000, 8) == 8000.0);
  CHECK(cm::ring_allreduce_bytes_per_rank(4, 1000, 4) == 6000.0);
  CHECK(cm::gradient_bytes_per_rank(3, 597, 8) == Approx(2.0 * 2.0 / 3.0 * 600.0 * 8.0));
  // Dense layers 785→100, 101→10: packed triangles of A and G.
  const std::vector<cm::LayerShape> mlp{{785, 100}, {101, 10}};
  CHECK(cm::kfac_statistics_count(mlp) == 785 * 786 / 2 + 100 * 101 / 2 + 101 * 102 / 2 + 55);
  CHECK(cm::kfac_inverse_broadcast_bytes_total(3, mlp, 8) ==
        2.0 * static_cast<double>(cm::kfac_inverse_count(mlp)) * 8.0);
  CHECK(cm::kfac_preconditioned_broadcast_bytes_total(3, mlp, 8) ==
        2.0 * (785.0 * 100 + 101.0 * 10) * 8.0);
  // A recurrent layer adds A1, G1 (full) and the length histogram.
  const std::vector<cm::LayerShape> rnn{{33, 32, true, 20}};
  CHECK(cm::kfac_statistics_count(rnn) == 33 * 34 / 2 + 32 * 33 / 2 + 33 * 33 + 32 * 32 + 21);
}
