// K-FAC for dense layers against dense brute force: the preconditioned step equals
// (A ⊗ G + damping)⁻¹ vec([∇W ∇b]) with A, G built from explicit outer products and the
// Kronecker product formed entry by entry; the inverse-period staleness; the KL-clip bound;
// the Levenberg–Marquardt rule; bad input; and K-FAC beating Adam on a small MLP.
#include <catch2/catch.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/first_order/sgd.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <cmath>
#include <limits>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// Explicit factor: mean over rows of x xᵀ, x = [row, 1] when homogeneous.
Mat<double> outer_mean(const Mat<double>& X, bool homogeneous) {
  const Eigen::Index n = X.cols() + (homogeneous ? 1 : 0);
  Mat<double> M = Mat<double>::Zero(n, n);
  for (Eigen::Index r = 0; r < X.rows(); ++r) {
    Vec<double> x(n);
    x.head(X.cols()) = X.row(r).transpose();
    if (homogeneous) x(n - 1) = 1;
    M += x * x.transpose();
  }
  return M / static_cast<double>(X.rows());
}

struct Layer {
  Mat<double> W, dW;
  Vec<double> b, db;
  Layer(Rng& rng, int in, int out)
      : W(rng.normal<double>(out, in)), dW(rng.normal<double>(out, in)),
        b(rng.normal<double>(out, 1)), db(rng.normal<double>(out, 1)) {}
  Vec<double> params() const {
    Vec<double> v(W.size() + b.size());
    v << dense_vec(W), b;
    return v;
  }
  Vec<double> grad() const {
    Vec<double> v(dW.size() + db.size());
    v << dense_vec(dW), db;
    return v;
  }
};

kfopt::KfacOptions plain_options(kfopt::DampingStyle style, double lambda) {
  kfopt::KfacOptions o;
  o.learning_rate = 1.0;
  o.momentum = 0.0;
  o.kl_clip = 0.0;
  o.damping = lambda;
  o.min_damping = 0.0;
  o.damping_style = style;
  o.decay = 1.0;  // plain mean of the batches: easy to reproduce densely
  return o;
}

}  // namespace

TEST_CASE("K-FAC step equals the dense damped Kronecker inverse of the gradient (both styles)",
          "[optim][kfac]") {
  Rng rng(51);
  const int in = 4, out = 3, k = 9;
  for (auto style : {kfopt::DampingStyle::Exact, kfopt::DampingStyle::Factored}) {
    Layer L(rng, in, out);
    kfopt::Kfac<double> kfac(plain_options(style, 0.05));
    const auto id = kfac.add_dense_layer("fc", L.W, L.dW, L.b, L.db);
    const Mat<double> a = rng.normal<double>(k, in), g = rng.normal<double>(k, out);
    REQUIRE(kfac.record_statistics(id, a, g) == kfopt::Status::Success);
    const Vec<double> before = L.params();
    REQUIRE(kfac.step() == kfopt::Status::Success);
    const Mat<double> A = outer_mean(a, true), G = outer_mean(g, false);
    Mat<double> F;
    if (style == kfopt::DampingStyle::Exact) {
      F = dense_kron(A, G) + 0.05 * Mat<double>::Identity(15, 15);
    } else {
      // π written out from its definition: sqrt((tr A / dim A) / (tr G / dim G)).
      const double pi = std::sqrt((A.trace() / 5.0) / (G.trace() / 3.0));
      F = dense_kron<double>(A + pi * std::sqrt(0.05) * Mat<double>::Identity(5, 5),
                             G + std::sqrt(0.05) / pi * Mat<double>::Identity(3, 3));
    }
    const Vec<double> expected = before - dense_inverse<double>(F) * L.grad();
    CHECK(relative_error(L.params(), expected) <= 1e-10);
  }
}

