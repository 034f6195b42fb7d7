// Filter RMSProp (Aitchison 2018, §2.1.1): the limits the paper claims, checked numerically.
// - η = 0: σ²_post(t) = (1/σ²_prior(1) + Σ e²)⁻¹ and μ_post(t) = μ_post(t−1) + σ²_post g
//   (eq. 13–14);
// - stationary ⟨e²⟩: σ²_post → η/sqrt⟨e²⟩ with a first-order relative error
//   η sqrt⟨e²⟩/2 + η/(2σ² sqrt⟨e²⟩), and the fixed-point formula is that steady state;
// - a scalar reference loop written from eq. 9–12 (centered e), the phases of the
//   Nesterov-style API, the prior alone (decay and stationary variance), bad input.
#include <catch2/catch.hpp>
#include <kfopt/optim/bayes_filter/filter_rmsprop.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

template <typename Scalar>
struct FilterTol;
template <>
struct FilterTol<double> {
  static constexpr double rel = 1e-12;
};
template <>
struct FilterTol<float> {
  static constexpr double rel = 2e-5;
};

// One vector parameter of n entries with its gradient, registered in a ParameterSet.
template <typename Scalar>
struct VectorProblem {
  Mat<Scalar> w, dw;
  kfopt::ParameterSet<Scalar> params;
  explicit VectorProblem(Eigen::Index n) : w(Mat<Scalar>::Zero(n, 1)), dw(Mat<Scalar>::Zero(n, 1)) {
    params.add("w", w, dw);
  }
};

