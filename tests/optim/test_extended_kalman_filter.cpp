// ExtendedKalmanFilter and OnlineNaturalGradient as optimizers: the exact batch Bayesian
// posterior for a linear-Gaussian model, precision that never decreases without process
// noise, additive process noise against a dense textbook filter, the natural gradient with
// an independent Fisher rate and with the empirical Fisher against dense recursions, the
// predictor overload, float runs, and bad input (exceptions before any change, or a
// skipped step that leaves θ and the state bit-for-bit unchanged).
#include <catch2/catch.hpp>
#include <kfopt/filter/observation_models.hpp>
#include <kfopt/optim/kalman/extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/online_natural_gradient.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

constexpr kfopt::KalmanForm kForms[] = {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Joseph,
                                        kfopt::KalmanForm::Information};

template <typename Scalar>
bool same_bits(const Mat<Scalar>& a, const Mat<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<size_t>(a.size())) == 0;
}
template <typename Scalar>
bool same_bits(const Vec<Scalar>& a, const Vec<Scalar>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<size_t>(a.size())) == 0;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEMPLATE_TEST_CASE("linear-Gaussian model: the filter equals the exact batch posterior",
                   "[optim][ekf]", float, double) {
  // y_t = H_t θ + ε_t, ε ~ N(0, Σ), prior N(m0, P0). The posterior after t observations,
  // computed densely from all of them at once: Λ = P0⁻¹ + Σ_s H_sᵀ Σ⁻¹ H_s,
  // μ = Λ⁻¹ (P0⁻¹ m0 + Σ_s H_sᵀ Σ⁻¹ y_s).
  Rng rng(201);
  const Eigen::Index d = 6, k = 2;
  const int T = 120;
  const Mat<double> Sigma = rng.spd<double>(k, 0.2, 1.0);
  const Mat<double> P0 = rng.spd<double>(d, 0.5, 3.0);
  const Vec<double> m0 = rng.normal<double>(d, 1);
  const Vec<double> truth = rng.normal<double>(d, 1);
  std::vector<Mat<double>> H;
  std::vector<Vec<double>> Y;
  for (int t = 0; t < T; ++t) {
    H.push_back(rng.normal<double>(k, d));
    const Mat<double> C = Eigen::LLT<Mat<double>>(Sigma).matrixL();
    Y.push_back(H.back() * truth + C * rng.normal<double>(k, 1));
  }
  using Model = kfopt::GaussianObservation<TestType>;
  for (kfopt::KalmanForm form : kForms) {
    kfopt::ExtendedKalmanFilterHyperparameters<TestType> hp;
    hp.form = form;
    kfopt::ExtendedKalmanFilter<Model> ekf(Model(Sigma.template cast<TestType>()),
                                           P0.template cast<TestType>(), hp);
    Vec<TestType> theta = m0.template cast<TestType>();
    const Mat<double> Sinv = dense_inverse(Sigma);
    Mat<double> Lambda = dense_inverse(P0);
    Vec<double> eta = Lambda * m0;
    double worst_mean = 0, worst_cov = 0;
    for (int t = 0; t < T; ++t) {
      const Vec<TestType> z = (H[t] * theta.template cast<double>()).template cast<TestType>();
      const Vec<TestType> y = Y[t].template cast<TestType>();
      REQUIRE(ekf.step(theta, z, H[t].template cast<TestType>(), y) == kfopt::Status::Success);
      Lambda += H[t].transpose() * Sinv * H[t];
      eta += H[t].transpose() * Sinv * Y[t];
      if (t % 10 == 9) {
        const Mat<double> post_cov = dense_inverse(Lambda);
        const Vec<double> post_mean = post_cov * eta;
        worst_mean = std::max(worst_mean, relative_error(theta.template cast<double>(), post_mean));
        worst_cov = std::max(worst_cov,
                             relative_error(ekf.covariance().template cast<double>(), post_cov));
      }
    }
    INFO("form " << kfopt::to_string(form));
    CHECK(worst_mean <= 50 * Tolerance<TestType>::dense);
    CHECK(worst_cov <= 50 * Tolerance<TestType>::dense);
    CHECK(ekf.state().step == T);
  }
}

