// Data-parallel K-FAC (DistributedKfac) on P ranks against one process on the whole global
// batch: a two-layer tanh network (dense layers) and a weight shared across the steps of
// variable-length sequences (recurrent layer, Options 1 and 2), with closed-form gradients on
// seeded data. Every rank runs the one-process reference itself (a plain Kfac in the same
// process), so the comparison needs no communication; what must agree across ranks is checked
// collectively.
#include <catch2/catch.hpp>
#include <kfopt/mpi/cost_model.hpp>
#include <kfopt/mpi/distributed_kfac.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mpi/mpi_test_support.hpp"
#include "mpi/two_layer_kfac_net.hpp"

using namespace kfopt_mpi_test;
using kfopt::Status;
using kfopt::mpi::Communicator;
using kfopt::mpi::DistributedKfac;

namespace {

double max_relative_difference(const Net& a, const Net& b) {
  auto rel = [](const auto& x, const auto& y) {
    const double scale = std::max(y.cwiseAbs().maxCoeff(), 1e-300);
    return (x - y).cwiseAbs().maxCoeff() / scale;
  };
  return std::max({rel(a.W1, b.W1), rel(a.b1, b.b1), rel(a.W2, b.W2), rel(a.b2, b.b2),
                   rel(a.kfac.block(a.l1).input_factor(), b.kfac.block(b.l1).input_factor()),
                   rel(a.kfac.block(a.l1).gradient_factor(), b.kfac.block(b.l1).gradient_factor()),
                   rel(a.kfac.block(a.l2).input_factor(), b.kfac.block(b.l2).input_factor()),
                   rel(a.kfac.block(a.l2).gradient_factor(), b.kfac.block(b.l2).gradient_factor())});
}

/// The entries of a Kfac state dict other than its counters of refusals, bit for bit.
std::vector<double> state_without_skip_counters(const kfopt::StateDict& dict) {
  std::vector<double> out;
  for (const auto& kv : dict.entries()) {
    if (kv.first.find("skipped") != std::string::npos) continue;
    for (auto byte : kv.second.bytes) out.push_back(static_cast<double>(byte));
  }
  return out;
}

std::int64_t integer_entry(const kfopt::StateDict& dict, const std::string& name) {
  const auto& e = dict.entries().at(name);
  std::int64_t v = 0;
  std::memcpy(&v, e.bytes.data(), sizeof(v));
  return v;
}

/// Trains `steps` steps on P ranks (distributed) and one process (reference, every rank);
/// returns the largest relative difference seen after any step.
double run_dense(Communicator& comm, int steps, bool unequal,
                 const kfopt::mpi::DistributedKfacOptions& dopt, Net& dist, Net& one) {
  DistributedKfac<double> dk(dist.kfac, comm, dopt);
  const int P = comm.size();
  const Slice s = unequal ? unequal_slice(comm.rank(), P, kGlobal) : equal_slice(comm.rank(), P, kGlobal);
  double worst = 0.0;
  bool all_success = true;
  for (int t = 0; t < steps; ++t) {
    const Batch b = global_batch(t);
    const Mat<double> X = b.X.middleRows(s.begin, s.count), T = b.T.middleRows(s.begin, s.count);
    dist.forward_backward(X, T);
    if (dk.wants_statistics()) {
      dk.record_statistics(dist.l1, X, dist.G1);
      dk.record_statistics(dist.l2, dist.H, dist.G2);
    }
    const Status sd = unequal ? dk.step_weighted(static_cast<double>(s.count)) : dk.step();

    one.forward_backward(b.X, b.T);
    if (one.kfac.wants_statistics()) {
      one.kfac.record_statistics(one.l1, b.X, one.G1);
      one.kfac.record_statistics(one.l2, one.H, one.G2);
    }
    const Status so = one.kfac.step();
    all_success = all_success && sd == Status::Success && so == Status::Success;
    worst = std::max(worst, max_relative_difference(dist, one));
  }
  REQUIRE(everywhere(comm, all_success));
  return worst;
}

}  // namespace

