// Exponential-family observation models: gradient against finite differences of the loss,
// Fisher against the expectation of the outer product of the gradient under the model's
// own distribution (an explicit sum over outcomes, truncated for Poisson), mean and
// statistic covariance against moments of T(y), the canonical/mean-link identities, the
// saturated edge cases, and bad targets.
#include <catch2/catch.hpp>
#include <kfopt/filter/observation_models.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;
using kfopt::ObservationLink;

namespace {

template <typename Scalar>
struct FdTolerance;
template <>
struct FdTolerance<double> {
  static constexpr double step = 1e-5, tol = 1e-6;
};
template <>
struct FdTolerance<float> {
  static constexpr float step = 1e-2f, tol = 2e-2f;
};

// Central differences of the loss in z, computed in the model's own scalar type.
template <typename Model>
Vec<typename Model::Scalar> fd_gradient(const Model& model, const Vec<typename Model::Scalar>& z,
                                        const typename Model::Target& y) {
  using Scalar = typename Model::Scalar;
  const Scalar h = FdTolerance<Scalar>::step;
  Vec<Scalar> out(z.size());
  for (Eigen::Index i = 0; i < z.size(); ++i) {
    Vec<Scalar> zp = z, zm = z;
    zp(i) += h;
    zm(i) -= h;
    out(i) = (model.loss(zp, y) - model.loss(zm, y)) / (2 * h);
  }
  return out;
}

// Moments under the model, from an explicit list of outcomes with probability e^{−ℓ}.
template <typename Model>
struct Moments {
  double total_probability = 0;
  Mat<double> fisher, mean_T, second_T;
};

template <typename Model>
Moments<Model> enumerate(const Model& model, const Vec<typename Model::Scalar>& z,
                         const std::vector<typename Model::Target>& outcomes) {
  using Scalar = typename Model::Scalar;
  const Eigen::Index k = model.output_dim();
  Moments<Model> m;
  m.fisher = Mat<double>::Zero(k, k);
  m.mean_T = Mat<double>::Zero(k, 1);
  m.second_T = Mat<double>::Zero(k, k);
  Vec<Scalar> grad(k), T(k);
  for (const auto& y : outcomes) {
    const double p = std::exp(-static_cast<double>(model.loss(z, y)));
    REQUIRE(model.loss_gradient(z, y, grad));
    model.sufficient_statistic(y, T);
    const Vec<double> gd = grad.template cast<double>();
    const Vec<double> Td = T.template cast<double>();
    m.total_probability += p;
    m.fisher += p * gd * gd.transpose();
    m.mean_T += p * Td;
    m.second_T += p * Td * Td.transpose();
  }
  return m;
}

template <typename Model>
void check_model_against_its_distribution(const Model& model, const Vec<typename Model::Scalar>& z,
                                          const std::vector<typename Model::Target>& outcomes,
                                          double tol) {
  using Scalar = typename Model::Scalar;
  const Eigen::Index k = model.output_dim();
  const Moments<Model> m = enumerate(model, z, outcomes);
  CHECK(std::abs(m.total_probability - 1.0) <= tol);
  Mat<Scalar> F(k, k), B(model.factor_rows(), k), R(k, k);
  Vec<Scalar> yhat(k);
  model.fisher(z, F);
  REQUIRE(model.fisher_factor(z, B));
  model.mean(z, yhat);
  model.statistic_covariance(yhat, R);
  CHECK(relative_error(F.template cast<double>(), m.fisher) <= tol);
  CHECK(relative_error((B.transpose() * B).template cast<double>().eval(), F.template cast<double>()) <= tol);
  CHECK(relative_error(yhat.template cast<double>(), m.mean_T) <= tol);
  const Mat<double> cov_T = m.second_T - m.mean_T * m.mean_T.transpose();
  CHECK(relative_error(R.template cast<double>(), cov_T) <= tol);
  // Key identities of the mean form (Ollivier 2018, "Setting"): the gradient in z is
  // ŷ − T(y) for the canonical link and −R⁻¹ (T(y) − ŷ) for the mean link.
  Vec<Scalar> grad(k), T(k);
  for (const auto& y : outcomes) {
    REQUIRE(model.loss_gradient(z, y, grad));
    model.sufficient_statistic(y, T);
    const Vec<double> innovation = (T - yhat).template cast<double>();
    const Vec<double> expected = Model::link == ObservationLink::Canonical
                                     ? Vec<double>(-innovation)
                                     : Vec<double>(-dense_inverse<double>(R.template cast<double>()) * innovation);
    CHECK(relative_error(grad.template cast<double>(), expected) <= tol);
    // Gradient against finite differences of the loss (relative, floored at 1: the
    // gradient vanishes where T(y) = ŷ).
    const Vec<Scalar> fd = fd_gradient(model, z, y);
    CHECK(static_cast<double>((grad - fd).norm()) <=
          FdTolerance<Scalar>::tol * std::max(1.0, static_cast<double>(fd.norm())));
  }
}

template <typename Scalar>
std::vector<Scalar> counts_up_to(int n) {
  std::vector<Scalar> out;
  for (int i = 0; i <= n; ++i) out.push_back(static_cast<Scalar>(i));
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("Bernoulli: gradient, Fisher, mean and R against the distribution",
                   "[filter][observation]", float, double) {
  const double tol = 100 * Tolerance<TestType>::dense;
  for (double zd : {-2.5, -0.3, 0.0, 0.7, 3.0}) {
    Vec<TestType> z(1);
    z(0) = static_cast<TestType>(zd);
    check_model_against_its_distribution(kfopt::BernoulliObservation<TestType>(), z,
                                         {TestType(0), TestType(1)}, tol);
    Vec<TestType> p(1);
    p(0) = static_cast<TestType>(1.0 / (1.0 + std::exp(-zd)));
    check_model_against_its_distribution(
        kfopt::BernoulliObservation<TestType, ObservationLink::Mean>(), p,
        {TestType(0), TestType(1)}, tol);
  }
}

TEMPLATE_TEST_CASE("Categorical: gradient, Fisher, mean and R against the distribution",
                   "[filter][observation]", float, double) {
  Rng rng(5);
  const kfopt::CategoricalObservation<TestType> model(4);
  for (int trial = 0; trial < 4; ++trial) {
    const Vec<TestType> z = rng.normal<TestType>(4, 1) * TestType(1.5);
    check_model_against_its_distribution(model, z, {0, 1, 2, 3}, 100 * Tolerance<TestType>::dense);
  }
}

TEMPLATE_TEST_CASE("Poisson: gradient, Fisher, mean and R against a truncated sum",
                   "[filter][observation]", float, double) {
  // The tail beyond 60 counts has probability < 1e-30 for these rates.
  for (double rate : {0.2, 1.0, 4.5, 9.0}) {
    Vec<TestType> z(1);
    z(0) = static_cast<TestType>(std::log(rate));
    check_model_against_its_distribution(kfopt::PoissonObservation<TestType>(), z,
                                         counts_up_to<TestType>(60), 200 * Tolerance<TestType>::dense);
    Vec<TestType> lambda(1);
    lambda(0) = static_cast<TestType>(rate);
    check_model_against_its_distribution(
        kfopt::PoissonObservation<TestType, ObservationLink::Mean>(), lambda,
        counts_up_to<TestType>(60), 200 * Tolerance<TestType>::dense);
  }
}

TEMPLATE_TEST_CASE("Gaussian: gradient by finite differences, Fisher = Hessian = Σ⁻¹",
                   "[filter][observation]", float, double) {
  Rng rng(6);
  const Mat<TestType> Sigma = rng.spd<TestType>(3, 0.5, 2.0);
  const kfopt::GaussianObservation<TestType> model(Sigma);
  const Vec<TestType> z = rng.normal<TestType>(3, 1);
  const Vec<TestType> y = rng.normal<TestType>(3, 1);
  Vec<TestType> grad(3);
  REQUIRE(model.loss_gradient(z, y, grad));
  CHECK(relative_error(grad, fd_gradient(model, z, typename kfopt::GaussianObservation<TestType>::Target(y))) <=
        FdTolerance<TestType>::tol);
  const Mat<double> Sinv = dense_inverse<double>(Sigma.template cast<double>());
  CHECK(relative_error(grad.template cast<double>(),
                       (Sinv * (z - y).template cast<double>()).eval()) <= Tolerance<TestType>::dense * 10);
  // The loss is quadratic: its Hessian (by differences of the analytic gradient) is Σ⁻¹,
  // which must equal the model Fisher.
  Mat<TestType> F(3, 3), B(3, 3), hess(3, 3);
  model.fisher(z, F);
  REQUIRE(model.fisher_factor(z, B));
  for (Eigen::Index j = 0; j < 3; ++j) {
    Vec<TestType> zp = z, gp(3);
    zp(j) += TestType(1);
    model.loss_gradient(zp, y, gp);
    hess.col(j) = gp - grad;
  }
  CHECK(relative_error(F.template cast<double>(), Sinv) <= 10 * Tolerance<TestType>::dense);
  CHECK(relative_error(hess.template cast<double>(), Sinv) <= 10 * Tolerance<TestType>::dense);
  CHECK(relative_error((B.transpose() * B).eval(), F) <= 10 * Tolerance<TestType>::dense);
  // e^{−ℓ} is the normal density: check it at one point against the closed form.
  const double q = ((y - z).template cast<double>().transpose() * Sinv * (y - z).template cast<double>())(0);
  const double log_det = std::log(Sigma.template cast<double>().determinant());
  const double expected = 0.5 * q + 0.5 * (3 * std::log(2 * 3.14159265358979323846) + log_det);
  CHECK(std::abs(static_cast<double>(model.loss(z, y)) - expected) <= 10 * Tolerance<TestType>::dense * std::abs(expected));
}

TEMPLATE_TEST_CASE("saturated Bernoulli logits stay finite and exact", "[filter][observation]",
                   float, double) {
  const kfopt::BernoulliObservation<TestType> model;
  for (double zd : {-40.0, 40.0, -100.0, 100.0}) {
    Vec<TestType> z(1), grad(1);
    z(0) = static_cast<TestType>(zd);
    Mat<TestType> F(1, 1), B(1, 1);
    model.fisher(z, F);
    REQUIRE(model.fisher_factor(z, B));
    CHECK(std::isfinite(F(0, 0)));
    CHECK(std::isfinite(B(0, 0)));
    CHECK(F(0, 0) >= 0);
    // p(1−p) = e^{−|z|} / (1 + e^{−|z|})² to relative accuracy, never 0 − 0 cancellation.
    const double expected = std::exp(-std::abs(zd)) / std::pow(1 + std::exp(-std::abs(zd)), 2);
    if (expected > 1e-30) {
      CHECK(std::abs(static_cast<double>(F(0, 0)) - expected) <= 1e-5 * expected);
    }
    for (TestType y : {TestType(0), TestType(1)}) {
      REQUIRE(model.loss_gradient(z, y, grad));
      CHECK(std::isfinite(grad(0)));
      CHECK(std::isfinite(model.loss(z, y)));
      // p − y in closed form: the losing side has a gradient of size ~1, the winning side
      // e^{−|z|}, computed without cancellation.
      const double p = 1.0 / (1.0 + std::exp(-zd));
      const double exact = (y == 1) ? -1.0 / (1.0 + std::exp(zd)) : p;
      // (in float, e^{−100} is below the normal range and is allowed to flush)
      const double floor = sizeof(TestType) == sizeof(float) ? 1e-30 : 1e-300;
      CHECK(std::abs(static_cast<double>(grad(0)) - exact) <= 1e-5 * std::max(std::abs(exact), floor));
    }
  }
}

TEMPLATE_TEST_CASE("near-one-hot softmax stays finite and keeps Bᵀ B = diag(p) − p pᵀ",
                   "[filter][observation]", float, double) {
  const kfopt::CategoricalObservation<TestType> model(4);
  Vec<TestType> z(4);
  z << TestType(40), TestType(0), TestType(-40), TestType(3);
  Mat<TestType> F(4, 4), B(4, 4);
  Vec<TestType> grad(4);
  model.fisher(z, F);
  REQUIRE(model.fisher_factor(z, B));
  CHECK(F.allFinite());
  CHECK(B.allFinite());
  // Reference in long double, with p_i (1 − p_i) written as p_i Σ_{l≠i} p_l (1 − p_0 is
  // ~e^{−37}, below even long double's resolution of 1).
  Eigen::Matrix<long double, 4, 1> p;
  long double s = 0;
  for (int i = 0; i < 4; ++i) s += std::exp(static_cast<long double>(z(i)) - 40.0L);
  for (int i = 0; i < 4; ++i) p(i) = std::exp(static_cast<long double>(z(i)) - 40.0L) / s;
  const long double floor = sizeof(TestType) == sizeof(float) ? 1e-30L : 1e-300L;
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      long double others = 0;
      for (int l = 0; l < 4; ++l) others += (l == i) ? 0.0L : p(l);
      const long double exact = (i == j) ? p(i) * others : -p(i) * p(j);
      const long double scale = std::max(std::abs(exact), floor);
      CHECK(static_cast<double>(std::abs(static_cast<long double>(F(i, j)) - exact) / scale) <= 1e-4);
    }
  }
  // The dominant class: p(1−p) ~ e^{−37}, which 1 − p would round to 0 in float.
  CHECK(F(0, 0) > 0);
  CHECK(relative_error((B.transpose() * B).eval(), F) <= 1e-3);
  for (Eigen::Index y = 0; y < 4; ++y) {
    REQUIRE(model.loss_gradient(z, y, grad));
    CHECK(grad.allFinite());
    CHECK(std::isfinite(model.loss(z, y)));
  }
}