TEST_CASE("without process noise the precision never decreases", "[optim][ekf]") {
  Rng rng(202);
  const Eigen::Index d = 6;
  const Vec<double> truth = rng.normal<double>(d, 1);
  using Model = kfopt::BernoulliObservation<double>;
  for (kfopt::KalmanForm form : kForms) {
    kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
    hp.form = form;
    kfopt::ExtendedKalmanFilter<Model> ekf(Model(), rng.spd<double>(d), hp);
    Vec<double> theta = Vec<double>::Zero(d);
    Mat<double> previous = ekf.precision();
    double worst = 0;
    for (int t = 0; t < 300; ++t) {
      const Mat<double> x = rng.normal<double>(1, d);
      const Vec<double> z = x * theta;
      const double y = rng.uniform(0, 1) < sigmoid(x.row(0).dot(truth)) ? 1.0 : 0.0;
      REQUIRE(ekf.step(theta, z, x, y) == kfopt::Status::Success);
      const Mat<double> current = ekf.precision();
      const Eigen::SelfAdjointEigenSolver<Mat<double>> eig(current - previous);
      worst = std::min(worst, eig.eigenvalues().minCoeff() / current.norm());
      previous = current;
    }
    INFO("form " << kfopt::to_string(form));
    CHECK(worst >= -1e-12);
  }
}

TEMPLATE_TEST_CASE("fading memory and process noise against the textbook random-walk filter",
                   "[optim][ekf]", float, double) {
  // θ_t = θ_{t−1} + w_t (w ~ N(0, Q)), y_t = h_tᵀ θ_t + ε: the EKF with fading λ and noise
  // Q predicts P/(1−λ) + Q; the dense reference writes the same filter with explicit
  // inverses of S.
  Rng rng(203);
  const Eigen::Index d = 5;
  const Mat<double> Q = 0.01 * rng.spd<double>(d);
  const Mat<double> P0 = rng.spd<double>(d);
  const double lambda = 0.02, noise = 0.3;
  for (kfopt::KalmanForm form : {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Joseph}) {
    kfopt::ExtendedKalmanFilterHyperparameters<TestType> hp;
    hp.form = form;
    hp.fading = static_cast<TestType>(lambda);
    hp.process_noise = Q.template cast<TestType>();
    using Model = kfopt::GaussianObservation<TestType>;
    kfopt::ExtendedKalmanFilter<Model> ekf(Model(1, static_cast<TestType>(noise)),
                                           P0.template cast<TestType>(), hp);
    Vec<TestType> theta = Vec<TestType>::Zero(d);
    Mat<double> P = P0;
    Vec<double> m = Vec<double>::Zero(d);
    Vec<double> truth = rng.normal<double>(d, 1);
    for (int t = 0; t < 60; ++t) {
      truth += 0.1 * rng.normal<double>(d, 1);
      const Mat<double> h = rng.normal<double>(1, d);
      const Vec<double> y = h * truth + std::sqrt(noise) * rng.normal<double>(1, 1);
      const Vec<TestType> z = (h * theta.template cast<double>()).template cast<TestType>();
      REQUIRE(ekf.step(theta, z, h.template cast<TestType>(), Vec<TestType>(y.template cast<TestType>())) ==
              kfopt::Status::Success);
      const Mat<double> Pp = P / (1 - lambda) + Q;
      const Mat<double> S = h * Pp * h.transpose() + noise * Mat<double>::Identity(1, 1);
      const Mat<double> K = Pp * h.transpose() * dense_inverse(S);
      m += K * (y - h * m);
      P = (Mat<double>::Identity(d, d) - K * h) * Pp;
    }
    INFO("form " << kfopt::to_string(form));
    CHECK(relative_error(ekf.covariance().template cast<double>(), P) <= 50 * Tolerance<TestType>::dense);
    CHECK(relative_error(theta.template cast<double>(), m) <= 50 * Tolerance<TestType>::dense);
  }
}

