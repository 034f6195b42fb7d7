// SGD, Adam/AdamW and RMSProp against scalar reference loops written from PyTorch's
// documented algorithms (one scalar at a time, in double), and against hand-worked values.
#include <catch2/catch.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/first_order/rmsprop.hpp>
#include <kfopt/optim/first_order/sgd.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// A fixed gradient sequence: g_t = G0 * cos(t) + 0.3 * p (depends on the parameters, so an
// update that goes wrong changes every later gradient too).
struct Problem {
  Mat<double> W0, b0, G0, H0;
  explicit Problem(unsigned seed) {
    Rng rng(seed);
    W0 = rng.normal<double>(3, 2);
    b0 = rng.normal<double>(3, 1);
    G0 = rng.normal<double>(3, 2);
    H0 = rng.normal<double>(3, 1);
  }
  template <typename Scalar>
  void gradients(int t, const Mat<Scalar>& W, const Mat<Scalar>& b, Mat<Scalar>& dW,
                 Mat<Scalar>& db) const {
    dW = (G0 * std::cos(t) + 0.3 * W.template cast<double>()).template cast<Scalar>();
    db = (H0 * std::sin(t) + 0.3 * b.template cast<double>()).template cast<Scalar>();
  }
};

// Runs `steps` steps of an optimizer over {W, b}; returns the parameters stacked.
template <typename Scalar, typename Optimizer, typename Options>
Vec<double> run_kfopt(const Problem& pr, Options options, int steps) {
  Mat<Scalar> W = pr.W0.cast<Scalar>(), b = pr.b0.cast<Scalar>(), dW, db;
  kfopt::ParameterSet<Scalar> params;
  pr.gradients(0, W, b, dW, db);
  params.add("W", W, dW);
  params.add("b", b, db);
  Optimizer opt(params, options);
  for (int t = 0; t < steps; ++t) {
    pr.gradients(t, W, b, dW, db);
    REQUIRE(opt.step() == kfopt::Status::Success);
  }
  Vec<double> out(W.size() + b.size());
  out << dense_vec<double>(W.template cast<double>()), dense_vec<double>(b.template cast<double>());
  return out;
}

// Scalar reference: applies `update(p, g, state, t)` element by element.
template <typename Update>
Vec<double> run_reference(const Problem& pr, int steps, int state_size, Update update) {
  Mat<double> W = pr.W0, b = pr.b0, dW, db;
  std::vector<std::vector<double>> sw(W.size(), std::vector<double>(state_size, 0.0));
  std::vector<std::vector<double>> sb(b.size(), std::vector<double>(state_size, 0.0));
  for (int t = 0; t < steps; ++t) {
    pr.gradients(t, W, b, dW, db);
    for (Eigen::Index k = 0; k < W.size(); ++k) update(W(k), dW(k), sw[k], t + 1);
    for (Eigen::Index k = 0; k < b.size(); ++k) update(b(k), db(k), sb[k], t + 1);
  }
  Vec<double> out(W.size() + b.size());
  out << dense_vec(W), dense_vec(b);
  return out;
}

}  // namespace

TEST_CASE("SGD: plain, momentum, dampening, Nesterov and weight decay match the reference",
          "[optim][sgd]") {
  const Problem pr(41);
  struct Case { double mu, tau, wd; bool nesterov; };
  for (const Case c : {Case{0, 0, 0, false}, Case{0.9, 0, 0, false}, Case{0.9, 0.3, 0.01, false},
                       Case{0.8, 0, 0.05, true}}) {
    kfopt::SgdOptions o;
    o.learning_rate = 0.1;
    o.momentum = c.mu;
    o.dampening = c.tau;
    o.weight_decay = c.wd;
    o.nesterov = c.nesterov;
    const Vec<double> got = run_kfopt<double, kfopt::Sgd<double>>(pr, o, 7);
    const Vec<double> want = run_reference(pr, 7, 1, [&](double& p, double grad, std::vector<double>& s, int t) {
      const double g = grad + c.wd * p;
      double d = g;
      if (c.mu != 0) {
        s[0] = t == 1 ? g : c.mu * s[0] + (1 - c.tau) * g;
        d = c.nesterov ? g + c.mu * s[0] : s[0];
      }
      p -= 0.1 * d;
    });
    CHECK(relative_error(got, want) <= 1e-14);
    CHECK(relative_error(run_kfopt<float, kfopt::Sgd<float>>(pr, o, 7), want) <= 1e-5);
  }
}

