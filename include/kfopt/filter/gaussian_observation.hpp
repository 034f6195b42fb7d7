#pragma once
/// \file gaussian_observation.hpp
/// \brief Gaussian observation with known covariance Σ (k×k): T(y) = y, ŷ = μ, R = Σ.
///
/// The output z is the mean μ (the natural parameter up to the constant Σ⁻¹; R is fixed and
/// positive definite, so the mean form never divides by a vanishing variance).
/// ∂ℓ/∂μ = Σ⁻¹ (μ − y), Fisher of μ = Σ⁻¹ with square root B = C⁻¹ (Σ = C Cᵀ), so the
/// Kalman update sees the whitened Jacobian C⁻¹ H of the textbook filter. Σ is factored
/// once at construction (O(k³)); per observation the cost is O(k²).
/// Ollivier 2018 (arXiv:1703.00209), exponential families in mean form.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cmath>
#include <sstream>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/observation_model.hpp"

namespace kfopt {

/// Gaussian observation model with known covariance; see the file comment.
template <typename Scalar_>
class GaussianObservation {
 public:
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Target = Eigen::Ref<const Vector>;  ///< y (k)
  /// z is the mean ŷ itself.
  static constexpr ObservationLink link = ObservationLink::Mean;

  /// Σ k×k symmetric positive definite (InvalidInputError otherwise).
  explicit GaussianObservation(const Eigen::Ref<const Matrix>& covariance) {
    set_covariance(covariance);
  }

  /// Isotropic Σ = variance · I_k; variance finite and > 0.
  GaussianObservation(Eigen::Index k, Scalar variance) {
    if (k < 1 || !(variance > Scalar(0)) || !std::isfinite(static_cast<double>(variance))) {
      std::ostringstream os;
      os << "kfopt::GaussianObservation: needs k >= 1 and a finite variance > 0, got k = " << k
         << ", variance = " << variance;
      throw InvalidInputError(os.str());
    }
    set_covariance(Matrix::Identity(k, k) * variance);
  }

  /// Size k of the model output z (the mean).
  Eigen::Index output_dim() const noexcept { return covariance_.rows(); }
  /// Rows of the Fisher square root B: k.
  Eigen::Index factor_rows() const noexcept { return covariance_.rows(); }
  /// Observation noise covariance (k×k).
  const Matrix& covariance() const noexcept { return covariance_; }
  /// Its inverse, the observation precision (k×k).
  const Matrix& precision() const noexcept { return precision_; }

  /// ShapeError unless y has k entries; NonFiniteInput for NaN/Inf.
  Status check_target(const char* op, const Target& y) const {
    detail::require_shape(op, "Gaussian target y", y, output_dim(), 1);
    return y.allFinite() ? Status::Success : Status::NonFiniteInput;
  }

  /// Writes T(y) = y into `T` (k).
  void sufficient_statistic(const Target& y, Eigen::Ref<Vector> T) const { T = y; }

  /// ŷ = μ = z.
  void mean(const Eigen::Ref<const Vector>& z, Eigen::Ref<Vector> yhat) const { yhat = z; }

  /// R(ŷ) = Σ.
  void statistic_covariance(const Eigen::Ref<const Vector>& /*yhat*/,
                            Eigen::Ref<Matrix> R) const {
    R = covariance_;
  }

  /// ℓ = ½ (y − μ)ᵀ Σ⁻¹ (y − μ) + ½ ln det(2π Σ).
  Scalar loss(const Eigen::Ref<const Vector>& z, const Target& y) const {
    const Eigen::Index k = output_dim();
    Scalar q = Scalar(0);
    for (Eigen::Index j = 0; j < k; ++j) {
      Scalar row = Scalar(0);
      for (Eigen::Index i = 0; i < k; ++i) row += precision_(i, j) * (y(i) - z(i));
      q += row * (y(j) - z(j));
    }
    return Scalar(0.5) * q + log_normalizer_;
  }

  /// ∂ℓ/∂μ = Σ⁻¹ (μ − y).
  bool loss_gradient(const Eigen::Ref<const Vector>& z, const Target& y,
                     Eigen::Ref<Vector> grad) const {
    grad.noalias() = precision_ * z;
    grad.noalias() -= precision_ * y;
    return true;
  }

  /// Fisher of μ: Σ⁻¹.
  void fisher(const Eigen::Ref<const Vector>& /*z*/, Eigen::Ref<Matrix> F) const {
    F = precision_;
  }

  /// B = C⁻¹ with Σ = C Cᵀ, so Bᵀ B = Σ⁻¹.
  bool fisher_factor(const Eigen::Ref<const Vector>& /*z*/, Eigen::Ref<Matrix> B) const {
    B = inverse_factor_;
    return true;
  }

 private:
  void set_covariance(const Eigen::Ref<const Matrix>& covariance) {
    const char* op = "kfopt::GaussianObservation";
    detail::require_nonempty(op, "covariance", covariance);
    detail::require_symmetric(op, "covariance", covariance);
    Eigen::LLT<Matrix> llt(covariance);
    if (llt.info() != Eigen::Success) {
      throw InvalidInputError(std::string(op) + ": covariance (" +
                              detail::shape_of(covariance) + ") is not positive definite");
    }
    const Eigen::Index k = covariance.rows();
    covariance_ = covariance;
    inverse_factor_ = Matrix::Identity(k, k);
    llt.matrixL().solveInPlace(inverse_factor_);  // C⁻¹ (lower triangular)
    precision_.noalias() = inverse_factor_.transpose() * inverse_factor_;
    detail::symmetrize(precision_);
    Scalar log_det = Scalar(0);
    for (Eigen::Index i = 0; i < k; ++i) log_det += Scalar(2) * std::log(llt.matrixLLT()(i, i));
    const Scalar two_pi = Scalar(6.283185307179586476925286766559);
    log_normalizer_ = Scalar(0.5) * (Scalar(k) * std::log(two_pi) + log_det);
  }

  Matrix covariance_;
  Matrix precision_;
  Matrix inverse_factor_;
  Scalar log_normalizer_ = Scalar(0);
};

}  // namespace kfopt