TEST_CASE("DistributedKfac: dense layers on P ranks equal one process on the global batch",
          "[mpi][kfac]") {
  Communicator comm;
  for (const auto method : {kfopt::InverseMethod::Eigendecomposition, kfopt::InverseMethod::Cholesky})
  for (const bool unequal : {false, true}) {
    for (const int period : {1, 2}) {
      kfopt::KfacOptions o = kfac_options();
      o.inverse_method = method;
      o.statistics_period = period;
      // Refreshes split among the ranks (T_stat = 1) or redundant on every rank (T_stat = 2).
      const bool distribute_refresh = period == 1;
      Net dist(o), one(o);
      kfopt::mpi::DistributedKfacOptions dopt;
      dopt.distribute_refresh = distribute_refresh;
      const double worst = run_dense(comm, 40, unequal, dopt, dist, one);
      if (comm.is_root()) {
        std::printf("DistributedKfac dense, P = %d, %s split, T_stat = %d, %s %s refresh: 40 steps, "
                    "largest relative difference to one process %.3g (parameters and factors)\n",
                    comm.size(), unequal ? "unequal" : "equal", period,
                    distribute_refresh ? "distributed" : "redundant",
                    method == kfopt::InverseMethod::Cholesky ? "Cholesky" : "eigendecomposition", worst);
      }
      // Rounding only: the sums are formed in another order (observed with Open MPI 4.1 at
      // P = 2 and 3: 2.6e-14 to 1.5e-13 over 40 steps).
      REQUIRE(everywhere(comm, worst < 1e-11));
      // Every rank holds the same bits: parameters and the whole optimizer state.
      const auto fp = fingerprint(dist.kfac.state_dict(), {&dist.W1, &dist.W2}, {&dist.b1, &dist.b2});
      REQUIRE(same_bytes_as_rank0(comm, fp));
      // And training moved the parameters (the comparison is not vacuous).
      REQUIRE(everywhere(comm, (dist.W1 - Net(o).W1).norm() > 1e-2));
    }
  }
}

