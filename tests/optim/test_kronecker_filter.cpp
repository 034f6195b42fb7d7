// The Kronecker-factored filter (Aitchison 2018, §2.1.3, SI §4.3), checked numerically:
// - the data update equals the dense rank-1 update (eq. 23) followed by a brute-force
//   KL-optimal Kronecker projection (flip-flop on dense partial traces, independent of
//   kfopt) to O(ε²), and the exact method to rounding; the closed form equals eq. 32 of
//   the kron layer, while the printed eq. 24 (normalized Δ in front of Σδδδᵀ Σδ) is only
//   first-order accurate;
// - the drift update equals eq. 32 on (1 − A)²Σ + η² I ⊗ I and the brute force to O(ε²);
// - the minibatch mean update is Σ_b (Σx x_b) ⊗ (Σδ δ_b) with the bias folded in;
// - whitening (η > 0): the steady state is ∝ E[xxᵀ]^{-1/2} ⊗ E[δδᵀ]^{-1/2} with scale
//   η/sqrt(k); natural gradient (η = 0): ∝ E[xxᵀ]⁻¹ ⊗ E[δδᵀ]⁻¹ with scale 1/(tk);
// - phases, bad input, float.
#include <catch2/catch.hpp>
#include <kfopt/kron/kronecker_projection.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>

#include <cmath>
#include <limits>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// Brute-force KL projection of a dense NM×NM covariance S onto A ⊗ B: alternate the exact
// minimizers A = (1/M) Σ_ab (B⁻¹)_ab S[(·,a),(·,b)], B = (1/N) Σ_ij (A⁻¹)_ij S[(i,·),(j,·)]
// (SI §4.3's stationarity equations) with explicit LU inverses, until the product stops moving.
Mat<double> brute_force_projection(const Mat<double>& S, int n, int m) {
  Mat<double> A = Mat<double>::Identity(n, n), B = Mat<double>::Identity(m, m);
  Mat<double> previous = dense_kron<double>(A, B);
  for (int it = 0; it < 20000; ++it) {
    const Mat<double> Bi = dense_inverse<double>(B);
    Mat<double> An = Mat<double>::Zero(n, n);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        for (int a = 0; a < m; ++a)
          for (int b = 0; b < m; ++b) An(i, j) += Bi(a, b) * S(i * m + a, j * m + b) / m;
    const Mat<double> Ai = dense_inverse<double>(An);
    Mat<double> Bn = Mat<double>::Zero(m, m);
    for (int a = 0; a < m; ++a)
      for (int b = 0; b < m; ++b)
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < n; ++j) Bn(a, b) += Ai(i, j) * S(i * m + a, j * m + b) / n;
    A = An;
    B = Bn;
    const Mat<double> product = dense_kron<double>(A, B);
    const double change = (product - previous).norm() / product.norm();
    previous = product;
    if (change < 1e-15) break;
  }
  return previous;
}

Mat<double> matrix_power(const Mat<double>& S, double p) {
  Eigen::SelfAdjointEigenSolver<Mat<double>> eig(S);
  return eig.eigenvectors() * eig.eigenvalues().array().pow(p).matrix().asDiagonal() *
         eig.eigenvectors().transpose();
}

// ‖A/‖A‖ − B/‖B‖‖: how far A is from being proportional to B.
double direction_error(const Mat<double>& A, const Mat<double>& B) {
  return (A / A.norm() - B / B.norm()).norm();
}

using Cov = kfopt::KroneckerFactoredCovariance<double>;

}  // namespace

TEST_CASE("KroneckerFilter: the data update equals dense rank-1 plus brute-force KL projection to O(eps^2)",
          "[optim][kronecker_filter]") {
  const int n = 3, m = 2;
  Rng rng(3);
  const Mat<double> Sx = rng.spd<double>(n), Sd = rng.spd<double>(m);
  const Vec<double> x0 = rng.normal<double>(n, 1), d0 = rng.normal<double>(m, 1);
  double previous_ratio = 0;
  for (const double scale : {0.2, 0.1, 0.05, 0.025}) {
    const Vec<double> x = scale * x0, d = scale * d0;
    Cov first(n, m, 1.0), exact(n, m, 1.0, kfopt::KroneckerProjectionMethod::Exact);
    first.set_factors(Sx, Sd);
    exact.set_factors(Sx, Sd);
    REQUIRE(first.observe(x, d) == kfopt::Status::Success);
    REQUIRE(exact.observe(x, d) == kfopt::Status::Success);
    // Dense: eq. 23 (Sherman–Morrison with e = x ⊗ δ = vec(δ xᵀ)), then brute-force projection.
    const Mat<double> S = dense_kron<double>(Sx, Sd);
    const Vec<double> e = dense_vec<double>(Mat<double>(d * x.transpose()));
    const Mat<double> post = S - S * e * e.transpose() * S / (1.0 + e.dot(S * e));
    const Mat<double> best = brute_force_projection(post, n, m);
    const double X = x.dot(Sx * x), D = d.dot(Sd * d), eps = X * D / (1 + X * D);
    const double err_first = relative_error(first.to_dense(), best);
    const double err_exact = relative_error(exact.to_dense(), best);
    const double residual = relative_error(post, best);  // what no Kronecker product can fit
    INFO("scale " << scale << ": eps = XD/(1+XD) = " << eps << "; first-order vs brute force "
                  << err_first << " (/eps^2 = " << err_first / (eps * eps) << "), exact method "
                  << err_exact << ", projection residual " << residual);
    CHECK(err_exact <= 1e-10);
    CHECK(err_first <= 0.2 * eps * eps);
    if (previous_ratio > 0) CHECK(err_first / (eps * eps) == Approx(previous_ratio).epsilon(0.1));
    previous_ratio = err_first / (eps * eps);
    CHECK(residual > 10 * err_first);  // the projection error is not what we measure
  }
}

