#pragma once
/// \file recurrent_cells.hpp
/// \brief Recurrent layers for the examples — a tanh RNN and an LSTM — with
/// backpropagation through time (BPTT) over time-major mini-batches of sequences, exposing
/// per-time-step layer inputs `a_t` and pre-activation gradients `g_t` for RNN K-FAC
/// (Martens, Ba & Johnson 2018, §3.1: `s_t = W a_t`, `g_t = D s_t`, `DW = Σ_t g_t a_tᵀ`).
///
/// ## Layout (the layout of Kfac::record_sequence_statistics)
/// A mini-batch holds m sequences of T steps. Every per-step quantity is a matrix with
/// T·m rows, **time-major**: row `t·m + i` is step t of sequence i. Columns are features.
///
/// ## Weights and the homogeneous coordinate
/// Every weight block computes `s_t = W a_t + b` with `a_t = [x_t, h_{t−1}]` (the layer's
/// input at step t next to its own previous output, `h_{−1} = 0`), W of size
/// out × (in + hidden), b of size out. `inputs()` returns the a_t rows *without* the
/// homogeneous 1: Kfac::add_recurrent_layer(W, dW, b, db) registers the bias and the block
/// appends the 1 itself (RecurrentKroneckerBlockOptions::bias, the paper's "a includes a
/// homogeneous coordinate", §2.3), so the A factors are (in + hidden + 1)².
///
/// ## Gradient convention
/// A training case is a whole sequence; its loss is the sum of its per-step losses
/// (the paper's single-case loss L, §2.1 and eq. 3). The backward pass takes the
/// per-case gradient of that loss with respect to the layer's outputs h_t, computes
///
///     g_t = D s_t (per case, not divided by m)
///
/// and, when asked, the gradients of the objective h(θ) = (1/m) Σ_i L_i:
///
///     dW = (1/m) Σ_i Σ_t g_{t,i} a_{t,i}ᵀ = Gᵀ A / m,     db = (1/m) Σ_i Σ_t g_{t,i}
///
/// (G, A the T·m-row matrices), i.e. `DW = Σ_t g_t a_tᵀ` of §3.1 averaged over the cases.
///
/// ## Costs (per mini-batch, n = in + hidden, H = hidden, k blocks: 1 for tanh, 4 LSTM)
/// Forward `2·T·m·k·H·n` flops; backward with parameter gradients about twice that; a
/// Fisher pass (no parameter gradients) about the same as the forward. Input-to-gate
/// products are done for all steps at once (one large product); only the recurrent part
/// `h_{t−1} W_hᵀ` runs step by step.
///
/// Example code, not part of the kfopt library.

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>

namespace kfopt_examples {

namespace detail {

template <typename Derived>
void check_sequence_rows(const char* op, const Eigen::MatrixBase<Derived>& x, Eigen::Index cols,
                         Eigen::Index steps, Eigen::Index batch) {
  if (steps <= 0 || batch <= 0 || x.rows() != steps * batch || x.cols() != cols) {
    throw std::invalid_argument(std::string(op) + ": input is " + std::to_string(x.rows()) + "x" +
                                std::to_string(x.cols()) + " but " + std::to_string(steps) +
                                " steps of " + std::to_string(batch) + " sequences need " +
                                std::to_string(steps * batch) + "x" + std::to_string(cols) +
                                " (time-major, row t*m + i)");
  }
}

/// Elementwise logistic function on an array, without overflow for large |x|.
template <typename Derived>
auto logistic(const Eigen::ArrayBase<Derived>& x) {
  return (typename Derived::Scalar(0.5) * x).tanh() * typename Derived::Scalar(0.5) +
         typename Derived::Scalar(0.5);
}

}  // namespace detail

/// What a backward pass computes besides the per-step g_t.
enum class RecurrentGradients {
  Compute,  ///< also dW, db of the objective (a training step)
  Skip,     ///< only g_t (a Fisher pass with sampled targets: dW, db stay as they were)
};

/// Weights of one gate (or of a tanh RNN): `s_t = W [x_t, h_{t−1}] + b`. Plain members so
/// that an optimizer can hold references to them; shapes are fixed for the layer's life.
template <typename Scalar>
struct RecurrentWeights {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  Matrix W;   ///< hidden × (in + hidden): input columns first, then recurrent columns
  Vector b;   ///< hidden
  Matrix dW;  ///< gradient of the objective (see the file comment)
  Vector db;
  Matrix g;   ///< per-step pre-activation gradients D s_t of the last backward, T·m × hidden