TEST_CASE("DistributedKfac: broadcasting preconditioned gradients from each layer's owner "
          "equals one process", "[mpi][kfac]") {
  Communicator comm;
  const int P = comm.size();
  kfopt::mpi::DistributedKfacOptions dopt;
  dopt.broadcast_preconditioned_gradients = true;
  for (const auto method : {kfopt::InverseMethod::Eigendecomposition, kfopt::InverseMethod::Cholesky}) {
    kfopt::KfacOptions o = kfac_options();
    o.inverse_method = method;
    Net dist(o), one(o);
    const double worst = run_dense(comm, 40, true, dopt, dist, one);
    if (comm.is_root()) {
      std::printf("DistributedKfac dense, P = %d, unequal split, preconditioned gradients "
                  "broadcast (%s): 40 steps, largest relative difference to one process %.3g\n",
                  P, method == kfopt::InverseMethod::Cholesky ? "Cholesky" : "eigendecomposition",
                  worst);
    }
    REQUIRE(everywhere(comm, worst < 1e-11));
    // The same parameters and momentum on every rank, bit for bit; the refreshed spectra
    // only on each layer's owner (greedy by cost: fc1 to rank 0, fc2 to rank 1).
    std::vector<double> shared = fingerprint(kfopt::StateDict{}, {&dist.W1, &dist.W2}, {&dist.b1, &dist.b2});
    int momenta = 0;
    const kfopt::StateDict dict = dist.kfac.state_dict();
    for (const auto& kv : dict.entries()) {
      if (kv.first.find("momentum") == std::string::npos) continue;
      momenta += 1;
      for (auto byte : kv.second.bytes) shared.push_back(static_cast<double>(byte));
    }
    REQUIRE(momenta >= 2);
    REQUIRE(same_bytes_as_rank0(comm, shared));
    bool owners = true;
    for (std::size_t i = 0; i < 2; ++i) {
      owners = owners && dist.kfac.has_inverse(i) == (static_cast<int>(i) == comm.rank());
    }
    REQUIRE(everywhere(comm, owners));
  }
  // One step's traffic: per layer a status and the preconditioned gradient, from its owner,
  // as the cost model counts; no refresh is broadcast.
  Net net(kfac_options());
  DistributedKfac<double> dk(net.kfac, comm, dopt);
  const Slice s = equal_slice(comm.rank(), P, kGlobal);
  const Batch b = global_batch(0);
  const Mat<double> X = b.X.middleRows(s.begin, s.count), T = b.T.middleRows(s.begin, s.count);
  net.forward_backward(X, T);
  dk.record_statistics(net.l1, X, net.G1);
  dk.record_statistics(net.l2, net.H, net.G2);
  comm.reset_traffic();
  REQUIRE(dk.step() == Status::Success);
  namespace cm = kfopt::mpi::cost_model;
  const std::vector<cm::LayerShape> shapes{{kIn + 1, kHidden, false, 0}, {kHidden + 1, kOut, false, 0}};
  const std::int64_t count = (kIn + 1) * kHidden + 1 + (kHidden + 1) * kOut + 1;
  CHECK(cm::distributed_kfac_preconditioned_count(shapes) == count);
  CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].calls == 4);
  CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].payload_bytes ==
        static_cast<std::uint64_t>(count * 8));
  // A NaN gradient on the last rank only: every rank refuses, nothing changes.
  const Mat<double> W1 = net.W1, W2 = net.W2;
  net.forward_backward(X, T);
  dk.record_statistics(net.l1, X, net.G1);
  dk.record_statistics(net.l2, net.H, net.G2);
  if (comm.rank() == P - 1) net.dW2(0, 0) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE(everywhere(comm, dk.step() == Status::NonFiniteInput));
  REQUIRE(everywhere(comm, net.W1 == W1 && net.W2 == W2));
  // Adaptive damping with a recurrent layer is refused (its quadratic model needs the
  // layer's refresh on every rank).
  kfopt::KfacOptions adaptive = kfac_options();
  adaptive.adaptive_damping = true;
  Mat<double> Wr = Mat<double>::Ones(3, 4), dWr = Mat<double>::Zero(3, 4);
  kfopt::Kfac<double> rk(adaptive);
  rk.add_recurrent_layer("rnn", Wr, dWr);
  REQUIRE_THROWS_AS(DistributedKfac<double>(rk, comm, dopt), kfopt::InvalidInputError);
  // So is a delayed refresh (the ranks split each refresh at the step it is due).
  kfopt::KfacOptions delayed = kfac_options();
  delayed.refresh_delay = 1;
  kfopt::Kfac<double> dkfac(delayed);
  dkfac.add_dense_layer("fc", Wr, dWr);
  REQUIRE_THROWS_WITH(DistributedKfac<double>(dkfac, comm, dopt), Catch::Contains("refresh_delay"));
}