TEST_CASE("Adam: the first step moves each weight by lr·g/(|g| + eps)", "[optim][adam]") {
  // m̂₁ = g, v̂₁ = g², so p₁ = p₀ − lr · g / (|g| + ε), whatever β1, β2.
  Mat<double> W(1, 3), dW(1, 3);
  W << 1.0, -2.0, 0.5;
  dW << 0.2, -3.0, 1e-9;
  kfopt::ParameterSet<double> params;
  params.add("W", W, dW);
  kfopt::AdamOptions o;
  o.learning_rate = 0.01;
  o.beta1 = 0.7;
  o.beta2 = 0.95;
  kfopt::Adam<double> adam(params, o);
  REQUIRE(adam.step() == kfopt::Status::Success);
  CHECK(W(0) == Approx(1.0 - 0.01 * 0.2 / (0.2 + 1e-8)).epsilon(1e-14));
  CHECK(W(1) == Approx(-2.0 + 0.01 * 3.0 / (3.0 + 1e-8)).epsilon(1e-14));
  CHECK(W(2) == Approx(0.5 - 0.01 * 1e-9 / (1e-9 + 1e-8)).epsilon(1e-12));  // ε matters here
}

TEST_CASE("Adam, AdamW and AMSGrad match the reference over several steps", "[optim][adam]") {
  const Problem pr(42);
  struct Case { double wd; bool decoupled, amsgrad; };
  for (const Case c : {Case{0, false, false}, Case{0.1, false, false}, Case{0.1, true, false},
                       Case{0.05, false, true}, Case{0.02, true, true}}) {
    kfopt::AdamOptions o;
    o.learning_rate = 0.05;
    o.beta1 = 0.8;
    o.beta2 = 0.9;
    o.epsilon = 1e-6;
    o.weight_decay = c.wd;
    o.decoupled_weight_decay = c.decoupled;
    o.amsgrad = c.amsgrad;
    const Vec<double> got = run_kfopt<double, kfopt::Adam<double>>(pr, o, 9);
    const Vec<double> want = run_reference(pr, 9, 3, [&](double& p, double grad, std::vector<double>& s, int t) {
      double g = grad;
      if (c.decoupled) p *= 1 - 0.05 * c.wd; else g += c.wd * p;
      s[0] = 0.8 * s[0] + 0.2 * g;       // m
      s[1] = 0.9 * s[1] + 0.1 * g * g;   // v
      s[2] = std::max(s[2], s[1]);       // max v
      const double v = c.amsgrad ? s[2] : s[1];
      const double mhat = s[0] / (1 - std::pow(0.8, t));
      const double denom = std::sqrt(v) / std::sqrt(1 - std::pow(0.9, t)) + 1e-6;
      p -= 0.05 * mhat / denom;
    });
    CHECK(relative_error(got, want) <= 1e-13);
    CHECK(relative_error(run_kfopt<float, kfopt::Adam<float>>(pr, o, 9), want) <= 1e-5);
  }
  CHECK(kfopt::AdamOptions::adamw().decoupled_weight_decay);
  CHECK(kfopt::AdamOptions::adamw().weight_decay == 0.01);
}

