// The helpers of examples/ekf_online.cpp: the truncated-BPTT gradient against central finite
// differences and against RTRL (Ollivier 2018, recurrent case: A_t = ∂s_t/∂θ carried forward
// gives the same gradient as backpropagation over the same window), and the Mackey–Glass
// integrator (fixed point, step-size convergence, range, bad parameters).
#include <Eigen/Core>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include <kfopt/optim/kalman/rtrl.hpp>
#include <kfopt/models/tanh_rnn_cell.hpp>

#include "common/chaotic_series.hpp"
#include "common/truncated_bptt.hpp"

using kfopt_examples::TruncatedBptt;
using Cell = kfopt::TanhRnnCell<double>;
using Vec = Eigen::VectorXd;
using Mat = Eigen::MatrixXd;

namespace {

Mat normal(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& rng, double scale) {
  std::normal_distribution<double> n(0.0, scale);
  Mat m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = n(rng);
  return m;
}

/// The window loss E(θ) by a plain forward pass (no Jacobians used).
double window_loss(const Cell& cell, const Vec& theta, const Vec& s0, const Mat& U, const Mat& Y,
                   Eigen::Index first_counted) {
  const Eigen::Index n = cell.state_dim(), d = cell.param_dim(), k = cell.output_dim();
  Vec s = s0, next(n), z(k);
  Mat Fs(n, n), Ft(n, d), Hs(k, n), Ht(k, d);
  double loss = 0.0;
  for (Eigen::Index i = 0; i < U.cols(); ++i) {
    cell.transition(s, theta, U.col(i), next, Fs, Ft);
    s = next;
    if (i < first_counted) continue;
    cell.observe(s, theta, U.col(i), z, Hs, Ht);
    loss += 0.5 * (z - Y.col(i)).squaredNorm();
  }
  return loss / static_cast<double>(U.cols() - first_counted);
}

}  // namespace

TEST_CASE("truncated BPTT: gradient = central finite differences", "[examples][bptt]") {
  std::mt19937_64 rng(11);
  const Cell cell(4, 2, 2);
  const Eigen::Index d = cell.param_dim();
  const Vec theta = normal(d, 1, rng, 0.5);
  const Vec s0 = normal(4, 1, rng, 0.3);
  const Mat U = normal(2, 7, rng, 1.0), Y = normal(2, 7, rng, 1.0);
  TruncatedBptt<Cell> bptt(cell);
  for (Eigen::Index first : {0, 3, 6}) {
    Vec grad(d);
    const double loss = bptt.gradient(theta, s0, U, Y, first, grad);
    CHECK(loss == Approx(window_loss(cell, theta, s0, U, Y, first)).epsilon(1e-14));
    const double h = 1e-6;
    double worst = 0.0;
    for (Eigen::Index j = 0; j < d; ++j) {
      Vec plus = theta, minus = theta;
      plus(j) += h;
      minus(j) -= h;
      const double fd = (window_loss(cell, plus, s0, U, Y, first) -
                         window_loss(cell, minus, s0, U, Y, first)) / (2 * h);
      worst = std::max(worst, std::abs(fd - grad(j)) / (1.0 + std::abs(fd)));
    }
    INFO("first_counted = " << first);
    CHECK(worst < 1e-8);
  }
}