// Exact fixed point of eq. 11–12 for a constant e² = c: s_prior = k² s + η², s = s_prior/(1 + s_prior c).
double exact_steady_state(double eta, double sigma2, double c) {
  const double k = 1.0 - eta * eta / (2.0 * sigma2);
  double s = eta / std::sqrt(c);
  for (int i = 0; i < 200; ++i) {  // fixed-point iteration of the map (contracting near s)
    const double prior = k * k * s + eta * eta;
    s = prior / (1.0 + prior * c);
  }
  // Polish with Newton on f(s) = s (1 + (k²s + η²) c) − (k²s + η²).
  for (int i = 0; i < 50; ++i) {
    const double f = s * (1.0 + (k * k * s + eta * eta) * c) - (k * k * s + eta * eta);
    const double df = 1.0 + (k * k * s + eta * eta) * c + s * k * k * c - k * k;
    s -= f / df;
  }
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("FilterRmsProp: eta = 0 is natural gradient, sigma2_post = (1/sigma2(1) + sum e^2)^-1 (eq. 13-14)",
                   "[optim][filter_rmsprop]", double, float) {
  using Scalar = TestType;
  const int n = 5, steps = 300;
  VectorProblem<Scalar> pr(n);
  Rng rng(11);
  pr.w = rng.normal<Scalar>(n, 1);
  auto options = kfopt::FilterRmsPropOptions::natural_gradient(0.7);
  options.fisher = kfopt::FisherEstimate::Supplied;
  kfopt::FilterRmsProp<Scalar> opt(pr.params, options);
  kfopt::BlockBuffers<Scalar> e{Mat<Scalar>(n, 1)};

  Vec<double> precision = Vec<double>::Constant(n, 1.0 / 0.7);  // 1/σ²_prior(1)
  Vec<double> mean = pr.w.template cast<double>();
  double worst_var = 0, worst_mean = 0;
  for (int t = 0; t < steps; ++t) {
    e[0] = rng.normal<Scalar>(n, 1);
    pr.dw = rng.normal<Scalar>(n, 1);
    REQUIRE(opt.update(e) == kfopt::Status::Success);
    for (int i = 0; i < n; ++i) {
      precision(i) += static_cast<double>(e[0](i)) * static_cast<double>(e[0](i));
      const double var = 1.0 / precision(i);                            // eq. 14
      mean(i) = mean(i) - var * static_cast<double>(pr.dw(i));          // eq. 13, g = −∇
      worst_var = std::max(worst_var, std::abs(static_cast<double>(opt.variance()[0](i)) - var) / var);
    }
    worst_mean = std::max(worst_mean, relative_error(pr.w.template cast<double>(), mean));
    REQUIRE(opt.predict() == kfopt::Status::Success);  // η = 0: the identity
  }
  INFO("worst relative error of sigma2_post " << worst_var << ", of mu_post " << worst_mean);
  CHECK(worst_var <= 5 * FilterTol<Scalar>::rel);
  CHECK(worst_mean <= 50 * FilterTol<Scalar>::rel);
  CHECK(opt.state().counters.steps == steps);
  CHECK(opt.state().clamped_variances == 0);
}

TEST_CASE("FilterRmsProp: steady state sigma2_post -> eta/sqrt<e^2> to first order in eta (RMSProp's normalizer)",
          "[optim][filter_rmsprop]") {
  // Constant e² = s² (e alternates ±s), so the recursion converges deterministically.
  for (const double s : {0.5, 3.0}) {
    for (const double sigma2 : {1e8, 10.0}) {
      double previous_error = 0;
      for (const double eta : {1e-2, 1e-3, 1e-4}) {
        VectorProblem<double> pr(1);
        kfopt::FilterRmsPropOptions o;
        o.learning_rate = eta;
        o.prior_variance = sigma2;
        o.initial_variance = 1.0;
        o.fisher = kfopt::FisherEstimate::Supplied;
        kfopt::FilterRmsProp<double> opt(pr.params, o);
        kfopt::BlockBuffers<double> e{Mat<double>(1, 1)};
        const int steps = static_cast<int>(30.0 / (eta * s)) + 100;  // relaxation time 1/(2ηs)
        bool ok = true;
        for (int t = 0; t < steps; ++t) {
          e[0](0) = (t % 2 == 0) ? s : -s;
          ok = ok && opt.update(e) == kfopt::Status::Success;
          if (t + 1 < steps) ok = ok && opt.predict() == kfopt::Status::Success;
        }
        REQUIRE(ok);
        const double post = opt.variance()[0](0);
        const double rmsprop = eta / s;
        const double error = std::abs(post - rmsprop) / rmsprop;
        const double first_order = eta * s / 2 + eta / (2 * sigma2 * s);
        INFO("s = " << s << ", sigma2 = " << sigma2 << ", eta = " << eta << ": sigma2_post = " << post
                    << ", eta/sqrt<e2> = " << rmsprop << ", relative error " << error
                    << " (first-order prediction " << first_order << ")");
        CHECK(post < rmsprop);                                     // both corrections lower it
        CHECK(std::abs(error - first_order) <= 0.05 * first_order + 1e-9);  // error is first order
        CHECK(std::abs(post - exact_steady_state(eta, sigma2, s * s)) <= 1e-10 * post);
        if (previous_error > 0) CHECK(error < 0.15 * previous_error);  // ~10x per 10x in η
        previous_error = error;
      }
    }
  }
}

TEST_CASE("FilterRmsProp: stochastic stationary stream, the mean posterior variance is eta/sqrt<e^2>",
          "[optim][filter_rmsprop]") {
  // e ~ N(0, s²) i.i.d. for 64 independent parameters; the time average of σ²_post over the
  // stationary regime is compared with η/s.
  const int n = 64;
  const double eta = 1e-3, s = 2.0;
  VectorProblem<double> pr(n);
  kfopt::FilterRmsPropOptions o;
  o.learning_rate = eta;
  o.prior_variance = 1e6;
  o.initial_variance = eta / s;
  o.fisher = kfopt::FisherEstimate::Supplied;
  kfopt::FilterRmsProp<double> opt(pr.params, o);
  kfopt::BlockBuffers<double> e{Mat<double>(n, 1)};
  Rng rng(5);
  double sum = 0;
  long count = 0;
  bool ok = true;
  for (int t = 0; t < 6000; ++t) {
    e[0] = s * rng.normal<double>(n, 1);
    ok = ok && opt.step(e) == kfopt::Status::Success;
    if (t >= 2000) {
      // the posterior variance of this step: undo the predict's k² σ² + η² (k = 1 − 5e-13)
      sum += (opt.variance()[0].array() - eta * eta).sum();
      count += n;
    }
  }
  REQUIRE(ok);
  const double mean_post = sum / static_cast<double>(count);
  INFO("time-averaged sigma2_post = " << mean_post << ", eta/s = " << eta / s);
  CHECK(std::abs(mean_post / (eta / s) - 1.0) < 0.02);
}

TEST_CASE("FilterRmsProp: the fixed-point formula is the steady state of the filter with decay",
          "[optim][filter_rmsprop]") {
  // 1/σ²_post = (1/(2σ²))(1 + sqrt(1 + 4σ⁴⟨e²⟩/η²)) solves the SI §4.1 recursion with the
  // decay kept; the exact eq. 11–12 recursion differs from it at relative O(η sqrt⟨e²⟩).
  // The formula depends on r = 2σ² sqrt⟨e²⟩/η only (SGD regime r ≪ 1, RMSProp regime
  // r ≫ 1), so σ² is scaled with η to hold r fixed while η → 0.
  for (const double r : {0.1, 1.0, 10.0}) {
    for (const double c : {1e-2, 1.0, 1e2}) {
      double previous = 0;
      for (const double eta : {1e-2, 1e-3, 1e-4}) {
        const double sigma2 = r * eta / (2 * std::sqrt(c));
        const double fp = kfopt::fixed_point_posterior_variance(sigma2, eta, c);
        const double exact = exact_steady_state(eta, sigma2, c);
        const double error = std::abs(fp - exact) / exact;
        INFO("r = " << r << ", <e2> = " << c << ", eta = " << eta << ", sigma2 = " << sigma2
                    << ": fixed point " << fp << ", exact steady state " << exact
                    << ", relative difference " << error);
        // A = η²/(2σ²) = η sqrt⟨e²⟩/r: the neglected decay terms are O(A) relative.
        CHECK(error <= eta * std::sqrt(c) * (1 + 1 / r) + eta / std::sqrt(c) / r);
        if (previous > 0) CHECK(error == Approx(0.1 * previous).epsilon(0.1));  // first order in η
        previous = error;
      }
    }
  }
  // The two limits of the formula.
  CHECK(kfopt::fixed_point_posterior_variance(1e-6, 1.0, 1.0) == Approx(1e-6).epsilon(1e-10));  // SGD: σ²
  CHECK(kfopt::fixed_point_posterior_variance(1e8, 1e-3, 4.0) == Approx(1e-3 / 2.0).epsilon(1e-6));  // η/sqrt⟨e²⟩
  CHECK(kfopt::fixed_point_posterior_variance(1.0, 1e-3, 0.0) == 1.0);
  CHECK(std::isfinite(kfopt::fixed_point_posterior_variance(1e30, 1e-30, 1e300)));
}

TEMPLATE_TEST_CASE("FilterRmsProp: centered e and decay match a scalar loop written from eq. 9-12",
                   "[optim][filter_rmsprop]", double, float) {
  using Scalar = TestType;
  Rng rng(23);
  const Mat<double> W0 = rng.normal<double>(3, 2), b0 = rng.normal<double>(3, 1);
  const Mat<double> G0 = rng.normal<double>(3, 2), H0 = rng.normal<double>(3, 1);
  Mat<Scalar> W = W0.cast<Scalar>(), dW(3, 2);
  Vec<Scalar> b = b0.cast<Scalar>(), db(3);
  kfopt::ParameterSet<Scalar> params;
  params.add("W", W, dW);
  params.add("b", b, db);
  kfopt::FilterRmsPropOptions o;
  o.learning_rate = 0.05;
  o.prior_variance = 0.2;
  o.initial_variance = 0.3;
  o.fisher = kfopt::FisherEstimate::Centered;
  o.centering_decay = 0.8;
  kfopt::FilterRmsProp<Scalar> opt(params, o);

  // Reference: one scalar at a time, in double; gradients depend on the parameters.
  std::vector<double> mu(9), var(9, 0.3), avg(9, 0.0);
  for (int i = 0; i < 6; ++i) mu[i] = W0(i);
  for (int i = 0; i < 3; ++i) mu[6 + i] = b0(i);
  const double k = 1.0 - 0.05 * 0.05 / (2 * 0.2);
  double weight = 0;
  for (int t = 0; t < 80; ++t) {
    const Mat<double> Wd = W.template cast<double>();
    const Vec<double> bd = b.template cast<double>();
    dW = (G0 * std::cos(t) + 0.4 * Wd).template cast<Scalar>();
    db = (H0 * std::sin(t) + 0.4 * bd).template cast<Scalar>();
    std::vector<double> grad(9);
    for (int i = 0; i < 6; ++i) grad[i] = G0(i) * std::cos(t) + 0.4 * mu[i];
    for (int i = 0; i < 3; ++i) grad[6 + i] = H0(i) * std::sin(t) + 0.4 * mu[6 + i];
    weight = 0.8 * weight + 1.0;
    for (int i = 0; i < 9; ++i) {
      const double e = grad[i] - avg[i];               // centered gradient
      avg[i] += (grad[i] - avg[i]) / weight;            // bias-corrected average
      const double prior = var[i];
      var[i] = prior * (1.0 - prior * e * e / (1.0 + prior * e * e));  // eq. 12
      mu[i] = mu[i] - var[i] * grad[i];                                 // eq. 10, g = −∇
      mu[i] = k * mu[i];                                                // eq. 9
      var[i] = k * k * var[i] + 0.05 * 0.05;                            // eq. 11
    }
    REQUIRE(opt.step() == kfopt::Status::Success);
  }
  Vec<double> got(9), want(9), got_var(9), want_var(9);
  for (int i = 0; i < 6; ++i) {
    got(i) = W(i);
    got_var(i) = opt.variance()[0](i);
  }
  for (int i = 0; i < 3; ++i) {
    got(6 + i) = b(i);
    got_var(6 + i) = opt.variance()[1](i);
  }
  for (int i = 0; i < 9; ++i) {
    want(i) = mu[i];
    want_var(i) = var[i];
  }
  INFO("parameters: relative error " << relative_error(got, want) << "; variances: "
                                     << relative_error(got_var, want_var));
  CHECK(relative_error(got, want) <= 1e3 * FilterTol<TestType>::rel);
  CHECK(relative_error(got_var, want_var) <= 1e3 * FilterTol<TestType>::rel);
}

TEST_CASE("FilterRmsProp: update and predict phases, and step = update then predict",
          "[optim][filter_rmsprop]") {
  Rng rng(3);
  VectorProblem<double> a(4), b(4);
  a.w = b.w = rng.normal<double>(4, 1);
  kfopt::FilterRmsPropOptions o;
  o.learning_rate = 0.1;
  o.prior_variance = 0.5;
  kfopt::FilterRmsProp<double> fa(a.params, o), fb(b.params, o);
  CHECK(fa.phase() == kfopt::FilterPhase::Prior);
  CHECK_THROWS_AS(fa.predict(), kfopt::InvalidInputError);
  for (int t = 0; t < 5; ++t) {
    a.dw = b.dw = rng.normal<double>(4, 1);
    REQUIRE(fa.update() == kfopt::Status::Success);
    CHECK(fa.phase() == kfopt::FilterPhase::Posterior);
    CHECK_THROWS_AS(fa.update(), kfopt::InvalidInputError);
    const Mat<double> post = a.w;
    const Mat<double> var = fa.variance()[0];
    REQUIRE(fa.predict() == kfopt::Status::Success);
    const double k = 1.0 - 0.01 / 1.0;
    CHECK((a.w - k * post).cwiseAbs().maxCoeff() == 0.0);  // μ_prior = (1 − η²/(2σ²)) μ_post
    CHECK((fa.variance()[0] - (k * k * var.array() + 0.01).matrix()).cwiseAbs().maxCoeff() <= 1e-16);
    REQUIRE(fb.step() == kfopt::Status::Success);
    CHECK(a.w == b.w);
    CHECK(fa.variance()[0] == fb.variance()[0]);
  }
  // Supplied e needs the overload with e, and the others the overload without.
  auto os = o;
  os.fisher = kfopt::FisherEstimate::Supplied;
  kfopt::FilterRmsProp<double> fs(a.params, os);
  CHECK_THROWS_AS(fs.update(), kfopt::InvalidInputError);
  kfopt::BlockBuffers<double> e{Mat<double>::Ones(4, 1)};
  CHECK_THROWS_AS(fa.update(e), kfopt::InvalidInputError);
  kfopt::BlockBuffers<double> wrong{Mat<double>::Ones(3, 1)};
  CHECK_THROWS_AS(fs.update(wrong), kfopt::ShapeError);
  CHECK(fs.update(e) == kfopt::Status::Success);
}

TEST_CASE("FilterRmsProp: the prior alone decays the weights and keeps the stationary variance",
          "[optim][filter_rmsprop]") {
  // With e = 0 and ∇ = 0 only the drift acts: μ ← k μ (decoupled weight decay, eq. 9) and
  // σ² → η²/(1 − k²) = σ²/(1 − A/2), the stationary variance of eq. 8.
  VectorProblem<double> pr(3);
  pr.w << 1.0, -2.0, 0.5;
  const Mat<double> w0 = pr.w;
  kfopt::FilterRmsPropOptions o;
  o.learning_rate = 0.2;
  o.prior_variance = 0.4;
  o.initial_variance = 3.0;
  o.fisher = kfopt::FisherEstimate::Supplied;
  kfopt::FilterRmsProp<double> opt(pr.params, o);
  kfopt::BlockBuffers<double> e{Mat<double>::Zero(3, 1)};
  const double A = 0.04 / 0.8, k = 1.0 - A;
  const int T = 400;
  bool ok = true;
  for (int t = 0; t < T; ++t) ok = ok && opt.step(e) == kfopt::Status::Success;
  REQUIRE(ok);
  CHECK(relative_error(pr.w, (std::pow(k, T) * w0).eval()) < 1e-12);
  const double stationary = 0.04 / (1.0 - k * k);
  CHECK(opt.variance()[0](0) == Approx(stationary).epsilon(1e-9));
  CHECK(stationary == Approx(0.4 / (1.0 - A / 2)).epsilon(1e-12));
}

TEMPLATE_TEST_CASE("FilterRmsProp: bad input is rejected or skipped with the state unchanged",
                   "[optim][filter_rmsprop]", double, float) {
  using Scalar = TestType;
  VectorProblem<Scalar> pr(3);
  auto bad = [&](auto mutate, const char* field) {
    kfopt::FilterRmsPropOptions o;
    mutate(o);
    CHECK_THROWS_AS(kfopt::FilterRmsProp<Scalar>(pr.params, o), kfopt::HyperparameterError);
    CHECK_THROWS_WITH(kfopt::FilterRmsProp<Scalar>(pr.params, o), Catch::Contains(field));
  };
  bad([](auto& o) { o.prior_variance = 0.0; }, "prior_variance");
  bad([](auto& o) { o.prior_variance = -1.0; }, "prior_variance");
  bad([](auto& o) { o.prior_variance = std::numeric_limits<double>::quiet_NaN(); }, "prior_variance");
  bad([](auto& o) { o.prior_variance = std::numeric_limits<double>::infinity(); }, "prior_variance");
  bad([](auto& o) { o.learning_rate = -1e-3; }, "learning_rate");
  bad([](auto& o) { o.learning_rate = std::numeric_limits<double>::quiet_NaN(); }, "learning_rate");
  bad([](auto& o) { o.learning_rate = 1.0; o.prior_variance = 0.4; }, "learning_rate");  // η² > 2σ²
  bad([](auto& o) { o.initial_variance = -1.0; }, "initial_variance");
  bad([](auto& o) { o.centering_decay = 1.0; }, "centering_decay");

  kfopt::FilterRmsPropOptions o;
  o.fisher = kfopt::FisherEstimate::Centered;
  kfopt::FilterRmsProp<Scalar> opt(pr.params, o);
  pr.dw << Scalar(1), Scalar(-2), Scalar(0.5);
  REQUIRE(opt.step() == kfopt::Status::Success);
  const Mat<Scalar> w = pr.w;
  const auto state = opt.state();
  pr.dw(1) = std::numeric_limits<Scalar>::quiet_NaN();
  CHECK(opt.update() == kfopt::Status::NonFiniteInput);
  CHECK(opt.step() == kfopt::Status::NonFiniteInput);
  CHECK(pr.w == w);
  CHECK(opt.variance()[0] == state.variance[0]);
  CHECK(opt.state().gradient_average[0] == state.gradient_average[0]);
  CHECK(opt.state().centering_weight == state.centering_weight);
  CHECK(opt.phase() == kfopt::FilterPhase::Prior);
  CHECK(opt.state().counters.skipped_nonfinite == 2);
  CHECK(opt.state().counters.steps == 1);

  // A supplied e with Inf is skipped the same way; an enormous one pins the variance at 0
  // instead of producing a NaN.
  kfopt::FilterRmsPropOptions os;
  os.fisher = kfopt::FisherEstimate::Supplied;
  kfopt::FilterRmsProp<Scalar> fs(pr.params, os);
  pr.dw.setConstant(Scalar(1));
  kfopt::BlockBuffers<Scalar> e{Mat<Scalar>::Ones(3, 1)};
  e[0](2) = std::numeric_limits<Scalar>::infinity();
  CHECK(fs.update(e) == kfopt::Status::NonFiniteInput);
  CHECK(fs.state().counters.skipped_nonfinite == 1);
  e[0](2) = std::sqrt(std::numeric_limits<Scalar>::max()) * Scalar(4);  // e² overflows
  REQUIRE(fs.step(e) == kfopt::Status::Success);
  CHECK(fs.variance()[0].allFinite());
  CHECK(pr.w.allFinite());
  CHECK(fs.state().clamped_variances == 0);

  // set_state refuses a negative variance.
  auto s = opt.state();
  s.variance[0](0) = Scalar(-1);
  CHECK_THROWS_AS(opt.set_state(s), kfopt::InvalidInputError);
  s.variance[0].resize(2, 1);
  CHECK_THROWS_AS(opt.set_state(s), kfopt::ShapeError);
}