TEST_CASE("natural gradient with its own Fisher rate, and with the empirical Fisher",
          "[optim][natural_gradient]") {
  // Dense recursions: J_t = (1−γ_t) J_{t−1} + γ_t F_t, θ_t = θ_{t−1} − η_t J_t⁻¹ ∇ℓ_t, with F_t
  // the model Fisher p(1−p) x xᵀ or the empirical ∇ℓ ∇ℓᵀ.
  Rng rng(204);
  const Eigen::Index d = 5;
  const Vec<double> truth = 0.5 * rng.normal<double>(d, 1);
  using Model = kfopt::BernoulliObservation<double>;
  for (kfopt::FisherKind kind : {kfopt::FisherKind::Model, kfopt::FisherKind::Empirical}) {
    for (kfopt::KalmanForm form : kForms) {
      kfopt::OnlineNaturalGradientHyperparameters<double> hp;
      hp.fisher_rate_is_step_size = false;
      hp.fisher_rate_schedule = [](std::int64_t t) { return 0.5 / (1.0 + 0.1 * double(t)); };
      hp.step_size = 0.3;
      hp.fisher = kind;
      hp.form = form;
      const Mat<double> J0 = rng.spd<double>(d);
      kfopt::OnlineNaturalGradient<Model> ng(Model(), J0, hp);
      Mat<double> J = J0;
      Vec<double> theta = Vec<double>::Zero(d), theta_ref = theta;
      double worst = 0;
      for (int t = 1; t <= 300; ++t) {
        const Vec<double> x = rng.normal<double>(d, 1);
        const double y = rng.uniform(0, 1) < sigmoid(x.dot(truth)) ? 1.0 : 0.0;
        const Mat<double> xt = x.transpose();
        REQUIRE(ng.step(theta, xt * theta, xt, y) == kfopt::Status::Success);
        const double p = sigmoid(x.dot(theta_ref));
        const Vec<double> grad = (p - y) * x;
        const Mat<double> F = kind == kfopt::FisherKind::Model ? Mat<double>(p * (1 - p) * x * x.transpose())
                                                               : Mat<double>(grad * grad.transpose());
        const double gamma = 0.5 / (1.0 + 0.1 * t);
        J = (1 - gamma) * J + gamma * F;
        theta_ref -= 0.3 * Eigen::FullPivLU<Mat<double>>(J).solve(grad);
        worst = std::max(worst, relative_error(theta, theta_ref));
        CHECK(ng.state().last_fisher_rate == Approx(gamma));
      }
      INFO("form " << kfopt::to_string(form) << (kind == kfopt::FisherKind::Model ? ", model" : ", empirical"));
      CHECK(worst <= 1e-10);
      CHECK(relative_error(ng.fisher(), J) <= 1e-10);
    }
  }
}

TEST_CASE("the predictor overload equals passing the values", "[optim][ekf][natural_gradient]") {
  Rng rng(205);
  const Eigen::Index d = 4;
  const Mat<double> X = rng.normal<double>(50, d);
  using Model = kfopt::PoissonObservation<double>;
  kfopt::ExtendedKalmanFilter<Model> a(Model(), Mat<double>::Identity(d, d));
  kfopt::ExtendedKalmanFilter<Model> b(Model(), Mat<double>::Identity(d, d));
  kfopt::OnlineNaturalGradient<Model> c(Model(), Mat<double>::Identity(d, d));
  Vec<double> ta = Vec<double>::Zero(d), tb = ta, tc = ta;
  for (int t = 0; t < 50; ++t) {
    const Mat<double> x = 0.3 * X.row(t);
    const double y = t % 4;
    auto predictor = [&x](const Eigen::Ref<const Vec<double>>& theta, Eigen::Ref<Vec<double>> z,
                          Eigen::Ref<Mat<double>> J) {
      z = x * theta;
      J = x;
    };
    REQUIRE(a.step(ta, x * ta, x, y) == kfopt::Status::Success);
    REQUIRE(b.step(tb, predictor, y) == kfopt::Status::Success);
    REQUIRE(c.step(tc, predictor, y) == kfopt::Status::Success);
  }
  CHECK(same_bits(ta, tb));
  CHECK(same_bits(a.covariance(), b.covariance()));
  CHECK((ta - tc).norm() > 0);  // c uses η = 0.01: a different optimizer, same interface
}