TEST_CASE("K-FAC: a layer without bias, and diagonal factors for one-hot inputs", "[optim][kfac]") {
  Rng rng(52);
  const int in = 5, out = 3, k = 12;
  Mat<double> onehot = Mat<double>::Zero(k, in);
  for (int r = 0; r < k; ++r) onehot(r, rng.integer(0, in - 1)) = 1.0;
  const Mat<double> g = rng.normal<double>(k, out);
  Mat<double> W1 = rng.normal<double>(out, in), dW = rng.normal<double>(out, in), W2 = W1;
  kfopt::Kfac<double> dense(plain_options(kfopt::DampingStyle::Exact, 0.1));
  kfopt::Kfac<double> diag(plain_options(kfopt::DampingStyle::Exact, 0.1));
  dense.add_dense_layer("emb", W1, dW);
  diag.add_dense_layer("emb", W2, dW, {kfopt::FactorStructure::Diagonal, kfopt::FactorStructure::Dense});
  REQUIRE(dense.record_statistics(0, onehot, g) == kfopt::Status::Success);
  REQUIRE(diag.record_statistics(0, onehot, g) == kfopt::Status::Success);
  const Mat<double> W0 = W1;
  REQUIRE(dense.step() == kfopt::Status::Success);
  REQUIRE(diag.step() == kfopt::Status::Success);
  // One-hot inputs make A exactly diagonal: both agree, and both equal the dense formula.
  CHECK(relative_error(W2, W1) <= 1e-12);
  const Mat<double> F = dense_kron(outer_mean(onehot, false), outer_mean(g, false)) +
                        0.1 * Mat<double>::Identity(in * out, in * out);
  CHECK(relative_error(dense_vec(W1), Vec<double>(dense_vec(W0) - dense_inverse<double>(F) * dense_vec(dW))) <=
        1e-10);
}

TEST_CASE("K-FAC: spectra are refreshed every inverse_period steps and stale in between",
          "[optim][kfac]") {
  Rng rng(53);
  const int in = 3, out = 2;
  Layer L(rng, in, out);
  auto o = plain_options(kfopt::DampingStyle::Exact, 0.2);
  o.inverse_period = 3;
  kfopt::Kfac<double> kfac(o);
  kfac.add_dense_layer("fc", L.W, L.dW, L.b, L.db);
  Mat<double> all_a(0, in), all_g(0, out);
  Mat<double> A_used, G_used;
  for (int step = 0; step < 7; ++step) {
    const Mat<double> a = rng.normal<double>(4, in) * (1.0 + step), g = rng.normal<double>(4, out);
    REQUIRE(kfac.wants_statistics());
    REQUIRE(kfac.record_statistics(0, a, g) == kfopt::Status::Success);
    Mat<double> na(all_a.rows() + 4, in), ng(all_g.rows() + 4, out);
    na << all_a, a;
    ng << all_g, g;
    all_a = na;
    all_g = ng;
    if (step % 3 == 0) {  // refresh: the factors as of now (decay 1: mean of all batches)
      A_used = outer_mean(all_a, true);
      G_used = outer_mean(all_g, false);
    }
    L.dW = rng.normal<double>(out, in);
    L.db = rng.normal<double>(out, 1);
    const Vec<double> before = L.params();
    REQUIRE(kfac.step() == kfopt::Status::Success);
    const Mat<double> F = dense_kron(A_used, G_used) + 0.2 * Mat<double>::Identity(8, 8);
    CHECK(relative_error(L.params(), Vec<double>(before - dense_inverse<double>(F) * L.grad())) <= 1e-10);
  }
  CHECK(kfac.state().inverse_refreshes == 3);  // steps 0, 3, 6

  // statistics_period: asked for every 2nd step.
  auto o2 = o;
  o2.statistics_period = 2;
  kfopt::Kfac<double> k2(o2);
  Layer L2(rng, in, out);
  k2.add_dense_layer("fc", L2.W, L2.dW, L2.b, L2.db);
  std::vector<bool> asked;
  for (int s = 0; s < 5; ++s) {
    asked.push_back(k2.wants_statistics());
    if (asked.back()) k2.record_statistics(0, rng.normal<double>(3, in), rng.normal<double>(3, out));
    REQUIRE(k2.step() == kfopt::Status::Success);
  }
  CHECK(asked == std::vector<bool>{true, false, true, false, true});
}