TEST_CASE("KroneckerFilter: the closed forms are eq. 32 of the kron layer; the printed eq. 24b is first order only",
          "[optim][kronecker_filter]") {
  const int n = 4, m = 3;
  Rng rng(8);
  const Mat<double> Sx = rng.spd<double>(n), Sd = rng.spd<double>(m, 0.2, 1.0);
  // Data update: X1 = Σx, Y1 = Σδ, X2 = u uᵀ/s, Y2 = −v vᵀ/s (SI §4.3.1).
  double prev_printed = 0, prev_ours = 0;
  const Vec<double> x0 = rng.normal<double>(n, 1), d0 = rng.normal<double>(m, 1);
  for (const double scale : {0.3, 0.1, 1.0 / 30}) {
    const Vec<double> x = scale * x0, d = scale * d0;
    Cov c(n, m, 1.0);
    c.set_factors(Sx, Sd);
    REQUIRE(c.observe(x, d) == kfopt::Status::Success);
    const Vec<double> u = Sx * x, v = Sd * d;
    const double X = x.dot(u), D = d.dot(v), s = std::sqrt(1 + X * D);
    const Mat<double> X2 = u * u.transpose() / s, Y2 = -v * v.transpose() / s;
    const auto eq32 = kfopt::kronecker_projection_first_order(Sx, Sd, X2, Y2);
    REQUIRE(eq32.status == kfopt::Status::Success);
    const Mat<double> eq32_product = dense_kron<double>(eq32.A, eq32.B);
    CHECK(relative_error(c.to_dense(), eq32_product) <= 1e-13);
    // The printed eq. 24 read with normalized Δn = D/M, Xn = X/N, but with Δn (as printed)
    // in front of Σδ δδᵀ Σδ in eq. 24b.
    const double Dn = D / m, Xn = X / n, den = 1 + (m * Dn) * (n * Xn);
    const Mat<double> Ax = Sx + (0.5 * Dn * Xn * Sx - Dn * u * u.transpose()) / den;
    const Mat<double> Bd = Sd + (0.5 * Dn * Xn * Sd - Dn * v * v.transpose()) / den;
    const Mat<double> S = dense_kron<double>(Sx, Sd);
    const Vec<double> e = dense_vec<double>(Mat<double>(d * x.transpose()));
    const Mat<double> best = brute_force_projection(S - S * e * e.transpose() * S / (1 + e.dot(S * e)), n, m);
    const double err_printed = relative_error(dense_kron<double>(Ax, Bd), best);
    const double err_ours = relative_error(c.to_dense(), best);
    INFO("scale " << scale << ": XD = " << X * D << ", X/N = " << Xn << ", D/M = " << Dn
                  << "; printed eq. 24 vs brute force " << err_printed << ", eq. 32 (ours) " << err_ours);
    CHECK(err_ours < 0.05 * err_printed);
    if (prev_printed > 0) {  // scale /3: ε = XD/(1 + XD) ∝ scale⁴ drops ~81×
      CHECK(err_printed / prev_printed == Approx(1.0 / 81).epsilon(0.3));  // first order in ε
      CHECK(err_ours / prev_ours < 1.0 / 2000);                          // second order in ε
    }
    prev_printed = err_printed;
    prev_ours = err_ours;
  }
  // Drift: X1 = keep Σx, Y1 = keep Σδ, X2 = Y2 = η I (SI §4.3.2); O(ε²) against brute force.
  double prev_ratio = 0;
  for (const double eta : {0.04, 0.02, 0.01}) {
    const double sigma2 = 1.0, keep = 1 - eta * eta / (2 * sigma2);
    Cov c(n, m, 1.0);
    c.set_factors(Sx, Sd);
    REQUIRE(c.drift(keep, eta) == kfopt::Status::Success);
    const Mat<double> I_n = Mat<double>::Identity(n, n), I_m = Mat<double>::Identity(m, m);
    const auto eq32 = kfopt::kronecker_projection_first_order(Mat<double>(keep * Sx), Mat<double>(keep * Sd),
                                                              Mat<double>(eta * I_n), Mat<double>(eta * I_m));
    REQUIRE(eq32.status == kfopt::Status::Success);
    CHECK(relative_error(c.to_dense(), dense_kron<double>(eq32.A, eq32.B)) <= 1e-13);
    const Mat<double> prior = keep * keep * dense_kron<double>(Sx, Sd) + eta * eta * Mat<double>::Identity(n * m, n * m);
    const Mat<double> best = brute_force_projection(prior, n, m);
    Cov ce(n, m, 1.0, kfopt::KroneckerProjectionMethod::Exact);
    ce.set_factors(Sx, Sd);
    REQUIRE(ce.drift(keep, eta) == kfopt::Status::Success);
    const double eps = eta * std::sqrt(dense_inverse<double>(Sx).trace() / n * dense_inverse<double>(Sd).trace() / m);
    const double err = relative_error(c.to_dense(), best);
    INFO("eta = " << eta << ": eps = eta sqrt(Lx Ld) = " << eps << ", first-order drift vs brute force " << err
                  << " (/eps^4 = " << err / std::pow(eps, 4) << "), exact method "
                  << relative_error(ce.to_dense(), best));
    CHECK(relative_error(ce.to_dense(), best) <= 1e-10);
    // X2 relative to X1 is O(η) = O(√ε) in the paper's ε (eq. 31), so the error is O(η⁴).
    if (prev_ratio > 0) CHECK(err / std::pow(eps, 4) == Approx(prev_ratio).epsilon(0.15));
    prev_ratio = err / std::pow(eps, 4);
  }
}

