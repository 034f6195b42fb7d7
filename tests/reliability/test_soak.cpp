// Soak: long runs of K-FAC (a small tanh MLP), FilterAdam (a two-layer regression model) and
// of the extended Kalman filter (linear-Gaussian observations) with bad batches injected
// periodically (into gradients, and for K-FAC also into the recorded statistics) — NaN and
// ±Inf gradients / observations, gradients at max() and 1e300 (1e30 in float) — asserting that
// every bad batch is refused or stays finite, that parameters and state stay finite
// throughout, and that training still converges. The ctest runs KFOPT_SOAK_STEPS steps
// (default 3000, a second or two); the full length is
//
//     KFOPT_SOAK_STEPS=100000 ./kfopt_tests_reliability "[soak]"
//
// (the step counts and refusals are printed on stdout).
#include <catch2/catch.hpp>
#include <kfopt/filter/observation_models.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/kalman/extended_kalman_filter.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>

namespace {

long soak_steps() {
  const char* env = std::getenv("KFOPT_SOAK_STEPS");
  if (env == nullptr) return 3000;
  const long n = std::strtol(env, nullptr, 10);
  return n > 0 ? n : 3000;
}

/// The bad batch injected at step t (0: none): 1 NaN, 2 +Inf, 3 a gradient entry at max(),
/// 4 every entry at `huge`, 5 -Inf.
int bad_kind(long t) {
  if (t % 97 == 13) return 1;
  if (t % 101 == 29) return 2;
  if (t % 89 == 41) return 3;
  if (t % 103 == 57) return 4;
  if (t % 107 == 71) return 5;
  return 0;
}

template <typename Scalar>
void inject(int kind, Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& g) {
  using L = std::numeric_limits<Scalar>;
  const Scalar huge = sizeof(Scalar) == sizeof(float) ? Scalar(1e30) : Scalar(1e300);
  switch (kind) {
    case 1: g(0, 0) = L::quiet_NaN(); break;
    case 2: g(g.rows() - 1, g.cols() - 1) = L::infinity(); break;
    case 3: g(0, g.cols() - 1) = L::max(); break;
    case 4: g.setConstant(huge); break;
    case 5: g(0, 0) = -L::infinity(); break;
    default: break;
  }
}

template <typename Scalar>
bool state_finite(const typename kfopt::FilterAdam<Scalar>::State& s) {
  for (const auto* b : {&s.momentum, &s.weight_variance, &s.cross_covariance, &s.momentum_variance}) {
    for (const auto& m : *b) {
      if (!m.allFinite()) return false;
    }
  }
  return true;
}

}  // namespace

TEMPLATE_TEST_CASE("soak: FilterAdam with periodic bad batches stays finite and converges",
                   "[reliability][soak]", float, double) {
  using S = TestType;
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  const long steps = soak_steps();
  std::mt19937 rng(17);
  std::normal_distribution<double> normal(0.0, 1.0);
  // Target: y = A x + c with x ~ N(0, I); model y = W x + b, squared loss over a batch.
  const Eigen::Index in = 6, out = 3, batch = 16;
  Mat A(out, in);
  for (Eigen::Index i = 0; i < A.size(); ++i) A.data()[i] = S(0.5 * normal(rng));
  const Mat c = Mat::Constant(out, 1, S(0.25));
  Mat W = Mat::Zero(out, in), dW = Mat::Zero(out, in), b = Mat::Zero(out, 1), db = Mat::Zero(out, 1);
  kfopt::ParameterSet<S> params;
  params.add("W", W, dW);
  params.add("b", b, db);
  kfopt::FilterAdamOptions o;
  o.learning_rate = 0.02;
  o.momentum_rate = 0.1;
  o.prior_variance = 10.0;
  kfopt::FilterAdam<S> opt(params, o);
  long injected = 0, nonfinite_injected = 0, refused = 0, accepted_bad = 0;
  double first_loss = 0, last_loss = 0;
  Mat X(in, batch), E(out, batch);
  for (long t = 0; t < steps; ++t) {
    for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = S(normal(rng));
    E = W * X + b.replicate(1, batch) - (A * X + c.replicate(1, batch));
    const double loss = static_cast<double>(E.squaredNorm()) / (2.0 * batch);
    if (t == 0) first_loss = loss;
    last_loss = loss;
    dW = E * X.transpose() / S(batch);
    db = E.rowwise().sum() / S(batch);
    const int kind = bad_kind(t);
    if (kind != 0) {
      ++injected;
      if (kind == 1 || kind == 2 || kind == 5) ++nonfinite_injected;
      inject<S>(kind, kind % 2 ? dW : db);
    }
    const kfopt::Status s = opt.step();
    if (s != kfopt::Status::Success) {
      ++refused;
      REQUIRE(kind != 0);  // only bad batches are refused
    } else if (kind != 0) {
      ++accepted_bad;
    }
    if (t % 256 == 0 || kind != 0) {
      REQUIRE(W.allFinite());
      REQUIRE(b.allFinite());
      REQUIRE(state_finite<S>(opt.state()));
    }
  }
  std::cout << "soak FilterAdam<" << (sizeof(S) == 4 ? "float" : "double") << ">: " << steps
            << " steps, " << injected << " bad batches, " << refused << " refused, "
            << accepted_bad << " accepted finite, loss " << first_loss << " -> " << last_loss
            << "\n";
  CHECK(opt.state().counters.skipped_nonfinite == refused);
  CHECK(refused >= nonfinite_injected);  // NaN/Inf batches are always refused
  CHECK(last_loss < 0.05 * first_loss);
}

