// Kfac::record_statistics(batches), the layers' statistics updates side by side on kfopt's
// threads, against the same batches recorded one call at a time on one thread: the whole
// state (factors, counters, skipped batches) and the parameters after each step must be the
// same bit for bit, on 1, 2 and 3 threads, with a refused batch among them; and a call with a
// bad argument anywhere must change nothing.
#include <catch2/catch.hpp>
#include <kfopt/linalg/threads.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include "support/kfac_fixture.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <typename S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Four dense layers of different sizes (so that the largest-first order differs from the
// order of the call), one without a bias, and a recurrent layer the batches leave out.
template <typename S>
struct Network {
  struct Dense {
    Mat<S> W, dW;
    Vec<S> b, db;
    Eigen::Index in, out;
  };
  std::vector<Dense> dense;
  Mat<S> U, dU;
  kfopt::Kfac<S> kfac;
  std::vector<std::size_t> ids;

  explicit Network(kfopt::KfacOptions options) : kfac(options) {
    const Eigen::Index shapes[4][2] = {{24, 40}, {40, 90}, {90, 30}, {30, 12}};
    dense.resize(4);
    for (int l = 0; l < 4; ++l) {
      Dense& d = dense[static_cast<std::size_t>(l)];
      d.in = shapes[l][0];
      d.out = shapes[l][1];
      d.W = kfopt_kfac_test::kwave_matrix<S>(0, d.out, d.in, 30 + l) * S(0.1);
      d.dW = Mat<S>::Zero(d.out, d.in);
      d.b = Vec<S>::Zero(d.out);
      d.db = Vec<S>::Zero(d.out);
    }
    for (int l = 0; l < 4; ++l) {
      Dense& d = dense[static_cast<std::size_t>(l)];
      const std::string name = "dense" + std::to_string(l);
      ids.push_back(l == 2 ? kfac.add_dense_layer(name, d.W, d.dW)
                           : kfac.add_dense_layer(name, d.W, d.dW, d.b, d.db));
    }
    U = kfopt_kfac_test::kwave_matrix<S>(0, 8, 8, 40) * S(0.1);
    dU = Mat<S>::Zero(8, 8);
    kfopt::RecurrentLayerOptions recurrent;
    recurrent.approximation = kfopt::RecurrentApproximation::Option2;
    kfac.add_recurrent_layer("recurrent", U, dU, recurrent);
  }

  // Step t's inputs and gradients of layer l (k = 64 rows), and its gradient dW, db.
  Mat<S> a(int t, int l) const {
    return kfopt_kfac_test::kwave_matrix<S>(t, 64, dense[static_cast<std::size_t>(l)].in, 50 + l);
  }
  Mat<S> g(int t, int l) const {
    return kfopt_kfac_test::kwave_matrix<S>(t, 64, dense[static_cast<std::size_t>(l)].out, 60 + l);
  }
  void set_gradients(int t) {
    for (int l = 0; l < 4; ++l) {
      Dense& d = dense[static_cast<std::size_t>(l)];
      d.dW = g(t, l).transpose() * a(t, l) / S(64);
      d.db = g(t, l).colwise().sum().transpose() / S(64);
    }
    const Mat<S> x = kfopt_kfac_test::kwave_matrix<S>(t, 3 * 4, 8, 70);
    const Mat<S> y = kfopt_kfac_test::kwave_matrix<S>(t, 3 * 4, 8, 71);
    dU = y.transpose() * x / S(12);
    Eigen::VectorXi lengths = Eigen::VectorXi::Constant(4, 3);
    REQUIRE(kfac.record_sequence_statistics(4, x, y, lengths) == kfopt::Status::Success);
  }
};

template <typename S>
kfopt::KfacOptions options() {
  kfopt::KfacOptions o;
  o.inverse_period = 2;
  return o;
}

// Step 3 poisons layer 1's g: that batch alone is refused.
template <typename S>
Mat<S> maybe_poisoned(Mat<S> g, int t, int l) {
  if (t == 3 && l == 1) g(5, 7) = std::numeric_limits<S>::quiet_NaN();
  return g;
}

