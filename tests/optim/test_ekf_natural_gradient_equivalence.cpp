// The static-case theorem of Ollivier 2018 (arXiv:1703.00209) as a tested property: the
// extended Kalman filter and the online natural gradient, with γ_t = η_t, P_0 = η_0 J_0⁻¹ and
// 1/η_t = (1 − λ_t)/η_{t−1} + 1, produce the same parameters and P_t = η_t J_t⁻¹, for
// every observation model and for λ = 0, a constant λ and a λ schedule. Each side is also
// checked against a dense reference written here from the textbook recursions, with the
// Fisher and gradient of each model in closed form and explicit inverses.
#include <catch2/catch.hpp>
#include <kfopt/filter/observation_models.hpp>
#include <kfopt/optim/kalman/ekf_natural_gradient_correspondence.hpp>
#include <kfopt/optim/kalman/extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/online_natural_gradient.hpp>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;
using kfopt::ObservationLink;

namespace {

constexpr int kSteps = 500;
constexpr double kTol = 1e-10;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ‖a − b‖ / max(‖b‖, 1): parameters that pass through zero are compared absolutely there.
template <typename A, typename B>
double rel(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  return (a - b).norm() / std::max(1.0, static_cast<double>(b.norm()));
}

// Each problem: a data stream, the model prediction z(θ) with J = ∂z/∂θ, and — written
// independently of kfopt — the Fisher F(θ) and gradient ∇ℓ(θ) of observation t.
struct LogisticProblem {
  using Model = kfopt::BernoulliObservation<double>;
  Model model;
  Mat<double> X;
  std::vector<double> y;
  // A moderate truth (probabilities rarely saturate): the data are far from separable, so
  // the learning dynamics are not sensitive to rounding and the comparison is meaningful.
  explicit LogisticProblem(Rng& rng, int d = 6) : X(rng.normal<double>(kSteps, d)) {
    const Vec<double> truth = 0.5 * rng.normal<double>(d, 1);
    for (int t = 0; t < kSteps; ++t) y.push_back(rng.uniform(0, 1) < sigmoid(X.row(t).dot(truth)) ? 1.0 : 0.0);
  }
  Eigen::Index dim() const { return X.cols(); }
  double target(int t) const { return y[t]; }
  void predict(const Vec<double>& theta, int t, Vec<double>& z, Mat<double>& J) const {
    z.resize(1);
    z(0) = X.row(t).dot(theta);
    J = X.row(t);
  }
  void reference(const Vec<double>& theta, int t, Mat<double>& F, Vec<double>& grad) const {
    const Vec<double> x = X.row(t).transpose();
    const double p = sigmoid(x.dot(theta));
    F = p * (1 - p) * x * x.transpose();
    grad = (p - y[t]) * x;
  }
};

// Same data, the model outputs the probability itself (mean link): z = σ(xᵀθ), J = p(1−p)xᵀ.
struct LogisticMeanProblem : LogisticProblem {
  using Model = kfopt::BernoulliObservation<double, ObservationLink::Mean>;
  Model model;
  using LogisticProblem::LogisticProblem;
  void predict(const Vec<double>& theta, int t, Vec<double>& z, Mat<double>& J) const {
    const double p = sigmoid(X.row(t).dot(theta));
    z.resize(1);
    z(0) = p;
    J = p * (1 - p) * X.row(t);
  }
};

// Softmax regression with the last logit pinned to 0 (z = [W x; 0], W (K−1)×m): the
// usual K-row parametrization has directions of zero Fisher information (adding the same
// vector to every row of W), along which a fading-memory covariance grows without bound.
struct SoftmaxProblem {
  using Model = kfopt::CategoricalObservation<double>;
  static constexpr int K = 3, m = 3;
  Model model{K};
  Mat<double> X;
  std::vector<Eigen::Index> y;
  explicit SoftmaxProblem(Rng& rng) : X(rng.normal<double>(kSteps, m)) {
    const Mat<double> W = 0.7 * rng.normal<double>(K - 1, m);
    for (int t = 0; t < kSteps; ++t) {
      Vec<double> logits = Vec<double>::Zero(K);
      logits.head(K - 1) = W * X.row(t).transpose();
      Vec<double> p = (logits.array() - logits.maxCoeff()).exp();
      p /= p.sum();
      std::discrete_distribution<int> dist(p.data(), p.data() + K);
      y.push_back(dist(rng.engine()));
    }
  }
  Eigen::Index dim() const { return (K - 1) * m; }
  Eigen::Index target(int t) const { return y[t]; }
  // θ = vec(W) column-major: ∂z_i/∂W_ij = x_j for i < K−1, i.e. J = [xᵀ ⊗ I_{K−1}; 0].
  void predict(const Vec<double>& theta, int t, Vec<double>& z, Mat<double>& J) const {
    const Mat<double> W = dense_unvec<double>(theta, K - 1, m);
    const Vec<double> x = X.row(t).transpose();
    z = Vec<double>::Zero(K);
    z.head(K - 1) = W * x;
    J = Mat<double>::Zero(K, (K - 1) * m);
    J.topRows(K - 1) = dense_kron<double>(x.transpose(), Mat<double>::Identity(K - 1, K - 1));
  }
  void reference(const Vec<double>& theta, int t, Mat<double>& F, Vec<double>& grad) const {
    Vec<double> z;
    Mat<double> J;
    predict(theta, t, z, J);
    Vec<double> p = (z.array() - z.maxCoeff()).exp();
    p /= p.sum();
    Mat<double> Fz = -p * p.transpose();
    Fz.diagonal() += p;
    Vec<double> gz = p;
    gz(y[t]) -= 1;
    F = J.transpose() * Fz * J;
    grad = J.transpose() * gz;
  }
};

struct PoissonProblem {
  using Model = kfopt::PoissonObservation<double>;
  Model model;
  Mat<double> X;
  std::vector<double> y;
  explicit PoissonProblem(Rng& rng, int d = 5) : X(0.4 * rng.normal<double>(kSteps, d)) {
    const Vec<double> truth = rng.normal<double>(d, 1);
    for (int t = 0; t < kSteps; ++t) {
      std::poisson_distribution<int> dist(std::exp(X.row(t).dot(truth)));
      y.push_back(dist(rng.engine()));
    }
  }
  Eigen::Index dim() const { return X.cols(); }
  double target(int t) const { return y[t]; }
  void predict(const Vec<double>& theta, int t, Vec<double>& z, Mat<double>& J) const {
    z.resize(1);
    z(0) = X.row(t).dot(theta);
    J = X.row(t);
  }
  void reference(const Vec<double>& theta, int t, Mat<double>& F, Vec<double>& grad) const {
    const Vec<double> x = X.row(t).transpose();
    const double rate = std::exp(x.dot(theta));
    F = rate * x * x.transpose();
    grad = (rate - y[t]) * x;
  }
};

// Mean link: the model outputs the rate λ = exp(xᵀθ), J = λ xᵀ.
struct PoissonMeanProblem : PoissonProblem {
  using Model = kfopt::PoissonObservation<double, ObservationLink::Mean>;
  Model model;
  using PoissonProblem::PoissonProblem;
  void predict(const Vec<double>& theta, int t, Vec<double>& z, Mat<double>& J) const {
    const double rate = std::exp(X.row(t).dot(theta));
    z.resize(1);
    z(0) = rate;
    J = rate * X.row(t);
  }
};

// Nonlinear 2-d Gaussian regression: z = (tanh(a_tᵀθ), b_tᵀθ), noise Σ (full).
struct GaussianProblem {
  using Model = kfopt::GaussianObservation<double>;
  Mat<double> Sigma;
  Model model;
  Mat<double> A, B, Y;
  explicit GaussianProblem(Rng& rng, int d = 5)
      : Sigma((Mat<double>(2, 2) << 0.5, 0.2, 0.2, 0.3).finished()),
        model(Sigma),
        A(rng.normal<double>(kSteps, d)),
        B(rng.normal<double>(kSteps, d)),
        Y(kSteps, 2) {
    const Vec<double> truth = 0.5 * rng.normal<double>(d, 1);
    for (int t = 0; t < kSteps; ++t) {
      Y(t, 0) = std::tanh(A.row(t).dot(truth)) + 0.3 * rng.normal<double>(1, 1)(0);
      Y(t, 1) = B.row(t).dot(truth) + 0.3 * rng.normal<double>(1, 1)(0);
    }
  }
  Eigen::Index dim() const { return A.cols(); }
  Vec<double> target(int t) const { return Y.row(t).transpose(); }
  void predict(const Vec<double>& theta, int t, Vec<double>& z, Mat<double>& J) const {
    const double a = std::tanh(A.row(t).dot(theta));
    z.resize(2);
    z << a, B.row(t).dot(theta);
    J.resize(2, theta.size());
    J.row(0) = (1 - a * a) * A.row(t);
    J.row(1) = B.row(t);
  }
  void reference(const Vec<double>& theta, int t, Mat<double>& F, Vec<double>& grad) const {
    Vec<double> z;
    Mat<double> J;
    predict(theta, t, z, J);
    const Mat<double> Sinv = dense_inverse(Sigma);
    F = J.transpose() * Sinv * J;
    grad = J.transpose() * Sinv * (z - target(t));
  }
};

// The mean-link problems reuse the canonical reference: the Fisher and gradient in θ do
// not depend on the parametrization of the output.

struct Schedule {
  const char* name;
  std::function<double(std::int64_t)> lambda;  // empty: λ = 0
};

std::vector<Schedule> schedules() {
  return {{"lambda = 0", {}},
          {"constant lambda = 0.05", [](std::int64_t) { return 0.05; }},
          {"schedule lambda_t = 0.01 + 0.1/(1 + t/20) + 0.005 sin t",
           [](std::int64_t t) { return 0.01 + 0.1 / (1.0 + t / 20.0) + 0.005 * std::sin(double(t)); }}};
}

// Runs EKF, its NG twin and the dense references side by side for kSteps observations.
template <typename Problem>
void run_equivalence(const Problem& problem, const Schedule& schedule, kfopt::KalmanForm form,
                     double eta0, unsigned seed) {
  using Model = typename Problem::Model;
  Rng rng(seed);
  const Eigen::Index d = problem.dim();
  const Mat<double> P0 = rng.spd<double>(d, 0.5, 2.0);
  const Vec<double> theta0 = 0.1 * rng.normal<double>(d, 1);

  kfopt::ExtendedKalmanFilterHyperparameters<double> ekf_hp;
  ekf_hp.form = form;
  ekf_hp.fading_schedule = schedule.lambda;
  kfopt::ExtendedKalmanFilter<Model> ekf(problem.model, P0, ekf_hp);
  const auto twin = kfopt::natural_gradient_twin<double>(ekf_hp, P0, eta0);
  kfopt::OnlineNaturalGradient<Model> ng(problem.model, twin.initial_fisher, twin.hyperparameters);

  // Dense references: the EKF in information form with explicit inverses, and the natural
  // gradient with an explicit running-average Fisher and an LU solve.
  Mat<double> P_ref = P0;
  Vec<double> theta_ref_ekf = theta0;
  Mat<double> J_ref = eta0 * dense_inverse(P0);
  Vec<double> theta_ref_ng = theta0;
  double eta = eta0;

  Vec<double> theta_ekf = theta0, theta_ng = theta0, z;
  Mat<double> J, F;
  Vec<double> grad;
  double worst_theta = 0, worst_P = 0, worst_ref = 0;
  for (int t = 0; t < kSteps; ++t) {
    const std::int64_t step = t + 1;
    const double lambda = schedule.lambda ? schedule.lambda(step) : 0.0;
    eta = 1.0 / ((1.0 - lambda) / eta + 1.0);

    problem.predict(theta_ekf, t, z, J);
    REQUIRE(ekf.step(theta_ekf, z, J, problem.target(t)) == kfopt::Status::Success);
    problem.predict(theta_ng, t, z, J);
    REQUIRE(ng.step(theta_ng, z, J, problem.target(t)) == kfopt::Status::Success);

    problem.reference(theta_ref_ekf, t, F, grad);
    P_ref = dense_inverse<double>(((1 - lambda) * dense_inverse(P_ref) + F).eval());
    theta_ref_ekf -= P_ref * grad;
    problem.reference(theta_ref_ng, t, F, grad);
    J_ref = (1 - eta) * J_ref + eta * F;
    theta_ref_ng -= eta * Eigen::FullPivLU<Mat<double>>(J_ref).solve(grad);

    CHECK(ng.state().last_step_size == Approx(eta).epsilon(1e-13));
    worst_theta = std::max(worst_theta, rel(theta_ng, theta_ekf));
    worst_ref = std::max({worst_ref, rel(theta_ekf, theta_ref_ekf), rel(theta_ng, theta_ref_ng)});
    if (t % 50 == 49 || t == kSteps - 1) {
      const Mat<double> P_ekf = ekf.covariance();
      worst_P = std::max(worst_P, relative_error((eta * ng.inverse_fisher()).eval(), P_ekf));
      worst_ref = std::max(worst_ref, relative_error(P_ekf, P_ref));
      worst_ref = std::max(worst_ref, relative_error(ng.fisher(), J_ref));
    }
  }
  INFO(schedule.name << ", form " << kfopt::to_string(form) << ", eta0 = " << eta0);
  CHECK(worst_theta <= kTol);
  CHECK(worst_P <= kTol);
  CHECK(worst_ref <= kTol);
  // The parameters actually moved (the comparison is not vacuous).
  CHECK((theta_ekf - theta0).norm() > 0.1);
}

template <typename Problem>
void run_all_schedules(const Problem& problem, unsigned seed) {
  for (const Schedule& s : schedules()) run_equivalence(problem, s, kfopt::KalmanForm::Covariance, 1.0, seed);
}

}  // namespace

