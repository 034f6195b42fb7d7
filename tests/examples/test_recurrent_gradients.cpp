// The examples' recurrent toolkit: BPTT of the tanh RNN and the LSTM against central
// finite differences (double, small sizes), the time-major a_t / g_t that RNN K-FAC takes
// (dW = Σ_t g_t a_tᵀ per case, RNN K-FAC §3.1), and the Fisher pass with sampled targets.
#include <Eigen/Core>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "common/recurrent.hpp"

using namespace kfopt_examples;
using Matrix = Eigen::MatrixXd;

namespace {

constexpr Eigen::Index kVocabulary = 5, kSteps = 4, kBatch = 3;

std::vector<int> random_tokens(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> u(0, static_cast<int>(kVocabulary) - 1);
  std::vector<int> t(n);
  for (auto& x : t) x = u(rng);
  return t;
}

Matrix finite_difference(const std::function<double()>& f, Eigen::Ref<Matrix> p, double h = 1e-4) {
  Matrix grad(p.rows(), p.cols());
  for (Eigen::Index j = 0; j < p.cols(); ++j) {
    for (Eigen::Index i = 0; i < p.rows(); ++i) {
      const double saved = p(i, j);
      p(i, j) = saved + h;
      const double up = f();
      p(i, j) = saved - h;
      const double down = f();
      p(i, j) = saved;
      grad(i, j) = (up - down) / (2 * h);
    }
  }
  return grad;
}

double relative_error(const Matrix& a, const Matrix& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

template <template <typename> class Cell>
struct Fixture {
  std::mt19937 rng{17};
  RecurrentLanguageModel<double, Cell> model{kVocabulary, {3, 4}};
  std::vector<int> inputs, targets;

  Fixture() {
    model.initialize(rng);
    // Non-zero biases everywhere, so that bias gradients are tested away from the origin.
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    for (std::size_t l = 0; l < model.depth(); ++l)
      for (int k = 0; k < Cell<double>::num_blocks(); ++k)
        for (Eigen::Index i = 0; i < model.layer(l).block(k).b.size(); ++i) model.layer(l).block(k).b(i) += u(rng);
    for (Eigen::Index i = 0; i < model.output().b.size(); ++i) model.output().b(i) = u(rng);
    inputs = random_tokens(kSteps * kBatch, rng);
    targets = random_tokens(kSteps * kBatch, rng);
  }

  // The objective whose gradient dW is: h(θ) = (1/m) Σ_i Σ_t ℓ_{t,i} = T · mean loss.
  double objective() {
    return static_cast<double>(kSteps) * model.loss(inputs, targets, kSteps, kBatch);
  }

  void check_gradients() {
    model.loss_and_gradient(inputs, targets, kSteps, kBatch);
    const auto f = [this] { return objective(); };
    for (std::size_t l = 0; l < model.depth(); ++l) {
      for (int k = 0; k < Cell<double>::num_blocks(); ++k) {
        auto& w = model.layer(l).block(k);
        const Matrix dW = w.dW, db = w.db;
        Eigen::Map<Matrix> b(w.b.data(), w.b.size(), 1);
        INFO("layer " << l << " block " << Cell<double>::block_name(k));
        CHECK(relative_error(dW, finite_difference(f, w.W)) < 1e-7);
        CHECK(relative_error(db, finite_difference(f, b)) < 1e-7);
      }
    }
    auto& out = model.output();
    const Matrix dW = out.dW, db = out.db;
    Eigen::Map<Matrix> b(out.b.data(), out.b.size(), 1);
    CHECK(relative_error(dW, finite_difference(f, out.W)) < 1e-7);
    CHECK(relative_error(db, finite_difference(f, b)) < 1e-7);
  }

  // a_t = [x_t, h_{t−1}] (h_{−1} = 0); dW = (1/m) Σ_i Σ_t g_{t,i} a_{t,i}ᵀ with the exposed
  // rows (and db the same with a = 1); a sequence run alone has the same a_t and g_t.
  void check_exposed_statistics() {
    model.loss_and_gradient(inputs, targets, kSteps, kBatch);
    for (std::size_t l = 0; l < model.depth(); ++l) {
      const auto& layer = model.layer(l);
      const Eigen::Index in = layer.input_size();
      const Matrix& a = layer.inputs();
      REQUIRE(a.rows() == kSteps * kBatch);
      REQUIRE(a.cols() == in + layer.hidden_size());
      for (Eigen::Index t = 0; t < kSteps; ++t) {
        for (Eigen::Index i = 0; i < kBatch; ++i) {
          const Eigen::Index r = t * kBatch + i;
          if (l == 0) {
            CHECK(a(r, inputs[static_cast<std::size_t>(r)]) == 1.0);
            CHECK(a.row(r).head(in).sum() == 1.0);
          } else {
            CHECK(a.row(r).head(in) == model.layer(l - 1).output().row(r));
          }
          if (t == 0) {
            CHECK(a.row(r).tail(layer.hidden_size()).isZero(0.0));
          } else {
            CHECK(a.row(r).tail(layer.hidden_size()) == layer.output().row(r - kBatch));
          }
        }
      }
      for (int k = 0; k < Cell<double>::num_blocks(); ++k) {
        const Matrix& g = layer.preactivation_gradient(k);
        Matrix dW = Matrix::Zero(g.cols(), a.cols() + 1);
        for (Eigen::Index i = 0; i < kBatch; ++i) {
          for (Eigen::Index t = 0; t < kSteps; ++t) {
            Eigen::VectorXd at(a.cols() + 1);
            at << a.row(t * kBatch + i).transpose(), 1.0;  // homogeneous coordinate
            dW += g.row(t * kBatch + i).transpose() * at.transpose();
          }
        }
        dW /= static_cast<double>(kBatch);
        const auto& w = layer.block(k);
        CHECK(relative_error(dW.leftCols(a.cols()), w.dW) < 1e-13);
        CHECK(relative_error(dW.col(a.cols()), w.db) < 1e-13);
      }
    }
    // Per case: sequence 1 alone (m = 1) has the rows t·m + 1 of the batch.
    std::vector<std::vector<Matrix>> g_batch(model.depth());
    std::vector<Matrix> a_batch;
    for (std::size_t l = 0; l < model.depth(); ++l) {
      a_batch.push_back(model.layer(l).inputs());
      for (int k = 0; k < Cell<double>::num_blocks(); ++k)
        g_batch[l].push_back(model.layer(l).preactivation_gradient(k));
    }
    std::vector<int> in1, tg1;
    for (Eigen::Index t = 0; t < kSteps; ++t) {
      in1.push_back(inputs[static_cast<std::size_t>(t * kBatch + 1)]);
      tg1.push_back(targets[static_cast<std::size_t>(t * kBatch + 1)]);
    }
    model.loss_and_gradient(in1, tg1, kSteps, 1);
    for (std::size_t l = 0; l < model.depth(); ++l) {
      for (Eigen::Index t = 0; t < kSteps; ++t) {
        CHECK((model.layer(l).inputs().row(t) - a_batch[l].row(t * kBatch + 1)).norm() < 1e-14);
        for (int k = 0; k < Cell<double>::num_blocks(); ++k) {
          CHECK((model.layer(l).preactivation_gradient(k).row(t) - g_batch[l][k].row(t * kBatch + 1))
                    .norm() < 1e-14);
        }
      }
    }
  }

  // The Fisher pass back-propagates targets drawn from the model: its g's are those of a
  // training pass on the drawn targets, and it leaves dW, db alone.
  void check_fisher_pass() {
    model.loss_and_gradient(inputs, targets, kSteps, kBatch);
    const Matrix dW_data = model.layer(0).block(0).dW;
    std::mt19937_64 sampler(5);
    model.fisher_pass(sampler);
    CHECK(model.layer(0).block(0).dW == dW_data);
    const std::vector<int> sampled = model.sampled_targets();
    REQUIRE(sampled.size() == inputs.size());
    std::vector<Matrix> g_fisher;
    for (std::size_t l = 0; l < model.depth(); ++l)
      for (int k = 0; k < Cell<double>::num_blocks(); ++k)
        g_fisher.push_back(model.layer(l).preactivation_gradient(k));
    const Matrix g_out = model.output().g;
    model.loss_and_gradient(inputs, sampled, kSteps, kBatch);
    std::size_t j = 0;
    for (std::size_t l = 0; l < model.depth(); ++l)
      for (int k = 0; k < Cell<double>::num_blocks(); ++k)
        CHECK(relative_error(g_fisher[j++], model.layer(l).preactivation_gradient(k)) < 1e-14);
    CHECK(relative_error(g_out, model.output().g) < 1e-14);
  }
};

}  // namespace

TEST_CASE("LSTM BPTT gradients match finite differences", "[examples][recurrent]") {
  Fixture<LstmLayer> f;
  f.check_gradients();
}

TEST_CASE("tanh RNN BPTT gradients match finite differences", "[examples][recurrent]") {
  Fixture<TanhRnnLayer> f;
  f.check_gradients();
}

TEST_CASE("LSTM: exposed a_t and g_t give dW = sum_t g_t a_t^T per case", "[examples][recurrent]") {
  Fixture<LstmLayer> f;
  f.check_exposed_statistics();
}

TEST_CASE("tanh RNN: exposed a_t and g_t give dW = sum_t g_t a_t^T per case", "[examples][recurrent]") {
  Fixture<TanhRnnLayer> f;
  f.check_exposed_statistics();
}

TEST_CASE("Fisher pass: g of targets sampled from the model, dW untouched", "[examples][recurrent]") {
  Fixture<LstmLayer> lstm;
  lstm.check_fisher_pass();
  Fixture<TanhRnnLayer> rnn;
  rnn.check_fisher_pass();
}

// Why char_lm gives the softmax layer the independent block (eq. 6) under every option: its
// sampled targets are drawn independently at each step and never feed back, so the true
// temporal cross-moment G1 = E[g_{t+1} g_tᵀ] of the output layer is 0. Monte Carlo over
// many Fisher passes on fixed inputs: every entry of the mean G1 is within 5 standard errors
// of 0 and small against G0, while an LSTM gate's G1 (whose g_t collects the sampled
// targets of steps ≥ t through BPTT) is not: the check can tell the two apart.
TEST_CASE("Fisher pass: the output layer's g_t are uncorrelated across time (true G1 = 0)",
          "[examples][recurrent]") {
  Fixture<LstmLayer> f;
  f.model.loss_and_gradient(f.inputs, f.targets, kSteps, kBatch);
  std::mt19937_64 sampler(11);
  static constexpr int kPasses = 4000;
  struct Moments {
    Matrix sum1, sum1_sq, sum0;
    void add(const Matrix& g) {
      Matrix g1 = Matrix::Zero(g.cols(), g.cols()), g0 = Matrix::Zero(g.cols(), g.cols());
      for (Eigen::Index t = 0; t < kSteps; ++t) {
        for (Eigen::Index i = 0; i < kBatch; ++i) {
          const auto now = g.row(t * kBatch + i).transpose();
          g0 += now * now.transpose();
          if (t + 1 < kSteps) g1 += g.row((t + 1) * kBatch + i).transpose() * now.transpose();
        }
      }
      if (sum1.size() == 0) {
        sum1 = sum1_sq = sum0 = Matrix::Zero(g.cols(), g.cols());
      }
      sum1 += g1;
      sum1_sq += g1.cwiseProduct(g1);
      sum0 += g0;
    }
    // max_ij |mean G1_ij| / standard error_ij, and ‖mean G1‖ / ‖mean G0‖.
    std::pair<double, double> report() const {
      const Matrix mean1 = sum1 / kPasses;
      const Matrix var = (sum1_sq / kPasses - mean1.cwiseProduct(mean1)).cwiseMax(1e-300);
      const Matrix z = mean1.cwiseAbs().cwiseQuotient((var / kPasses).cwiseSqrt());
      return {z.maxCoeff(), mean1.norm() / (sum0 / kPasses).norm()};
    }
  };
  Moments output, gate;
  for (int pass = 0; pass < kPasses; ++pass) {
    f.model.fisher_pass(sampler);
    output.add(f.model.output().g);
    gate.add(f.model.layer(1).preactivation_gradient(0));
  }
  const auto [output_z, output_ratio] = output.report();
  const auto [gate_z, gate_ratio] = gate.report();
  INFO("output: max z " << output_z << ", |G1|/|G0| " << output_ratio << "; gate: max z " << gate_z
                        << ", |G1|/|G0| " << gate_ratio);
  CHECK(output_z < 5.0);
  CHECK(output_ratio < 0.03);
  CHECK(gate_z > 10.0);
  CHECK(gate_ratio > 3 * output_ratio);
}

TEST_CASE("recurrent toolkit refuses inconsistent shapes", "[examples][recurrent]") {
  RecurrentLanguageModel<double, LstmLayer> model(kVocabulary, {3});
  std::mt19937 rng(1);
  model.initialize(rng);
  CHECK_THROWS_AS(model.forward(std::vector<int>(5, 0), 2, 3), std::invalid_argument);
  CHECK_THROWS_AS(model.forward(std::vector<int>(6, 7), 2, 3), std::invalid_argument);
  LstmLayer<double> layer(2, 3);
  CHECK_THROWS_AS(layer.forward(Matrix::Zero(6, 3), 2, 3), std::invalid_argument);
}
