#pragma once
/// \file recurrent.hpp
/// \brief A small recurrent language model for the examples: one-hot input, a stack of
/// recurrent layers (TanhRnnLayer or LstmLayer, recurrent_cells.hpp), a softmax output
/// layer shared across time, BPTT, and the two backward passes RNN K-FAC needs:
///
/// - **training pass** (`loss_and_gradient`): targets = the data (the empirical gradient
///   used for the update), fills dW, db of every block;
/// - **Fisher pass** (`fisher_pass`): targets y_t ~ softmax(z_t) *sampled from the model's
///   predictive distribution*, back-propagated through time, fills only each block's g_t.
///   With the layer inputs a_t these are the statistics of the *true* Fisher (Martens, Ba &
///   Johnson 2018, §2.2: "y is taken to be distributed according to the model's predictive
///   distribution"), the `a`, `g` arguments of Kfac::record_sequence_statistics.
///
/// Layout, gradient convention and costs: see recurrent_cells.hpp (time-major T·m rows;
/// g per case; dW of h(θ) = (1/m) Σ_i Σ_t ℓ_{t,i}, i.e. the per-sequence summed loss
/// averaged over sequences, the paper's objective with its eq. 3 Fisher). The *reported*
/// loss is the mean per-token cross-entropy in nats, h(θ) / T.
///
/// Every weight here is used at every time step, the output layer included, so every
/// block is a RecurrentKroneckerBlock for RNN K-FAC.
///
/// Example code, not part of the kfopt library.

#include <Eigen/Core>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "losses.hpp"
#include "recurrent_cells.hpp"

namespace kfopt_examples {

/// x (tokens.size() × vocabulary) with x(r, tokens[r]) = 1. Throws for a token outside
/// [0, vocabulary).
template <typename Scalar>
void one_hot(const std::vector<int>& tokens, Eigen::Index vocabulary,
             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& x) {
  x.setZero(static_cast<Eigen::Index>(tokens.size()), vocabulary);
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    if (tokens[r] < 0 || tokens[r] >= vocabulary) {
      throw std::invalid_argument("one_hot: token " + std::to_string(tokens[r]) +
                                  " outside [0, " + std::to_string(vocabulary) + ")");
    }
    x(static_cast<Eigen::Index>(r), tokens[r]) = Scalar(1);
  }
}

/// Dense output layer applied at every step, `z_t = W h_t + b` (W classes × hidden):
/// weights shared across time, so its a_t = h_t and g_t = D z_t = softmax(z_t) − onehot(y_t).
template <typename Scalar>
struct SharedOutputLayer {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  Matrix W, dW;
  Vector b, db;
  Matrix a;  ///< inputs h_t of the last forward, T·m × hidden (without the homogeneous 1)
  Matrix g;  ///< D z_t of the last backward, T·m × classes

  SharedOutputLayer(Eigen::Index hidden, Eigen::Index classes)
      : W(Matrix::Zero(classes, hidden)),
        dW(Matrix::Zero(classes, hidden)),
        b(Vector::Zero(classes)),
        db(Vector::Zero(classes)) {}

  template <typename Rng>
  void initialize(Rng& rng) {
    const double r = 1.0 / std::sqrt(static_cast<double>(W.cols()));
    std::uniform_real_distribution<double> u(-r, r);
    for (Eigen::Index j = 0; j < W.cols(); ++j)
      for (Eigen::Index i = 0; i < W.rows(); ++i) W(i, j) = static_cast<Scalar>(u(rng));
    b.setZero();
  }

  void forward(const Matrix& h, Matrix& logits) {
    a = h;
    logits.noalias() = a * W.transpose();
    logits.rowwise() += b.transpose();
  }

  /// From g (set by the caller): D h = g W; dW = gᵀ a / m, db = colsum(g) / m if asked.
  void backward(Eigen::Index batch, Matrix& dh, RecurrentGradients what) {
    dh.noalias() = g * W;
    if (what == RecurrentGradients::Compute) {
      const Scalar inv_m = Scalar(1) / static_cast<Scalar>(batch);
      dW.noalias() = g.transpose() * a;
      dW *= inv_m;
      db = g.colwise().sum().transpose() * inv_m;
    }
  }
};

/// Language model `one-hot(x_t) → Cell → … → Cell → softmax`, predicting token y_t from
/// x_1..x_t. `Cell` is TanhRnnLayer<Scalar> or LstmLayer<Scalar>.
template <typename Scalar, template <typename> class Cell>
class RecurrentLanguageModel {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Layer = Cell<Scalar>;