TEST_CASE("K-FAC: after KL clipping the step satisfies δᵀ F̂ δ ≤ κ, with equality when active",
          "[optim][kfac]") {
  Rng rng(54);
  const int in = 3, out = 4;
  for (double kappa : {1e-4, 1e-2, 1e6}) {
    Layer L1(rng, in, out), L2(rng, out, 2);
    auto o = plain_options(kfopt::DampingStyle::Exact, 0.1);
    o.learning_rate = 0.5;
    o.kl_clip = kappa;
    kfopt::Kfac<double> kfac(o);
    kfac.add_dense_layer("l1", L1.W, L1.dW, L1.b, L1.db);
    kfac.add_dense_layer("l2", L2.W, L2.dW, L2.b, L2.db);
    const Mat<double> a1 = rng.normal<double>(6, in), g1 = rng.normal<double>(6, out);
    const Mat<double> a2 = rng.normal<double>(6, out), g2 = rng.normal<double>(6, 2);
    kfac.record_statistics(0, a1, g1);
    kfac.record_statistics(1, a2, g2);
    const Vec<double> p1 = L1.params(), p2 = L2.params();
    REQUIRE(kfac.step() == kfopt::Status::Success);
    const Vec<double> d1 = L1.params() - p1, d2 = L2.params() - p2;
    const Mat<double> F1 = dense_kron(outer_mean(a1, true), outer_mean(g1, false)) + 0.1 * Mat<double>::Identity(16, 16);
    const Mat<double> F2 = dense_kron(outer_mean(a2, true), outer_mean(g2, false)) + 0.1 * Mat<double>::Identity(10, 10);
    const double quad = d1.dot(F1 * d1) + d2.dot(F2 * d2);
    const double unclipped = 0.25 * (L1.grad().dot(dense_inverse<double>(F1) * L1.grad()) +
                                     L2.grad().dot(dense_inverse<double>(F2) * L2.grad()));
    CHECK(quad <= kappa * (1 + 1e-9));
    if (unclipped > kappa) {
      CHECK(kfac.state().last_clip_scale < 1.0);
      CHECK(quad == Approx(kappa).epsilon(1e-9));
    } else {
      CHECK(kfac.state().last_clip_scale == 1.0);
      CHECK(quad == Approx(unclipped).epsilon(1e-9));
    }
  }
}

TEST_CASE("K-FAC: momentum accumulates the preconditioned directions", "[optim][kfac]") {
  Rng rng(55);
  Layer L(rng, 2, 2);
  auto o = plain_options(kfopt::DampingStyle::Exact, 0.3);
  o.momentum = 0.5;
  o.learning_rate = 0.1;
  kfopt::Kfac<double> kfac(o);
  kfac.add_dense_layer("fc", L.W, L.dW, L.b, L.db);
  const Mat<double> a = rng.normal<double>(5, 2), g = rng.normal<double>(5, 2);
  kfac.record_statistics(0, a, g);
  const Mat<double> Finv = dense_inverse<double>(
      Mat<double>(dense_kron(outer_mean(a, true), outer_mean(g, false)) + 0.3 * Mat<double>::Identity(6, 6)));
  Vec<double> m = Vec<double>::Zero(6), p = L.params();
  for (int s = 0; s < 4; ++s) {
    L.dW = rng.normal<double>(2, 2);
    L.db = rng.normal<double>(2, 1);
    m = 0.5 * m + Finv * L.grad();
    p -= 0.1 * m;
    // decay = 1 and no new statistics: the factors stay those of the single batch.
    REQUIRE(kfac.step() == kfopt::Status::Success);
    CHECK(relative_error(L.params(), p) <= 1e-10);
  }
}

