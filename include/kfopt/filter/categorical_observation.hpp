#pragma once
/// \file categorical_observation.hpp
/// \brief Categorical (softmax) observation over K classes: T(y) = one-hot(y), ŷ = p =
/// softmax(z), R(ŷ) = diag(p) − p pᵀ.
///
/// R is singular (its rows sum to zero), so the mean form — which needs R⁻¹ — does not
/// exist; this model is canonical only: the output is the K logits z, ∂ℓ/∂z = p − onehot(y)
/// and the Fisher of z is R itself. Its square root is written in closed form,
///
///     B(i, j) = √p_i (δ_ij − p_j),   Bᵀ B = diag(p) − p pᵀ,
///
/// (row i is √p_i (e_i − p)ᵀ), so no factorization of the singular R is ever attempted and a
/// near-one-hot p (logits ±40 and beyond) gives finite, accurate rows. 1 − p_i is evaluated
/// as Σ_{j≠i} p_j to avoid cancellation. Cost O(K²) for the Fisher and its factor, O(K)
/// otherwise. Ollivier 2018 (arXiv:1703.00209), exponential families, canonical link.

#include <Eigen/Core>
#include <cmath>
#include <sstream>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/observation_model.hpp"

namespace kfopt {

/// Categorical observation model with softmax (canonical) link; see the file comment.
template <typename Scalar_>
class CategoricalObservation {
 public:
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Target = Eigen::Index;  ///< class index in [0, K)
  /// z is the natural parameter (the softmax logits).
  static constexpr ObservationLink link = ObservationLink::Canonical;

  /// K ≥ 2 classes (InvalidInputError otherwise).
  explicit CategoricalObservation(Eigen::Index classes) : classes_(classes) {
    if (classes < 2) {
      std::ostringstream os;
      os << "kfopt::CategoricalObservation: needs at least 2 classes, got " << classes;
      throw InvalidInputError(os.str());
    }
  }

  /// Number of classes.
  Eigen::Index classes() const noexcept { return classes_; }
  /// Size k of the model output z (the logits): the number of classes.
  Eigen::Index output_dim() const noexcept { return classes_; }
  /// Rows of the Fisher square root B: the number of classes.
  Eigen::Index factor_rows() const noexcept { return classes_; }

  /// InvalidInputError unless 0 ≤ y < K.
  Status check_target(const char* op, const Target& y) const {
    if (y < 0 || y >= classes_) {
      std::ostringstream os;
      os << op << ": class index " << y << " is outside [0, " << classes_ << ")";
      throw InvalidInputError(os.str());
    }
    return Status::Success;
  }

  /// Writes the one-hot vector of class `y` into `T` (classes × 1).
  void sufficient_statistic(const Target& y, Eigen::Ref<Vector> T) const {
    detail::require_shape("kfopt::CategoricalObservation::sufficient_statistic", "T", T,
                          classes_, 1);
    check_target("kfopt::CategoricalObservation::sufficient_statistic", y);
    T.setZero();
    T(y) = Scalar(1);
  }

  /// ln Σ_i e^{z_i}, shifted by max z (no overflow).
  Scalar log_normalizer(const Eigen::Ref<const Vector>& z) const {
    const Scalar m = z.maxCoeff();
    Scalar s = Scalar(0);
    for (Eigen::Index i = 0; i < z.size(); ++i) s += std::exp(z(i) - m);
    return m + std::log(s);
  }

  /// ŷ = softmax(z).
  void mean(const Eigen::Ref<const Vector>& z, Eigen::Ref<Vector> p) const {
    const Scalar lse = log_normalizer(z);
    for (Eigen::Index i = 0; i < z.size(); ++i) p(i) = std::exp(z(i) - lse);
  }

  /// R(ŷ) = diag(ŷ) − ŷ ŷᵀ (singular: its rows sum to zero).
  void statistic_covariance(const Eigen::Ref<const Vector>& p, Eigen::Ref<Matrix> R) const {
    const Eigen::Index K = p.size();
    for (Eigen::Index j = 0; j < K; ++j) {
      for (Eigen::Index i = 0; i < K; ++i) R(i, j) = (i == j ? p(i) : Scalar(0)) - p(i) * p(j);
    }
  }

  /// ℓ = ln Σ e^{z_i} − z_y.
  Scalar loss(const Eigen::Ref<const Vector>& z, const Target& y) const {
    return log_normalizer(z) - z(y);
  }

  /// ∂ℓ/∂z = p − onehot(y).
  bool loss_gradient(const Eigen::Ref<const Vector>& z, const Target& y,
                     Eigen::Ref<Vector> grad) const {
    mean(z, grad);
    grad(y) -= Scalar(1);
    return true;
  }

  /// Fisher of z: diag(p) − p pᵀ, with p_i(1 − p_i) evaluated as p_i Σ_{j≠i} p_j.
  void fisher(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> F) const {
    const Eigen::Index K = z.size();
    const Scalar lse = log_normalizer(z);
    for (Eigen::Index i = 0; i < K; ++i) F(i, i) = std::exp(z(i) - lse);  // p on the diagonal
    for (Eigen::Index j = 0; j < K; ++j) {
      for (Eigen::Index i = 0; i < K; ++i) {
        if (i != j) F(i, j) = -F(i, i) * F(j, j);
      }
    }
    Eigen::Index big = -1;
    const Scalar big_complement = complement_of_largest(F.diagonal(), big);
    for (Eigen::Index i = 0; i < K; ++i) {
      F(i, i) *= (i == big ? big_complement : Scalar(1) - F(i, i));
    }
  }

  /// B(i, j) = √p_i (δ_ij − p_j), so Bᵀ B = diag(p) − p pᵀ. Always defined.
  bool fisher_factor(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> B) const {
    const Eigen::Index K = z.size();
    const Scalar lse = log_normalizer(z);
    for (Eigen::Index i = 0; i < K; ++i) B(i, i) = std::exp(z(i) - lse);  // p on the diagonal
    for (Eigen::Index j = 0; j < K; ++j) {
      for (Eigen::Index i = 0; i < K; ++i) {
        if (i != j) B(i, j) = -std::sqrt(B(i, i)) * B(j, j);
      }
    }
    Eigen::Index big = -1;
    const Scalar big_complement = complement_of_largest(B.diagonal(), big);
    for (Eigen::Index i = 0; i < K; ++i) {
      const Scalar pi = B(i, i);
      B(i, i) = std::sqrt(pi) * (i == big ? big_complement : Scalar(1) - pi);
    }
    return true;
  }

 private:
  /// For the (at most one) probability above 1/2, returns 1 − p_big as the sum of the other
  /// probabilities (no cancellation) and sets `big`; otherwise big = −1. O(K).
  template <typename Diag>
  static Scalar complement_of_largest(const Diag& p, Eigen::Index& big) {
    big = -1;
    for (Eigen::Index i = 0; i < p.size(); ++i) {
      if (p(i) > Scalar(0.5)) big = i;
    }
    if (big < 0) return Scalar(0);
    Scalar sum = Scalar(0);
    for (Eigen::Index j = 0; j < p.size(); ++j) {
      if (j != big) sum += p(j);
    }
    return sum;
  }

  Eigen::Index classes_;
};

}  // namespace kfopt