TEST_CASE("EKF = natural gradient: Bernoulli, canonical link, every schedule and form",
          "[optim][ekf][natural_gradient]") {
  Rng rng(101);
  const LogisticProblem problem(rng);
  for (const Schedule& s : schedules()) {
    for (kfopt::KalmanForm form : {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Joseph,
                                   kfopt::KalmanForm::Information}) {
      run_equivalence(problem, s, form, 1.0, 7);
    }
  }
  // η_0 is free: any η_0 > 0 with J_0 = η_0 P_0⁻¹ gives the same trajectory.
  run_equivalence(problem, schedules()[1], kfopt::KalmanForm::Covariance, 0.25, 7);
}

TEST_CASE("EKF = natural gradient: Bernoulli, mean link", "[optim][ekf][natural_gradient]") {
  Rng rng(102);
  run_all_schedules(LogisticMeanProblem(rng), 8);
}

TEST_CASE("EKF = natural gradient: categorical (softmax)", "[optim][ekf][natural_gradient]") {
  Rng rng(103);
  run_all_schedules(SoftmaxProblem(rng), 9);
  run_equivalence(SoftmaxProblem(rng), schedules()[2], kfopt::KalmanForm::Information, 1.0, 9);
}

TEST_CASE("EKF = natural gradient: Poisson, canonical and mean links",
          "[optim][ekf][natural_gradient]") {
  Rng rng(104);
  run_all_schedules(PoissonProblem(rng), 10);
  run_all_schedules(PoissonMeanProblem(rng), 11);
}

