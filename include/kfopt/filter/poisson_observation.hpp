#pragma once
/// \file poisson_observation.hpp
/// \brief Poisson observation of a count y ∈ {0, 1, 2, ...}: T(y) = y, ŷ = λ, R(ŷ) = λ.
///
/// Canonical link (default): the output is the log-rate z, λ = e^z, ∂ℓ/∂z = λ − y and the
/// Fisher of z is λ (square root e^{z/2}, which overflows later than λ). Mean link: the
/// output is λ > 0, ∂ℓ/∂λ = 1 − y/λ and the Fisher is 1/λ, undefined at λ ≤ 0 (the filters
/// then skip the step with NumericalIssue). The loss includes ln y! so that e^{−ℓ} is the
/// probability. Ollivier 2018 (arXiv:1703.00209), exponential families; cost O(1).

#include <Eigen/Core>
#include <cmath>
#include <sstream>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/observation_model.hpp"

namespace kfopt {

/// Poisson observation model; see the file comment.
template <typename Scalar_, ObservationLink Link_ = ObservationLink::Canonical>
class PoissonObservation {
 public:
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Target = Scalar;  ///< a count: a finite non-negative integer value
  /// Whether z is the natural parameter (log-rate) or the mean.
  static constexpr ObservationLink link = Link_;

  /// Size k of the model output z: 1.
  Eigen::Index output_dim() const noexcept { return 1; }
  /// Rows of the Fisher square root B: 1.
  Eigen::Index factor_rows() const noexcept { return 1; }

  /// NonFiniteInput for NaN/Inf; InvalidInputError unless y is a non-negative integer.
  Status check_target(const char* op, const Target& y) const {
    if (!std::isfinite(static_cast<double>(y))) return Status::NonFiniteInput;
    if (y < Scalar(0) || y != std::floor(y)) {
      std::ostringstream os;
      os << op << ": Poisson target must be a non-negative integer count, got " << y;
      throw InvalidInputError(os.str());
    }
    return Status::Success;
  }

  /// Writes T(y) = y into `T` (1×1).
  void sufficient_statistic(const Target& y, Eigen::Ref<Vector> T) const {
    detail::require_shape("kfopt::PoissonObservation::sufficient_statistic", "T", T, 1, 1);
    T(0) = y;
  }

  /// ŷ = λ: e^z (canonical) or z (mean).
  void mean(const Eigen::Ref<const Vector>& z, Eigen::Ref<Vector> yhat) const {
    yhat(0) = link == ObservationLink::Canonical ? std::exp(z(0)) : z(0);
  }

  /// R(ŷ) = ŷ.
  void statistic_covariance(const Eigen::Ref<const Vector>& yhat, Eigen::Ref<Matrix> R) const {
    R(0, 0) = yhat(0);
  }

  /// ℓ = λ − y ln λ + ln y!  (canonical: e^z − y z + ln y!).
  Scalar loss(const Eigen::Ref<const Vector>& z, const Target& y) const {
    const Scalar log_factorial = std::lgamma(y + Scalar(1));
    if (link == ObservationLink::Canonical) return std::exp(z(0)) - y * z(0) + log_factorial;
    const Scalar lambda = z(0);
    if (y == Scalar(0)) return lambda;
    return lambda - y * std::log(lambda) + log_factorial;
  }

  /// ∂ℓ/∂z: e^z − y (canonical; false if e^z overflows); 1 − y/λ (mean; false unless λ > 0).
  bool loss_gradient(const Eigen::Ref<const Vector>& z, const Target& y,
                     Eigen::Ref<Vector> grad) const {
    if (link == ObservationLink::Canonical) {
      grad(0) = std::exp(z(0)) - y;
    } else {
      if (!(z(0) > Scalar(0))) return false;
      grad(0) = Scalar(1) - y / z(0);
    }
    return std::isfinite(static_cast<double>(grad(0)));
  }

  /// Fisher of z: λ = e^z (canonical) or 1/λ (mean).
  void fisher(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> F) const {
    F(0, 0) = link == ObservationLink::Canonical ? std::exp(z(0)) : Scalar(1) / z(0);
  }

  /// B = e^{z/2} (canonical) or 1/√λ (mean; false unless λ > 0).
  bool fisher_factor(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> B) const {
    if (link == ObservationLink::Canonical) {
      B(0, 0) = std::exp(z(0) / Scalar(2));
    } else {
      if (!(z(0) > Scalar(0))) return false;
      B(0, 0) = Scalar(1) / std::sqrt(z(0));
    }
    return std::isfinite(static_cast<double>(B(0, 0)));
  }
};

}  // namespace kfopt