TEST_CASE("K-FAC: adaptive damping follows the Levenberg-Marquardt rule without refactorizing",
          "[optim][kfac]") {
  Rng rng(56);
  Layer L(rng, 3, 2);
  auto o = plain_options(kfopt::DampingStyle::Exact, 0.1);
  o.learning_rate = 0.2;
  o.adaptive_damping = true;
  o.damping_adaptation = 0.5;
  o.damping_adaptation_period = 1;
  o.inverse_period = 100;
  kfopt::Kfac<double> kfac(o);
  kfac.add_dense_layer("fc", L.W, L.dW, L.b, L.db);
  const Mat<double> a = rng.normal<double>(7, 3), g = rng.normal<double>(7, 2);
  kfac.record_statistics(0, a, g);
  const Vec<double> p0 = L.params(), z = L.grad();
  REQUIRE(kfac.step() == kfopt::Status::Success);
  // Predicted change of the quadratic model, computed densely.
  const Vec<double> delta = L.params() - p0;
  const Mat<double> F = dense_kron(outer_mean(a, true), outer_mean(g, false));
  const double predicted = z.dot(delta) + 0.5 * delta.dot(F * delta) + 0.5 * 0.1 * delta.squaredNorm();
  CHECK(kfac.state().pending_model_change == Approx(predicted).epsilon(1e-12));
  CHECK(predicted < 0);
  // Actual reduction as predicted → ρ = 1 → λ halves.
  CHECK(kfac.report_loss(10.0, 10.0 + predicted) == Approx(1.0));
  CHECK(kfac.damping() == Approx(0.05));
  // The next step uses λ = 0.05 with the same (not refreshed) spectra.
  L.dW = rng.normal<double>(2, 3);
  const Vec<double> p1 = L.params();
  REQUIRE(kfac.step() == kfopt::Status::Success);
  const Vec<double> expected = p1 - 0.2 * dense_inverse<double>(Mat<double>(F + 0.05 * Mat<double>::Identity(8, 8))) * L.grad();
  CHECK(relative_error(L.params(), expected) <= 1e-10);
  CHECK(kfac.state().inverse_refreshes == 1);
  // The loss went up → ρ < 0 → λ doubles (from 0.05 to 0.1).
  kfac.report_loss(10.0, 11.0);
  CHECK(kfac.damping() == Approx(0.1));
  // Bounds hold.
  for (int i = 0; i < 40; ++i) {
    kfac.step();
    kfac.report_loss(10.0, 11.0);
  }
  CHECK(kfac.damping() <= o.max_damping);
}