TEST_CASE("EKF = natural gradient: Gaussian with full covariance, nonlinear mean",
          "[optim][ekf][natural_gradient]") {
  Rng rng(105);
  run_all_schedules(GaussianProblem(rng), 12);
  run_equivalence(GaussianProblem(rng), schedules()[1], kfopt::KalmanForm::Joseph, 1.0, 12);
}

TEST_CASE("the step-size recursion: λ = 0 gives η_t = 1/(t+1), constant λ gives η_t → λ",
          "[optim][ekf][natural_gradient]") {
  kfopt::FadingMemoryStepSizes<double> harmonic(1.0, 0.0);
  const auto closed = kfopt::harmonic_step_sizes<double>(1.0);
  for (std::int64_t t = 1; t <= 1000; ++t) {
    CHECK(harmonic(t) == Approx(1.0 / (t + 1)).epsilon(1e-14));
    CHECK(closed(t) == Approx(1.0 / (t + 1)).epsilon(1e-14));
  }
  CHECK(harmonic(3) == Approx(0.25));  // going back replays the recursion
  kfopt::FadingMemoryStepSizes<double> constant(1.0, 0.05);
  CHECK(constant(2000) == Approx(0.05).epsilon(1e-12));
  CHECK(kfopt::fading_from_step_sizes(1.0 / 5, 1.0 / 6) == Approx(0.0).margin(1e-15));
  CHECK(kfopt::fading_from_step_sizes(0.05, 0.05) == Approx(0.05));
}