TEST_CASE("RMSProp: plain, centered, momentum and weight decay match the reference",
          "[optim][rmsprop]") {
  const Problem pr(43);
  struct Case { double mu, wd; bool centered; };
  for (const Case c : {Case{0, 0, false}, Case{0.9, 0, false}, Case{0, 0.01, true},
                       Case{0.5, 0.02, true}}) {
    kfopt::RmsPropOptions o;
    o.learning_rate = 0.01;
    o.alpha = 0.9;
    o.epsilon = 1e-7;
    o.momentum = c.mu;
    o.weight_decay = c.wd;
    o.centered = c.centered;
    const Vec<double> got = run_kfopt<double, kfopt::RmsProp<double>>(pr, o, 8);
    const Vec<double> want = run_reference(pr, 8, 3, [&](double& p, double grad, std::vector<double>& s, int) {
      const double g = grad + c.wd * p;
      s[0] = 0.9 * s[0] + 0.1 * g * g;
      s[1] = 0.9 * s[1] + 0.1 * g;
      const double r = (c.centered ? std::sqrt(s[0] - s[1] * s[1]) : std::sqrt(s[0])) + 1e-7;
      if (c.mu > 0) {
        s[2] = c.mu * s[2] + g / r;
        p -= 0.01 * s[2];
      } else {
        p -= 0.01 * g / r;
      }
    });
    CHECK(relative_error(got, want) <= 1e-13);
    CHECK(relative_error(run_kfopt<float, kfopt::RmsProp<float>>(pr, o, 8), want) <= 1e-4);
  }
}

TEST_CASE("first-order optimizers: a non-finite gradient skips the whole step",
          "[optim][errors]") {
  Mat<double> W = Mat<double>::Ones(2, 2), dW = Mat<double>::Ones(2, 2);
  Vec<double> b = Vec<double>::Ones(3), db = Vec<double>::Ones(3);
  kfopt::ParameterSet<double> params;
  params.add("W", W, dW);
  params.add("b", b, db);
  kfopt::Adam<double> adam(params);
  kfopt::Sgd<double> sgd(params, {0.1, 0.9});
  kfopt::RmsProp<double> rms(params, {0.01, 0.99, 1e-8, 0.0, 0.5, true});
  REQUIRE(adam.step() == kfopt::Status::Success);
  const Mat<double> W1 = W;
  const Vec<double> b1 = b;
  const auto adam_state = adam.state();
  db(2) = std::numeric_limits<double>::quiet_NaN();  // only the LAST block is bad
  CHECK(adam.step() == kfopt::Status::NonFiniteInput);
  CHECK(sgd.step() == kfopt::Status::NonFiniteInput);
  CHECK(rms.step() == kfopt::Status::NonFiniteInput);
  CHECK(W == W1);  // the first block was not touched either
  CHECK(b.head(2) == b1.head(2));
  CHECK(adam.state().first_moment[0] == adam_state.first_moment[0]);
  CHECK(adam.state().counters.steps == 1);
  CHECK(adam.state().counters.skipped_nonfinite == 1);
  CHECK(sgd.state().counters.skipped_nonfinite == 1);
  db(2) = 1.0;
  CHECK(adam.step() == kfopt::Status::Success);
  CHECK(adam.state().counters.steps == 2);
}

TEST_CASE("first-order optimizers: invalid hyperparameters name the field", "[optim][errors]") {
  Mat<double> W = Mat<double>::Ones(2, 2), dW = W;
  kfopt::ParameterSet<double> params;
  params.add("W", W, dW);
  CHECK_THROWS_WITH((kfopt::Adam<double>(params, {-1.0})), Catch::Contains("learning_rate"));
  kfopt::AdamOptions a;
  a.beta2 = 1.0;
  CHECK_THROWS_WITH((kfopt::Adam<double>(params, a)), Catch::Contains("beta2"));
  kfopt::SgdOptions s;
  s.nesterov = true;
  CHECK_THROWS_AS((kfopt::Sgd<double>(params, s)), kfopt::HyperparameterError);
  kfopt::RmsPropOptions r;
  r.epsilon = 0;
  CHECK_THROWS_WITH((kfopt::RmsProp<double>(params, r)), Catch::Contains("epsilon"));
  kfopt::Sgd<double> sgd(params);
  CHECK_THROWS_AS(sgd.set_learning_rate(0.0), kfopt::HyperparameterError);
  CHECK(sgd.options().learning_rate == 0.01);
}