TEMPLATE_TEST_CASE("soak: K-FAC on a small MLP with periodic bad batches stays finite and converges",
                   "[reliability][soak]", float, double) {
  using S = TestType;
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
  const long steps = soak_steps();
  std::mt19937 rng(23);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto gaussian = [&](Eigen::Index r, Eigen::Index c, double sd) {
    Mat m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = S(sd * normal(rng));
    return m;
  };
  // Teacher and student: y = W2 tanh(W1 x + b1) + b2, 6 → 8 → 3, squared loss (unit-variance
  // Gaussian likelihood, so a target sampled from the model is f(x) + ε and its output
  // gradient is −ε: the statistics use those, the step uses the training targets').
  const Eigen::Index in = 6, hidden = 8, out = 3, batch = 32;
  const Mat T1 = gaussian(hidden, in, 0.6), T2 = gaussian(out, hidden, 0.6);
  Mat W1 = gaussian(hidden, in, 0.3), dW1 = Mat::Zero(hidden, in);
  Mat W2 = gaussian(out, hidden, 0.3), dW2 = Mat::Zero(out, hidden);
  Vec b1 = Vec::Zero(hidden), db1 = Vec::Zero(hidden), b2 = Vec::Zero(out), db2 = Vec::Zero(out);
  kfopt::KfacOptions o;
  o.learning_rate = 0.1;
  o.momentum = 0.9;
  o.damping = 1e-2;
  o.kl_clip = 1e-2;
  o.inverse_period = 10;
  kfopt::Kfac<S> kfac(o);
  const std::size_t l1 = kfac.add_dense_layer("fc1", W1, dW1, b1, db1);
  const std::size_t l2 = kfac.add_dense_layer("fc2", W2, dW2, b2, db2);
  long injected = 0, nonfinite_injected = 0, refused = 0, accepted_bad = 0, refused_statistics = 0;
  double first_loss = 0, recent_loss = 0;
  long recent = 0;
  for (long t = 0; t < steps; ++t) {
    const Mat X = gaussian(in, batch, 1.0);  // columns are examples
    const Mat Y = T2 * (T1 * X).array().tanh().matrix();
    const Mat H = ((W1 * X).colwise() + b1).array().tanh().matrix();
    const Mat F = (W2 * H).colwise() + b2;
    const Mat E = F - Y;  // ∂loss/∂F per example (loss ½‖F − Y‖² averaged over the batch)
    const double loss = static_cast<double>(E.squaredNorm()) / (2.0 * batch);
    if (t == 0) first_loss = loss;
    if (t >= steps - 200) {
      recent_loss += loss;
      ++recent;
    }
    const Mat back = ((W2.transpose() * E).array() * (1 - H.array().square())).matrix();
    dW2 = E * H.transpose() / S(batch);
    db2 = E.rowwise().sum() / S(batch);
    dW1 = back * X.transpose() / S(batch);
    db1 = back.rowwise().sum() / S(batch);
    const int kind = bad_kind(t);
    if (kfac.wants_statistics()) {
      // Rows are examples: a is batch × in, g is batch × out (one example's gradient per row).
      const Mat g2 = -gaussian(out, batch, 1.0);
      const Mat g1 = ((W2.transpose() * g2).array() * (1 - H.array().square())).matrix();
      Mat a1 = X.transpose(), a2 = H.transpose();
      Mat s1 = g1.transpose(), s2 = g2.transpose();
      const int stat_kind = bad_kind(t + 500);
      if (stat_kind != 0 && t > 0) inject<S>(stat_kind, stat_kind % 2 ? a1 : s2);
      const kfopt::Status r1 = kfac.record_statistics(l1, a1, s1);
      const kfopt::Status r2 = kfac.record_statistics(l2, a2, s2);
      if (r1 != kfopt::Status::Success || r2 != kfopt::Status::Success) {
        ++refused_statistics;
        REQUIRE(stat_kind != 0);
      }
    }
    if (kind != 0) {
      ++injected;
      if (kind == 1 || kind == 2 || kind == 5) ++nonfinite_injected;
      if (kind % 2) {
        inject<S>(kind, dW1);
      } else {
        Mat g = db2;
        inject<S>(kind, g);
        db2 = g;
      }
    }
    const kfopt::Status s = kfac.step();
    if (s != kfopt::Status::Success) {
      ++refused;
      REQUIRE(kind != 0);
    } else if (kind != 0) {
      ++accepted_bad;
    }
    if (t % 256 == 0 || kind != 0) {
      REQUIRE(W1.allFinite());
      REQUIRE(W2.allFinite());
      REQUIRE(b1.allFinite());
      REQUIRE(b2.allFinite());
      for (std::size_t id : {l1, l2}) {
        REQUIRE(kfac.block(id).input_factor().allFinite());
        REQUIRE(kfac.block(id).gradient_factor().allFinite());
      }
    }
  }
  recent_loss /= static_cast<double>(recent);
  std::cout << "soak Kfac<" << (sizeof(S) == 4 ? "float" : "double") << ">: " << steps
            << " steps, " << injected << " bad gradient batches, " << refused << " refused, "
            << accepted_bad << " accepted finite (clipped), " << refused_statistics
            << " bad statistics batches refused, loss " << first_loss << " -> " << recent_loss
            << " (mean of the last " << recent << ")\n";
  CHECK(kfac.state().counters.skipped_nonfinite == refused);
  CHECK(refused >= nonfinite_injected);
  CHECK(kfac.state().skipped_statistics == refused_statistics);
  CHECK(recent_loss < 0.1 * first_loss);
}