TEST_CASE("EKF and natural gradient in float track their double runs", "[optim][ekf][natural_gradient]") {
  Rng rng(206);
  const Eigen::Index d = 5;
  const Mat<double> X = rng.normal<double>(200, d);
  const Vec<double> truth = 0.5 * rng.normal<double>(d, 1);
  std::vector<double> Y;
  for (int t = 0; t < 200; ++t) Y.push_back(rng.uniform(0, 1) < sigmoid(X.row(t).dot(truth)) ? 1 : 0);
  const Mat<double> P0 = Mat<double>::Identity(d, d);
  for (kfopt::KalmanForm form : kForms) {
    kfopt::ExtendedKalmanFilterHyperparameters<double> hd;
    kfopt::ExtendedKalmanFilterHyperparameters<float> hf;
    hd.form = form;
    hf.form = form;
    hd.fading = 0.01;
    hf.fading = 0.01f;
    kfopt::ExtendedKalmanFilter<kfopt::BernoulliObservation<double>> ed({}, P0, hd);
    kfopt::ExtendedKalmanFilter<kfopt::BernoulliObservation<float>> ef({}, P0.cast<float>(), hf);
    Vec<double> td = Vec<double>::Zero(d);
    Vec<float> tf = Vec<float>::Zero(d);
    for (int t = 0; t < 200; ++t) {
      const Mat<double> x = X.row(t);
      REQUIRE(ed.step(td, x * td, x, Y[t]) == kfopt::Status::Success);
      const Mat<float> xf = x.cast<float>();
      REQUIRE(ef.step(tf, xf * tf, xf, static_cast<float>(Y[t])) == kfopt::Status::Success);
    }
    INFO("form " << kfopt::to_string(form));
    CHECK(relative_error(tf.cast<double>(), td) <= 1e-3);
    CHECK(relative_error(ef.covariance().cast<double>(), ed.covariance()) <= 1e-3);
  }
}

TEST_CASE("saturated logits: the canonical-link EKF takes finite steps", "[optim][ekf]") {
  const Eigen::Index d = 3;
  using Model = kfopt::BernoulliObservation<double>;
  for (kfopt::KalmanForm form : kForms) {
    kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
    hp.form = form;
    kfopt::ExtendedKalmanFilter<Model> ekf(Model(), Mat<double>::Identity(d, d), hp);
    Vec<double> theta = Vec<double>::Zero(d);
    Mat<double> x(1, d);
    x << 1.0, -0.5, 2.0;
    for (double logit : {40.0, -40.0, 200.0, -700.0}) {
      for (double y : {0.0, 1.0}) {
        Vec<double> z(1);
        z(0) = logit;
        REQUIRE(ekf.step(theta, z, x, y) == kfopt::Status::Success);
        CHECK(theta.allFinite());
        CHECK(ekf.covariance().allFinite());
      }
    }
  }
}