TEMPLATE_TEST_CASE("linearize_observation: Gᵀ G = Jᵀ F_z J, score = −Jᵀ ∂ℓ/∂z, both links agree",
                   "[filter][observation]", float, double) {
  Rng rng(7);
  const Eigen::Index d = 5;
  const double tol = 50 * Tolerance<TestType>::dense;
  // Categorical, model Fisher and empirical Fisher.
  {
    const kfopt::CategoricalObservation<TestType> model(3);
    const Vec<TestType> z = rng.normal<TestType>(3, 1);
    const Mat<TestType> J = rng.normal<TestType>(3, d);
    kfopt::LinearizedObservation<TestType> lin;
    REQUIRE(kfopt::linearize_observation("test", model, z, J, Eigen::Index(2),
                                         kfopt::FisherKind::Model, lin) == kfopt::Status::Success);
    Mat<TestType> Fz(3, 3);
    Vec<TestType> gz(3);
    model.fisher(z, Fz);
    model.loss_gradient(z, 2, gz);
    const Mat<double> Jd = J.template cast<double>();
    CHECK(relative_error((lin.factor_t * lin.factor_t.transpose()).template cast<double>().eval(),
                         (Jd.transpose() * Fz.template cast<double>() * Jd).eval()) <= tol);
    CHECK(relative_error(lin.score.template cast<double>(),
                         (-(Jd.transpose() * gz.template cast<double>())).eval()) <= tol);
    CHECK(lin.loss == Approx(model.loss(z, 2)));
    REQUIRE(kfopt::linearize_observation("test", model, z, J, Eigen::Index(2),
                                         kfopt::FisherKind::Empirical, lin) == kfopt::Status::Success);
    REQUIRE(lin.factor_t.cols() == 1);
    CHECK(relative_error(lin.factor_t.col(0).template cast<double>(),
                         (Jd.transpose() * gz.template cast<double>()).eval()) <= tol);
  }
  // Bernoulli and Poisson: the canonical link with J and the mean link with
  // H = dŷ/dz · J give the same information and score (H = R · J, Hᵀ R⁻¹ H = Jᵀ R J).
  {
    const Vec<TestType> J = rng.normal<TestType>(d, 1);
    const Mat<TestType> Jrow = J.transpose();
    Vec<TestType> z(1), p(1);
    z(0) = TestType(0.8);
    p(0) = TestType(1 / (1 + std::exp(-0.8)));
    const Mat<TestType> H = Jrow * (p(0) * (1 - p(0)));
    kfopt::LinearizedObservation<TestType> a, b;
    REQUIRE(kfopt::linearize_observation("test", kfopt::BernoulliObservation<TestType>(), z, Jrow,
                                         TestType(1), kfopt::FisherKind::Model, a) == kfopt::Status::Success);
    REQUIRE(kfopt::linearize_observation("test", kfopt::BernoulliObservation<TestType, ObservationLink::Mean>(),
                                         p, H, TestType(1), kfopt::FisherKind::Model, b) == kfopt::Status::Success);
    CHECK(relative_error((a.factor_t * a.factor_t.transpose()).eval(), (b.factor_t * b.factor_t.transpose()).eval()) <= tol);
    CHECK(relative_error(a.score, b.score) <= tol);
    CHECK(a.loss == Approx(b.loss).epsilon(1e-4));

    Vec<TestType> lam(1);
    lam(0) = std::exp(z(0));
    const Mat<TestType> Hp = Jrow * lam(0);
    REQUIRE(kfopt::linearize_observation("test", kfopt::PoissonObservation<TestType>(), z, Jrow,
                                         TestType(3), kfopt::FisherKind::Model, a) == kfopt::Status::Success);
    REQUIRE(kfopt::linearize_observation("test", kfopt::PoissonObservation<TestType, ObservationLink::Mean>(),
                                         lam, Hp, TestType(3), kfopt::FisherKind::Model, b) == kfopt::Status::Success);
    CHECK(relative_error((a.factor_t * a.factor_t.transpose()).eval(), (b.factor_t * b.factor_t.transpose()).eval()) <= tol);
    CHECK(relative_error(a.score, b.score) <= tol);
  }
}

