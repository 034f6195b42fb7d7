#pragma once
/// \file factored_damping.hpp
/// \brief Factored Tikhonov damping (π-damping) of a Kronecker-factored curvature block.
///
/// Martens & Grosse 2015, §6.3: instead of `(A ⊗ G + λI)⁻¹`, which has no Kronecker
/// structure, invert `(A + π√λ I) ⊗ (G + (√λ/π) I)`, whose expansion is
/// `A ⊗ G + λI + π√λ I ⊗ G + (√λ/π) A ⊗ I`. The split
///
///     π = sqrt( (tr A / dim A) / (tr G / dim G) )
///
/// balances the two extra terms by the factors' average eigenvalues. kfopt takes π = 1 when
/// either trace is zero, negative or non-finite (a layer whose statistics are all zero
/// would otherwise make π 0 or ∞), and never lets a shift fall below a caller-set floor.

#include <Eigen/Core>
#include <cmath>

#include "kfopt/core/validate.hpp"

namespace kfopt {

/// The two diagonal shifts of factored Tikhonov damping.
template <typename Scalar>
struct FactoredDamping {
  Scalar pi = Scalar(1);       ///< π, the split between the factors
  Scalar a_shift = Scalar(0);  ///< added to A's diagonal: max(π√λ, floor)
  Scalar g_shift = Scalar(0);  ///< added to G's diagonal: max(√λ/π, floor)
};

/// π-damping from the factors' traces and dimensions (the traces may come from a cached
/// eigendecomposition: the sum of clipped eigenvalues).
///
/// `lambda` ≥ 0 is the Tikhonov damping λ; `floor` ≥ 0 is the smallest shift either factor
/// gets. Throws InvalidInputError for a negative or non-finite λ or floor, or a zero
/// dimension.
template <typename Scalar>
FactoredDamping<Scalar> factored_tikhonov_damping(Scalar trace_a, Eigen::Index dim_a,
                                                  Scalar trace_g, Eigen::Index dim_g,
                                                  Scalar lambda, Scalar floor = Scalar(0)) {
  constexpr const char* op = "kfopt::factored_tikhonov_damping";
  detail::require_nonnegative(op, "lambda", lambda);
  detail::require_nonnegative(op, "floor", floor);
  if (dim_a <= 0 || dim_g <= 0) {
    throw ShapeError(std::string(op) + ": factor dimensions must be positive, got dim A = " +
                     std::to_string(dim_a) + ", dim G = " + std::to_string(dim_g));
  }
  FactoredDamping<Scalar> d;
  const Scalar mean_a = trace_a / static_cast<Scalar>(dim_a);
  const Scalar mean_g = trace_g / static_cast<Scalar>(dim_g);
  if (mean_a > Scalar(0) && mean_g > Scalar(0) && std::isfinite(mean_a) &&
      std::isfinite(mean_g)) {
    const Scalar pi = std::sqrt(mean_a / mean_g);
    // A ratio that over- or underflows in the square root falls back to π = 1 too.
    if (std::isfinite(pi) && pi > Scalar(0)) d.pi = pi;
  }
  const Scalar root = std::sqrt(lambda);
  d.a_shift = std::max(d.pi * root, floor);
  d.g_shift = std::max(root / d.pi, floor);
  return d;
}

/// π-damping from the factors themselves (traces of A and G). A and G must be square.
template <typename DerivedA, typename DerivedG>
FactoredDamping<typename DerivedA::Scalar> factored_tikhonov_damping(
    const Eigen::MatrixBase<DerivedA>& A, const Eigen::MatrixBase<DerivedG>& G,
    typename DerivedA::Scalar lambda,
    typename DerivedA::Scalar floor = typename DerivedA::Scalar(0)) {
  detail::require_square("kfopt::factored_tikhonov_damping", "A", A);
  detail::require_square("kfopt::factored_tikhonov_damping", "G", G);
  return factored_tikhonov_damping(A.trace(), A.rows(), G.trace(), G.rows(), lambda, floor);
}

}  // namespace kfopt