TEST_CASE("truncated BPTT over the window = RTRL from a zero tangent", "[examples][bptt]") {
  std::mt19937_64 rng(12);
  const Cell cell(3, 1, 1);
  const Eigen::Index d = cell.param_dim(), L = 9;
  const Vec theta = normal(d, 1, rng, 0.6);
  const Vec s0 = normal(3, 1, rng, 0.4);
  const Mat U = normal(1, L, rng, 1.0), Y = normal(1, L, rng, 1.0);

  // Only the last step scored: ∇E = H_Lᵀ (z_L − y_L), H_L the RTRL total derivative.
  TruncatedBptt<Cell> bptt(cell);
  Vec grad(d);
  bptt.gradient(theta, s0, U, Y, L - 1, grad);
  kfopt::Rtrl<Cell> rtrl(cell, s0);
  Vec z(1);
  Mat H(1, d);
  for (Eigen::Index i = 0; i < L; ++i) {
    REQUIRE(rtrl.propagate(theta, U.col(i)) == kfopt::Status::Success);
    if (i + 1 == L) REQUIRE(rtrl.output(theta, U.col(i), z, H) == kfopt::Status::Success);
    rtrl.commit();
  }
  const Vec expected = H.transpose() * (z - Y.col(L - 1));
  CHECK((grad - expected).cwiseAbs().maxCoeff() <= 1e-13 * (1.0 + expected.cwiseAbs().maxCoeff()));

  // Every step scored: the sum of the per-step RTRL gradients, divided by L.
  bptt.gradient(theta, s0, U, Y, 0, grad);
  rtrl.reset(s0);
  Vec sum = Vec::Zero(d);
  for (Eigen::Index i = 0; i < L; ++i) {
    REQUIRE(rtrl.propagate(theta, U.col(i)) == kfopt::Status::Success);
    REQUIRE(rtrl.output(theta, U.col(i), z, H) == kfopt::Status::Success);
    sum += H.transpose() * (z - Y.col(i));
    rtrl.commit();
  }
  sum /= static_cast<double>(L);
  CHECK((grad - sum).cwiseAbs().maxCoeff() <= 1e-13 * (1.0 + sum.cwiseAbs().maxCoeff()));
}

TEST_CASE("truncated BPTT: shapes that disagree are refused", "[examples][bptt]") {
  const Cell cell(2, 1, 1);
  TruncatedBptt<Cell> bptt(cell);
  Vec grad(cell.param_dim());
  const Vec theta = Vec::Zero(cell.param_dim()), s0 = Vec::Zero(2);
  CHECK_THROWS_AS(bptt.gradient(theta, s0, Mat::Zero(1, 4), Mat::Zero(1, 3), 0, grad),
                  std::invalid_argument);
  CHECK_THROWS_AS(bptt.gradient(theta, s0, Mat::Zero(1, 4), Mat::Zero(1, 4), 4, grad),
                  std::invalid_argument);
  CHECK_THROWS_AS(bptt.gradient(theta, Vec::Zero(3), Mat::Zero(1, 4), Mat::Zero(1, 4), 0, grad),
                  std::invalid_argument);
}

TEST_CASE("Mackey-Glass: fixed point, convergence in dt, chaotic range, bad parameters",
          "[examples][chaotic_series]") {
  using kfopt_examples::mackey_glass;
  kfopt_examples::MackeyGlassParameters p;
  // β/(1 + x^p) = γ at x = 1 when β = 2γ: a constant history at 1 stays there.
  p.initial = 1.0;
  p.discard = 0.0;
  for (double x : mackey_glass(200, p)) CHECK(x == Approx(1.0).margin(1e-14));

  // RK4 with the interpolated delay: dt = 0.1 against dt = 0.01 over the first 60 time units.
  p = kfopt_examples::MackeyGlassParameters();
  p.discard = 0.0;
  const auto coarse = mackey_glass(61, p);
  p.dt = 0.01;
  const auto fine = mackey_glass(61, p);
  double worst = 0.0;
  for (std::size_t i = 0; i < coarse.size(); ++i) worst = std::max(worst, std::abs(coarse[i] - fine[i]));
  CHECK(worst < 1e-4);
  CHECK(worst > 0.0);

  // The attractor (after the transient) stays in about [0.2, 1.4] and is not periodic-flat.
  p = kfopt_examples::MackeyGlassParameters();
  const auto x = mackey_glass(3000, p);
  double lo = 10, hi = -10;
  for (double v : x) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  CHECK(lo > 0.15);
  CHECK(hi < 1.5);
  CHECK(hi - lo > 0.8);

  p.dt = 0.3;  // 17 / 0.3 is not an integer
  CHECK_THROWS_AS(mackey_glass(10, p), std::invalid_argument);
  p = kfopt_examples::MackeyGlassParameters();
  p.beta = -1;
  CHECK_THROWS_AS(mackey_glass(10, p), std::invalid_argument);
}