  RecurrentWeights(Eigen::Index in, Eigen::Index hidden)
      : W(Matrix::Zero(hidden, in + hidden)),
        b(Vector::Zero(hidden)),
        dW(Matrix::Zero(hidden, in + hidden)),
        db(Vector::Zero(hidden)) {}

  /// Uniform in ±1/sqrt(in + hidden) (the fan-in of a_t), bias `bias`.
  template <typename Rng>
  void initialize(Rng& rng, Scalar bias) {
    const double r = 1.0 / std::sqrt(static_cast<double>(W.cols()));
    std::uniform_real_distribution<double> u(-r, r);
    for (Eigen::Index j = 0; j < W.cols(); ++j)
      for (Eigen::Index i = 0; i < W.rows(); ++i) W(i, j) = static_cast<Scalar>(u(rng));
    b.setConstant(bias);
  }

  /// dW = Gᵀ A / m, db = colsum(G) / m.
  void parameter_gradients(const Matrix& a, Eigen::Index batch) {
    const Scalar inv_m = Scalar(1) / static_cast<Scalar>(batch);
    dW.noalias() = g.transpose() * a;
    dW *= inv_m;
    db = g.colwise().sum().transpose() * inv_m;
  }
};

/// Shared plumbing of the two cells: sizes, the a_t matrix and the weight blocks.
template <typename Scalar, int Blocks>
class RecurrentCellBase {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Weights = RecurrentWeights<Scalar>;
  static constexpr int blocks = Blocks;

  Eigen::Index input_size() const { return in_; }
  Eigen::Index hidden_size() const { return hidden_; }
  /// Columns of a_t (without the homogeneous 1): in + hidden.
  Eigen::Index fan_in() const { return in_ + hidden_; }
  /// Number of weight blocks (1 for tanh, 4 for the LSTM); each is its own K-FAC block.
  static constexpr int num_blocks() { return Blocks; }
  Weights& block(int k) { return weights_.at(static_cast<std::size_t>(k)); }
  const Weights& block(int k) const { return weights_.at(static_cast<std::size_t>(k)); }

  /// a_t = [x_t, h_{t−1}] of the last forward pass, T·m × (in + hidden), time-major,
  /// without the homogeneous 1 (the K-FAC block adds it).
  const Matrix& inputs() const { return a_; }
  /// g_t = D s_t of block k from the last backward pass, T·m × hidden.
  const Matrix& preactivation_gradient(int k) const { return block(k).g; }
  /// h_t of the last forward pass, T·m × hidden.
  const Matrix& output() const { return h_; }
  Eigen::Index steps() const { return steps_; }
  Eigen::Index batch() const { return batch_; }

 protected:
  RecurrentCellBase(Eigen::Index in, Eigen::Index hidden)
      : in_(in), hidden_(hidden), weights_(make_weights(in, hidden)) {
    if (in <= 0 || hidden <= 0) throw std::invalid_argument("recurrent layer: sizes must be positive");
  }

  static std::array<Weights, Blocks> make_weights(Eigen::Index in, Eigen::Index hidden) {
    return make_weights(in, hidden, std::make_index_sequence<Blocks>());
  }
  template <std::size_t... I>
  static std::array<Weights, Blocks> make_weights(Eigen::Index in, Eigen::Index hidden,
                                                  std::index_sequence<I...>) {
    return {{((void)I, Weights(in, hidden))...}};
  }

