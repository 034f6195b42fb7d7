// The examples' losses: values against the textbook formulas, stability at extreme logits,
// and the moments of the gradients of sampled targets (the Fisher of the likelihood).
#include <Eigen/Core>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "common/losses.hpp"

using namespace kfopt_examples;
using Matrix = Eigen::MatrixXd;

TEST_CASE("softmax cross-entropy: value, gradient and extreme logits", "[examples][losses]") {
  Matrix z(2, 3);
  z << 1.0, 2.0, 0.5,  //
      -1.0, 0.0, 3.0;
  const std::vector<int> y{1, 0};
  Matrix grad;
  const double loss = softmax_cross_entropy<double>(z, y, &grad);
  double expected = 0.0;
  for (int i = 0; i < 2; ++i) {
    double sum = 0.0;
    for (int c = 0; c < 3; ++c) sum += std::exp(z(i, c));
    expected += std::log(sum) - z(i, y[static_cast<std::size_t>(i)]);
    for (int c = 0; c < 3; ++c) {
      const double p = std::exp(z(i, c)) / sum;
      CHECK(grad(i, c) == Approx(p - (c == y[static_cast<std::size_t>(i)] ? 1.0 : 0.0)));
    }
  }
  CHECK(loss == Approx(expected / 2));

  // Logits of ±1000: no overflow, the loss is the logit gap.
  Matrix big(1, 2);
  big << 1000.0, -1000.0;
  CHECK(softmax_cross_entropy<double>(big, {1}, &grad) == Approx(2000.0));
  CHECK(grad.allFinite());
  CHECK_THROWS_WITH(softmax_cross_entropy<double>(big, {2}, nullptr), Catch::Contains("label 2"));
  CHECK_THROWS(softmax_cross_entropy<double>(big, {0, 1}, nullptr));
}

TEST_CASE("Bernoulli cross-entropy: value, gradient and extreme logits", "[examples][losses]") {
  Matrix z(2, 2);
  z << 0.3, -2.0,  //
      4.0, 0.0;
  Matrix y(2, 2);
  y << 1.0, 0.25,  //
      0.0, 0.5;
  Matrix grad;
  const double loss = bernoulli_cross_entropy<double>(z, y, &grad);
  double expected = 0.0;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const double p = 1.0 / (1.0 + std::exp(-z(i, j)));
      expected += -(y(i, j) * std::log(p) + (1 - y(i, j)) * std::log(1 - p));
      CHECK(grad(i, j) == Approx(p - y(i, j)));
    }
  }
  CHECK(loss == Approx(expected / 2));  // summed over outputs, mean over the two examples

  Matrix big(1, 2);
  big << 800.0, -800.0;
  Matrix targets(1, 2);
  targets << 0.0, 0.0;
  CHECK(bernoulli_cross_entropy<double>(big, targets, &grad) == Approx(800.0));
  CHECK(grad.allFinite());
  CHECK(grad(0, 0) == Approx(1.0));
  CHECK(grad(0, 1) == Approx(0.0).margin(1e-300));
  CHECK_THROWS(bernoulli_cross_entropy<double>(big, Matrix::Zero(2, 2), nullptr));
}

TEST_CASE("sampled softmax targets: E[g] = 0 and E[g gᵀ] = diag(p) - p pᵀ",
          "[examples][losses][fisher]") {
  const int n = 200000;
  Matrix z(1, 3);
  z << 0.2, -1.0, 1.1;
  const Matrix logits = z.replicate(n, 1);
  std::mt19937_64 rng(42);
  Matrix g;
  sample_softmax_gradient<double>(logits, rng, g);
  Matrix p;
  softmax_rows<double>(z, p);
  const Eigen::VectorXd mean = g.colwise().mean().transpose();
  const Matrix second = g.transpose() * g / n;
  const Matrix fisher = Matrix(p.row(0).asDiagonal()) - p.transpose() * p;
  CHECK(mean.cwiseAbs().maxCoeff() < 5e-3);  // standard error about 1e-3
  CHECK((second - fisher).cwiseAbs().maxCoeff() < 5e-3);
  // Each row is softmax minus a one-hot vector: it sums to zero.
  CHECK(g.rowwise().sum().cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("sampled Bernoulli targets: E[g] = 0 and E[g²] = p(1 - p)",
          "[examples][losses][fisher]") {
  const int n = 200000;
  Matrix logits(n, 2);
  logits.col(0).setConstant(0.7);
  logits.col(1).setConstant(-2.5);
  std::mt19937_64 rng(9);
  Matrix g;
  sample_bernoulli_gradient<double>(logits, rng, g);
  for (int j = 0; j < 2; ++j) {
    const double p = sigmoid(logits(0, j));
    CHECK(std::abs(g.col(j).mean()) < 5e-3);
    CHECK(g.col(j).squaredNorm() / n == Approx(p * (1 - p)).margin(5e-3));
  }
  // Independent pixels: the off-diagonal second moment vanishes.
  CHECK(std::abs(g.col(0).dot(g.col(1)) / n) < 5e-3);
}

TEST_CASE("accuracy and squared reconstruction error", "[examples][losses]") {
  Matrix z(3, 2);
  z << 2.0, 1.0,  //
      0.0, 3.0,   //
      5.0, -1.0;
  CHECK(accuracy<double>(z, {0, 1, 1}) == Approx(2.0 / 3.0));
  Matrix x = Matrix::Zero(3, 2);
  double expected = 0.0;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 2; ++j) expected += std::pow(1.0 / (1.0 + std::exp(-z(i, j))), 2);
  }
  CHECK(squared_reconstruction_error<double>(z, x) == Approx(expected / 3));
}