TEST_CASE("bad input: exceptions before any change, skipped steps leave every bit unchanged",
          "[optim][ekf][natural_gradient][errors]") {
  Rng rng(207);
  const Eigen::Index d = 4;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  using Bern = kfopt::BernoulliObservation<double>;
  using BernMean = kfopt::BernoulliObservation<double, kfopt::ObservationLink::Mean>;
  using Cat = kfopt::CategoricalObservation<double>;
  for (kfopt::KalmanForm form : kForms) {
    INFO("form " << kfopt::to_string(form));
    kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
    hp.form = form;
    hp.fading = 0.1;
    kfopt::ExtendedKalmanFilter<Bern> ekf(Bern(), rng.spd<double>(d), hp);
    kfopt::OnlineNaturalGradientHyperparameters<double> nh;
    nh.form = form;
    kfopt::OnlineNaturalGradient<Bern> ng(Bern(), rng.spd<double>(d), nh);
    Vec<double> theta = rng.normal<double>(d, 1);
    Mat<double> J = rng.normal<double>(1, d);
    Vec<double> z(1);
    z(0) = 0.3;
    // A few good steps first, so the state is not the initial one.
    for (int t = 0; t < 3; ++t) {
      REQUIRE(ekf.step(theta, z, J, 1.0) == kfopt::Status::Success);
      REQUIRE(ng.step(theta, z, J, 0.0) == kfopt::Status::Success);
    }
    const Vec<double> theta0 = theta;
    const Mat<double> P_ekf = ekf.state().covariance.storage();
    const Mat<double> P_ng = ng.state().fisher.storage();
    auto unchanged = [&](std::int64_t skipped) {
      CHECK(same_bits(theta, theta0));
      CHECK(same_bits(ekf.state().covariance.storage(), P_ekf));
      CHECK(same_bits(ng.state().fisher.storage(), P_ng));
      CHECK(ekf.state().step == 3);
      CHECK(ng.state().step == 3);
      CHECK(ekf.state().skipped == skipped);
      CHECK(ng.state().skipped == skipped);
    };

    // Non-finite output, Jacobian, target or θ: skipped with NonFiniteInput.
    Vec<double> zbad = z;
    zbad(0) = nan;
    CHECK(ekf.step(theta, zbad, J, 1.0) == kfopt::Status::NonFiniteInput);
    CHECK(ng.step(theta, zbad, J, 1.0) == kfopt::Status::NonFiniteInput);
    unchanged(1);
    Mat<double> Jbad = J;
    Jbad(0, 1) = std::numeric_limits<double>::infinity();
    CHECK(ekf.step(theta, z, Jbad, 1.0) == kfopt::Status::NonFiniteInput);
    CHECK(ng.step(theta, z, Jbad, 1.0) == kfopt::Status::NonFiniteInput);
    unchanged(2);
    CHECK(ekf.step(theta, z, J, nan) == kfopt::Status::NonFiniteInput);
    CHECK(ng.step(theta, z, J, nan) == kfopt::Status::NonFiniteInput);
    unchanged(3);
    CHECK(ekf.state().last_status == kfopt::Status::NonFiniteInput);

    // Targets outside the support, shapes: exceptions, nothing counted or changed.
    CHECK_THROWS_AS(ekf.step(theta, z, J, 0.5), kfopt::InvalidInputError);
    CHECK_THROWS_AS(ng.step(theta, z, J, -1.0), kfopt::InvalidInputError);
    const Mat<double> Jwide = rng.normal<double>(1, d + 2);
    try {
      ekf.step(theta, z, Jwide, 1.0);
      FAIL("expected ShapeError");
    } catch (const kfopt::ShapeError& e) {
      const std::string msg = e.what();
      CHECK(msg.find("ExtendedKalmanFilter::step") != std::string::npos);
      CHECK(msg.find("jacobian") != std::string::npos);
      CHECK(msg.find("1x6") != std::string::npos);
      CHECK(msg.find("1x4") != std::string::npos);
    }
    Vec<double> short_theta = Vec<double>::Zero(d - 1);
    CHECK_THROWS_AS(ng.step(short_theta, z, J.leftCols(d - 1), 1.0), kfopt::ShapeError);
    unchanged(3);

    // A schedule that leaves its range throws at that step, before any change.
    kfopt::ExtendedKalmanFilterHyperparameters<double> sched = hp;
    sched.fading_schedule = [](std::int64_t t) { return t < 2 ? 0.1 : 1.0; };
    kfopt::ExtendedKalmanFilter<Bern> ekf2(Bern(), Mat<double>::Identity(d, d), sched);
    Vec<double> th2 = Vec<double>::Zero(d);
    REQUIRE(ekf2.step(th2, z, J, 1.0) == kfopt::Status::Success);
    const Vec<double> th2_before = th2;
    CHECK_THROWS_WITH(ekf2.step(th2, z, J, 1.0), Catch::Contains("fading_schedule(2)"));
    CHECK(same_bits(th2, th2_before));
    CHECK(ekf2.state().step == 1);
  }

  // Categorical class index out of range.
  kfopt::ExtendedKalmanFilter<Cat> cat(Cat(3), Mat<double>::Identity(d, d));
  Vec<double> theta = Vec<double>::Zero(d);
  const Vec<double> z3 = Vec<double>::Zero(3);
  const Mat<double> J3 = Mat<double>::Ones(3, d);
  CHECK_THROWS_WITH(cat.step(theta, z3, J3, Eigen::Index(3)), Catch::Contains("class index 3"));
  CHECK(theta.isZero(0));

  // Mean link at p = 1: the Fisher is undefined, the step is skipped.
  kfopt::ExtendedKalmanFilter<BernMean> mean(BernMean(), Mat<double>::Identity(d, d));
  Vec<double> p(1);
  p(0) = 1.0;
  const Mat<double> P_before = mean.covariance();
  CHECK(mean.step(theta, p, Mat<double>::Ones(1, d), 1.0) == kfopt::Status::NumericalIssue);
  CHECK(mean.state().skipped == 1);
  CHECK(same_bits(mean.covariance(), P_before));
  CHECK(theta.isZero(0));
}