TEST_CASE("DistributedKfac: one statistics all-reduce of the predicted size per step",
          "[mpi][kfac]") {
  Communicator comm;
  Net dist(kfac_options());
  DistributedKfac<double> dk(dist.kfac, comm);
  // m_stat = Σ_l a(a+1)/2 + g(g+1)/2 + 4 with a = in + 1: (28 + 15 + 4) + (21 + 6 + 4).
  REQUIRE(dk.statistics_message_size() == 78);
  namespace cm = kfopt::mpi::cost_model;
  const std::vector<cm::LayerShape> shapes{{kIn + 1, kHidden, false, 0}, {kHidden + 1, kOut, false, 0}};
  REQUIRE(cm::distributed_kfac_statistics_count(shapes, 512) == dk.statistics_message_size());
  const Slice s = equal_slice(comm.rank(), comm.size(), kGlobal);
  const Batch b = global_batch(0);
  const Mat<double> X = b.X.middleRows(s.begin, s.count), T = b.T.middleRows(s.begin, s.count);
  dist.forward_backward(X, T);
  dk.record_statistics(dist.l1, X, dist.G1);
  dk.record_statistics(dist.l2, dist.H, dist.G2);
  comm.reset_traffic();
  REQUIRE(dk.step() == Status::Success);
  const auto& traffic = comm.traffic();
  const std::int64_t parameters = kHidden * kIn + kHidden + kOut * kHidden + kOut;
  CHECK(traffic[kfopt::mpi::Operation::Allreduce].calls == 2);  // statistics, gradients
  CHECK(traffic[kfopt::mpi::Operation::Allreduce].payload_bytes ==
        static_cast<std::uint64_t>((78 + parameters + 3) * 8));
  CHECK(traffic[kfopt::mpi::Operation::Agreement].calls == 1);
  // The first step refreshes: 4 eigendecompositions (A and G of 2 layers), each computed by
  // one rank and broadcast (a header and the result): 8 broadcasts of
  // 4·3 + Σ n(n+1) = 12 + 56 + 30 + 42 + 12 scalars.
  CHECK(traffic[kfopt::mpi::Operation::Broadcast].calls == 8);
  CHECK(traffic[kfopt::mpi::Operation::Broadcast].payload_bytes == (12 + 56 + 30 + 42 + 12) * 8);
  CHECK(cm::distributed_kfac_refresh_count(shapes) == 12 + 56 + 30 + 42 + 12);
  Eigen::Matrix<double, 1, 1> computed;
  computed(0) = static_cast<double>(dk.refresh_parts_computed());
  // Greedy by cost 9n³ (n = 7, 6, 5, 3): rank 0 takes 7, rank 1 takes 6, 5 and 3 (P = 2);
  // P = 3: 7 | 6 | 5, 3.
  const double mine = computed(0);
  const double expected_mine = comm.size() == 2 ? (comm.rank() == 0 ? 1.0 : 3.0)
                                                : (comm.rank() == 2 ? 2.0 : 1.0);
  comm.allreduce_sum(computed);
  CHECK(computed(0) == 4.0);
  CHECK(everywhere(comm, mine == expected_mine));
  // With Cholesky inverses the parts are the damped inverses: 4 headers and Σ n² scalars.
  {
    kfopt::KfacOptions oc = kfac_options();
    oc.inverse_method = kfopt::InverseMethod::Cholesky;
    Net chol(oc);
    DistributedKfac<double> dkc(chol.kfac, comm);
    chol.forward_backward(X, T);
    dkc.record_statistics(chol.l1, X, chol.G1);
    dkc.record_statistics(chol.l2, chol.H, chol.G2);
    comm.reset_traffic();
    REQUIRE(dkc.step() == Status::Success);
    CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].calls == 8);
    CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].payload_bytes == (12 + 49 + 25 + 36 + 9) * 8);
    CHECK(cm::distributed_kfac_cholesky_refresh_count(shapes) == 12 + 49 + 25 + 36 + 9);
  }
  // Recording outside a statistics step is refused.
  kfopt::KfacOptions o = kfac_options();
  o.statistics_period = 2;
  Net other(o);
  DistributedKfac<double> dk2(other.kfac, comm);
  other.forward_backward(X, T);
  dk2.record_statistics(other.l1, X, other.G1);
  dk2.record_statistics(other.l2, other.H, other.G2);
  REQUIRE(dk2.step() == Status::Success);
  REQUIRE_FALSE(dk2.wants_statistics());
  REQUIRE_THROWS_AS(dk2.record_statistics(other.l1, X, other.G1), kfopt::InvalidInputError);
}

