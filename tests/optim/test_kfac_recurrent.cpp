// K-FAC with recurrent (shared-across-time) layers mixed with dense ones: with sequences of
// length 1 every approximation takes the dense K-FAC step; with longer sequences the step is
// the inverse of the block's dense approximate Fisher (itself checked against brute force in
// tests/curvature); wrong use of the two statistics entry points is refused.
#include <catch2/catch.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

kfopt::KfacOptions recurrent_options() {
  kfopt::KfacOptions o;
  o.learning_rate = 1.0;
  o.momentum = 0.0;
  o.kl_clip = 0.0;
  o.damping = 0.05;
  o.min_damping = 0.0;
  o.decay = 1.0;
  return o;
}

Vec<double> stacked(const Mat<double>& W, const Vec<double>& b) {
  Vec<double> v(W.size() + b.size());
  v << dense_vec(W), b;
  return v;
}

}  // namespace

TEST_CASE("K-FAC recurrent layers: sequences of length 1 give the dense K-FAC step",
          "[optim][kfac][recurrent]") {
  Rng rng(61);
  const int in = 3, out = 2, m = 7;
  const Mat<double> a = rng.normal<double>(m, in), g = rng.normal<double>(m, out);
  const Mat<double> dW = rng.normal<double>(out, in);
  const Vec<double> db = rng.normal<double>(out, 1);
  Mat<double> Wd = rng.normal<double>(out, in);
  Vec<double> bd = rng.normal<double>(out, 1);
  kfopt::Kfac<double> dense(recurrent_options());
  dense.add_dense_layer("rnn", Wd, dW, bd, db);
  REQUIRE(dense.record_statistics(0, a, g) == kfopt::Status::Success);
  const Mat<double> W0 = Wd;
  const Vec<double> b0 = bd;
  REQUIRE(dense.step() == kfopt::Status::Success);
  for (auto approx : {kfopt::RecurrentApproximation::Independent, kfopt::RecurrentApproximation::Option1,
                      kfopt::RecurrentApproximation::Option2}) {
    Mat<double> W = W0;
    Vec<double> b = b0;
    kfopt::Kfac<double> kfac(recurrent_options());
    const auto id = kfac.add_recurrent_layer("rnn", W, dW, b, db, {approx});
    REQUIRE(kfac.record_sequence_statistics(id, a, g, Eigen::VectorXi::Ones(m)) == kfopt::Status::Success);
    REQUIRE(kfac.step() == kfopt::Status::Success);
    CHECK(relative_error(stacked(W, b), stacked(Wd, bd)) <= 1e-10);
  }
}

TEST_CASE("K-FAC recurrent layers: the step inverts the block's approximate Fisher, mixed with a dense layer",
          "[optim][kfac][recurrent]") {
  Rng rng(62);
  const int in = 3, out = 2, m = 4, t_max = 5;
  for (auto approx : {kfopt::RecurrentApproximation::Independent, kfopt::RecurrentApproximation::Option1,
                      kfopt::RecurrentApproximation::Option2}) {
    Mat<double> W = rng.normal<double>(out, in), dW = rng.normal<double>(out, in);
    Vec<double> b = rng.normal<double>(out, 1), db = rng.normal<double>(out, 1);
    Mat<double> V = rng.normal<double>(2, out), dV = rng.normal<double>(2, out);
    kfopt::Kfac<double> kfac(recurrent_options());
    const auto rid = kfac.add_recurrent_layer("rnn", W, dW, b, db, {approx});
    const auto did = kfac.add_dense_layer("readout", V, dV);
    // Autocorrelated inputs so that A1, G1 matter.
    Mat<double> a(t_max * m, in), g(t_max * m, out);
    for (int i = 0; i < m; ++i) {
      Vec<double> x = rng.normal<double>(in, 1), y = rng.normal<double>(out, 1);
      for (int t = 0; t < t_max; ++t) {
        a.row(t * m + i) = x.transpose();
        g.row(t * m + i) = y.transpose();
        x = 0.7 * x + 0.5 * rng.normal<double>(in, 1);
        y = 0.6 * y + 0.5 * rng.normal<double>(out, 1);
      }
    }
    Eigen::VectorXi lengths(m);
    lengths << 5, 3, 4, 2;
    REQUIRE(kfac.record_sequence_statistics(rid, a, g, lengths) == kfopt::Status::Success);
    REQUIRE(kfac.record_statistics(did, rng.normal<double>(6, out), rng.normal<double>(6, 2)) ==
            kfopt::Status::Success);
    const Vec<double> before = stacked(W, b);
    const Mat<double> V0 = V;
    REQUIRE(kfac.step() == kfopt::Status::Success);
    kfopt::BlockDamping<double> damping{kfopt::DampingStyle::Factored, 0.05, 0.0};
    const Mat<double> F = kfac.recurrent_block(rid).to_dense(damping);
    const Vec<double> expected = before - dense_inverse<double>(F) * stacked(dW, db);
    CHECK(relative_error(stacked(W, b), expected) <= 1e-9);
    CHECK(V != V0);  // the dense layer moved in the same step
  }
}

TEST_CASE("K-FAC recurrent layers: wrong statistics entry points and exact damping are refused",
          "[optim][kfac][recurrent][errors]") {
  Rng rng(63);
  Mat<double> W = rng.normal<double>(2, 3), dW = W;
  Mat<double> V = rng.normal<double>(2, 2), dV = V;
  kfopt::Kfac<double> kfac(recurrent_options());
  const auto rid = kfac.add_recurrent_layer("rnn", W, dW);
  const auto did = kfac.add_dense_layer("out", V, dV);
  CHECK_THROWS_WITH(kfac.record_statistics(rid, rng.normal<double>(4, 3), rng.normal<double>(4, 2)),
                    Catch::Contains("record_sequence_statistics"));
  CHECK_THROWS_WITH(kfac.record_sequence_statistics(did, rng.normal<double>(4, 2), rng.normal<double>(4, 2),
                                                    Eigen::VectorXi::Ones(4)),
                    Catch::Contains("record_statistics"));
  CHECK_THROWS_AS(kfac.block(rid), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfac.recurrent_block(did), kfopt::InvalidInputError);
  auto exact = recurrent_options();
  exact.damping_style = kfopt::DampingStyle::Exact;
  kfopt::Kfac<double> k2(exact);
  Mat<double> W2 = W;
  CHECK_THROWS_WITH(k2.add_recurrent_layer("rnn", W2, dW, {kfopt::RecurrentApproximation::Option1}),
                    Catch::Contains("Independent"));
  CHECK_NOTHROW(k2.add_recurrent_layer("rnn", W2, dW, {kfopt::RecurrentApproximation::Independent}));
  // A non-finite statistic is refused and counted; the factors are unchanged.
  Mat<double> bad = rng.normal<double>(4, 3);
  bad(0, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK(kfac.record_sequence_statistics(rid, bad, rng.normal<double>(4, 2), Eigen::VectorXi::Ones(4)) ==
        kfopt::Status::NonFiniteInput);
  CHECK(kfac.state().skipped_statistics == 1);
  CHECK_FALSE(kfac.recurrent_block(rid).has_statistics());
}
