#pragma once
/// \file mlp.hpp
/// \brief A small multilayer perceptron for the examples: dense layers, four activations,
/// a forward pass over a mini-batch and a backward pass that exposes what K-FAC needs.
///
/// Notation (rows are examples, m = batch size):
///
///     a_1 = x                         input of layer 1, m×in
///     s_l = a_l W_lᵀ + 1 b_lᵀ         pre-activation, m×out   (W_l is out×in, b_l is out)
///     a_{l+1} = φ_l(s_l)              output of layer l = input of layer l+1
///
/// The backward pass starts from the per-example gradient of the loss with respect to the
/// network's output, ∂ℓ_i/∂a_{L+1}, and computes for every layer
///
///     g_l = ∂ℓ_i/∂s_l                 per-example pre-activation gradient, m×out
///     g_{l-1} = (g_l W_l) ⊙ φ'_{l-1}(s_{l-1})
///
/// and, when asked, the gradients of the *mean* loss L = (1/m) Σ_i ℓ_i:
///
///     dW_l = g_lᵀ a_l / m             db_l = (1/m) Σ_i g_l[i, :]
///
/// `g_l` is deliberately not divided by m: K-FAC's factor G_l = E[g gᵀ] is an average of
/// per-example outer products, and `a_l`, `g_l` are exactly the statistics the K-FAC API
/// takes (`record_statistics(id, a, g)`).
///
/// Cost of one forward pass: 2·m·Σ_l in_l·out_l flops. A backward pass with parameter
/// gradients costs about twice that; one without (a Fisher pass) about the same as the forward.
/// The input gradient of the first layer is never formed (nobody needs ∂ℓ/∂x).
///
/// This is example code, not part of the kfopt library: kfopt never includes it.

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfopt_examples {

/// Elementwise nonlinearity of a dense layer.
enum class Activation { Identity, Tanh, Sigmoid, Relu };

/// Name used in logs and command lines ("identity", "tanh", "sigmoid", "relu").
inline const char* to_string(Activation f) {
  switch (f) {
    case Activation::Identity:
      return "identity";
    case Activation::Tanh:
      return "tanh";
    case Activation::Sigmoid:
      return "sigmoid";
    case Activation::Relu:
      return "relu";
  }
  return "unknown";
}

/// Parses an activation name; throws std::invalid_argument listing the valid names.
inline Activation activation_from_string(const std::string& name) {
  if (name == "identity") return Activation::Identity;
  if (name == "tanh") return Activation::Tanh;
  if (name == "sigmoid") return Activation::Sigmoid;
  if (name == "relu") return Activation::Relu;
  throw std::invalid_argument("unknown activation '" + name +
                              "' (expected identity, tanh, sigmoid or relu)");
}

/// Numerically stable logistic function 1/(1 + e^{-x}): never evaluates e^{+large}.
template <typename Scalar>
Scalar sigmoid(Scalar x) {
  if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + std::exp(-x));
  const Scalar e = std::exp(x);
  return e / (Scalar(1) + e);
}

/// One dense layer a ↦ φ(a Wᵀ + 1 bᵀ): its parameters, their gradients, and the
/// forward/backward caches of the last mini-batch.
///
/// W, b, dW, db are plain Eigen members so that an optimizer can hold references to them
/// (kfopt::ParameterSet::add, Kfac::add_dense_layer). They keep their shapes for the
/// lifetime of the layer.
template <typename Scalar>
struct DenseLayer {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  Matrix W;   ///< weights, out×in
  Vector b;   ///< biases, out
  Matrix dW;  ///< gradient of the mean loss w.r.t. W (filled by Mlp::backward)
  Vector db;  ///< gradient of the mean loss w.r.t. b
  Activation activation = Activation::Identity;

  Matrix a;  ///< input of the last forward pass, m×in
  Matrix s;  ///< pre-activation s = a Wᵀ + 1 bᵀ, m×out
  Matrix h;  ///< output φ(s), m×out (the next layer's input is a copy of this)
  Matrix g;  ///< per-example pre-activation gradient ∂ℓ_i/∂s of the last backward pass, m×out