  /// Stores x into a_'s input columns and starts s_k = x W_{k,x}ᵀ + b_k for every block
  /// (all steps in one product); the recurrent part is added step by step by the cell.
  template <typename Derived>
  void begin_forward(const char* op, const Eigen::MatrixBase<Derived>& x, Eigen::Index steps,
                     Eigen::Index batch, std::array<Matrix, Blocks>& s) {
    detail::check_sequence_rows(op, x, in_, steps, batch);
    steps_ = steps;
    batch_ = batch;
    const Eigen::Index rows = steps * batch;
    a_.resize(rows, fan_in());
    a_.leftCols(in_) = x;
    a_.block(0, in_, batch, hidden_).setZero();  // h_{−1} = 0
    h_.resize(rows, hidden_);
    for (int k = 0; k < Blocks; ++k) {
      s[k].noalias() = x * block(k).W.leftCols(in_).transpose();
      s[k].rowwise() += block(k).b.transpose();
    }
  }

  /// Adds h_{t−1} W_{k,h}ᵀ to rows of step t (t ≥ 1) and records h_{t−1} in a_.
  void recurrent_input(Eigen::Index t, std::array<Matrix, Blocks>& s) {
    if (t == 0) return;
    const Eigen::Index r = t * batch_, m = batch_;
    a_.block(r, in_, m, hidden_) = h_.middleRows(r - m, m);
    for (int k = 0; k < Blocks; ++k) {
      s[k].middleRows(r, m).noalias() += h_.middleRows(r - m, m) * block(k).W.rightCols(hidden_).transpose();
    }
  }

  /// Σ_k g_k(t) W_{k,h}: the gradient reaching h_{t−1} through the recurrent weights.
  void recurrent_gradient(Eigen::Index t, Matrix& dh_prev) const {
    const Eigen::Index r = t * batch_, m = batch_;
    dh_prev.noalias() = block(0).g.middleRows(r, m) * block(0).W.rightCols(hidden_);
    for (int k = 1; k < Blocks; ++k) {
      dh_prev.noalias() += block(k).g.middleRows(r, m) * block(k).W.rightCols(hidden_);
    }
  }

  /// After the time loop: dX = Σ_k G_k W_{k,x} (if asked) and dW, db (if asked).
  void end_backward(Matrix* dx, RecurrentGradients what) {
    if (dx != nullptr) {
      dx->noalias() = block(0).g * block(0).W.leftCols(in_);
      for (int k = 1; k < Blocks; ++k) dx->noalias() += block(k).g * block(k).W.leftCols(in_);
    }
    if (what == RecurrentGradients::Compute) {
      for (int k = 0; k < Blocks; ++k) block(k).parameter_gradients(a_, batch_);
    }
  }

  template <typename Derived>
  void check_output_gradient(const char* op, const Eigen::MatrixBase<Derived>& dh) const {
    if (steps_ == 0) throw std::logic_error(std::string(op) + ": backward before forward");
    detail::check_sequence_rows(op, dh, hidden_, steps_, batch_);
  }

  Eigen::Index in_, hidden_;
  Eigen::Index steps_ = 0, batch_ = 0;
  std::array<Weights, Blocks> weights_;
  Matrix a_;  // T·m × (in + hidden)
  Matrix h_;  // T·m × hidden
};

/// Elman RNN with tanh units: `s_t = W [x_t, h_{t−1}] + b`, `h_t = tanh(s_t)`. One weight
/// block. BPTT: `g_t = (D h_t) ⊙ (1 − h_t²)`, `D h_{t−1} += g_t W_h`.
template <typename Scalar>
class TanhRnnLayer : public RecurrentCellBase<Scalar, 1> {
  using Base = RecurrentCellBase<Scalar, 1>;

 public:
  using typename Base::Matrix;
  TanhRnnLayer(Eigen::Index in, Eigen::Index hidden) : Base(in, hidden) {}

  static const char* block_name(int) { return "W"; }

  template <typename Rng>
  void initialize(Rng& rng) {
    this->block(0).initialize(rng, Scalar(0));
  }

