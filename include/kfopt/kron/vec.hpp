#pragma once
/// \file vec.hpp
/// \brief `vec`/`unvec` and the Kronecker matrix-vector identity, without forming `B ⊗ C`.
///
/// Convention (column-major, as Eigen stores matrices): `vec(X)` stacks the columns of X.
/// The identity used throughout kfopt (Martens & Grosse 2015; Martens, Ba & Johnson 2018,
/// eq. 2) is
///
///     (B ⊗ C) vec(X) = vec(C X Bᵀ),
///
/// for B m×n, C p×q and X q×n. For a dense layer `s = W a` with W out×in, the Fisher block
/// `A ⊗ G` (A = E[a aᵀ] in×in, G = E[g gᵀ] out×out) acts on `vec(∇W)` as `vec(G ∇W Aᵀ)`.

#include <Eigen/Core>

#include "kfopt/core/validate.hpp"

namespace kfopt {

/// `vec(X)`: the columns of X stacked into one vector (a copy).
template <typename Derived>
Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, 1> vec(
    const Eigen::MatrixBase<Derived>& X) {
  Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, 1> v(X.size());
  Eigen::Map<Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic>>(
      v.data(), X.rows(), X.cols()) = X;
  return v;
}

/// `vec(X)` as a view of X's own storage (no copy). X must be a plain column-major matrix.
template <typename Scalar>
Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> vec_view(
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& X) {
  return Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(X.data(), X.size());
}

/// Read-only `vec(X)` view of a plain column-major matrix (no copy).
template <typename Scalar>
Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> vec_view(
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& X) {
  return Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(X.data(), X.size());
}

/// `unvec(v, rows, cols)`: the inverse of `vec` (a copy). Throws ShapeError unless
/// `v.size() == rows * cols`.
template <typename Derived>
Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic> unvec(
    const Eigen::MatrixBase<Derived>& v, Eigen::Index rows, Eigen::Index cols) {
  if (v.cols() != 1 || v.rows() != rows * cols || rows < 0 || cols < 0) {
    throw ShapeError("kfopt::unvec: vector is " + detail::shape_of(v) + " but " +
                     detail::shape_string(rows, cols) + " needs " +
                     detail::shape_string(rows * cols, 1));
  }
  using Matrix = Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, 1> tmp = v;
  return Eigen::Map<const Matrix>(tmp.data(), rows, cols);
}

/// Dense `B ⊗ C` (mp × nq). For tests, `to_dense()` and small problems only: it costs
/// m·n·p·q memory, which is what the rest of kfopt exists to avoid.
template <typename DerivedB, typename DerivedC>
Eigen::Matrix<typename DerivedB::Scalar, Eigen::Dynamic, Eigen::Dynamic> kronecker_product(
    const Eigen::MatrixBase<DerivedB>& B, const Eigen::MatrixBase<DerivedC>& C) {
  using Matrix = Eigen::Matrix<typename DerivedB::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Matrix K(B.rows() * C.rows(), B.cols() * C.cols());
  for (Eigen::Index j = 0; j < B.cols(); ++j) {
    for (Eigen::Index i = 0; i < B.rows(); ++i) {
      K.block(i * C.rows(), j * C.cols(), C.rows(), C.cols()) = B(i, j) * C;
    }
  }
  return K;
}

/// `out = unvec((B ⊗ C) vec(X)) = C X Bᵀ`, without forming `B ⊗ C`.
///
/// Shapes: B m×n, C p×q, X q×n, out p×m (resized if needed). The product is taken in the
/// cheaper order; `workspace` holds the intermediate and is reused across calls (no heap
/// allocation once it has the right size). Cost: min(pq·n + p·n·m, q·n·m + p·q·m)
/// multiply-adds, versus mnpq for the dense product. `out` must not alias X.
template <typename DerivedB, typename DerivedC, typename DerivedX, typename Scalar>
void kron_matvec(const Eigen::MatrixBase<DerivedB>& B, const Eigen::MatrixBase<DerivedC>& C,
                 const Eigen::MatrixBase<DerivedX>& X,
                 Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
                 Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& workspace) {
  if (X.rows() != C.cols() || X.cols() != B.cols()) {
    throw ShapeError("kfopt::kron_matvec: X is " + detail::shape_of(X) + " but B (" +
                     detail::shape_of(B) + ") ⊗ C (" + detail::shape_of(C) + ") needs " +
                     detail::shape_string(C.cols(), B.cols()));
  }
  const Eigen::Index m = B.rows(), n = B.cols(), p = C.rows(), q = C.cols();
  out.resize(p, m);
  // (C X) Bᵀ costs p·q·n + p·n·m; C (X Bᵀ) costs q·n·m + p·q·m.
  if (p * q * n + p * n * m <= q * n * m + p * q * m) {
    workspace.resize(p, n);
    workspace.noalias() = C * X;
    out.noalias() = workspace * B.transpose();
  } else {
    workspace.resize(q, m);
    workspace.noalias() = X * B.transpose();
    out.noalias() = C * workspace;
  }
}

/// Convenience overload of kron_matvec that allocates its own workspace.
template <typename DerivedB, typename DerivedC, typename DerivedX, typename Scalar>
void kron_matvec(const Eigen::MatrixBase<DerivedB>& B, const Eigen::MatrixBase<DerivedC>& C,
                 const Eigen::MatrixBase<DerivedX>& X,
                 Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out) {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> workspace;
  kron_matvec(B, C, X, out, workspace);
}

}  // namespace kfopt
