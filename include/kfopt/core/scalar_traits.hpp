#pragma once
/// \file scalar_traits.hpp
/// \brief Per-scalar-type numerical constants used by kfopt's checks and guards.

#include <cmath>
#include <limits>
#include <type_traits>

namespace kfopt {

/// Numerical constants for a floating-point scalar type (`float` or `double`).
template <typename Scalar>
struct ScalarTraits {
  static_assert(std::is_floating_point<Scalar>::value,
                "kfopt works on float, double or long double scalars");

  /// Machine epsilon.
  static constexpr Scalar epsilon() noexcept { return std::numeric_limits<Scalar>::epsilon(); }

  /// Relative tolerance under which a matrix counts as symmetric:
  /// `max|A - Aᵀ| <= symmetry_tolerance() * max(1, max|A|)`. Loose enough for factors that
  /// come out of floating-point products (rounding grows with the inner dimension), tight
  /// enough to catch a transposed or wrong argument.
  static Scalar symmetry_tolerance() noexcept { return std::sqrt(epsilon()); }

  /// Relative size under which an eigenvalue counts as zero when deciding singularity:
  /// `lambda_i <= singular_tolerance() * lambda_max`.
  static Scalar singular_tolerance() noexcept { return Scalar(64) * epsilon(); }

  /// Whether a symmetric matrix whose eigenvalues lie in [lo, hi] is safely invertible: lo
  /// is a positive normal number and `lo > singular_tolerance() * hi` (condition number
  /// below 1/singular_tolerance). Scale-invariant, so a factor whose entries are all tiny
  /// (the G factor of a saturated gate, ~1e-8, with a small damping shift) is not refused in
  /// float; NaN gives false.
  static bool invertible_spectrum(Scalar lo, Scalar hi) noexcept {
    return lo > std::numeric_limits<Scalar>::min() && lo > singular_tolerance() * hi;
  }
};

}  // namespace kfopt