TEST_CASE("constructors and hyperparameters are validated", "[optim][ekf][natural_gradient][errors]") {
  using Bern = kfopt::BernoulliObservation<double>;
  const Mat<double> I = Mat<double>::Identity(3, 3);
  Mat<double> indefinite = I;
  indefinite(2, 2) = -1;
  CHECK_THROWS_AS(kfopt::ExtendedKalmanFilter<Bern>(Bern(), indefinite), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::OnlineNaturalGradient<Bern>(Bern(), indefinite), kfopt::InvalidInputError);
  kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
  hp.fading = 1.0;
  CHECK_THROWS_WITH(kfopt::ExtendedKalmanFilter<Bern>(Bern(), I, hp), Catch::Contains("fading"));
  hp.fading = -0.1;
  CHECK_THROWS_AS(kfopt::ExtendedKalmanFilter<Bern>(Bern(), I, hp), kfopt::HyperparameterError);
  hp.fading = 0;
  hp.process_noise = I;
  hp.form = kfopt::KalmanForm::Information;
  CHECK_THROWS_WITH(kfopt::ExtendedKalmanFilter<Bern>(Bern(), I, hp), Catch::Contains("form"));
  hp.form = kfopt::KalmanForm::Covariance;
  hp.process_noise = -I;
  CHECK_THROWS_WITH(kfopt::ExtendedKalmanFilter<Bern>(Bern(), I, hp), Catch::Contains("process_noise"));
  hp.process_noise = Mat<double>::Identity(2, 2);
  CHECK_THROWS_WITH(kfopt::ExtendedKalmanFilter<Bern>(Bern(), I, hp), Catch::Contains("process_noise"));
  kfopt::OnlineNaturalGradientHyperparameters<double> nh;
  nh.step_size = 1.0;  // tied to the Fisher rate, which must be < 1
  CHECK_THROWS_WITH(kfopt::OnlineNaturalGradient<Bern>(Bern(), I, nh), Catch::Contains("step_size"));
  nh.fisher_rate_is_step_size = false;
  CHECK_NOTHROW(kfopt::OnlineNaturalGradient<Bern>(Bern(), I, nh));
  nh.fisher_rate = 0;
  CHECK_THROWS_WITH(kfopt::OnlineNaturalGradient<Bern>(Bern(), I, nh), Catch::Contains("fisher_rate"));
}

TEST_CASE("checkpoint and restore: state() / set_state() and reset", "[optim][ekf][natural_gradient]") {
  Rng rng(208);
  const Eigen::Index d = 4;
  using Model = kfopt::BernoulliObservation<double>;
  const Mat<double> X = rng.normal<double>(40, d);
  for (kfopt::KalmanForm form : kForms) {
    kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
    hp.form = form;
    kfopt::OnlineNaturalGradientHyperparameters<double> nh;
    nh.form = form;
    kfopt::ExtendedKalmanFilter<Model> ekf(Model(), Mat<double>::Identity(d, d), hp);
    kfopt::OnlineNaturalGradient<Model> ng(Model(), Mat<double>::Identity(d, d), nh);
    Vec<double> a = Vec<double>::Zero(d), b = a;
    auto run = [&](int from, int to) {
      for (int t = from; t < to; ++t) {
        const Mat<double> x = X.row(t);
        REQUIRE(ekf.step(a, x * a, x, double(t % 2)) == kfopt::Status::Success);
        REQUIRE(ng.step(b, x * b, x, double(t % 3 == 0)) == kfopt::Status::Success);
      }
    };
    run(0, 20);
    const auto se = ekf.state();
    const auto sn = ng.state();
    const Vec<double> a0 = a, b0 = b;
    run(20, 40);
    const Vec<double> a1 = a, b1 = b;
    ekf.set_state(se);
    ng.set_state(sn);
    a = a0;
    b = b0;
    run(20, 40);
    INFO("form " << kfopt::to_string(form));
    CHECK(same_bits(a, a1));
    CHECK(same_bits(b, b1));
    // A state of another form or size is refused.
    auto wrong = se;
    wrong.covariance.convert_to(form == kfopt::KalmanForm::Information ? kfopt::KalmanForm::Covariance
                                                                        : kfopt::KalmanForm::Information);
    CHECK_THROWS_AS(ekf.set_state(wrong), kfopt::InvalidInputError);
    ekf.reset(Mat<double>::Identity(d, d));
    CHECK(ekf.state().step == 0);
    CHECK(relative_error(ekf.covariance(), Mat<double>::Identity(d, d)) <= 1e-15);
  }
}