TEST_CASE("KroneckerFilter: the minibatch mean update is sum_b (Sx x_b) (x) (Sd d_b), bias folded in",
          "[optim][kronecker_filter]") {
  const int in = 3, out = 2, k = 5, n = in + 1;
  Rng rng(13);
  for (const auto reduction : {kfopt::LossReduction::Mean, kfopt::LossReduction::Sum}) {
    Mat<double> W = rng.normal<double>(out, in), dW(out, in);
    Vec<double> b = rng.normal<double>(out, 1), db(out);
    kfopt::KroneckerFilterOptions o = kfopt::KroneckerFilterOptions::whitening(0.05, 0.3);
    o.loss_reduction = reduction;
    kfopt::KroneckerFilter<double> filter(o);
    const auto id = filter.add_dense_layer("fc", W, dW, b, db);
    const Mat<double> a = rng.normal<double>(k, in), g_fisher = rng.normal<double>(k, out);
    const Mat<double> g_loss = rng.normal<double>(k, out);  // per-example loss gradients
    const double c = reduction == kfopt::LossReduction::Mean ? 1.0 / k : 1.0;
    dW = c * g_loss.transpose() * a;
    db = c * g_loss.colwise().sum().transpose();
    REQUIRE(filter.record_statistics(id, a.topRows(2), g_fisher.topRows(2)) == kfopt::Status::Success);
    REQUIRE(filter.record_statistics(id, a.bottomRows(3), g_fisher.bottomRows(3)) == kfopt::Status::Success);
    // The posterior factors are k successive projected rank-1 updates with x = [a; 1].
    Cov reference(n, out, 0.3);
    for (int r = 0; r < k; ++r) {
      Vec<double> x(n);
      x << a.row(r).transpose(), 1.0;
      REQUIRE(reference.observe(x, g_fisher.row(r).transpose()) == kfopt::Status::Success);
    }
    Mat<double> Wb(out, n);
    Wb << W, b;
    REQUIRE(filter.update() == kfopt::Status::Success);
    CHECK(filter.phase() == kfopt::FilterPhase::Posterior);
    const auto& cov = filter.covariance(id);
    CHECK(relative_error(cov.to_dense(), reference.to_dense()) <= 1e-13);
    // Mean: vec(Δ[W b]) = Σ_post Σ_b x_b ⊗ (−δ^g_b) with dense Kronecker products.
    Vec<double> g = Vec<double>::Zero(n * out);
    for (int r = 0; r < k; ++r) {
      Vec<double> x(n);
      x << a.row(r).transpose(), 1.0;
      g -= dense_vec<double>(Mat<double>(g_loss.row(r).transpose() * x.transpose()));
    }
    const Vec<double> step = cov.to_dense() * g;
    Mat<double> Wb_post(out, n);
    Wb_post << W, b;
    CHECK(relative_error(dense_vec<double>(Mat<double>(Wb_post - Wb)), step) <= 1e-12);
    // predict(): decay and drift.
    const double keep = 1 - 0.05 * 0.05 / 0.6;
    Cov drifted = reference;
    REQUIRE(drifted.drift(keep, 0.05) == kfopt::Status::Success);
    REQUIRE(filter.predict() == kfopt::Status::Success);
    Mat<double> Wb_prior(out, n);
    Wb_prior << W, b;
    CHECK(relative_error(Wb_prior, Mat<double>(keep * Wb_post)) <= 1e-15);
    CHECK(relative_error(filter.covariance(id).to_dense(), drifted.to_dense()) <= 1e-13);
  }
}