template <typename S>
void check_batched_equals_one_by_one(int threads) {
  Network<S> one(options<S>()), batched(options<S>());
  for (int t = 0; t < 8; ++t) {
    INFO("step " << t << ", " << threads << " threads");
    std::vector<Mat<S>> a, g;
    for (int l = 0; l < 4; ++l) {
      a.push_back(one.a(t, l));
      g.push_back(maybe_poisoned<S>(one.g(t, l), t, l));
    }
    // Reference: one call per layer, in the order of the batch, on one thread.
    kfopt::set_threads(1);
    const int order[4] = {3, 0, 2, 1};
    std::vector<kfopt::Status> expected;
    for (int l : order) {
      expected.push_back(one.kfac.record_statistics(one.ids[static_cast<std::size_t>(l)],
                                                    a[static_cast<std::size_t>(l)],
                                                    g[static_cast<std::size_t>(l)]));
    }
    kfopt::set_threads(threads);
    std::vector<typename kfopt::Kfac<S>::StatisticsBatch> batches;
    for (int l : order) {
      batches.push_back({batched.ids[static_cast<std::size_t>(l)], a[static_cast<std::size_t>(l)],
                         g[static_cast<std::size_t>(l)]});
    }
    const auto jobs_before = kfopt::detail::ThreadPool::instance().parallel_jobs();
    const std::vector<kfopt::Status> got = batched.kfac.record_statistics(batches);
    if (threads > 1) {
      CHECK(kfopt::detail::ThreadPool::instance().parallel_jobs() > jobs_before);  // side by side
    }
    CHECK(got == expected);
    CHECK((got[3] == kfopt::Status::NonFiniteInput) == (t == 3));
    CHECK(batched.kfac.state().skipped_statistics == one.kfac.state().skipped_statistics);
    CHECK(batched.kfac.state_dict() == one.kfac.state_dict());

    kfopt::set_threads(1);
    one.set_gradients(t);
    REQUIRE(one.kfac.step() == kfopt::Status::Success);
    kfopt::set_threads(threads);
    batched.set_gradients(t);
    REQUIRE(batched.kfac.step() == kfopt::Status::Success);
    for (std::size_t l = 0; l < 4; ++l) {
      CHECK(kfopt_kfac_test::same_bits<S>(batched.dense[l].W, one.dense[l].W));
    }
    CHECK(kfopt_kfac_test::same_bits<S>(batched.U, one.U));
  }
  CHECK(one.kfac.state().skipped_statistics == 1);
  kfopt::set_threads(0);
}

}  // namespace

TEST_CASE("Kfac::record_statistics(batches) equals one call per layer, bit for bit, on 1, 2 "
          "and 3 threads", "[threads][kfac]") {
  for (int threads : {1, 2, 3}) {
    check_batched_equals_one_by_one<double>(threads);
    check_batched_equals_one_by_one<float>(threads);
  }
}

TEST_CASE("Kfac::record_statistics(batches) refuses a bad argument anywhere before any layer "
          "changes", "[threads][kfac]") {
  using S = double;
  kfopt::set_threads(2);
  Network<S> net(options<S>());
  const Mat<S> a0 = net.a(0, 0), g0 = net.g(0, 0), a1 = net.a(0, 1), g1 = net.g(0, 1);
  REQUIRE(net.kfac.record_statistics(net.ids[0], a0, g0) == kfopt::Status::Success);
  const kfopt::StateDict before = net.kfac.state_dict();
  using Batch = kfopt::Kfac<S>::StatisticsBatch;

  const auto refused = [&](const std::vector<Batch>& batches, const std::string& words) {
    try {
      net.kfac.record_statistics(batches);
      FAIL("accepted");
    } catch (const std::exception& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(words) != std::string::npos);
    }
    CHECK(net.kfac.state_dict() == before);
  };
  // The bad batch comes last, after good ones that must not have been taken.
  const Mat<S> short_g = g1.topRows(10);
  refused({{net.ids[0], a0, g0}, {net.ids[1], a1, short_g}},
          "kfopt::Kfac::record_statistics (layer 'dense1'): a is 64x40 and g is 10x90");
  refused({{net.ids[0], a0, g0}, {net.ids[1], a1, g1}, {net.ids[0], a0, g0}},
          "layer 'dense0' (id 0) has two batches in one call");
  refused({{net.ids[0], a0, g0}, {4, a1, g1}}, "layer 'recurrent' (id 4) is recurrent");
  refused({{net.ids[0], a0, g0}, {9, a1, g1}}, "no layer with id 9 (5 registered)");
  CHECK_THROWS_AS(net.kfac.record_statistics({{net.ids[1], a0, g1}}), kfopt::ShapeError);

  // An empty call does nothing.
  CHECK(net.kfac.record_statistics(std::vector<Batch>{}).empty());
  CHECK(net.kfac.state_dict() == before);
  kfopt::set_threads(0);
}