  DenseLayer(Eigen::Index in, Eigen::Index out, Activation f)
      : W(Matrix::Zero(out, in)),
        b(Vector::Zero(out)),
        dW(Matrix::Zero(out, in)),
        db(Vector::Zero(out)),
        activation(f) {}

  Eigen::Index inputs() const { return W.cols(); }
  Eigen::Index outputs() const { return W.rows(); }
};

/// A stack of dense layers with a forward pass on a mini-batch and a backward pass that
/// exposes each layer's `a` and `g` (see mlp.hpp for the equations).
template <typename Scalar>
class Mlp {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Layer = DenseLayer<Scalar>;

  /// What the backward pass computes besides the per-example `g` of every layer.
  enum class ParameterGradients {
    Compute,  ///< also dW, db of the mean loss (a training step)
    Skip,     ///< only g (a Fisher pass with sampled targets: dW, db stay as they were)
  };

  /// Layer sizes {n_0, n_1, ..., n_L} and one activation per layer (L of them).
  /// Parameters start at zero; call `initialize`.
  Mlp(const std::vector<Eigen::Index>& sizes, const std::vector<Activation>& activations) {
    if (sizes.size() < 2 || activations.size() != sizes.size() - 1) {
      throw std::invalid_argument("Mlp: need L+1 layer sizes and L activations, got " +
                                  std::to_string(sizes.size()) + " sizes and " +
                                  std::to_string(activations.size()) + " activations");
    }
    layers_.reserve(activations.size());
    for (std::size_t l = 0; l < activations.size(); ++l) {
      if (sizes[l] <= 0 || sizes[l + 1] <= 0) {
        throw std::invalid_argument("Mlp: layer sizes must be positive");
      }
      layers_.emplace_back(sizes[l], sizes[l + 1], activations[l]);
    }
  }

  /// Random initialization, zero biases. Weights are uniform on [−r, r] with
  /// r = sqrt(6/(in + out)) (Glorot & Bengio 2010) for identity/tanh/sigmoid layers and
  /// r = sqrt(6/in) (He et al. 2015, uniform form) for relu layers.
  void initialize(std::mt19937& rng) {
    for (auto& layer : layers_) {
      const double fan_in = static_cast<double>(layer.inputs());
      const double fan_out = static_cast<double>(layer.outputs());
      const double r = layer.activation == Activation::Relu ? std::sqrt(6.0 / fan_in)
                                                            : std::sqrt(6.0 / (fan_in + fan_out));
      std::uniform_real_distribution<double> uniform(-r, r);
      for (Eigen::Index j = 0; j < layer.W.cols(); ++j) {
        for (Eigen::Index i = 0; i < layer.W.rows(); ++i) {
          layer.W(i, j) = static_cast<Scalar>(uniform(rng));
        }
      }
      layer.b.setZero();
      layer.dW.setZero();
      layer.db.setZero();
    }
  }