TEST_CASE("DistributedKfac: NaN on one rank only makes every rank refuse, state unchanged",
          "[mpi][kfac]") {
  Communicator comm;
  const int P = comm.size();
  // where = 0: NaN in one input (statistics of both layers and the gradient);
  // where = 1: NaN in one layer's statistics only (the gradient is finite everywhere).
  for (const int where : {0, 1}) {
    Net dist(kfac_options());
    DistributedKfac<double> dk(dist.kfac, comm);
    const Slice s = equal_slice(comm.rank(), P, kGlobal);
    auto train = [&](int t, bool inject) {
      const Batch b = global_batch(t);
      Mat<double> X = b.X.middleRows(s.begin, s.count);
      const Mat<double> T = b.T.middleRows(s.begin, s.count);
      if (inject && where == 0) X(1, 2) = std::numeric_limits<double>::quiet_NaN();
      dist.forward_backward(X, T);
      if (inject && where == 1) dist.G2(0, 1) = std::numeric_limits<double>::quiet_NaN();
      dk.record_statistics(dist.l1, X, dist.G1);
      dk.record_statistics(dist.l2, dist.H, dist.G2);
      return dk.step();
    };
    for (int t = 0; t < 8; ++t) REQUIRE(train(t, false) == Status::Success);
    const kfopt::StateDict before = dist.kfac.state_dict();
    // Nothing read the factors on these steps (their lazy blends stay pending unless a rank
    // computes a refresh part from them): the state is still the same bits on every rank.
    REQUIRE(same_bytes_as_rank0(comm, fingerprint(before, {&dist.W1, &dist.W2}, {&dist.b1, &dist.b2})));
    const Mat<double> W1 = dist.W1, W2 = dist.W2;
    const Vec<double> b1 = dist.b1, b2 = dist.b2;

    const Status refused = train(8, comm.rank() == P - 1);  // the last rank only
    REQUIRE(everywhere(comm, refused == Status::NonFiniteInput));
    const kfopt::StateDict after = dist.kfac.state_dict();
    const bool unchanged = W1 == dist.W1 && W2 == dist.W2 && b1 == dist.b1 && b2 == dist.b2 &&
                           state_without_skip_counters(before) == state_without_skip_counters(after);
    REQUIRE(everywhere(comm, unchanged));
    REQUIRE(everywhere(comm, integer_entry(after, "skipped_nonfinite") ==
                                 integer_entry(before, "skipped_nonfinite") + 1));
    const std::int64_t refused_layers = where == 0 ? 2 : 1;
    REQUIRE(everywhere(comm, integer_entry(after, "skipped_statistics") ==
                                 integer_entry(before, "skipped_statistics") + refused_layers));
    REQUIRE(same_bytes_as_rank0(comm, fingerprint(after, {&dist.W1, &dist.W2}, {&dist.b1, &dist.b2})));
    // Training goes on from there on every rank.
    REQUIRE(everywhere(comm, train(8, false) == Status::Success));
    REQUIRE(everywhere(comm, dist.W1 != W1));
  }
}

namespace {

constexpr Eigen::Index kSeqIn = 4, kSeqOut = 3, kSequences = 12;  // 12: divisible by 2, 3

/// A global batch of sequences with lengths 1..5: inputs and targets, per sequence, one row
/// per step.
struct Sequences {
  std::vector<Mat<double>> a, y;
  Eigen::VectorXi lengths;
};
Sequences global_sequences(int t) {
  std::mt19937_64 gen(9191u + static_cast<unsigned>(t));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> length(1, 5);
  Sequences s;
  s.lengths.resize(kSequences);
  for (Eigen::Index i = 0; i < kSequences; ++i) {
    const int T = length(gen);
    s.lengths(i) = T;
    Mat<double> a(T, kSeqIn), y(T, kSeqOut);
    for (Eigen::Index k = 0; k < a.size(); ++k) a(k) = normal(gen);
    // Correlated steps, so that A1 and G1 matter.
    for (int r = 1; r < T; ++r) a.row(r) = 0.6 * a.row(r - 1) + 0.8 * a.row(r);
    for (int r = 0; r < T; ++r) {
      for (Eigen::Index j = 0; j < kSeqOut; ++j) y(r, j) = std::tanh(a(r, j) - a(r, j + 1)) + 0.1 * normal(gen);
    }
    s.a.push_back(a);
    s.y.push_back(y);
  }
  return s;
}

/// s_t = W a_t + b shared across the steps, loss (1/m) Σ_i Σ_t ½‖s_t − y_t‖².
struct SharedLinear {
  Mat<double> W, dW;
  Vec<double> b, db;
  kfopt::Kfac<double> kfac;
  std::size_t id = 0;
  Mat<double> A, G;  // time-major statistics of the last pass
  Eigen::VectorXi lengths;