TEST_CASE("KroneckerFilter: the whitening steady state is proportional to E[xx^T]^-1/2 (x) E[dd^T]^-1/2",
          "[optim][kronecker_filter]") {
  // x ~ N(0, Px), δ ~ N(0, Dδ) independent, k examples per step. Predicted steady state
  // Σx ⊗ Σδ ≈ η (k Px ⊗ Dδ)^{-1/2}; the time average over the second half of the run is
  // compared (direction of each factor, and the scale of the product).
  const int in = 4, out = 3, k = 16, steps = 4000;
  Rng rng(7);
  const Mat<double> Px = rng.spd<double>(in, 0.3, 3.0), Dd = rng.spd<double>(out, 0.3, 3.0);
  const Mat<double> Lx = Px.llt().matrixL(), Ld = Dd.llt().matrixL();
  const Mat<double> Px_half = matrix_power(Px, -0.5), Dd_half = matrix_power(Dd, -0.5);
  double previous = 1.0;
  for (const double eta : {0.03, 0.01}) {
    Mat<double> W = Mat<double>::Zero(out, in), dW = Mat<double>::Zero(out, in);
    kfopt::KroneckerFilterOptions o = kfopt::KroneckerFilterOptions::whitening(eta, 1e6);
    o.initial_variance = 1.0;
    kfopt::KroneckerFilter<double> filter(o);
    const auto id = filter.add_dense_layer("fc", W, dW);
    Mat<double> sum_x = Mat<double>::Zero(in, in), sum_d = Mat<double>::Zero(out, out);
    double sum_scale = 0;
    bool ok = true;
    for (int t = 0; t < steps; ++t) {
      const Mat<double> a = rng.normal<double>(k, in) * Lx.transpose();
      const Mat<double> g = rng.normal<double>(k, out) * Ld.transpose();
      ok = ok && filter.record_statistics(id, a, g) == kfopt::Status::Success;
      ok = ok && filter.update() == kfopt::Status::Success;  // posterior factors
      if (t >= steps / 2) {
        const auto& c = filter.covariance(id);
        sum_x += c.input_factor();
        sum_d += c.output_factor();
        sum_scale += c.input_factor().trace() * c.output_factor().trace();
      }
      ok = ok && filter.predict() == kfopt::Status::Success;
    }
    REQUIRE(ok);
    const double err_x = direction_error(sum_x, Px_half), err_d = direction_error(sum_d, Dd_half);
    const double err_x_inverse = direction_error(sum_x, matrix_power(Px, -1.0));
    const double scale = sum_scale / (steps / 2) /
                         (eta / std::sqrt(static_cast<double>(k)) * Px_half.trace() * Dd_half.trace());
    INFO("eta = " << eta << ": direction error of Sx vs E[xx^T]^-1/2 " << err_x << ", of Sd vs E[dd^T]^-1/2 "
                  << err_d << " (Sx vs E[xx^T]^-1: " << err_x_inverse << "); scale of the product / "
                  << "(eta/sqrt k tr tr) = " << scale);
    CHECK(std::max(err_x, err_d) < 0.03);
    CHECK(err_x_inverse > 5 * err_x);  // not the natural-gradient direction
    const double scale_error = std::abs(scale - 1.0);
    CHECK(scale_error < (eta > 0.02 ? 0.4 : 0.1));
    if (eta < 0.02) CHECK(scale_error < previous);  // the O(η) bias of the scale shrinks with η
    previous = scale_error;
  }
}

