#pragma once
/// \file kronecker_inverse.hpp
/// \brief Damped inverses of one Kronecker product `A ⊗ G` from cached eigendecompositions.
///
/// Two damping styles, both for any λ from the same two cached decompositions
/// (`A = U_A Λ_A U_Aᵀ`, `G = U_G Λ_G U_Gᵀ`), acting on `vec(Z)` with Z out×in (the shape of a
/// weight matrix W in `s = W a`, so that `(A ⊗ G) vec(Z) = vec(G Z Aᵀ)`):
///
/// - exact Tikhonov: `(A ⊗ G + λI)⁻¹ vec(Z) = vec(U_G [(U_Gᵀ Z U_A) ⊘ (λ_G λ_Aᵀ + λ)] U_Aᵀ)`
///   (Martens & Grosse 2015, §6.3, the "exact" alternative to factored damping; possible
///   cheaply only because both eigenbases are cached);
/// - factored: `((A + δ_A I) ⊗ (G + δ_G I))⁻¹ vec(Z) = vec((G + δ_G I)⁻¹ Z (A + δ_A I)⁻¹)`
///   with δ from factored_tikhonov_damping (Martens & Grosse 2015, eq. in §6.3; RNN K-FAC
///   paper eq. 6 for T = 1).
///
/// Cost of either: four products of sizes out×out×in and out×in×in (2·out·in·(out + in)
/// multiply-adds), nothing cubic. Both return Status::NumericalIssue, leaving `out`
/// untouched, when the damped matrix is singular (λ = 0 with a zero eigenvalue).

#include "kfopt/kron/scaled_congruence.hpp"
#include "kfopt/kron/symmetric_eigen_cache.hpp"

namespace kfopt {
namespace detail {

template <typename Scalar, typename DerivedZ>
void require_kronecker_operand(const char* op, const SymmetricEigenCache<Scalar>& a_cache,
                               const SymmetricEigenCache<Scalar>& g_cache,
                               const Eigen::MatrixBase<DerivedZ>& Z) {
  if (Z.rows() != g_cache.size() || Z.cols() != a_cache.size()) {
    throw ShapeError(std::string(op) + ": Z is " + shape_of(Z) + " but A ⊗ G with A " +
                     shape_string(a_cache.size(), a_cache.size()) + " and G " +
                     shape_string(g_cache.size(), g_cache.size()) + " needs " +
                     shape_string(g_cache.size(), a_cache.size()));
  }
}

}  // namespace detail

/// `out = unvec((A ⊗ G + λI)⁻¹ vec(Z))` from cached decompositions of A (in×in) and
/// G (out×out); Z and out are out×in. `work` is a reusable workspace.
template <typename Scalar, typename DerivedZ>
[[nodiscard]] Status kronecker_damped_inverse(
    const SymmetricEigenCache<Scalar>& a_cache, const SymmetricEigenCache<Scalar>& g_cache,
    Scalar lambda, const Eigen::MatrixBase<DerivedZ>& Z,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  constexpr const char* op = "kfopt::kronecker_damped_inverse";
  detail::require_kronecker_operand(op, a_cache, g_cache, Z);
  detail::require_nonnegative(op, "lambda", lambda);
  const auto& la = a_cache.eigenvalues();
  const auto& lg = g_cache.eigenvalues();
  // Smallest eigenvalue of A ⊗ G + λI is min(λ_A)·min(λ_G) + λ (all clipped ≥ 0).
  const Scalar lo = la.minCoeff() * lg.minCoeff() + lambda;
  const Scalar hi = la.maxCoeff() * lg.maxCoeff() + lambda;
  if (!(lo > ScalarTraits<Scalar>::singular_tolerance() * std::max(Scalar(1), hi))) {
    return Status::NumericalIssue;
  }
  scaled_congruence<Scalar>(
      g_cache.eigenvectors(), a_cache.eigenvectors(), Z,
      [&](Eigen::Index i, Eigen::Index j) { return Scalar(1) / (lg(i) * la(j) + lambda); }, out,
      work);
  return Status::Success;
}

/// `out = (G + δ_G I)⁻¹ Z (A + δ_A I)⁻¹`, i.e. the factored-damping inverse of A ⊗ G
/// applied to vec(Z), from cached decompositions. Pass the shifts of a FactoredDamping.
template <typename Scalar, typename DerivedZ>
[[nodiscard]] Status kronecker_factored_inverse(
    const SymmetricEigenCache<Scalar>& a_cache, Scalar a_shift,
    const SymmetricEigenCache<Scalar>& g_cache, Scalar g_shift,
    const Eigen::MatrixBase<DerivedZ>& Z,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  constexpr const char* op = "kfopt::kronecker_factored_inverse";
  detail::require_kronecker_operand(op, a_cache, g_cache, Z);
  detail::require_nonnegative(op, "a_shift", a_shift);
  detail::require_nonnegative(op, "g_shift", g_shift);
  if (!a_cache.is_invertible(a_shift) || !g_cache.is_invertible(g_shift)) {
    return Status::NumericalIssue;
  }
  const auto& la = a_cache.eigenvalues();
  const auto& lg = g_cache.eigenvalues();
  scaled_congruence<Scalar>(
      g_cache.eigenvectors(), a_cache.eigenvectors(), Z,
      [&](Eigen::Index i, Eigen::Index j) {
        return Scalar(1) / ((lg(i) + g_shift) * (la(j) + a_shift));
      },
      out, work);
  return Status::Success;
}

}  // namespace kfopt