  /// `hidden` = widths of the recurrent layers (at least one).
  RecurrentLanguageModel(Eigen::Index vocabulary, const std::vector<Eigen::Index>& hidden)
      : vocabulary_(vocabulary), output_(hidden.empty() ? 1 : hidden.back(), vocabulary) {
    if (vocabulary <= 0 || hidden.empty()) {
      throw std::invalid_argument("RecurrentLanguageModel: need a vocabulary and >= 1 layer");
    }
    Eigen::Index in = vocabulary;
    for (Eigen::Index h : hidden) {
      layers_.push_back(std::make_unique<Layer>(in, h));
      in = h;
    }
  }

  template <typename Rng>
  void initialize(Rng& rng) {
    for (auto& l : layers_) l->initialize(rng);
    output_.initialize(rng);
  }

  std::size_t depth() const { return layers_.size(); }
  Layer& layer(std::size_t l) { return *layers_.at(l); }
  const Layer& layer(std::size_t l) const { return *layers_.at(l); }
  SharedOutputLayer<Scalar>& output() { return output_; }
  Eigen::Index vocabulary() const { return vocabulary_; }
  Eigen::Index num_parameters() const {
    Eigen::Index n = output_.W.size() + output_.b.size();
    for (const auto& l : layers_)
      for (int k = 0; k < Layer::num_blocks(); ++k) n += l->block(k).W.size() + l->block(k).b.size();
    return n;
  }

  /// Forward pass over `inputs` (T·m tokens, time-major); returns the logits (T·m × V).
  const Matrix& forward(const std::vector<int>& inputs, Eigen::Index steps, Eigen::Index batch) {
    if (static_cast<Eigen::Index>(inputs.size()) != steps * batch) {
      throw std::invalid_argument("RecurrentLanguageModel::forward: " + std::to_string(inputs.size()) +
                                  " tokens for " + std::to_string(steps) + " steps of " +
                                  std::to_string(batch) + " sequences");
    }
    steps_ = steps;
    batch_ = batch;
    one_hot(inputs, vocabulary_, x_);
    const Matrix* h = &x_;
    for (auto& l : layers_) h = &l->forward(*h, steps, batch);
    output_.forward(*h, logits_);
    return logits_;
  }

  /// Mean per-token cross-entropy (nats) of `targets` at the current parameters (forward
  /// only).
  Scalar loss(const std::vector<int>& inputs, const std::vector<int>& targets, Eigen::Index steps,
              Eigen::Index batch) {
    return softmax_cross_entropy<Scalar>(forward(inputs, steps, batch), targets, nullptr);
  }

  /// Training pass: forward, then BPTT of the data targets; fills dW, db (of h(θ) =
  /// T · returned loss) and every block's g. Returns the mean per-token loss (nats).
  Scalar loss_and_gradient(const std::vector<int>& inputs, const std::vector<int>& targets,
                           Eigen::Index steps, Eigen::Index batch) {
    const Scalar loss = softmax_cross_entropy<Scalar>(forward(inputs, steps, batch), targets, &output_.g);
    backward(RecurrentGradients::Compute);
    return loss;
  }

  /// Fisher pass after a forward (e.g. loss_and_gradient) on the same batch: draws
  /// y_t ~ softmax(z_t) for every row and back-propagates them; only the g's change (dW,
  /// db stay those of the training pass). The drawn targets are in sampled_targets().
  template <typename Rng>
  void fisher_pass(Rng& rng) {
    if (steps_ == 0) throw std::logic_error("RecurrentLanguageModel::fisher_pass before forward");
    sample_softmax_gradient<Scalar>(logits_, rng, output_.g);
    sampled_.resize(static_cast<std::size_t>(output_.g.rows()));
    for (Eigen::Index r = 0; r < output_.g.rows(); ++r) {
      Eigen::Index y = 0;
      output_.g.row(r).minCoeff(&y);  // the only negative entry: p_y − 1
      sampled_[static_cast<std::size_t>(r)] = static_cast<int>(y);
    }
    backward(RecurrentGradients::Skip);
  }
  const std::vector<int>& sampled_targets() const { return sampled_; }

  Eigen::Index steps() const { return steps_; }
  Eigen::Index batch() const { return batch_; }

 private:
  void backward(RecurrentGradients what) {
    output_.backward(batch_, dh_, what);
    for (std::size_t l = layers_.size(); l-- > 0;) {
      layers_[l]->backward(dh_, l > 0 ? &dx_ : nullptr, what);
      if (l > 0) std::swap(dh_, dx_);
    }
  }

  Eigen::Index vocabulary_;
  std::vector<std::unique_ptr<Layer>> layers_;
  SharedOutputLayer<Scalar> output_;
  Eigen::Index steps_ = 0, batch_ = 0;
  Matrix x_, logits_, dh_, dx_;
  std::vector<int> sampled_;
};

}  // namespace kfopt_examples