TEST_CASE("natural gradient → EKF map: a constant-step natural gradient is a fading EKF",
          "[optim][ekf][natural_gradient]") {
  Rng rng(106);
  const LogisticProblem problem(rng);
  const Eigen::Index d = problem.dim();
  kfopt::OnlineNaturalGradientHyperparameters<double> ng_hp;
  ng_hp.step_size = 0.03;
  const Mat<double> J0 = rng.spd<double>(d);
  const double eta0 = 0.03;
  const auto twin = kfopt::extended_kalman_filter_twin<double>(ng_hp, J0, eta0);
  CHECK(relative_error(twin.initial_covariance, (eta0 * dense_inverse(J0)).eval()) <= 1e-12);
  kfopt::OnlineNaturalGradient<LogisticProblem::Model> ng(problem.model, J0, ng_hp);
  kfopt::ExtendedKalmanFilter<LogisticProblem::Model> ekf(problem.model, twin.initial_covariance,
                                                          twin.hyperparameters);
  Vec<double> a = Vec<double>::Zero(d), b = a, z;
  Mat<double> J;
  double worst = 0;
  for (int t = 0; t < kSteps; ++t) {
    problem.predict(a, t, z, J);
    REQUIRE(ng.step(a, z, J, problem.target(t)) == kfopt::Status::Success);
    problem.predict(b, t, z, J);
    REQUIRE(ekf.step(b, z, J, problem.target(t)) == kfopt::Status::Success);
    worst = std::max(worst, rel(a, b));
  }
  CHECK(worst <= kTol);
  CHECK(relative_error((0.03 * ng.inverse_fisher()).eval(), ekf.covariance()) <= kTol);
}