TEST_CASE("observation models reject bad targets and flag undefined mean-form points",
          "[filter][observation][errors]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const kfopt::BernoulliObservation<double> bern;
  CHECK_THROWS_AS(bern.check_target("op", 0.5), kfopt::InvalidInputError);
  CHECK_THROWS_AS(bern.check_target("op", 2.0), kfopt::InvalidInputError);
  CHECK(bern.check_target("op", nan) == kfopt::Status::NonFiniteInput);
  try {
    bern.check_target("kfopt::ExtendedKalmanFilter::step", 0.5);
  } catch (const kfopt::InvalidInputError& e) {
    CHECK(std::string(e.what()).find("0 or 1") != std::string::npos);
    CHECK(std::string(e.what()).find("ExtendedKalmanFilter::step") != std::string::npos);
  }
  const kfopt::CategoricalObservation<double> cat(3);
  CHECK_THROWS_AS(cat.check_target("op", 3), kfopt::InvalidInputError);
  CHECK_THROWS_AS(cat.check_target("op", -1), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::CategoricalObservation<double>(1), kfopt::InvalidInputError);
  const kfopt::PoissonObservation<double> pois;
  CHECK_THROWS_AS(pois.check_target("op", -1.0), kfopt::InvalidInputError);
  CHECK_THROWS_AS(pois.check_target("op", 2.5), kfopt::InvalidInputError);
  CHECK(pois.check_target("op", std::numeric_limits<double>::infinity()) ==
        kfopt::Status::NonFiniteInput);
  const kfopt::GaussianObservation<double> gauss(2, 0.5);
  Vec<double> y3 = Vec<double>::Zero(3);
  CHECK_THROWS_AS(gauss.check_target("op", y3), kfopt::ShapeError);
  Mat<double> bad(2, 2);
  bad << 1, 2, 2, 1;
  CHECK_THROWS_AS(kfopt::GaussianObservation<double>(bad), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::GaussianObservation<double>(2, -1.0), kfopt::InvalidInputError);

  // Mean links at the boundary of the mean domain: undefined, reported as false.
  Vec<double> z(1), g(1);
  Mat<double> B(1, 1);
  const kfopt::BernoulliObservation<double, ObservationLink::Mean> bern_mean;
  for (double p : {0.0, 1.0, 1.5}) {
    z(0) = p;
    CHECK_FALSE(bern_mean.loss_gradient(z, 1.0, g));
    CHECK_FALSE(bern_mean.fisher_factor(z, B));
  }
  const kfopt::PoissonObservation<double, ObservationLink::Mean> pois_mean;
  z(0) = 0.0;
  CHECK_FALSE(pois_mean.loss_gradient(z, 1.0, g));
  CHECK_FALSE(pois_mean.fisher_factor(z, B));
  // linearize reports them as NumericalIssue, NaN inputs as NonFiniteInput.
  kfopt::LinearizedObservation<double> lin;
  const Mat<double> J = Mat<double>::Ones(1, 3);
  z(0) = 1.0;
  CHECK(kfopt::linearize_observation("op", bern_mean, z, J, 1.0, kfopt::FisherKind::Model, lin) ==
        kfopt::Status::NumericalIssue);
  z(0) = nan;
  CHECK(kfopt::linearize_observation("op", bern, z, J, 1.0, kfopt::FisherKind::Model, lin) ==
        kfopt::Status::NonFiniteInput);
  z(0) = 800.0;  // e^z overflows
  CHECK(kfopt::linearize_observation("op", pois, z, J, 1.0, kfopt::FisherKind::Model, lin) ==
        kfopt::Status::NumericalIssue);
  const Mat<double> Jwrong = Mat<double>::Ones(2, 3);
  z(0) = 0.0;
  CHECK_THROWS_AS(kfopt::linearize_observation("op", bern, z, Jwrong, 1.0, kfopt::FisherKind::Model, lin),
                  kfopt::ShapeError);
}