  /// Forward pass on a mini-batch x (m×n_0, rows are examples). Keeps every layer's input
  /// `a`, pre-activation `s` and output `h`; returns the network's output (m×n_L).
  const Matrix& forward(const Eigen::Ref<const Matrix>& x) {
    if (x.cols() != input_size()) {
      throw std::invalid_argument("Mlp::forward: input has " + std::to_string(x.cols()) +
                                  " columns but the network takes " + std::to_string(input_size()));
    }
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      Layer& layer = layers_[l];
      if (l == 0) {
        layer.a = x;
      } else {
        layer.a = layers_[l - 1].h;
      }
      layer.s.noalias() = layer.a * layer.W.transpose();
      layer.s.rowwise() += layer.b.transpose();
      apply_activation(layer.activation, layer.s, layer.h);
    }
    return layers_.back().h;
  }

  /// Backward pass from `output_grad` = ∂ℓ_i/∂(output), m×n_L, one row per example of the
  /// last forward pass, gradients of the *per-example* losses. Fills every layer's `g`; with
  /// ParameterGradients::Compute also dW = gᵀa/m and db = mean of g (gradients of the mean
  /// loss). For a loss on logits with an identity output layer, `output_grad` is the loss's
  /// gradient with respect to the logits (e.g. softmax(z) − onehot(y)).
  void backward(const Eigen::Ref<const Matrix>& output_grad,
                ParameterGradients mode = ParameterGradients::Compute) {
    Layer& top = layers_.back();
    if (output_grad.rows() != top.h.rows() || output_grad.cols() != top.h.cols()) {
      throw std::invalid_argument(
          "Mlp::backward: output gradient is " + std::to_string(output_grad.rows()) + "x" +
          std::to_string(output_grad.cols()) + " but the last forward pass produced " +
          std::to_string(top.h.rows()) + "x" + std::to_string(top.h.cols()));
    }
    const Scalar inv_m = Scalar(1) / static_cast<Scalar>(output_grad.rows());
    top.g = output_grad;
    multiply_by_derivative(top.activation, top.s, top.h, top.g);
    for (std::size_t l = layers_.size(); l-- > 0;) {
      Layer& layer = layers_[l];
      if (mode == ParameterGradients::Compute) {
        layer.dW.noalias() = inv_m * (layer.g.transpose() * layer.a);
        layer.db.noalias() = inv_m * layer.g.colwise().sum().transpose();
      }
      if (l == 0) break;  // no one needs the gradient with respect to the data
      Layer& below = layers_[l - 1];
      below.g.noalias() = layer.g * layer.W;  // ∂ℓ_i/∂a_l, then times φ'(s_{l-1})
      multiply_by_derivative(below.activation, below.s, below.h, below.g);
    }
  }

  std::size_t depth() const { return layers_.size(); }
  Layer& layer(std::size_t l) { return layers_[l]; }
  const Layer& layer(std::size_t l) const { return layers_[l]; }
  std::vector<Layer>& layers() { return layers_; }
  const std::vector<Layer>& layers() const { return layers_; }
  Eigen::Index input_size() const { return layers_.front().inputs(); }
  Eigen::Index output_size() const { return layers_.back().outputs(); }

  /// Number of trainable scalars (weights and biases).
  Eigen::Index parameter_count() const {
    Eigen::Index n = 0;
    for (const auto& layer : layers_) n += layer.W.size() + layer.b.size();
    return n;
  }

  /// "784-1000-500-...": the layer sizes joined by dashes.
  std::string shape_string() const {
    std::string s = std::to_string(input_size());
    for (const auto& layer : layers_) s += "-" + std::to_string(layer.outputs());
    return s;
  }

 private:
  static void apply_activation(Activation f, const Matrix& s, Matrix& h) {
    switch (f) {
      case Activation::Identity:
        h = s;
        break;
      case Activation::Tanh:
        h = s.array().tanh();
        break;
      case Activation::Sigmoid:
        h = s.unaryExpr([](Scalar x) { return sigmoid(x); });
        break;
      case Activation::Relu:
        h = s.cwiseMax(Scalar(0));
        break;
    }
  }

  /// grad ← grad ⊙ φ'(s), with φ' written through the cached output h where that is cheaper.
  static void multiply_by_derivative(Activation f, const Matrix& s, const Matrix& h, Matrix& grad) {
    switch (f) {
      case Activation::Identity:
        break;
      case Activation::Tanh:
        grad.array() *= Scalar(1) - h.array().square();
        break;
      case Activation::Sigmoid:
        grad.array() *= h.array() * (Scalar(1) - h.array());
        break;
      case Activation::Relu:
        grad.array() *= (s.array() > Scalar(0)).template cast<Scalar>();
        break;
    }
  }

  std::vector<Layer> layers_;
};

}  // namespace kfopt_examples