  SharedLinear(const kfopt::KfacOptions& o, kfopt::RecurrentApproximation approximation)
      : W(kSeqOut, kSeqIn), dW(Mat<double>::Zero(kSeqOut, kSeqIn)), b(Vec<double>::Zero(kSeqOut)),
        db(Vec<double>::Zero(kSeqOut)), kfac(o) {
    for (Eigen::Index k = 0; k < W.size(); ++k) W(k) = 0.3 * std::sin(1.3 * k + 0.2);
    kfopt::RecurrentLayerOptions lo;
    lo.approximation = approximation;
    id = kfac.add_recurrent_layer("shared", W, dW, b, db, lo);
  }
  SharedLinear(const SharedLinear&) = delete;
  SharedLinear& operator=(const SharedLinear&) = delete;

  /// Sequences [begin, begin + count) of the global batch.
  void forward_backward(const Sequences& s, Eigen::Index begin, Eigen::Index count) {
    lengths = s.lengths.segment(begin, count);
    const Eigen::Index m = count;
    const Eigen::Index t_max = m > 0 ? lengths.maxCoeff() : 0;
    A = Mat<double>::Zero(t_max * m, kSeqIn);
    G = Mat<double>::Zero(t_max * m, kSeqOut);
    dW.setZero();
    db.setZero();
    for (Eigen::Index i = 0; i < m; ++i) {
      const Mat<double>& a = s.a[static_cast<std::size_t>(begin + i)];
      const Mat<double>& y = s.y[static_cast<std::size_t>(begin + i)];
      for (Eigen::Index t = 0; t < a.rows(); ++t) {
        const Vec<double> g = W * a.row(t).transpose() + b - y.row(t).transpose();
        A.row(t * m + i) = a.row(t);
        G.row(t * m + i) = g.transpose();
        dW += g * a.row(t);
        db += g;
      }
    }
    if (m > 0) {
      dW /= static_cast<double>(m);
      db /= static_cast<double>(m);
    }
  }
};

/// One step of `dist` on this rank's share `s` of the global batch `seq` and of `one` on all
/// of it; whether both succeeded.
bool step_both(DistributedKfac<double>& dk, SharedLinear& dist, SharedLinear& one,
               const Sequences& seq, const Slice& s) {
  dist.forward_backward(seq, s.begin, s.count);
  dk.record_sequence_statistics(dist.id, dist.A, dist.G, dist.lengths);
  bool ok = dk.step_weighted(static_cast<double>(s.count)) == Status::Success;
  one.forward_backward(seq, 0, kSequences);
  ok = one.kfac.record_sequence_statistics(one.id, one.A, one.G, one.lengths) == Status::Success && ok;
  return one.kfac.step() == Status::Success && ok;
}

}  // namespace