  /// Runs the layer over x (T·m × in); returns h (T·m × hidden).
  template <typename Derived>
  const Matrix& forward(const Eigen::MatrixBase<Derived>& x, Eigen::Index steps, Eigen::Index batch) {
    this->begin_forward("TanhRnnLayer::forward", x, steps, batch, s_);
    const Eigen::Index m = batch;
    for (Eigen::Index t = 0; t < steps; ++t) {
      this->recurrent_input(t, s_);
      this->h_.middleRows(t * m, m) = s_[0].middleRows(t * m, m).array().tanh();
    }
    return this->h_;
  }

  /// BPTT from dh = D h_t (T·m × hidden, per case, from the layers above). Fills g; if
  /// `dx` is given, D x_t (T·m × in); dW, db per `what`.
  template <typename Derived>
  void backward(const Eigen::MatrixBase<Derived>& dh, Matrix* dx, RecurrentGradients what) {
    this->check_output_gradient("TanhRnnLayer::backward", dh);
    const Eigen::Index m = this->batch_, H = this->hidden_;
    Matrix& g = this->block(0).g;
    g.resize(this->steps_ * m, H);
    Matrix carry = Matrix::Zero(m, H);  // D h_t through h_{t+1}
    for (Eigen::Index t = this->steps_ - 1; t >= 0; --t) {
      const Eigen::Index r = t * m;
      g.middleRows(r, m) = (dh.middleRows(r, m) + carry).array() *
                           (Scalar(1) - this->h_.middleRows(r, m).array().square());
      if (t > 0) this->recurrent_gradient(t, carry);
    }
    this->end_backward(dx, what);
  }

 private:
  std::array<Matrix, 1> s_;
};

/// Gates of an LSTM layer, in the order of its weight blocks.
enum LstmGate : int { kInputGate = 0, kForgetGate = 1, kOutputGate = 2, kCandidate = 3 };

/// LSTM (Hochreiter & Schmidhuber 1997, with a forget gate), four separate weight blocks
/// (input gate i, forget gate f, output gate o, candidate c̃) so that each is its own
/// K-FAC block, as in the paper's experiments (RNN K-FAC §4):
///
///     i_t = σ(W_i a_t + b_i)   f_t = σ(W_f a_t + b_f)   o_t = σ(W_o a_t + b_o)
///     c̃_t = tanh(W_c a_t + b_c)   c_t = f_t ⊙ c_{t−1} + i_t ⊙ c̃_t   h_t = o_t ⊙ tanh(c_t)
///
/// with a_t = [x_t, h_{t−1}], h_{−1} = c_{−1} = 0. BPTT (δ = D, per case):
///
///     δh_t = D h_t (from above) + Σ_k g_{k,t+1} W_{k,h}
///     g_o = δh ⊙ tanh(c) ⊙ o(1−o)        δc_t = δh ⊙ o ⊙ (1 − tanh²c) + δc_{t+1} ⊙ f_{t+1}
///     g_i = δc ⊙ c̃ ⊙ i(1−i)   g_f = δc ⊙ c_{t−1} ⊙ f(1−f)   g_c = δc ⊙ i ⊙ (1 − c̃²)
template <typename Scalar>
class LstmLayer : public RecurrentCellBase<Scalar, 4> {
  using Base = RecurrentCellBase<Scalar, 4>;

 public:
  using typename Base::Matrix;
  LstmLayer(Eigen::Index in, Eigen::Index hidden) : Base(in, hidden) {}

  static const char* block_name(int k) {
    static const char* names[] = {"input_gate", "forget_gate", "output_gate", "candidate"};
    return names[k];
  }

  /// Uniform ±1/sqrt(in + hidden) weights; forget-gate bias `forget_bias` (1 by default,
  /// so that the cell starts by remembering), other biases 0.
  template <typename Rng>
  void initialize(Rng& rng, Scalar forget_bias = Scalar(1)) {
    for (int k = 0; k < 4; ++k) this->block(k).initialize(rng, k == kForgetGate ? forget_bias : Scalar(0));
  }

