// The examples' MLP toolkit: backprop against central finite differences of the mean loss,
// the per-example meaning of g, and the Fisher pass that must leave dW, db alone.
#include <Eigen/Core>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "common/losses.hpp"
#include "common/mlp.hpp"

using namespace kfopt_examples;
using Matrix = Eigen::MatrixXd;

namespace {

// A small network that uses every activation, with random inputs in [-1, 1].
Mlp<double> small_network(std::mt19937& rng) {
  Mlp<double> net({5, 6, 4, 5, 3},
                  {Activation::Tanh, Activation::Relu, Activation::Sigmoid, Activation::Identity});
  net.initialize(rng);
  // Non-zero biases, so that their gradients are exercised away from the origin.
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  for (auto& layer : net.layers()) {
    for (Eigen::Index i = 0; i < layer.b.size(); ++i) layer.b(i) = u(rng);
  }
  return net;
}

Matrix random_matrix(Eigen::Index rows, Eigen::Index cols, std::mt19937& rng, double lo = -1.0,
                     double hi = 1.0) {
  std::uniform_real_distribution<double> u(lo, hi);
  Matrix m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = u(rng);
  }
  return m;
}

// Central differences of `loss` with respect to every entry of `param`.
Matrix finite_difference(const std::function<double()>& loss, Eigen::Ref<Matrix> param,
                         double h = 1e-6) {
  Matrix grad(param.rows(), param.cols());
  for (Eigen::Index j = 0; j < param.cols(); ++j) {
    for (Eigen::Index i = 0; i < param.rows(); ++i) {
      const double saved = param(i, j);
      param(i, j) = saved + h;
      const double up = loss();
      param(i, j) = saved - h;
      const double down = loss();
      param(i, j) = saved;
      grad(i, j) = (up - down) / (2 * h);
    }
  }
  return grad;
}

double relative_error(const Matrix& a, const Matrix& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

// Checks dW, db of every layer against finite differences of `mean_loss`, after `backprop`
// has filled them.
void check_against_finite_differences(Mlp<double>& net, const std::function<double()>& mean_loss,
                                      const std::function<void()>& backprop) {
  backprop();
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    const Matrix dW = layer.dW;
    const Matrix db = layer.db;
    const Matrix fd_W = finite_difference(mean_loss, layer.W);
    Eigen::Map<Matrix> b_as_matrix(layer.b.data(), layer.b.size(), 1);
    const Matrix fd_b = finite_difference(mean_loss, b_as_matrix);
    INFO("layer " << l << " (" << to_string(layer.activation) << ")");
    CHECK(relative_error(dW, fd_W) < 1e-7);
    CHECK(relative_error(db, fd_b) < 1e-7);
  }
}

}  // namespace

TEST_CASE("MLP gradients of the softmax cross-entropy match finite differences",
          "[examples][mlp]") {
  std::mt19937 rng(7);
  Mlp<double> net = small_network(rng);
  const Matrix x = random_matrix(8, 5, rng);
  const std::vector<int> labels{0, 2, 1, 1, 0, 2, 2, 1};
  Matrix grad;
  const auto mean_loss = [&] {
    return softmax_cross_entropy<double>(net.forward(x), labels, nullptr);
  };
  check_against_finite_differences(net, mean_loss, [&] {
    softmax_cross_entropy<double>(net.forward(x), labels, &grad);
    net.backward(grad);
  });
}

TEST_CASE("MLP gradients of the Bernoulli cross-entropy match finite differences",
          "[examples][mlp]") {
  std::mt19937 rng(11);
  Mlp<double> net = small_network(rng);
  const Matrix x = random_matrix(6, 5, rng);
  const Matrix targets = random_matrix(6, 3, rng, 0.0, 1.0);  // intensities in [0, 1]
  Matrix grad;
  const auto mean_loss = [&] {
    return bernoulli_cross_entropy<double>(net.forward(x), targets, nullptr);
  };
  check_against_finite_differences(net, mean_loss, [&] {
    bernoulli_cross_entropy<double>(net.forward(x), targets, &grad);
    net.backward(grad);
  });
}