TEST_CASE("K-FAC: bad input is refused with the layer and shapes named, state unchanged",
          "[optim][kfac][errors]") {
  Rng rng(57);
  Layer L(rng, 3, 2);
  kfopt::Kfac<double> kfac;
  CHECK_THROWS_AS(kfac.step(), kfopt::InvalidInputError);  // nothing registered
  const auto id = kfac.add_dense_layer("decoder.3", L.W, L.dW, L.b, L.db);
  CHECK_THROWS_WITH(kfac.step(), Catch::Contains("decoder.3") && Catch::Contains("statistics"));
  try {
    kfac.record_statistics(id, rng.normal<double>(5, 4), rng.normal<double>(5, 2));
    FAIL("expected ShapeError");
  } catch (const kfopt::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("decoder.3") != std::string::npos);
    CHECK(msg.find("5x4") != std::string::npos);
    CHECK(msg.find("5x2") != std::string::npos);
  }
  CHECK_THROWS_AS(kfac.record_statistics(7, rng.normal<double>(5, 3), rng.normal<double>(5, 2)),
                  kfopt::InvalidInputError);
  REQUIRE(kfac.record_statistics(id, rng.normal<double>(5, 3), rng.normal<double>(5, 2)) ==
          kfopt::Status::Success);
  Mat<double> bad_a = rng.normal<double>(5, 3);
  bad_a(1, 1) = std::numeric_limits<double>::quiet_NaN();
  const Mat<double> A_before = kfac.block(id).input_factor(), G_before = kfac.block(id).gradient_factor();
  CHECK(kfac.record_statistics(id, bad_a, rng.normal<double>(5, 2)) == kfopt::Status::NonFiniteInput);
  CHECK(kfac.block(id).input_factor() == A_before);
  CHECK(kfac.block(id).gradient_factor() == G_before);
  CHECK(kfac.state().skipped_statistics == 1);
  REQUIRE(kfac.step() == kfopt::Status::Success);
  // A non-finite gradient: the step is skipped, parameters and momentum unchanged.
  const Mat<double> W = L.W;
  const Vec<double> b = L.b;
  L.db(1) = std::numeric_limits<double>::infinity();
  CHECK(kfac.step() == kfopt::Status::NonFiniteInput);
  CHECK(L.W == W);
  CHECK(L.b == b);
  CHECK(kfac.state().counters.steps == 1);
  CHECK(kfac.state().counters.skipped_nonfinite == 1);
  L.db(1) = 0.0;
  // Registration errors.
  Vec<double> short_b(1), short_db(1);
  CHECK_THROWS_AS(kfac.add_dense_layer("x", L.W, L.dW, short_b, short_db), kfopt::ShapeError);
  CHECK_THROWS_AS(kfac.add_dense_layer("decoder.3", L.W, L.dW), kfopt::InvalidInputError);
  // Hyperparameters.
  kfopt::KfacOptions o;
  o.damping = 0.0;
  CHECK_THROWS_WITH((kfopt::Kfac<double>(o)), Catch::Contains("damping"));
  o = {};
  o.decay = 0.0;
  CHECK_THROWS_WITH((kfopt::Kfac<double>(o)), Catch::Contains("decay"));
  o = {};
  o.decay = 1.5;
  CHECK_THROWS_AS((kfopt::Kfac<double>(o)), kfopt::HyperparameterError);
  o = {};
  o.inverse_period = 0;
  CHECK_THROWS_WITH((kfopt::Kfac<double>(o)), Catch::Contains("inverse_period"));
  o = {};
  o.statistics_period = 0;
  CHECK_THROWS_WITH((kfopt::Kfac<double>(o)), Catch::Contains("statistics_period"));
}

TEST_CASE("K-FAC: the Cholesky inverse method gives the same steps as the eigendecomposition",
          "[optim][kfac]") {
  Rng rng(58);
  const int in = 4, out = 3;
  for (auto g_structure : {kfopt::FactorStructure::Dense, kfopt::FactorStructure::Diagonal}) {
    Layer L1(rng, in, out), L2 = L1;
    auto o = plain_options(kfopt::DampingStyle::Factored, 0.03);
    o.inverse_period = 2;  // stale inverses in between, formed from the same snapshot
    o.momentum = 0.3;
    o.decay = 0.9;
    kfopt::Kfac<double> eig(o);
    o.inverse_method = kfopt::InverseMethod::Cholesky;
    kfopt::Kfac<double> chol(o);
    const kfopt::DenseLayerOptions layer{kfopt::FactorStructure::Dense, g_structure};
    eig.add_dense_layer("fc", L1.W, L1.dW, L1.b, L1.db, layer);
    chol.add_dense_layer("fc", L2.W, L2.dW, L2.b, L2.db, layer);
    for (int s = 0; s < 5; ++s) {
      const Mat<double> a = rng.normal<double>(6, in), g = rng.normal<double>(6, out);
      eig.record_statistics(0, a, g);
      chol.record_statistics(0, a, g);
      L1.dW = L2.dW = rng.normal<double>(out, in);
      L1.db = L2.db = rng.normal<double>(out, 1);
      if (s == 3) chol.set_damping(0.05), eig.set_damping(0.05);  // λ change between refreshes
      REQUIRE(eig.step() == kfopt::Status::Success);
      REQUIRE(chol.step() == kfopt::Status::Success);
      CHECK(relative_error(L2.params(), L1.params()) <= 1e-10);
    }
  }
  // Exact damping needs the eigendecomposition.
  kfopt::KfacOptions bad;
  bad.damping_style = kfopt::DampingStyle::Exact;
  bad.inverse_method = kfopt::InverseMethod::Cholesky;
  CHECK_THROWS_WITH((kfopt::Kfac<double>(bad)), Catch::Contains("inverse_method"));
}