TEST_CASE("KroneckerFilter: natural gradient (eta = 0), the posterior is proportional to E[xx^T]^-1 (x) E[dd^T]^-1 / (t k)",
          "[optim][kronecker_filter]") {
  const int in = 4, out = 3, k = 16, steps = 3000;
  Rng rng(19);
  const Mat<double> Px = rng.spd<double>(in, 0.3, 3.0), Dd = rng.spd<double>(out, 0.3, 3.0);
  const Mat<double> Lx = Px.llt().matrixL(), Ld = Dd.llt().matrixL();
  Mat<double> W = Mat<double>::Zero(out, in), dW = Mat<double>::Zero(out, in);
  kfopt::KroneckerFilter<double> filter(kfopt::KroneckerFilterOptions::natural_gradient(1.0));
  const auto id = filter.add_dense_layer("fc", W, dW);
  bool ok = true;
  for (int t = 0; t < steps; ++t) {
    ok = ok && filter.record_statistics(id, rng.normal<double>(k, in) * Lx.transpose(),
                                        rng.normal<double>(k, out) * Ld.transpose()) == kfopt::Status::Success;
    ok = ok && filter.step() == kfopt::Status::Success;
  }
  REQUIRE(ok);
  const auto& c = filter.covariance(id);
  const Mat<double> Pi = matrix_power(Px, -1.0), Di = matrix_power(Dd, -1.0);
  const double err_x = direction_error(c.input_factor(), Pi), err_d = direction_error(c.output_factor(), Di);
  const double scale = steps * k * c.input_factor().trace() * c.output_factor().trace() / (Pi.trace() * Di.trace());
  INFO("direction error of Sx vs E[xx^T]^-1 " << err_x << ", of Sd vs E[dd^T]^-1 " << err_d
                                             << "; t k tr(Sx) tr(Sd) / (tr tr) = " << scale);
  CHECK(std::max(err_x, err_d) < 0.03);
  CHECK(scale == Approx(1.0).epsilon(0.02));
  CHECK(filter.state().clamped_variances == 0);
}