  /// Runs the layer over x (T·m × in); returns h (T·m × hidden).
  template <typename Derived>
  const Matrix& forward(const Eigen::MatrixBase<Derived>& x, Eigen::Index steps, Eigen::Index batch) {
    this->begin_forward("LstmLayer::forward", x, steps, batch, act_);
    const Eigen::Index m = batch, H = this->hidden_;
    c_.resize(steps * m, H);
    tanh_c_.resize(steps * m, H);
    for (Eigen::Index t = 0; t < steps; ++t) {
      const Eigen::Index r = t * m;
      this->recurrent_input(t, act_);  // act_ holds the pre-activations s_k until here
      for (int k : {kInputGate, kForgetGate, kOutputGate}) {
        act_[k].middleRows(r, m) = detail::logistic(act_[k].middleRows(r, m).array());
      }
      act_[kCandidate].middleRows(r, m) = act_[kCandidate].middleRows(r, m).array().tanh();
      auto c = c_.middleRows(r, m);
      c = act_[kInputGate].middleRows(r, m).cwiseProduct(act_[kCandidate].middleRows(r, m));
      if (t > 0) c += act_[kForgetGate].middleRows(r, m).cwiseProduct(c_.middleRows(r - m, m));
      tanh_c_.middleRows(r, m) = c.array().tanh();
      this->h_.middleRows(r, m) = act_[kOutputGate].middleRows(r, m).cwiseProduct(tanh_c_.middleRows(r, m));
    }
    return this->h_;
  }

  /// BPTT from dh = D h_t (T·m × hidden, per case). Fills the four g; if `dx` is given,
  /// D x_t (T·m × in); dW, db per `what`.
  template <typename Derived>
  void backward(const Eigen::MatrixBase<Derived>& dh, Matrix* dx, RecurrentGradients what) {
    this->check_output_gradient("LstmLayer::backward", dh);
    const Eigen::Index m = this->batch_, H = this->hidden_, rows = this->steps_ * m;
    for (int k = 0; k < 4; ++k) this->block(k).g.resize(rows, H);
    Matrix dh_carry = Matrix::Zero(m, H), dc_carry = Matrix::Zero(m, H);
    Matrix dht(m, H), dc(m, H);
    for (Eigen::Index t = this->steps_ - 1; t >= 0; --t) {
      const Eigen::Index r = t * m;
      const auto i = act_[kInputGate].middleRows(r, m).array();
      const auto f = act_[kForgetGate].middleRows(r, m).array();
      const auto o = act_[kOutputGate].middleRows(r, m).array();
      const auto cand = act_[kCandidate].middleRows(r, m).array();
      const auto tc = tanh_c_.middleRows(r, m).array();
      dht = dh.middleRows(r, m) + dh_carry;
      this->block(kOutputGate).g.middleRows(r, m) = dht.array() * tc * o * (Scalar(1) - o);
      dc = (dht.array() * o * (Scalar(1) - tc.square())).matrix() + dc_carry;
      this->block(kInputGate).g.middleRows(r, m) = dc.array() * cand * i * (Scalar(1) - i);
      if (t > 0) {
        this->block(kForgetGate).g.middleRows(r, m) =
            dc.array() * c_.middleRows(r - m, m).array() * f * (Scalar(1) - f);
      } else {
        this->block(kForgetGate).g.middleRows(r, m).setZero();  // c_{−1} = 0
      }
      this->block(kCandidate).g.middleRows(r, m) = dc.array() * i * (Scalar(1) - cand.square());
      dc_carry = dc.cwiseProduct(act_[kForgetGate].middleRows(r, m));
      if (t > 0) this->recurrent_gradient(t, dh_carry);
    }
    this->end_backward(dx, what);
  }

 private:
  std::array<Matrix, 4> act_;  // gate values i, f, o, c̃ (pre-activations during forward)
  Matrix c_, tanh_c_;
};

}  // namespace kfopt_examples
