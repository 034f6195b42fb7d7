#pragma once
/// \file losses.hpp
/// \brief The examples' two losses on logits, in canonical-link form, and the targets
/// sampled from the model's predictive distribution that give K-FAC its true Fisher.
///
/// Both losses are negative log-likelihoods of an exponential family with its canonical
/// link, so the per-example gradient with respect to the logits z is simply
///
///     ∂ℓ_i/∂z_i = μ(z_i) − y_i          (μ = softmax or the logistic function)
///
/// with no division by p(1 − p) anywhere. The returned loss is the mean over examples;
/// the gradient rows are per-example (not divided by the batch size), ready for
/// Mlp::backward.
///
/// **Fisher targets.** The Fisher information of the model's predictive distribution is
/// F = E_x E_{y ~ p(y|x,θ)} [∇ℓ ∇ℓᵀ]. K-FAC's G factor must be estimated from gradients
/// whose targets y are *sampled from the model* (`sample_*_gradient` below) — the "true
/// Fisher". Using the data's own targets instead gives the "empirical Fisher", a different
/// matrix that is not a curvature estimate in general; the examples offer it only as an
/// explicit choice (`--fisher empirical`).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlp.hpp"

namespace kfopt_examples {

namespace detail {

/// softplus(z) = log(1 + e^z), evaluated without overflow: max(z, 0) + log1p(e^{−|z|}).
template <typename Scalar>
Scalar softplus(Scalar z) {
  return std::max(z, Scalar(0)) + std::log1p(std::exp(-std::abs(z)));
}

template <typename Matrix>
void require_same_shape(const char* operation, const Matrix& logits, Eigen::Index rows,
                        Eigen::Index cols) {
  if (logits.rows() != rows || logits.cols() != cols) {
    throw std::invalid_argument(std::string(operation) + ": targets are " + std::to_string(rows) +
                                "x" + std::to_string(cols) + " but the logits are " +
                                std::to_string(logits.rows()) + "x" +
                                std::to_string(logits.cols()));
  }
}

}  // namespace detail

/// Row-wise softmax of z (m×C), shifted by each row's maximum so that no exponent is positive.
template <typename Scalar>
void softmax_rows(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& z,
                  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& p) {
  p = (z.colwise() - z.rowwise().maxCoeff()).array().exp();
  p.array().colwise() /= p.rowwise().sum().array();
}

/// Softmax cross-entropy of a classifier: ℓ_i = logsumexp(z_i) − z_{i, y_i}.
/// Returns the mean over the m rows of `logits` (m×C); if `grad` is not null it receives
/// the per-example gradient softmax(z_i) − onehot(y_i) (m×C). Labels must lie in [0, C).
template <typename Scalar>
Scalar softmax_cross_entropy(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& logits,
                             const std::vector<int>& labels,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>* grad) {
  const Eigen::Index m = logits.rows();
  const Eigen::Index classes = logits.cols();
  if (static_cast<Eigen::Index>(labels.size()) != m) {
    throw std::invalid_argument("softmax_cross_entropy: " + std::to_string(labels.size()) +
                                " labels for " + std::to_string(m) + " rows of logits");
  }
  double total = 0.0;
  for (Eigen::Index i = 0; i < m; ++i) {
    const int y = labels[static_cast<std::size_t>(i)];
    if (y < 0 || y >= classes) {
      throw std::invalid_argument("softmax_cross_entropy: label " + std::to_string(y) +
                                  " outside [0, " + std::to_string(classes) + ")");
    }
    const Scalar zmax = logits.row(i).maxCoeff();
    const Scalar lse = zmax + std::log((logits.row(i).array() - zmax).exp().sum());
    total += static_cast<double>(lse - logits(i, y));
  }
  if (grad != nullptr) {
    softmax_rows(logits, *grad);
    for (Eigen::Index i = 0; i < m; ++i)
      (*grad)(i, labels[static_cast<std::size_t>(i)]) -= Scalar(1);
  }
  return static_cast<Scalar>(total / static_cast<double>(m));
}

/// Bernoulli cross-entropy on logits (the autoencoder's reconstruction loss):
/// ℓ_i = Σ_p [softplus(z_ip) − y_ip z_ip], summed over the outputs p (pixels) of an example,
/// for targets y ∈ [0, 1] (pixel intensities). Returns the mean over the m examples; if
/// `grad` is not null it receives the per-example gradient σ(z) − y (m×P).
template <typename Scalar>
Scalar bernoulli_cross_entropy(
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& logits,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& targets,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>* grad) {
  detail::require_same_shape("bernoulli_cross_entropy", logits, targets.rows(), targets.cols());
  double total = 0.0;
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    for (Eigen::Index i = 0; i < logits.rows(); ++i) {
      const Scalar z = logits(i, j);
      total += static_cast<double>(detail::softplus(z) - targets(i, j) * z);
    }
  }
  if (grad != nullptr) {
    *grad = logits.unaryExpr([](Scalar z) { return sigmoid(z); }) - targets;
  }
  return static_cast<Scalar>(total / static_cast<double>(logits.rows()));
}