TEMPLATE_TEST_CASE("KroneckerFilter: phases, bad input and float agree with double",
                   "[optim][kronecker_filter]", double, float) {
  using Scalar = TestType;
  using M = Mat<Scalar>;
  using V = Vec<Scalar>;
  auto bad = [](auto mutate, const char* field) {
    kfopt::KroneckerFilterOptions o;
    mutate(o);
    CHECK_THROWS_AS(kfopt::KroneckerFilter<Scalar>(o), kfopt::HyperparameterError);
    CHECK_THROWS_WITH(kfopt::KroneckerFilter<Scalar>(o), Catch::Contains(field));
  };
  bad([](auto& o) { o.prior_variance = 0.0; }, "prior_variance");
  bad([](auto& o) { o.prior_variance = -1.0; }, "prior_variance");
  bad([](auto& o) { o.learning_rate = -0.1; }, "learning_rate");
  bad([](auto& o) { o.learning_rate = 1.0; o.prior_variance = 0.5; }, "learning_rate");
  bad([](auto& o) { o.initial_variance = -1.0; }, "initial_variance");
  bad([](auto& o) { o.trace_period = 0; }, "trace_period");

  Rng rng(29);
  const int in = 3, out = 2, k = 4;
  M W = rng.normal<Scalar>(out, in), dW = rng.normal<Scalar>(out, in);
  V b = rng.normal<Scalar>(out, 1), db = rng.normal<Scalar>(out, 1), wrong(out + 1);
  kfopt::KroneckerFilter<Scalar> filter(kfopt::KroneckerFilterOptions::whitening(0.05, 0.5));
  CHECK_THROWS_AS(filter.update(), kfopt::InvalidInputError);  // no layer
  CHECK_THROWS_AS(filter.add_dense_layer("fc", W, dW, wrong, db), kfopt::ShapeError);
  const auto id = filter.add_dense_layer("fc", W, dW, b, db);
  CHECK_THROWS_AS(filter.add_dense_layer("fc", W, dW, b, db), kfopt::InvalidInputError);
  CHECK_THROWS_AS(filter.update(), kfopt::InvalidInputError);  // Mean reduction without statistics
  CHECK_THROWS_AS(filter.record_statistics(id, M(k, in + 1), M(k, out)), kfopt::ShapeError);
  CHECK_THROWS_AS(filter.record_statistics(7, M(k, in), M(k, out)), kfopt::InvalidInputError);
  M a = rng.normal<Scalar>(k, in), g = rng.normal<Scalar>(k, out);
  a(1, 1) = std::numeric_limits<Scalar>::quiet_NaN();
  CHECK(filter.record_statistics(id, a, g) == kfopt::Status::NonFiniteInput);
  CHECK(filter.state().skipped_statistics == 1);
  CHECK_THROWS_AS(filter.update(), kfopt::InvalidInputError);  // the NaN batch was not recorded
  a(1, 1) = Scalar(0.5);
  REQUIRE(filter.record_statistics(id, a, g) == kfopt::Status::Success);
  CHECK_THROWS_AS(filter.predict(), kfopt::InvalidInputError);  // prior phase

  // A non-finite gradient: nothing changes (parameters, factors, pending statistics).
  const M W0 = W;
  const M Sx0 = filter.covariance(id).input_factor();
  dW(0, 2) = std::numeric_limits<Scalar>::infinity();
  CHECK(filter.step() == kfopt::Status::NonFiniteInput);
  CHECK(W == W0);
  CHECK(filter.covariance(id).input_factor() == Sx0);
  CHECK(filter.state().counters.skipped_nonfinite == 1);
  CHECK(filter.phase() == kfopt::FilterPhase::Prior);
  dW(0, 2) = Scalar(0.1);
  REQUIRE(filter.update() == kfopt::Status::Success);  // uses the statistics recorded before
  CHECK_THROWS_AS(filter.update(), kfopt::InvalidInputError);
  REQUIRE(filter.predict() == kfopt::Status::Success);

  // Guards of the covariance algebra: a drift far outside the first-order regime would give
  // a negative coefficient (clamped at 0, counted); a factor that lost definiteness is
  // repaired by clipping its eigenvalues (counted). Both leave SPD, finite factors.
  {
    kfopt::KroneckerFactoredCovariance<Scalar> c(3, 2, Scalar(1e-4));
    REQUIRE(c.drift(Scalar(0.9), Scalar(1)) == kfopt::Status::Success);  // η² Λx Λδ = 1e4 ≫ 2
    CHECK(c.clamped() == 1);
    CHECK(c.input_factor().allFinite());
    CHECK(Eigen::LLT<M>(c.input_factor()).info() == Eigen::Success);
    CHECK(Eigen::LLT<M>(c.output_factor()).info() == Eigen::Success);
    M singular = M::Zero(3, 3);
    singular(0, 0) = Scalar(1);
    c.set_factors(singular, M::Identity(2, 2));
    REQUIRE(c.drift(Scalar(1), Scalar(0.01)) == kfopt::Status::Success);
    CHECK(c.clamped() >= 2);  // the repair, and then the coefficient of the near-singular factor
    CHECK(c.input_factor().allFinite());
    CHECK(Eigen::LLT<M>(c.input_factor()).info() == Eigen::Success);
  }

  // Float against double, FirstOrder against Exact, and a stale-trace schedule, on 30 steps
  // of the same stream with parameter-dependent gradients.
  auto run = [&](auto scalar_tag, kfopt::KroneckerProjectionMethod method, int trace_period) {
    using S = decltype(scalar_tag);
    Rng r(41);
    Mat<S> Wr = r.normal<S>(out, in), dWr(out, in);
    Vec<S> br = r.normal<S>(out, 1), dbr(out);
    kfopt::KroneckerFilterOptions o = kfopt::KroneckerFilterOptions::whitening(0.02, 0.5);
    o.projection = method;
    o.trace_period = trace_period;
    kfopt::KroneckerFilter<S> f(o);
    const auto lid = f.add_dense_layer("fc", Wr, dWr, br, dbr);
    for (int t = 0; t < 30; ++t) {
      const Mat<S> ar = (0.5 * r.normal<double>(k, in)).template cast<S>();
      const Mat<S> gr = (0.5 * r.normal<double>(k, out)).template cast<S>();
      dWr = (gr.transpose() * ar / S(k) + S(0.1) * Wr);
      dbr = gr.colwise().sum().transpose() / S(k);
      REQUIRE(f.record_statistics(lid, ar, gr) == kfopt::Status::Success);
      REQUIRE(f.step() == kfopt::Status::Success);
    }
    Vec<double> out_vec(Wr.size() + br.size());
    out_vec << dense_vec<double>(Wr.template cast<double>()), br.template cast<double>();
    CHECK(f.state().clamped_variances == 0);
    return out_vec;
  };
  const Vec<double> ref = run(double(0), kfopt::KroneckerProjectionMethod::FirstOrder, 1);
  const Vec<double> mine = run(Scalar(0), kfopt::KroneckerProjectionMethod::FirstOrder, 1);
  const Vec<double> exact = run(Scalar(0), kfopt::KroneckerProjectionMethod::Exact, 1);
  const Vec<double> stale = run(Scalar(0), kfopt::KroneckerProjectionMethod::FirstOrder, 5);
  INFO("relative differences to double first-order: this type " << relative_error(mine, ref) << ", exact projection "
                                                                 << relative_error(exact, ref) << ", traces every 5 steps "
                                                                 << relative_error(stale, ref));
  CHECK(relative_error(mine, ref) <= (std::is_same<Scalar, float>::value ? 1e-4 : 1e-14));
  CHECK(relative_error(exact, ref) <= 3e-2);  // per example ε = XD/(1+XD) ≈ 0.3 here
  CHECK(relative_error(stale, ref) <= 1e-2);
  CHECK(mine.allFinite());
}