TEMPLATE_TEST_CASE("soak: the extended Kalman filter with periodic bad observations stays finite",
                   "[reliability][soak]", float, double) {
  using S = TestType;
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
  using Model = kfopt::GaussianObservation<S>;
  const long steps = soak_steps();
  std::mt19937 rng(23);
  std::normal_distribution<double> normal(0.0, 1.0);
  const Eigen::Index d = 8, k = 2;
  Vec truth(d);
  for (Eigen::Index i = 0; i < d; ++i) truth(i) = S(normal(rng));
  kfopt::ExtendedKalmanFilterHyperparameters<S> hp;
  hp.fading = S(0.001);  // forgetting keeps the filter adaptive over a long run
  kfopt::ExtendedKalmanFilter<Model> ekf(Model(k, S(0.1)), Mat::Identity(d, d), hp);
  Vec theta = Vec::Zero(d);
  long injected = 0, refused = 0;
  Mat J(k, d);
  Vec z(k), y(k);
  for (long t = 0; t < steps; ++t) {
    for (Eigen::Index i = 0; i < J.size(); ++i) J.data()[i] = S(normal(rng));
    for (Eigen::Index i = 0; i < k; ++i) y(i) = J.row(i).dot(truth) + S(0.3 * normal(rng));
    z = J * theta;
    const int kind = bad_kind(t);
    if (kind != 0) {  // a corrupted Jacobian (a finite but huge one overflows the update)
      ++injected;
      inject<S>(kind, J);
    }
    const kfopt::Status s = ekf.step(theta, z, J, y);
    if (s != kfopt::Status::Success) {
      ++refused;
      REQUIRE(kind != 0);
    }
    if (t % 256 == 0 || kind != 0) {
      REQUIRE(theta.allFinite());
      REQUIRE(ekf.state().covariance.storage().allFinite());
      REQUIRE(ekf.state().covariance.storage().diagonal().minCoeff() >= S(0));
    }
  }
  std::cout << "soak ExtendedKalmanFilter<" << (sizeof(S) == 4 ? "float" : "double") << ">: "
            << steps << " steps, " << injected << " bad observations, " << refused
            << " refused, |theta - truth| = " << (theta - truth).norm() << "\n";
  CHECK(ekf.state().skipped == refused);
  CHECK(refused == injected);  // every corrupted Jacobian is refused (NaN/Inf, or overflow)
  CHECK((theta - truth).norm() < S(0.1) * truth.norm());
}