TEST_CASE("g is the per-example pre-activation gradient, not divided by the batch size",
          "[examples][mlp]") {
  std::mt19937 rng(3);
  Mlp<double> net = small_network(rng);
  const Matrix x = random_matrix(5, 5, rng);
  const std::vector<int> labels{1, 0, 2, 2, 1};
  Matrix grad;
  softmax_cross_entropy<double>(net.forward(x), labels, &grad);
  net.backward(grad);
  std::vector<Matrix> g_batch, a_batch;
  for (const auto& layer : net.layers()) {
    g_batch.push_back(layer.g);
    a_batch.push_back(layer.a);
  }
  // dW = gᵀ a / m and db = mean of g, with the a and g the layer exposes.
  for (std::size_t l = 0; l < net.depth(); ++l) {
    const auto& layer = net.layer(l);
    const double m = static_cast<double>(x.rows());
    CHECK(relative_error(layer.dW, g_batch[l].transpose() * a_batch[l] / m) < 1e-14);
    CHECK(relative_error(layer.db, g_batch[l].colwise().mean().transpose()) < 1e-14);
  }
  // A batch of one example: its g row equals that example's row in the batch, and it is
  // the gradient of that example's loss alone (db of a batch of one is g).
  for (Eigen::Index i = 0; i < x.rows(); ++i) {
    Matrix one_grad;
    softmax_cross_entropy<double>(net.forward(x.row(i)), {labels[static_cast<std::size_t>(i)]},
                                  &one_grad);
    net.backward(one_grad);
    for (std::size_t l = 0; l < net.depth(); ++l) {
      CHECK(relative_error(net.layer(l).g, g_batch[l].row(i)) < 1e-12);
      CHECK(relative_error(net.layer(l).db, g_batch[l].row(i).transpose()) < 1e-12);
    }
  }
}

TEST_CASE("a Fisher pass replaces g but leaves dW and db untouched", "[examples][mlp]") {
  std::mt19937 rng(5);
  Mlp<double> net = small_network(rng);
  const Matrix x = random_matrix(16, 5, rng);
  const std::vector<int> labels(16, 1);
  Matrix grad;
  const Matrix logits = net.forward(x);
  softmax_cross_entropy<double>(logits, labels, &grad);
  net.backward(grad);
  std::vector<Matrix> dW, db, g;
  for (const auto& layer : net.layers()) {
    dW.push_back(layer.dW);
    db.push_back(layer.db);
    g.push_back(layer.g);
  }
  std::mt19937_64 sampler(1);
  Matrix sampled;
  sample_softmax_gradient<double>(logits, sampler, sampled);
  net.backward(sampled, Mlp<double>::ParameterGradients::Skip);
  for (std::size_t l = 0; l < net.depth(); ++l) {
    CHECK(net.layer(l).dW == dW[l]);
    CHECK(net.layer(l).db == db[l]);
    CHECK(net.layer(l).g.rows() == 16);
  }
  // The sampled targets differ from the data's (all label 1) for some example.
  CHECK((net.layers().back().g - g.back()).norm() > 0.0);
}

TEST_CASE("MLP rejects wrong shapes with a message", "[examples][mlp]") {
  std::mt19937 rng(1);
  Mlp<double> net = small_network(rng);
  CHECK_THROWS_WITH(net.forward(Matrix::Zero(2, 4)), Catch::Contains("4 columns"));
  net.forward(Matrix::Zero(2, 5));
  CHECK_THROWS_WITH(net.backward(Matrix::Zero(3, 3)), Catch::Contains("2x3"));
  CHECK_THROWS(Mlp<double>({3, 2}, {Activation::Tanh, Activation::Tanh}));
  CHECK(net.shape_string() == "5-6-4-5-3");
  CHECK(net.parameter_count() == 5 * 6 + 6 + 6 * 4 + 4 + 4 * 5 + 5 + 5 * 3 + 3);
}

TEST_CASE("the MLP runs in single precision", "[examples][mlp]") {
  std::mt19937 rng(2);
  Mlp<float> net({4, 3, 2}, {Activation::Tanh, Activation::Identity});
  net.initialize(rng);
  const Eigen::MatrixXf x = Eigen::MatrixXf::Constant(3, 4, 0.5f);
  Eigen::MatrixXf grad;
  const float loss = softmax_cross_entropy<float>(net.forward(x), {0, 1, 1}, &grad);
  net.backward(grad);
  CHECK(std::isfinite(loss));
  CHECK(net.layer(0).dW.allFinite());
}