namespace {

// The previous per-example data update of KroneckerFilter, kept as the reference for the
// batched one: k calls of observe() (rank-1 projections, eq. 24 / 32) in order.
template <typename Scalar>
kfopt::Status observe_one_by_one(kfopt::KroneckerFactoredCovariance<Scalar>& c, const Mat<Scalar>& a,
                                 const Mat<Scalar>& g) {
  Vec<Scalar> x = Vec<Scalar>::Ones(c.input_size());
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    x.head(a.cols()) = a.row(r).transpose();
    const Vec<Scalar> d = g.row(r).transpose();
    const kfopt::Status s = c.observe(x, d);
    if (s != kfopt::Status::Success) return s;
  }
  return kfopt::Status::Success;
}

// Relu-like inputs: nonnegative with a large common mean, so that the observations of a
// batch nearly share a direction (the updates then shrink that direction of Σx many times).
Mat<double> relu_inputs(Rng& rng, Eigen::Index k, Eigen::Index in) {
  return (rng.normal<double>(k, in).array() + 0.7).cwiseMax(0.0).matrix();
}

}  // namespace

TEMPLATE_TEST_CASE("KroneckerFactoredCovariance: observe_batch equals one observe() per example",
                   "[optim][kronecker_filter]", double, float) {
  using Scalar = TestType;
  const double tol = std::is_same<Scalar, float>::value ? 2e-4 : 1e-12;
  Rng rng(53);
  const int in = 40, out = 9, k = 150;  // three chunks of observe_batch (64, 64, 22)
  for (const bool bias : {true, false}) {
    const int n = in + (bias ? 1 : 0);
    kfopt::KroneckerFactoredCovariance<Scalar> batched(n, out, Scalar(0.3)), reference(n, out, Scalar(0.3));
    double worst = 0;
    for (int t = 0; t < 40; ++t) {
      Mat<Scalar> a = (0.3 * relu_inputs(rng, k, in)).template cast<Scalar>();
      Mat<Scalar> g = (2.0 * rng.normal<double>(k, out)).template cast<Scalar>();
      g.row(5).setZero();  // a zero δ is no observation
      if (!bias) a.row(70).setZero();
      REQUIRE(batched.observe_batch(a, g, bias) == kfopt::Status::Success);
      REQUIRE(observe_one_by_one(reference, a, g) == kfopt::Status::Success);
      worst = std::max({worst, relative_error(batched.input_factor(), reference.input_factor()),
                        relative_error(batched.output_factor(), reference.output_factor())});
      REQUIRE(batched.drift(Scalar(0.999), Scalar(0.01)) == kfopt::Status::Success);
      REQUIRE(reference.drift(Scalar(0.999), Scalar(0.01)) == kfopt::Status::Success);
      batched.balance();
      reference.balance();
    }
    INFO("bias " << bias << ": largest relative difference of a factor over 40 batches " << worst);
    CHECK(worst <= tol);
    CHECK(batched.input_factor() == batched.input_factor().transpose());
  }
  // Exact projection: the batch is the per-example loop.
  kfopt::KroneckerFactoredCovariance<Scalar> e1(4, 3, Scalar(1), kfopt::KroneckerProjectionMethod::Exact),
      e2(4, 3, Scalar(1), kfopt::KroneckerProjectionMethod::Exact);
  const Mat<Scalar> a = (0.3 * rng.normal<double>(6, 3)).template cast<Scalar>();
  const Mat<Scalar> g = (0.3 * rng.normal<double>(6, 3)).template cast<Scalar>();
  REQUIRE(e1.observe_batch(a, g, true) == kfopt::Status::Success);
  REQUIRE(observe_one_by_one(e2, a, g) == kfopt::Status::Success);
  CHECK(e1.input_factor() == e2.input_factor());
  CHECK(e1.output_factor() == e2.output_factor());
  // Shapes and overflow.
  CHECK_THROWS_AS(e1.observe_batch(Mat<Scalar>(6, 4), g, true), kfopt::ShapeError);
  CHECK_THROWS_AS(e1.observe_batch(a, Mat<Scalar>(5, 3), true), kfopt::ShapeError);
  kfopt::KroneckerFactoredCovariance<Scalar> big(3, 2, Scalar(1));
  const Mat<Scalar> huge = Mat<Scalar>::Constant(2, 3, std::numeric_limits<Scalar>::max() / Scalar(4));
  CHECK(big.observe_batch(huge, Mat<Scalar>::Ones(2, 2)) == kfopt::Status::NumericalIssue);
  CHECK(big.input_factor() == Mat<Scalar>::Identity(3, 3));
}

