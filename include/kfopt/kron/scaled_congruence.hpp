#pragma once
/// \file scaled_congruence.hpp
/// \brief The one product every Kronecker-structured inverse in kfopt reduces to:
///
///     out = L (S ∘ (Lᵀ Z R)) Rᵀ,     i.e.  vec(out) = (R ⊗ L) diag(vec(S)) (R ⊗ L)ᵀ vec(Z),
///
/// where ∘ is the entry-wise product and `S(i, j) = scale(i, j)`.
///
/// With orthogonal eigenvector matrices `R = U_A`, `L = U_G` and `scale(i, j) =
/// 1 / (λ_G[i] λ_A[j] + λ)` this is `(A ⊗ G + λ I)⁻¹ vec(Z)`; with generalized
/// eigenvectors (non-orthogonal `R`, `L`) it inverts a sum of two Kronecker products; with
/// `scale(i, j) = 1 / (1 − m_G[i] m_A[j])` it is `(I − M_A ⊗ M_G)⁻¹ vec(Z)`.
///
/// Cost: 2·(p²n + pn²) multiply-adds for Z p×n (four matrix products) plus pn calls of
/// `scale`; no Kronecker product is formed.

#include <Eigen/Core>

#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Computes `out = L (S ∘ (Lᵀ Z R)) Rᵀ` with `S(i, j) = scale(i, j)`.
///
/// Shapes: L p×p', R n×n', Z p×n; `S` is p'×n'; out p×n (resized). `work` is reused
/// across calls (no allocation once sized). `out` must not alias Z.
template <typename Scalar, typename DerivedL, typename DerivedR, typename DerivedZ,
          typename ScaleFn>
void scaled_congruence(const Eigen::MatrixBase<DerivedL>& L, const Eigen::MatrixBase<DerivedR>& R,
                       const Eigen::MatrixBase<DerivedZ>& Z, ScaleFn&& scale,
                       Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
                       Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  if (Z.rows() != L.rows() || Z.cols() != R.rows()) {
    throw ShapeError("kfopt::scaled_congruence: Z is " + detail::shape_of(Z) + " but the bases "
                     "need " + detail::shape_string(L.rows(), R.rows()));
  }
  // work = Lᵀ Z R (choose the cheaper association), scaled entry-wise, then out = L work Rᵀ.
  out.resize(L.rows(), R.cols());
  out.noalias() = Z * R;  // p × n'
  work.resize(L.cols(), R.cols());
  work.noalias() = L.transpose() * out;  // p' × n'
  for (Eigen::Index j = 0; j < work.cols(); ++j) {
    for (Eigen::Index i = 0; i < work.rows(); ++i) work(i, j) *= scale(i, j);
  }
  out.resize(L.rows(), R.cols());
  out.noalias() = L * work;  // p × n'
  work.resize(L.rows(), R.rows());
  work.noalias() = out * R.transpose();  // p × n
  out.swap(work);
}

}  // namespace kfopt
