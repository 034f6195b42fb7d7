#pragma once
/// \file bernoulli_observation.hpp
/// \brief Bernoulli observation y ∈ {0, 1}: T(y) = y, ŷ = p, R(ŷ) = p(1−p).
///
/// Canonical link (default): the output is the logit z, p = σ(z), ∂ℓ/∂z = p − y and the
/// Fisher of z is p(1−p) = σ(z)σ(−z) — computed without cancellation and without ever
/// dividing by it, so a saturated logit (|z| = 40 and beyond) gives a tiny but finite
/// information and an exact gradient. Mean link: the output is p itself, ∂ℓ/∂p =
/// (p − y)/(p(1−p)) and the Fisher is 1/(p(1−p)); both are undefined at p ∈ {0, 1}, where
/// the filters skip the step (NumericalIssue). Prefer the canonical link.
/// Ollivier 2018 (arXiv:1703.00209), exponential families in mean form; cost O(1).

#include <Eigen/Core>
#include <cmath>
#include <sstream>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/observation_model.hpp"

namespace kfopt {
namespace detail {

/// σ(x) = 1/(1 + e^{−x}) without overflow for any finite x.
template <typename Scalar>
Scalar sigmoid(Scalar x) {
  if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + std::exp(-x));
  const Scalar e = std::exp(x);
  return e / (Scalar(1) + e);
}

/// softplus(x) = ln(1 + e^x) without overflow.
template <typename Scalar>
Scalar softplus(Scalar x) {
  if (x > Scalar(0)) return x + std::log1p(std::exp(-x));
  return std::log1p(std::exp(x));
}

}  // namespace detail

/// Bernoulli observation model; see the file comment. `Scalar` float or double.
template <typename Scalar_, ObservationLink Link_ = ObservationLink::Canonical>
class BernoulliObservation {
 public:
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Target = Scalar;  ///< 0 or 1
  /// Whether z is the natural parameter (logit) or the mean.
  static constexpr ObservationLink link = Link_;

  /// Size k of the model output z: 1.
  Eigen::Index output_dim() const noexcept { return 1; }
  /// Rows of the Fisher square root B: 1.
  Eigen::Index factor_rows() const noexcept { return 1; }

  /// NonFiniteInput for NaN/Inf; InvalidInputError unless y is exactly 0 or 1.
  Status check_target(const char* op, const Target& y) const {
    if (!std::isfinite(static_cast<double>(y))) return Status::NonFiniteInput;
    if (y != Scalar(0) && y != Scalar(1)) {
      std::ostringstream os;
      os << op << ": Bernoulli target must be 0 or 1, got " << y;
      throw InvalidInputError(os.str());
    }
    return Status::Success;
  }

  /// Writes T(y) = y into `T` (1×1).
  void sufficient_statistic(const Target& y, Eigen::Ref<Vector> T) const {
    detail::require_shape("kfopt::BernoulliObservation::sufficient_statistic", "T", T, 1, 1);
    T(0) = y;
  }

  /// ŷ = p: σ(z) (canonical) or z (mean).
  void mean(const Eigen::Ref<const Vector>& z, Eigen::Ref<Vector> yhat) const {
    yhat(0) = link == ObservationLink::Canonical ? detail::sigmoid(z(0)) : z(0);
  }

  /// R(ŷ) = ŷ(1 − ŷ).
  void statistic_covariance(const Eigen::Ref<const Vector>& yhat, Eigen::Ref<Matrix> R) const {
    R(0, 0) = yhat(0) * (Scalar(1) - yhat(0));
  }

  /// ℓ = −y ln p − (1−y) ln(1−p); canonical: softplus(−z) if y = 1, softplus(z) if y = 0.
  Scalar loss(const Eigen::Ref<const Vector>& z, const Target& y) const {
    if (link == ObservationLink::Canonical) {
      return y == Scalar(1) ? detail::softplus(-z(0)) : detail::softplus(z(0));
    }
    const Scalar p = z(0);
    return y == Scalar(1) ? -std::log(p) : -std::log1p(-p);
  }

  /// ∂ℓ/∂z: p − y (canonical; for y = 1 evaluated as −σ(−z)); (p − y)/(p(1−p)) (mean,
  /// false unless 0 < p < 1).
  bool loss_gradient(const Eigen::Ref<const Vector>& z, const Target& y,
                     Eigen::Ref<Vector> grad) const {
    if (link == ObservationLink::Canonical) {
      grad(0) = y == Scalar(1) ? -detail::sigmoid(-z(0)) : detail::sigmoid(z(0));
      return true;
    }
    const Scalar p = z(0);
    if (!(p > Scalar(0) && p < Scalar(1))) return false;
    grad(0) = y == Scalar(1) ? -Scalar(1) / p : Scalar(1) / (Scalar(1) - p);
    return true;
  }

  /// Fisher of z: σ(z)σ(−z) (canonical) or 1/(p(1−p)) (mean; +Inf at the boundary).
  void fisher(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> F) const {
    if (link == ObservationLink::Canonical) {
      F(0, 0) = detail::sigmoid(z(0)) * detail::sigmoid(-z(0));
    } else {
      F(0, 0) = Scalar(1) / (z(0) * (Scalar(1) - z(0)));
    }
  }

  /// B with Bᵀ B = Fisher of z: √(σ(z)σ(−z)) or 1/√(p(1−p)) (false unless 0 < p < 1).
  bool fisher_factor(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> B) const {
    if (link == ObservationLink::Canonical) {
      B(0, 0) = std::sqrt(detail::sigmoid(z(0)) * detail::sigmoid(-z(0)));
      return true;
    }
    const Scalar p = z(0);
    if (!(p > Scalar(0) && p < Scalar(1))) return false;
    B(0, 0) = Scalar(1) / std::sqrt(p * (Scalar(1) - p));
    return std::isfinite(static_cast<double>(B(0, 0)));
  }
};

}  // namespace kfopt