TEST_CASE("KroneckerFilter: 300 steps equal the per-example reference filter to 1e-12",
          "[optim][kronecker_filter]") {
  // Two layers (with and without bias), k = 100 examples per step (two chunks), drift with
  // the traces refreshed every 3 predictions, parameter-dependent gradients. The reference
  // is the filter's previous step written with the covariance's public per-example API:
  // observe() per example, multiply(), drift(), balance().
  using Cov = kfopt::KroneckerFactoredCovariance<double>;
  const int in1 = 30, out1 = 12, out2 = 5, k = 100, steps = 300;
  const double eta = 2e-3, sigma2 = 1.0;
  Rng rng(61);
  Mat<double> W1 = 0.1 * rng.normal<double>(out1, in1), dW1(out1, in1);
  Vec<double> b1 = Vec<double>::Zero(out1), db1(out1);
  Mat<double> W2 = 0.1 * rng.normal<double>(out2, out1), dW2(out2, out1);
  kfopt::KroneckerFilterOptions o = kfopt::KroneckerFilterOptions::whitening(eta, sigma2);
  o.initial_variance = 1e-3;
  o.trace_period = 3;
  kfopt::KroneckerFilter<double> filter(o);
  const auto id1 = filter.add_dense_layer("fc1", W1, dW1, b1, db1);
  const auto id2 = filter.add_dense_layer("fc2", W2, dW2);
  // Reference state.
  Mat<double> R1 = W1, R2 = W2;
  Vec<double> c1 = b1;
  Cov cov1(in1 + 1, out1, 1e-3), cov2(out1, out2, 1e-3);
  const double keep = 1.0 - eta * eta / (2.0 * sigma2);
  double worst = 0;
  for (int t = 0; t < steps; ++t) {
    const Mat<double> a1 = relu_inputs(rng, k, in1);
    const Mat<double> g1 = 30.0 * rng.normal<double>(k, out1), g2 = 30.0 * rng.normal<double>(k, out2);
    const Mat<double> a2 = relu_inputs(rng, k, out1);
    const Mat<double> noise1 = rng.normal<double>(out1, in1), noise2 = rng.normal<double>(out2, out1);
    const Vec<double> noise_b = rng.normal<double>(out1, 1);
    // Gradients of the mean loss, depending on the parameters (so differences propagate).
    dW1 = 0.01 * noise1 + 0.05 * W1;
    db1 = 0.01 * noise_b + 0.05 * b1;
    dW2 = 0.01 * noise2 + 0.05 * W2;
    REQUIRE(filter.record_statistics(id1, a1, g1) == kfopt::Status::Success);
    REQUIRE(filter.record_statistics(id2, a2, g2) == kfopt::Status::Success);
    REQUIRE(filter.step() == kfopt::Status::Success);
    // The reference step: update (observe per example, mean step), then predict.
    {
      REQUIRE(observe_one_by_one(cov1, a1, g1) == kfopt::Status::Success);
      REQUIRE(observe_one_by_one(cov2, a2, g2) == kfopt::Status::Success);
      Mat<double> G1(out1, in1 + 1), D1, D2;
      G1 << -k * (0.01 * noise1 + 0.05 * R1), -k * (0.01 * noise_b + 0.05 * c1);
      const Mat<double> G2 = -k * (0.01 * noise2 + 0.05 * R2);
      cov1.multiply(G1, D1);
      cov2.multiply(G2, D2);
      R1 += D1.leftCols(in1);
      c1 += D1.col(in1);
      R2 += D2;
      cov1.balance();
      cov2.balance();
      const bool refresh = t % 3 == 0;
      REQUIRE(cov1.drift(keep, eta, refresh) == kfopt::Status::Success);
      REQUIRE(cov2.drift(keep, eta, refresh) == kfopt::Status::Success);
      cov1.balance();
      cov2.balance();
      R1 *= keep;
      c1 *= keep;
      R2 *= keep;
    }
    worst = std::max({worst, relative_error(W1, R1), relative_error(b1, c1), relative_error(W2, R2),
                      relative_error(filter.covariance(id1).input_factor(), cov1.input_factor()),
                      relative_error(filter.covariance(id1).output_factor(), cov1.output_factor()),
                      relative_error(filter.covariance(id2).input_factor(), cov2.input_factor()),
                      relative_error(filter.covariance(id2).output_factor(), cov2.output_factor())});
  }
  INFO("largest relative difference over " << steps << " steps: " << worst);
  CHECK(worst <= 1e-12);
  CHECK(filter.state().clamped_variances == 0);
}
