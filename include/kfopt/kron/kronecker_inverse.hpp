#pragma once
/// \file kronecker_inverse.hpp
/// \brief Damped inverses of one Kronecker product `A ⊗ G` from the factors' spectra, and
/// the product `(A ⊗ G) vec(Z)` with dense or diagonal factors.
///
/// Two damping styles, both for any λ from the same two cached spectra
/// (`A = U_A Λ_A U_Aᵀ`, `G = U_G Λ_G U_Gᵀ`), acting on `vec(Z)` with Z out×in (the shape of a
/// weight matrix W in `s = W a`, so that `(A ⊗ G) vec(Z) = vec(G Z Aᵀ)`):
///
/// - exact Tikhonov: `(A ⊗ G + λI)⁻¹ vec(Z) = vec(U_G [(U_Gᵀ Z U_A) ⊘ (λ_G λ_Aᵀ + λ)] U_Aᵀ)`
///   (Martens & Grosse 2015, §6.3, the "exact" alternative to factored damping; cheap only
///   because both eigenbases are cached);
/// - factored: `((A + δ_A I) ⊗ (G + δ_G I))⁻¹ vec(Z) = vec((G + δ_G I)⁻¹ Z (A + δ_A I)⁻¹)`
///   with δ from factored_tikhonov_damping (Martens & Grosse 2015, §6.3; RNN K-FAC eq. 6
///   with T = 1).
///
/// Cost of either: four products of sizes out×out×in and out×in×in (2·out·in·(out + in)
/// multiply-adds; a diagonal factor's two products become one O(out·in) scaling), nothing
/// cubic. Both return Status::NumericalIssue, leaving `out` untouched, when the damped
/// matrix is singular (λ = 0 with a zero eigenvalue).

#include "kfopt/kron/factor_spectrum.hpp"

namespace kfopt {

/// `out = unvec((A ⊗ G + λI)⁻¹ vec(Z))` from the spectra of A (in×in) and G (out×out);
/// Z and out are out×in. `work` is a reusable workspace.
template <typename Scalar, typename DerivedZ>
[[nodiscard]] Status kronecker_damped_inverse(
    const FactorSpectrum<Scalar>& a, const FactorSpectrum<Scalar>& g, Scalar lambda,
    const Eigen::MatrixBase<DerivedZ>& Z,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  constexpr const char* op = "kfopt::kronecker_damped_inverse";
  detail::require_kronecker_operand(op, a, g, Z);
  detail::require_nonnegative(op, "lambda", lambda);
  const auto& la = a.eigenvalues();
  const auto& lg = g.eigenvalues();
  // Smallest eigenvalue of A ⊗ G + λI is min(λ_A)·min(λ_G) + λ (all clipped ≥ 0).
  const Scalar lo = la.minCoeff() * lg.minCoeff() + lambda;
  const Scalar hi = la.maxCoeff() * lg.maxCoeff() + lambda;
  if (!ScalarTraits<Scalar>::invertible_spectrum(lo, hi)) {
    return Status::NumericalIssue;
  }
  spectral_kronecker_apply(
      a, g, Z, [&](Eigen::Index i, Eigen::Index j) { return Scalar(1) / (lg(i) * la(j) + lambda); },
      out, work);
  return Status::Success;
}

/// `out = (G + δ_G I)⁻¹ Z (A + δ_A I)⁻¹`, i.e. the factored-damping inverse of A ⊗ G
/// applied to vec(Z), from the spectra. Pass the shifts of a FactoredDamping.
template <typename Scalar, typename DerivedZ>
[[nodiscard]] Status kronecker_factored_inverse(
    const FactorSpectrum<Scalar>& a, Scalar a_shift, const FactorSpectrum<Scalar>& g,
    Scalar g_shift, const Eigen::MatrixBase<DerivedZ>& Z,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  constexpr const char* op = "kfopt::kronecker_factored_inverse";
  detail::require_nonnegative(op, "a_shift", a_shift);
  detail::require_nonnegative(op, "g_shift", g_shift);
  detail::require_kronecker_operand(op, a, g, Z);
  if (!a.is_invertible(a_shift) || !g.is_invertible(g_shift)) return Status::NumericalIssue;
  const auto& la = a.eigenvalues();
  const auto& lg = g.eigenvalues();
  spectral_kronecker_apply(
      a, g, Z,
      [&](Eigen::Index i, Eigen::Index j) {
        return Scalar(1) / ((lg(i) + g_shift) * (la(j) + a_shift));
      },
      out, work);
  return Status::Success;
}

/// `out = unvec((A ⊗ G) vec(Z)) = G Z Aᵀ` for symmetric factors given as matrices, each
/// dense (n×n) or diagonal (an n×1 column of its diagonal). Cost: out·in·(out + in)
/// multiply-adds for dense factors, O(out·in) for diagonal ones.
template <typename Scalar, typename DerivedZ>
void kronecker_factor_multiply(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& A,
                               const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& G,
                               const Eigen::MatrixBase<DerivedZ>& Z,
                               Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
                               Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  const bool a_diag = A.cols() == 1 && A.rows() != 1;
  const bool g_diag = G.cols() == 1 && G.rows() != 1;
  if (Z.rows() != G.rows() || Z.cols() != A.rows()) {
    throw ShapeError("kfopt::kronecker_factor_multiply: Z is " + detail::shape_of(Z) +
                     " but A (" + detail::shape_of(A) + ") ⊗ G (" + detail::shape_of(G) +
                     ") needs " + detail::shape_string(G.rows(), A.rows()));
  }
  if (g_diag) {
    work = G.col(0).asDiagonal() * Z;
  } else {
    work.noalias() = G * Z;
  }
  if (a_diag) {
    out = work * A.col(0).asDiagonal();
  } else {
    out.noalias() = work * A.transpose();
  }
}

}  // namespace kfopt