/// Fisher pass of a classifier: draws y_i ~ Categorical(softmax(z_i)) for every row and
/// writes softmax(z_i) − onehot(y_i) into `grad` (m×C). Its expected outer product is the
/// Fisher diag(p) − p pᵀ of the softmax likelihood.
template <typename Scalar, typename Rng>
void sample_softmax_gradient(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& logits,
                             Rng& rng,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& grad) {
  softmax_rows(logits, grad);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (Eigen::Index i = 0; i < grad.rows(); ++i) {
    // Inverse-CDF sampling; the last class takes whatever rounding leaves over.
    const double u = uniform(rng);
    double cumulative = 0.0;
    Eigen::Index y = grad.cols() - 1;
    for (Eigen::Index c = 0; c + 1 < grad.cols(); ++c) {
      cumulative += static_cast<double>(grad(i, c));
      if (u < cumulative) {
        y = c;
        break;
      }
    }
    grad(i, y) -= Scalar(1);
  }
}

/// Fisher pass of the Bernoulli loss: draws y_ip ~ Bernoulli(σ(z_ip)) independently and
/// writes σ(z) − y into `grad` (m×P). Its expected outer product is diag(σ(1 − σ)).
template <typename Scalar, typename Rng>
void sample_bernoulli_gradient(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& logits,
                               Rng& rng,
                               Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& grad) {
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  grad.resize(logits.rows(), logits.cols());
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    for (Eigen::Index i = 0; i < logits.rows(); ++i) {
      const Scalar p = sigmoid(logits(i, j));
      const Scalar y = uniform(rng) < static_cast<double>(p) ? Scalar(1) : Scalar(0);
      grad(i, j) = p - y;
    }
  }
}

/// Fraction of rows whose largest logit is at the label's index.
template <typename Scalar>
double accuracy(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& logits,
                const std::vector<int>& labels) {
  if (logits.rows() == 0) return 0.0;
  Eigen::Index correct = 0;
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    Eigen::Index best = 0;
    logits.row(i).maxCoeff(&best);
    if (best == labels[static_cast<std::size_t>(i)]) ++correct;
  }
  return static_cast<double>(correct) / static_cast<double>(logits.rows());
}

/// Reconstruction error of an autoencoder with sigmoid outputs: the mean over the rows of
/// Σ_p (σ(z_ip) − x_ip)², the summed squared pixel error per image.
template <typename Scalar>
double squared_reconstruction_error(
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& logits,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& images) {
  detail::require_same_shape("squared_reconstruction_error", logits, images.rows(), images.cols());
  if (logits.rows() == 0) return 0.0;
  double total = 0.0;
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    for (Eigen::Index i = 0; i < logits.rows(); ++i) {
      const double d = static_cast<double>(sigmoid(logits(i, j)) - images(i, j));
      total += d * d;
    }
  }
  return total / static_cast<double>(logits.rows());
}

}  // namespace kfopt_examples