TEST_CASE("K-FAC: a refresh computed as parts and installed equals the step's own, bit for bit",
          "[optim][kfac][refresh-parts]") {
  // Eigendecompositions and damped Cholesky inverses, dense and diagonal factors, a damping
  // that changes between refreshes: two copies of the same problem, one stepped by step(),
  // one whose refreshes are computed part by part (begin_refresh_parts, compute_refresh_part
  // of every part, install_refresh) before step_with_installed_refresh().
  for (const auto method : {kfopt::InverseMethod::Eigendecomposition, kfopt::InverseMethod::Cholesky}) {
    for (const bool diagonal : {false, true}) {
      Rng rng(91);
      kfopt::KfacOptions o = plain_options(kfopt::DampingStyle::Factored, 0.05);
      o.learning_rate = 0.1;
      o.momentum = 0.5;
      o.decay = 0.9;
      o.inverse_period = 3;
      o.inverse_method = method;
      const int in = 6, out = 4, k = 10;
      Layer a(rng, in, out), b = a;
      kfopt::Kfac<double> own(o), parts(o);
      const kfopt::DenseLayerOptions st{
          diagonal ? kfopt::FactorStructure::Diagonal : kfopt::FactorStructure::Dense,
          kfopt::FactorStructure::Dense};
      own.add_dense_layer("fc", a.W, a.dW, a.b, a.db, st);
      parts.add_dense_layer("fc", b.W, b.dW, b.b, b.db, st);
      int installed = 0;
      for (int t = 0; t < 9; ++t) {
        Mat<double> x = rng.normal<double>(k, in);
        if (diagonal) {  // one-hot inputs keep the diagonal A exact
          x.setZero();
          for (int r = 0; r < k; ++r) x(r, rng.integer(0, in - 1)) = 1.0;
        }
        const Mat<double> g = rng.normal<double>(k, out);
        const Mat<double> dW = rng.normal<double>(out, in);
        const Vec<double> db = rng.normal<double>(out, 1);
        a.dW = dW;
        b.dW = dW;
        a.db = db;
        b.db = db;
        REQUIRE(own.record_statistics(0, x, g) == kfopt::Status::Success);
        REQUIRE(parts.record_statistics(0, x, g) == kfopt::Status::Success);
        if (parts.refresh_pending(0)) {
          parts.begin_refresh_parts(0);
          std::vector<Mat<double>> results(static_cast<std::size_t>(parts.refresh_part_count(0)));
          REQUIRE(results.size() == 2);
          for (int p = 0; p < 2; ++p) {
            REQUIRE(parts.compute_refresh_part(0, p, results[static_cast<std::size_t>(p)]) ==
                    kfopt::Status::Success);
          }
          // A result that is not one is refused, nothing installed.
          std::vector<Mat<double>> bad = results;
          bad[1](0, 0) = std::numeric_limits<double>::quiet_NaN();
          CHECK_THROWS_AS(parts.install_refresh(0, bad), kfopt::InvalidInputError);
          bad = results;
          bad[0].conservativeResize(bad[0].rows() - 1, bad[0].cols());
          CHECK_THROWS(parts.install_refresh(0, bad));
          parts.install_refresh(0, results);
          ++installed;
        }
        REQUIRE(own.step() == kfopt::Status::Success);
        REQUIRE(parts.step_with_installed_refresh() == kfopt::Status::Success);
        INFO("method " << static_cast<int>(method) << ", diagonal A " << diagonal << ", step " << t);
        REQUIRE(b.W == a.W);
        REQUIRE(b.b == a.b);
        // The damping changes between refreshes: the installed inverses belong to the
        // damping of their step; a later step with another damping forms its own.
        if (t == 4) {
          own.set_damping(0.2);
          parts.set_damping(0.2);
        }
      }
      CHECK(installed == 3);
      CHECK(own.state_dict() == parts.state_dict());
    }
  }
}