TEST_CASE("the maps refuse settings without a twin", "[optim][ekf][natural_gradient][errors]") {
  const Mat<double> P0 = Mat<double>::Identity(3, 3);
  kfopt::ExtendedKalmanFilterHyperparameters<double> ekf_hp;
  ekf_hp.process_noise = 0.1 * Mat<double>::Identity(3, 3);
  CHECK_THROWS_WITH(kfopt::natural_gradient_twin<double>(ekf_hp, P0),
                    Catch::Contains("process_noise"));
  kfopt::OnlineNaturalGradientHyperparameters<double> ng_hp;
  ng_hp.fisher = kfopt::FisherKind::Empirical;
  CHECK_THROWS_AS(kfopt::extended_kalman_filter_twin<double>(ng_hp, P0, 1.0),
                  kfopt::HyperparameterError);
  ng_hp.fisher = kfopt::FisherKind::Model;
  ng_hp.fisher_rate_is_step_size = false;
  CHECK_THROWS_WITH(kfopt::extended_kalman_filter_twin<double>(ng_hp, P0, 1.0),
                    Catch::Contains("fisher_rate_is_step_size"));
  Mat<double> bad = P0;
  bad(0, 0) = -1;
  CHECK_THROWS_AS(kfopt::natural_gradient_twin<double>(kfopt::ExtendedKalmanFilterHyperparameters<double>(), bad),
                  kfopt::InvalidInputError);
}
