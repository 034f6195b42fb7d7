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

/// m sequences of t_max steps, time-major (row t·m + i), of AR(1) inputs `a` and output
/// gradients `g`, so that the lag-one moments A1, G1 matter.
void autocorrelated_sequences(Rng& rng, int in, int out, int m, int t_max, Mat<double>& a,
                              Mat<double>& g) {
  a.resize(t_max * m, in);
  g.resize(t_max * m, out);
  for (int i = 0; i < m; ++i) {
    Vec<double> x = rng.normal<double>(in, 1), y = rng.normal<double>(out, 1);
    for (int t = 0; t < t_max; ++t) {
      a.row(t * m + i) = x.transpose();
      g.row(t * m + i) = y.transpose();
      x = 0.7 * x + 0.5 * rng.normal<double>(in, 1);
      y = 0.6 * y + 0.5 * rng.normal<double>(out, 1);
    }
  }
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
    Mat<double> a, g;
    autocorrelated_sequences(rng, in, out, m, t_max, a, g);
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

TEST_CASE("K-FAC mixed dense + recurrent layers: each layer moves as in a model of that layer alone",
          "[optim][kfac][recurrent]") {
  // Without KL clipping the layers of one Kfac are independent: over several steps (momentum,
  // spectra refreshed every second step, adaptive damping's quadratic model) a model with a
  // recurrent Option-2 layer and a dense layer must move each layer exactly as two optimizers
  // holding one layer each, its quadratic model must be their sum, the dense layer's first
  // step must be the dense damped inverse, and a copy must continue as the original.
  Rng rng(64);
  const int in = 3, out = 2, m = 4, t_max = 4, k = 6;
  kfopt::KfacOptions o = recurrent_options();
  o.learning_rate = 0.5;
  o.momentum = 0.5;
  o.inverse_period = 2;
  o.decay = 0.9;
  o.adaptive_damping = true;
  Mat<double> W = rng.normal<double>(out, in), dW = rng.normal<double>(out, in);
  Vec<double> b = rng.normal<double>(out, 1), db = rng.normal<double>(out, 1);
  Mat<double> V = rng.normal<double>(2, out), dV = rng.normal<double>(2, out);
  Mat<double> W1 = W, V1 = V;
  Vec<double> b1 = b;
  kfopt::Kfac<double> mixed(o), recurrent(o), dense(o);
  const auto rid = mixed.add_recurrent_layer("rnn", W, dW, b, db, {kfopt::RecurrentApproximation::Option2});
  const auto did = mixed.add_dense_layer("readout", V, dV);
  recurrent.add_recurrent_layer("rnn", W1, dW, b1, db, {kfopt::RecurrentApproximation::Option2});
  dense.add_dense_layer("readout", V1, dV);
  Eigen::VectorXi lengths(m);
  lengths << 4, 2, 3, 4;
  Mat<double> V_first;
  for (int step = 0; step < 4; ++step) {
    const Mat<double> a = rng.normal<double>(t_max * m, in), g = rng.normal<double>(t_max * m, out);
    const Mat<double> ad = rng.normal<double>(k, out), gd = rng.normal<double>(k, 2);
    REQUIRE(mixed.record_sequence_statistics(rid, a, g, lengths) == kfopt::Status::Success);
    REQUIRE(mixed.record_statistics(did, ad, gd) == kfopt::Status::Success);
    REQUIRE(recurrent.record_sequence_statistics(0, a, g, lengths) == kfopt::Status::Success);
    REQUIRE(dense.record_statistics(0, ad, gd) == kfopt::Status::Success);
    const Mat<double> V_before = V;
    REQUIRE(mixed.step() == kfopt::Status::Success);
    REQUIRE(recurrent.step() == kfopt::Status::Success);
    REQUIRE(dense.step() == kfopt::Status::Success);
    if (step == 0) {
      // (G + δ_G I)⁻¹ ∇V (A + δ_A I)⁻¹ from the batch's factors (one batch: the bias-corrected
      // averages are the batch estimates), π-damping.
      const Mat<double> A = ad.transpose() * ad / k, G = gd.transpose() * gd / k;
      const double pi = std::sqrt((A.trace() / out) / (G.trace() / 2));
      const double root = std::sqrt(o.damping);
      const Mat<double> Ai = (A + pi * root * Mat<double>::Identity(out, out)).inverse();
      const Mat<double> Gi = (G + root / pi * Mat<double>::Identity(2, 2)).inverse();
      const Mat<double> expected = V_before - o.learning_rate * Gi * dV * Ai;
      CHECK(relative_error(dense_vec(V), dense_vec(expected)) <= 1e-10);
      V_first = V;
    }
    CHECK(relative_error(stacked(W, b), stacked(W1, b1)) <= 1e-12);
    CHECK(relative_error(dense_vec(V), dense_vec(V1)) <= 1e-12);
    const double model = mixed.state().pending_model_change;
    const double parts = recurrent.state().pending_model_change + dense.state().pending_model_change;
    CHECK(model < 0.0);
    CHECK(std::abs(model - parts) <= 1e-10 * std::abs(parts));
  }
  CHECK(mixed.state().inverse_refreshes == 2);

  // A copy holds its own blocks and continues exactly as the original.
  kfopt::Kfac<double> copy(mixed);
  CHECK(copy.num_layers() == 2);
  CHECK(copy.block(did).input_factor() == mixed.block(did).input_factor());
  CHECK(&copy.block(did) != &mixed.block(did));
  CHECK(copy.recurrent_block(rid).a0() == mixed.recurrent_block(rid).a0());
  const Mat<double> W_now = W, V_now = V;
  const Vec<double> b_now = b;
  REQUIRE(mixed.step() == kfopt::Status::Success);
  const Mat<double> W_orig = W, V_orig = V;
  const Vec<double> b_orig = b;
  W = W_now;
  V = V_now;
  b = b_now;  // the copy updates the same registered storage
  REQUIRE(copy.step() == kfopt::Status::Success);
  CHECK(relative_error(stacked(W, b), stacked(W_orig, b_orig)) <= 1e-14);
  CHECK(relative_error(dense_vec(V), dense_vec(V_orig)) <= 1e-14);
}

TEST_CASE("K-FAC recurrent layers: a refresh and a preparation computed as parts and installed "
          "equal the step's own, bit for bit", "[optim][kfac][recurrent][refresh-parts]") {
  // Two copies of one problem (a recurrent layer and a dense one): one stepped by step(), one
  // whose refreshes (A0, G0 eigendecompositions) and then preparations (the A and G sides of
  // appendix C.3) are computed part by part and installed before
  // step_with_installed_refresh(). The damping changes between refreshes, so that some
  // steps prepare without a refresh.
  for (auto approx : {kfopt::RecurrentApproximation::Independent, kfopt::RecurrentApproximation::Option1,
                      kfopt::RecurrentApproximation::Option2}) {
    Rng rng(93);
    const int in = 4, out = 3, m = 5, t_max = 4;
    kfopt::KfacOptions o = recurrent_options();
    o.learning_rate = 0.2;
    o.momentum = 0.5;
    o.decay = 0.9;
    o.inverse_period = 3;
    Mat<double> W1 = rng.normal<double>(out, in), W2 = W1, dW = Mat<double>::Zero(out, in);
    Vec<double> b1 = rng.normal<double>(out, 1), b2 = b1, db = Vec<double>::Zero(out);
    Mat<double> V1 = rng.normal<double>(2, out), V2 = V1, dV = Mat<double>::Zero(2, out);
    kfopt::Kfac<double> own(o), parts(o);
    const auto rid = own.add_recurrent_layer("rnn", W1, dW, b1, db, {approx});
    own.add_dense_layer("readout", V1, dV);
    parts.add_recurrent_layer("rnn", W2, dW, b2, db, {approx});
    parts.add_dense_layer("readout", V2, dV);
    int refreshes = 0, preparations = 0;
    for (int step = 0; step < 10; ++step) {
      Mat<double> a, g;
      autocorrelated_sequences(rng, in, out, m, t_max, a, g);
      Eigen::VectorXi lengths(m);
      lengths << 4, 1, 3, 4, 2;
      const Mat<double> ad = rng.normal<double>(6, out), gd = rng.normal<double>(6, 2);
      for (kfopt::Kfac<double>* k : {&own, &parts}) {
        REQUIRE(k->record_sequence_statistics(rid, a, g, lengths) == kfopt::Status::Success);
        REQUIRE(k->record_statistics(1, ad, gd) == kfopt::Status::Success);
      }
      dW = rng.normal<double>(out, in);
      db = rng.normal<double>(out, 1);
      dV = rng.normal<double>(2, out);
      auto all_parts = [&](int count, auto compute) {
        std::vector<Mat<double>> results(static_cast<std::size_t>(count));
        for (int p = 0; p < count; ++p) {
          REQUIRE(compute(p, results[static_cast<std::size_t>(p)]) == kfopt::Status::Success);
        }
        return results;
      };
      if (parts.refresh_pending(rid)) {
        parts.begin_refresh_parts(rid);
        REQUIRE(parts.refresh_part_count(rid) == 2);
        const auto results = all_parts(2, [&](int p, Mat<double>& r) {
          return parts.compute_refresh_part(rid, p, r);
        });
        CHECK(results[0].rows() == in + 1);
        CHECK(results[0].cols() == in + 2);
        std::vector<Mat<double>> bad = results;
        bad[0].col(1).setZero();  // not orthonormal
        CHECK_THROWS_AS(parts.install_refresh(rid, bad), kfopt::InvalidInputError);
        bad = results;
        bad[1].conservativeResize(bad[1].rows(), bad[1].cols() - 1);
        CHECK_THROWS_AS(parts.install_refresh(rid, bad), kfopt::ShapeError);
        parts.install_refresh(rid, results);
        ++refreshes;
      }
      if (parts.refresh_pending(1)) {  // the dense layer's refresh, as parts too
        parts.begin_refresh_parts(1);
        parts.install_refresh(1, all_parts(2, [&](int p, Mat<double>& r) {
          return parts.compute_refresh_part(1, p, r);
        }));
      }
      const int prep = parts.preparation_part_count(rid);
      CHECK(parts.preparation_part_count(1) == 0);  // a dense layer prepares nothing
      if (prep > 0) {
        REQUIRE(prep == 2);
        const auto results = all_parts(2, [&](int p, Mat<double>& r) {
          return parts.compute_preparation_part(rid, p, r);
        });
        const int bases = approx == kfopt::RecurrentApproximation::Option2 ? 2 : 1;
        CHECK(results[1].rows() == out);
        CHECK(results[1].cols() == 2 + bases * out);
        std::vector<Mat<double>> bad = results;
        bad[0](0, 2) = std::numeric_limits<double>::infinity();
        CHECK_THROWS_AS(parts.install_preparation(rid, bad), kfopt::InvalidInputError);
        REQUIRE(parts.install_preparation(rid, results) == kfopt::Status::Success);
        CHECK(parts.preparation_part_count(rid) == 0);  // prepared for this damping
        ++preparations;
      }
      REQUIRE(own.step() == kfopt::Status::Success);
      REQUIRE(parts.step_with_installed_refresh() == kfopt::Status::Success);
      INFO(kfopt::to_string(approx) << ", step " << step);
      REQUIRE(W2 == W1);
      REQUIRE(b2 == b1);
      REQUIRE(V2 == V1);
      if (step == 4 || step == 7) {  // between refreshes (steps 0, 3, 6, 9)
        own.set_damping(0.02 * (step - 2));
        parts.set_damping(0.02 * (step - 2));
      }
    }
    CHECK(refreshes == 4);
    CHECK(preparations == 6);  // after each refresh, and after each damping change
    // The installed preparations were used, not prepared again: one preparation per install.
    CHECK(parts.recurrent_block(rid).preparations() == own.recurrent_block(rid).preparations());
    CHECK(own.state_dict() == parts.state_dict());
  }
}