TEST_CASE("K-FAC as a preconditioner: Sgd with momentum on the preconditioned gradients takes "
          "Kfac's own steps", "[optim][kfac][preconditioner]") {
  // Two layers, KL clipping active, weight decay in Z, refreshes every 3 steps: Kfac::step()
  // with momentum μ and learning rate η against precondition_gradients() followed by Sgd with
  // the same μ and η on the same storage.
  Rng rng(97);
  kfopt::KfacOptions o = plain_options(kfopt::DampingStyle::Factored, 0.05);
  o.learning_rate = 0.3;
  o.momentum = 0.8;
  o.weight_decay = 1e-3;
  o.kl_clip = 1e-3;
  o.decay = 0.9;
  o.inverse_period = 3;
  Layer a1(rng, 5, 4), a2(rng, 4, 3);
  Layer b1 = a1, b2 = a2;
  kfopt::Kfac<double> own(o), pre(o);
  own.add_dense_layer("fc1", a1.W, a1.dW, a1.b, a1.db);
  own.add_dense_layer("fc2", a2.W, a2.dW, a2.b, a2.db);
  pre.add_dense_layer("fc1", b1.W, b1.dW, b1.b, b1.db);
  pre.add_dense_layer("fc2", b2.W, b2.dW, b2.b, b2.db);
  kfopt::ParameterSet<double> params;
  params.add("fc1.weight", b1.W, b1.dW);
  params.add("fc1.bias", b1.b, b1.db);
  params.add("fc2.weight", b2.W, b2.dW);
  params.add("fc2.bias", b2.b, b2.db);
  kfopt::SgdOptions so;
  so.learning_rate = o.learning_rate;
  so.momentum = o.momentum;
  kfopt::Sgd<double> sgd(params, so);
  double clipped = 1.0;
  for (int t = 0; t < 12; ++t) {
    const Mat<double> x1 = rng.normal<double>(8, 5), g1 = rng.normal<double>(8, 4);
    const Mat<double> x2 = rng.normal<double>(8, 4), g2 = rng.normal<double>(8, 3);
    for (kfopt::Kfac<double>* k : {&own, &pre}) {
      REQUIRE(k->record_statistics(0, x1, g1) == kfopt::Status::Success);
      REQUIRE(k->record_statistics(1, x2, g2) == kfopt::Status::Success);
    }
    a1.dW = b1.dW = rng.normal<double>(4, 5);
    a1.db = b1.db = rng.normal<double>(4, 1);
    a2.dW = b2.dW = rng.normal<double>(3, 4);
    a2.db = b2.db = rng.normal<double>(3, 1);
    const Mat<double> W1 = b1.W;
    REQUIRE(own.step() == kfopt::Status::Success);
    REQUIRE(pre.precondition_gradients() == kfopt::Status::Success);
    CHECK(b1.W == W1);  // the preconditioner moves nothing itself
    REQUIRE(sgd.step() == kfopt::Status::Success);
    clipped = std::min(clipped, pre.state().last_clip_scale);
    INFO("step " << t);
    CHECK(relative_error(b1.params(), a1.params()) <= 1e-12);
    CHECK(relative_error(b2.params(), a2.params()) <= 1e-12);
  }
  CHECK(clipped < 1.0);  // KL clipping took part
  CHECK(pre.state().inverse_refreshes == own.state().inverse_refreshes);
  // A NaN gradient is refused with the gradients and counters unchanged.
  b2.db(1) = std::numeric_limits<double>::quiet_NaN();
  const Mat<double> dW1 = b1.dW;
  const auto steps = pre.state().counters.steps;
  CHECK(pre.precondition_gradients() == kfopt::Status::NonFiniteInput);
  CHECK(b1.dW == dW1);
  CHECK(pre.state().counters.steps == steps);
  // Adaptive damping needs the update: refused.
  o.adaptive_damping = true;
  kfopt::Kfac<double> adaptive(o);
  adaptive.add_dense_layer("fc1", b1.W, b1.dW, b1.b, b1.db);
  CHECK_THROWS_AS(adaptive.precondition_gradients(), kfopt::InvalidInputError);
}