TEST_CASE("DistributedKfac: a recurrent layer (Options 1 and 2, mixed lengths) equals one "
          "process", "[mpi][kfac]") {
  Communicator comm;
  const int P = comm.size();
  for (const auto approximation :
       {kfopt::RecurrentApproximation::Independent, kfopt::RecurrentApproximation::Option1,
        kfopt::RecurrentApproximation::Option2}) {
    kfopt::KfacOptions o = kfac_options();
    o.inverse_period = 3;
    SharedLinear dist(o, approximation), one(o, approximation);
    kfopt::mpi::DistributedKfacOptions dopt;
    dopt.max_sequence_length = 8;
    DistributedKfac<double> dk(dist.kfac, comm, dopt);
    REQUIRE(kfopt::mpi::cost_model::distributed_kfac_statistics_count(
                {{kSeqIn + 1, kSeqOut, true, 0}}, 8) == dk.statistics_message_size());
    const Slice s = unequal_slice(comm.rank(), P, kSequences);
    double worst = 0.0;
    bool ok = true;
    for (int t = 0; t < 30; ++t) {
      ok = step_both(dk, dist, one, global_sequences(t), s) && ok;
      if (t == 4 || t == 13) {  // between refreshes: a preparation round without a refresh
        dist.kfac.set_damping(0.004 * t);
        one.kfac.set_damping(0.004 * t);
      }
      auto rel = [](const auto& x, const auto& y) {
        return (x - y).cwiseAbs().maxCoeff() / std::max(y.cwiseAbs().maxCoeff(), 1e-300);
      };
      const auto& bd = dist.kfac.recurrent_block(dist.id);
      const auto& bo = one.kfac.recurrent_block(one.id);
      worst = std::max({worst, rel(dist.W, one.W), rel(dist.b, one.b), rel(bd.a0(), bo.a0()),
                        rel(bd.a1(), bo.a1()), rel(bd.g0(), bo.g0()), rel(bd.g1(), bo.g1()),
                        std::abs(bd.mean_length() - bo.mean_length()) / bo.mean_length()});
    }
    REQUIRE(everywhere(comm, ok));
    // 10 refreshes and 12 preparations (after each refresh and each damping change), two
    // parts each, every part computed once: the A side (n = 5) by rank 0, the G side (3) by
    // rank 1. One process prepared as often.
    Eigen::Matrix<double, 1, 1> computed;
    computed(0) = static_cast<double>(dk.refresh_parts_computed());
    const double mine = computed(0);
    comm.allreduce_sum(computed);
    CHECK(computed(0) == 44.0);
    CHECK(everywhere(comm, mine == (comm.rank() < 2 ? 22.0 : 0.0)));
    CHECK(everywhere(comm, dist.kfac.recurrent_block(dist.id).preparations() == 12 &&
                               one.kfac.recurrent_block(one.id).preparations() == 12));
    if (comm.is_root()) {
      std::printf("DistributedKfac recurrent %s, P = %d, unequal split: 30 steps, largest "
                  "relative difference to one process %.3g\n",
                  kfopt::to_string(approximation), P, worst);
    }
    // Observed with Open MPI 4.1 at P = 2 and 3: 5e-15 to 4e-14 over 30 steps.
    REQUIRE(everywhere(comm, worst < 1e-11));
    REQUIRE(same_bytes_as_rank0(comm, fingerprint(dist.kfac.state_dict(), {&dist.W}, {&dist.b})));
  }
  // What a refresh step broadcasts for a recurrent layer: the eigendecompositions of A0
  // (n = 5 with the bias) and G0 (3), then both sides of the preparation (n × (2 + b·n)),
  // each after a 3-scalar header, as the cost model counts.
  namespace cm = kfopt::mpi::cost_model;
  for (const auto approximation :
       {kfopt::RecurrentApproximation::Independent, kfopt::RecurrentApproximation::Option2}) {
    SharedLinear net(kfac_options(), approximation);
    kfopt::mpi::DistributedKfacOptions dopt;
    dopt.max_sequence_length = 8;
    DistributedKfac<double> dk(net.kfac, comm, dopt);
    const Slice s = equal_slice(comm.rank(), P, kSequences);
    net.forward_backward(global_sequences(0), s.begin, s.count);
    dk.record_sequence_statistics(net.id, net.A, net.G, net.lengths);
    comm.reset_traffic();
    REQUIRE(dk.step() == Status::Success);
    const std::int64_t b = approximation == kfopt::RecurrentApproximation::Option2 ? 2 : 1;
    const std::vector<cm::LayerShape> shape{{kSeqIn + 1, kSeqOut, true, 8, b}};
    const std::int64_t refresh = 3 + 5 * 6 + 3 + 3 * 4;
    const std::int64_t preparation = 3 + 5 * (2 + b * 5) + 3 + 3 * (2 + b * 3);
    CHECK(cm::distributed_kfac_refresh_count(shape) == refresh);
    CHECK(cm::distributed_kfac_cholesky_refresh_count(shape) == refresh);
    CHECK(cm::distributed_kfac_preparation_count(shape) == preparation);
    CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].calls == 8);
    CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].payload_bytes ==
          static_cast<std::uint64_t>((refresh + preparation) * 8));
    // The next step neither refreshes nor prepares: nothing is broadcast.
    net.forward_backward(global_sequences(1), s.begin, s.count);
    dk.record_sequence_statistics(net.id, net.A, net.G, net.lengths);
    comm.reset_traffic();
    REQUIRE(dk.step() == Status::Success);
    CHECK(comm.traffic()[kfopt::mpi::Operation::Broadcast].calls == 0);
  }
  // Option 2 with the preconditioned gradient broadcast from the layer's owner (rank 0).
  {
    kfopt::KfacOptions o = kfac_options();
    o.inverse_period = 3;
    SharedLinear dist(o, kfopt::RecurrentApproximation::Option2),
        one(o, kfopt::RecurrentApproximation::Option2);
    kfopt::mpi::DistributedKfacOptions dopt;
    dopt.max_sequence_length = 8;
    dopt.broadcast_preconditioned_gradients = true;
    DistributedKfac<double> dk(dist.kfac, comm, dopt);
    const Slice s = unequal_slice(comm.rank(), P, kSequences);
    bool ok = true;
    double worst = 0.0;
    for (int t = 0; t < 20; ++t) {
      ok = step_both(dk, dist, one, global_sequences(t), s) && ok;
      worst = std::max(worst, (dist.W - one.W).cwiseAbs().maxCoeff() / one.W.cwiseAbs().maxCoeff());
    }
    REQUIRE(everywhere(comm, ok));
    REQUIRE(everywhere(comm, worst < 1e-11));
    REQUIRE(everywhere(comm, dist.kfac.has_inverse(dist.id) == comm.is_root()));
    REQUIRE(same_bytes_as_rank0(comm, fingerprint(kfopt::StateDict{}, {&dist.W}, {&dist.b})));
  }
  // A sequence longer than the length counts hold, on one rank only: every rank throws.
  SharedLinear dist(kfac_options(), kfopt::RecurrentApproximation::Option2);
  kfopt::mpi::DistributedKfacOptions dopt;
  dopt.max_sequence_length = 4;
  DistributedKfac<double> dk(dist.kfac, comm, dopt);
  const Slice s = equal_slice(comm.rank(), P, kSequences);
  Sequences seq = global_sequences(0);
  for (Eigen::Index i = 0; i < kSequences; ++i) {  // lengths ≤ 4, except on the last rank
    if (seq.lengths(i) > 4) seq.lengths(i) = 4;
  }
  if (comm.rank() == P - 1) {
    seq.lengths(s.begin) = 5;
    seq.a[static_cast<std::size_t>(s.begin)] = Mat<double>::Ones(5, kSeqIn);
    seq.y[static_cast<std::size_t>(s.begin)] = Mat<double>::Zero(5, kSeqOut);
  }
  for (Eigen::Index i = 0; i < kSequences; ++i) {
    seq.a[static_cast<std::size_t>(i)].conservativeResize(seq.lengths(i), kSeqIn);
    seq.y[static_cast<std::size_t>(i)].conservativeResize(seq.lengths(i), kSeqOut);
  }
  dist.forward_backward(seq, s.begin, s.count);
  dk.record_sequence_statistics(dist.id, dist.A, dist.G, dist.lengths);
  bool threw = false;
  try {
    (void)dk.step();
  } catch (const kfopt::InvalidInputError&) {
    threw = true;
  }
  REQUIRE(everywhere(comm, threw));
}
