#pragma once
/// \file gradient_clipping.hpp
/// \brief Global gradient-norm clipping, shared by every gradient-based optimizer
/// (`Options::max_gradient_norm`, as `torch.nn.utils.clip_grad_norm_`): when the Euclidean
/// norm of all registered gradients together, ‖∇‖ = √(Σ_blocks Σ_i ∇_i²), exceeds c > 0, the
/// step uses the gradients scaled by c / ‖∇‖ (Pascanu, Mikolov & Bengio 2013, §3.2,
/// algorithm 1), so their norm is c; otherwise it uses them as they are. The caller's
/// gradient storage is never written: the optimizer applies the factor as it reads.
///
/// The norm is accumulated in double. It does not overflow for finite gradients of any size:
/// when the plain sum of squares overflows (double gradients beyond ~1e154), it is formed
/// again as m · √(Σ (∇_i / m)²) with m the largest |∇_i|. A non-finite gradient gives a
/// non-finite norm and the factor 1, and the step's own guard refuses it
/// (Status::NonFiniteInput). Cost: one read of the gradients (two when the first sum
/// overflows), no allocation.

#include <algorithm>
#include <cmath>

#include "kfopt/core/parameter_block.hpp"

namespace kfopt {
namespace detail {

/// ‖∇‖ over every block of `params`, in double (NaN or Inf if a gradient is not finite).
template <typename Scalar>
double global_gradient_norm(const ParameterSet<Scalar>& params) {
  double squares = 0.0;
  for (const auto& block : params) {
    squares += block.gradient().template cast<double>().squaredNorm();
  }
  if (std::isfinite(squares)) return std::sqrt(squares);
  double largest = 0.0;
  for (const auto& block : params) {
    const auto g = block.gradient();
    for (Eigen::Index k = 0; k < g.size(); ++k) {
      const double x = std::abs(static_cast<double>(g.data()[k]));
      if (!std::isfinite(x)) return x;  // Inf, or NaN when the gradient holds one
      largest = std::max(largest, x);
    }
  }
  double scaled = 0.0;  // Σ (∇_i / m)², at most the number of entries
  for (const auto& block : params) {
    scaled += (block.gradient().template cast<double>() / largest).squaredNorm();
  }
  return largest * std::sqrt(scaled);
}

/// The factor the step applies to the gradients: c / ‖∇‖ when `max_norm` = c > 0 and the
/// finite norm exceeds it, else 1 (clipping off when c = 0, or a non-finite gradient which
/// the step refuses).
template <typename Scalar>
Scalar gradient_clip_factor(const ParameterSet<Scalar>& params, double max_norm) {
  if (max_norm <= 0.0) return Scalar(1);
  const double norm = global_gradient_norm(params);
  if (!std::isfinite(norm) || norm <= max_norm) return Scalar(1);
  return static_cast<Scalar>(max_norm / norm);
}

}  // namespace detail
}  // namespace kfopt
