#pragma once
/// \file damped_cholesky_inverse.hpp
/// \brief `(A + λI)⁻¹` for one fixed λ by Cholesky: the cheap path when the damping does not
/// change between inverse refreshes.
///
/// Use SymmetricEigenCache instead when λ changes often (adaptive damping) or when an inverse
/// root is needed: a new λ there costs no factorization. Cost here: `compute` is one
/// Cholesky factorization (n³/3 flops) plus, if the explicit inverse is asked for, a
/// triangular inversion `L⁻¹` and the product `L⁻ᵀ L⁻¹` (another 2n³/3 flops), exactly the
/// work of LAPACK's potrf + potri. The Eigen backend does all three with recursive blocked
/// algorithms whose flops are in kfopt's product kernel (matrix_product_kernel.hpp; the
/// triangular solve, triangular products and rank-k updates recurse onto it; on one core
/// 0.56–0.98× the time of OpenBLAS's potrf + potri at n = 64…2048, see
/// bench/results/bench_kron.md); the LAPACK
/// backend (lapack_backend.hpp) calls potrf and then runs the same recursive inversion with
/// BLAS trmm / syrk doing the products (faster than potri on one core, same flops). `solve`
/// on an n×k block is two triangular solves (2n²k flops).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/lapack_backend.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"

namespace kfopt {

namespace detail {

/// Below this order the triangular kernels run unblocked (vector operations).
inline constexpr Eigen::Index kTriangularBlock = 48;

/// Splits n for the recursive kernels: the first block a multiple of 16 (aligned panels for
/// the product kernels), about half of n.
inline Eigen::Index triangular_split(Eigen::Index n) {
  const Eigen::Index half = n / 2;
  return half >= 32 ? (half / 16) * 16 : half;
}
/// Workspace the recursive kernels need for order n (the largest off-diagonal block).
inline Eigen::Index triangular_work_rows(Eigen::Index n) {
  return n > kTriangularBlock ? n - triangular_split(n) : 0;
}
inline Eigen::Index triangular_work_cols(Eigen::Index n) {
  return n > kTriangularBlock ? triangular_split(n) : 0;
}

/// Below this order the triangular products and solves are Eigen's (into `work`); above,
/// the recursions below put their flops into product_accumulate.
inline constexpr Eigen::Index kTriangularProductLeaf = 64;

/// Grows `work` to at least rows × cols (never shrinks it: no allocation once large enough).
template <typename Matrix>
auto triangular_work(Matrix& work, Eigen::Index rows, Eigen::Index cols) {
  if (work.rows() < rows || work.cols() < cols) {
    work.resize(std::max(work.rows(), rows), std::max(work.cols(), cols));
  }
  return work.topLeftCorner(rows, cols);
}

/// In place: `W ← s·W·T` for a lower-triangular T (n×n, lower triangle read) and W m×n
/// (BLAS trmm, right side). With `T = [T11 0; T21 T22]` and `W = [W1 W2]`:
/// `W·T = [W1 T11 + W2 T21, W2 T22]` — two recursions and one product. mn² flops.
template <typename Matrix>
void multiply_lower_right_inplace(Eigen::Ref<const Matrix> T, Eigen::Ref<Matrix> W,
                                  typename Matrix::Scalar s, Matrix& work) {
  const Eigen::Index n = T.rows(), m = W.rows();
  if (n <= kTriangularProductLeaf) {
    auto out = triangular_work(work, m, n);
    out.noalias() = s * (W * T.template triangularView<Eigen::Lower>());
    W = out;
    return;
  }
  const Eigen::Index n1 = triangular_split(n), n2 = n - n1;
  multiply_lower_right_inplace<Matrix>(T.topLeftCorner(n1, n1), W.leftCols(n1), s, work);
  product_accumulate<typename Matrix::Scalar>(W.leftCols(n1), s, W.rightCols(n2),
                                              T.bottomLeftCorner(n2, n1));
  multiply_lower_right_inplace<Matrix>(T.bottomRightCorner(n2, n2), W.rightCols(n2), s, work);
}

/// In place: `W ← T·W` (Transposed false) or `W ← Tᵀ·W` (true) for a lower-triangular T
/// (n×n, lower triangle read) and W n×m (BLAS trmm, left side). With `T = [T11 0; T21 T22]`:
/// `T·W = [T11 W1; T21 W1 + T22 W2]`, `Tᵀ·W = [T11ᵀ W1 + T21ᵀ W2; T22ᵀ W2]`, each block
/// overwritten only after the blocks it reads. mn² flops.
template <typename Matrix, bool Transposed>
void multiply_lower_left_inplace(Eigen::Ref<const Matrix> T, Eigen::Ref<Matrix> W,
                                 Matrix& work) {
  using Scalar = typename Matrix::Scalar;
  const Eigen::Index n = T.rows(), m = W.cols();
  if (n <= kTriangularProductLeaf) {
    auto out = triangular_work(work, n, m);
    if constexpr (Transposed) {
      out.noalias() = T.transpose().template triangularView<Eigen::Upper>() * W;
    } else {
      out.noalias() = T.template triangularView<Eigen::Lower>() * W;
    }
    W = out;
    return;
  }
  const Eigen::Index n1 = triangular_split(n), n2 = n - n1;
  auto W1 = W.topRows(n1);
  auto W2 = W.bottomRows(n2);
  if constexpr (Transposed) {
    multiply_lower_left_inplace<Matrix, true>(T.topLeftCorner(n1, n1), W1, work);
    product_accumulate<Scalar>(W1, Scalar(1), T.bottomLeftCorner(n2, n1).transpose(), W2);
    multiply_lower_left_inplace<Matrix, true>(T.bottomRightCorner(n2, n2), W2, work);
  } else {
    multiply_lower_left_inplace<Matrix, false>(T.bottomRightCorner(n2, n2), W2, work);
    product_accumulate<Scalar>(W2, Scalar(1), T.bottomLeftCorner(n2, n1), W1);
    multiply_lower_left_inplace<Matrix, false>(T.topLeftCorner(n1, n1), W1, work);
  }
}

/// In place: `X ← X·L⁻ᵀ` for a lower-triangular L (n×n, lower triangle read, non-zero
/// diagonal) and X m×n (BLAS trsm, right side, transposed). With `L = [L11 0; L21 L22]`:
/// `X1 ← X1 L11⁻ᵀ`, `X2 ← (X2 − X1 L21ᵀ) L22⁻ᵀ`. mn² flops.
template <typename Matrix>
void solve_lower_transposed_right_inplace(Eigen::Ref<const Matrix> L, Eigen::Ref<Matrix> X) {
  using Scalar = typename Matrix::Scalar;
  const Eigen::Index n = L.rows();
  if (n <= kTriangularProductLeaf) {
    L.transpose().template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(
        X);
    return;
  }
  const Eigen::Index n1 = triangular_split(n), n2 = n - n1;
  solve_lower_transposed_right_inplace<Matrix>(L.topLeftCorner(n1, n1), X.leftCols(n1));
  product_accumulate<Scalar>(X.rightCols(n2), Scalar(-1), X.leftCols(n1),
                             L.bottomLeftCorner(n2, n1).transpose());
  solve_lower_transposed_right_inplace<Matrix>(L.bottomRightCorner(n2, n2), X.rightCols(n2));
}

/// In place on the lower triangle of T: `L ← L⁻¹` for a lower-triangular L with non-zero
/// diagonal (LAPACK's trtri, lower, non-unit). The strictly upper triangle is not touched.
/// Recursive: with `L = [L11 0; L21 L22]`, `L⁻¹ = [X11 0; −X22 L21 X11  X22]`, the off-diagonal
/// block by two triangular matrix products. n³/3 flops. `work` is resized as needed (to
/// triangular_work_rows(n) × triangular_work_cols(n); no allocation once that large).
///
/// With `Backend == Lapack` (KFOPT_USE_LAPACK, float or double) the two products are BLAS
/// `trmm` calls in place (no workspace); the recursion and the leaves are the same.
template <typename Matrix, DecompositionBackend Backend = DecompositionBackend::Eigen>
void invert_lower_triangular_inplace(Eigen::Ref<Matrix> T, Matrix& work) {
  using Scalar = typename Matrix::Scalar;
  require_backend_supported<Scalar, Backend>();
  const Eigen::Index n = T.rows();
  if (n <= kTriangularBlock) {
    // Column by column from the right: x_jj = 1/l_jj, x(j+1:, j) = −x_jj X22 l(j+1:, j),
    // where X22 (already inverted) is the trailing block.
    for (Eigen::Index j = n - 1; j >= 0; --j) {
      T(j, j) = Scalar(1) / T(j, j);
      const Eigen::Index m = n - 1 - j;
      if (m == 0) continue;
      auto x = T.col(j).tail(m);
      // Triangular matrix-vector product in place, from the bottom row up: row i of X22
      // reads x(0..i), which still hold their old values.
      for (Eigen::Index i = m - 1; i >= 0; --i) {
        const auto row = T.row(j + 1 + i).segment(j + 1, i + 1);
        x(i) = -T(j, j) * row.dot(x.head(i + 1).transpose());
      }
    }
    return;
  }
  const Eigen::Index n1 = triangular_split(n), n2 = n - n1;
  invert_lower_triangular_inplace<Matrix, Backend>(T.topLeftCorner(n1, n1), work);
  invert_lower_triangular_inplace<Matrix, Backend>(T.bottomRightCorner(n2, n2), work);
  if constexpr (Backend == DecompositionBackend::Lapack) {
#ifdef KFOPT_USE_LAPACK
    // T21 ← −T21 X11, then T21 ← X22 T21.
    const auto ld = static_cast<lapack_int>(T.outerStride());
    const auto m2 = static_cast<lapack_int>(n2), m1 = static_cast<lapack_int>(n1);
    Scalar* t = T.data();
    lapack::trmm_lower(CblasRight, CblasNoTrans, m2, m1, Scalar(-1), t, ld, t + n1, ld);
    lapack::trmm_lower(CblasLeft, CblasNoTrans, m2, m1, Scalar(1), t + n1 + n1 * T.outerStride(),
                       ld, t + n1, ld);
#endif
    return;
  }
  // T21 ← −T21 X11, then T21 ← X22 T21: recursive in-place triangular products.
  auto T21 = T.bottomLeftCorner(n2, n1);
  multiply_lower_right_inplace<Matrix>(T.topLeftCorner(n1, n1), T21, Scalar(-1), work);
  multiply_lower_left_inplace<Matrix, false>(T.bottomRightCorner(n2, n2), T21, work);
}

/// In place on the lower triangle of T: `X ← lower(Xᵀ X)` for a lower-triangular X (LAPACK's
/// lauum, lower). With `X = [X11 0; X21 X22]`:
/// `XᵀX = [X11ᵀX11 + X21ᵀX21, ·; X22ᵀX21, X22ᵀX22]` — a recursion, a symmetric rank-k update
/// and a triangular matrix product. n³/3 flops. The strictly upper triangle is not touched.
/// With `Backend == Lapack` the update and the product are BLAS `syrk` and `trmm` (in place).
template <typename Matrix, DecompositionBackend Backend = DecompositionBackend::Eigen>
void lower_gram_inplace(Eigen::Ref<Matrix> T, Matrix& work) {
  using Scalar = typename Matrix::Scalar;
  require_backend_supported<Scalar, Backend>();
  const Eigen::Index n = T.rows();
  if (n <= kTriangularBlock) {
    // Row by row from the top: row i of XᵀX (columns ≤ i) reads rows ≥ i of X only.
    for (Eigen::Index i = 0; i < n; ++i) {
      const Eigen::Index m = n - 1 - i;
      const auto below = T.col(i).tail(m);  // x(i+1:, i)
      const auto xii = T(i, i);
      for (Eigen::Index j = 0; j < i; ++j) {
        T(i, j) = xii * T(i, j) + below.dot(T.col(j).tail(m));
      }
      T(i, i) = xii * xii + below.squaredNorm();
    }
    return;
  }
  const Eigen::Index n1 = triangular_split(n), n2 = n - n1;
  auto T21 = T.bottomLeftCorner(n2, n1);
  lower_gram_inplace<Matrix, Backend>(T.topLeftCorner(n1, n1), work);
  if constexpr (Backend == DecompositionBackend::Lapack) {
#ifdef KFOPT_USE_LAPACK
    // T11 += T21ᵀ T21, then T21 ← X22ᵀ T21.
    const auto ld = static_cast<lapack_int>(T.outerStride());
    const auto m2 = static_cast<lapack_int>(n2), m1 = static_cast<lapack_int>(n1);
    Scalar* t = T.data();
    lapack::syrk_lower_t(m1, m2, Scalar(1), t + n1, ld, Scalar(1), t, ld);
    lapack::trmm_lower(CblasLeft, CblasTrans, m2, m1, Scalar(1), t + n1 + n1 * T.outerStride(),
                       ld, t + n1, ld);
#endif
    lower_gram_inplace<Matrix, Backend>(T.bottomRightCorner(n2, n2), work);
    return;
  }
  // T11 += T21ᵀ T21 (the Gram matrix of T21's columns), then T21 ← X22ᵀ T21 in place.
  accumulate_lower_gram<Scalar>(T.topLeftCorner(n1, n1), T21, 0, Scalar(1));
  multiply_lower_left_inplace<Matrix, true>(T.bottomRightCorner(n2, n2), T21, work);
  lower_gram_inplace<Matrix, Backend>(T.bottomRightCorner(n2, n2), work);
}

/// In place on the lower triangle of A: `A = L Lᵀ` (LAPACK's potrf, lower), recursively:
/// `L11 = chol(A11)`, `L21 = A21 L11⁻ᵀ` (a triangular solve), `A22 ← A22 − L21 L21ᵀ` (a
/// symmetric rank-k update, lower_product_accumulate), `L22 = chol(A22)`; Eigen's LLT below
/// 128. n³/3 flops, nearly all in kfopt's product kernel. Returns false if A is not numerically positive
/// definite (A is then partly overwritten). The strictly upper triangle is not touched.
/// (The LAPACK backend factorizes with potrf instead: a BLAS-product version of this
/// recursion measured no faster than OpenBLAS's potrf.)
template <typename Matrix>
bool cholesky_lower_inplace(Eigen::Ref<Matrix> A) {
  using Scalar = typename Matrix::Scalar;
  const Eigen::Index n = A.rows();
  if (n <= 128) {
    Eigen::LLT<Eigen::Ref<Matrix>, Eigen::Lower> llt(A);
    return llt.info() == Eigen::Success;
  }
  const Eigen::Index n1 = triangular_split(n), n2 = n - n1;
  if (!cholesky_lower_inplace<Matrix>(A.topLeftCorner(n1, n1))) return false;
  auto L21 = A.bottomLeftCorner(n2, n1);
  solve_lower_transposed_right_inplace<Matrix>(A.topLeftCorner(n1, n1), L21);
  lower_product_accumulate<Scalar>(A.bottomRightCorner(n2, n2), Scalar(-1), L21,
                                   L21.transpose());
  return cholesky_lower_inplace<Matrix>(A.bottomRightCorner(n2, n2));
}

}  // namespace detail

/// Cholesky factorization of `A + λI` for symmetric positive semi-definite A and λ ≥ 0.
///
/// A failed factorization (the damped matrix is not numerically positive definite) or a
/// non-finite A leaves the previous factorization in place and is reported by `info()`.
///
/// `Backend` chooses who factorizes and inverts (lapack_backend.hpp): Eigen (LLT and kfopt's
/// blocked triangular kernels) by default; with KFOPT_USE_LAPACK, LAPACK's potrf and kfopt's
/// recursive inversion on BLAS trmm / syrk (in place of potri, which it outruns). Results
/// agree to rounding.
template <typename Scalar, DecompositionBackend Backend = kDefaultDecompositionBackend<Scalar>>
class DampedCholeskyInverse {
  static_assert((detail::require_backend_supported<Scalar, Backend>(), true), "");

 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  DampedCholeskyInverse() = default;

  /// Preallocates for n×n factors. The storage is written once here, so that no later
  /// compute() pays for first-touching fresh memory pages (the two factor slots alternate).
  explicit DampedCholeskyInverse(Eigen::Index n)
      : factor_{Matrix::Zero(n, n), Matrix::Zero(n, n)},
        work_(detail::triangular_work_rows(n), detail::triangular_work_cols(n)) {}

  /// Factorizes `A + damping·I`. Throws ShapeError / InvalidInputError for a non-square or
  /// non-symmetric A, or a negative damping.
  DampedCholeskyInverse& compute(const Eigen::Ref<const Matrix>& A, Scalar damping);

  /// Status of the last `compute()`.
  Status info() const noexcept { return last_status_; }
  /// Whether a factorization has succeeded.
  bool has_result() const noexcept { return has_result_; }
  /// The damping of the last successful `compute()`.
  Scalar damping() const noexcept { return damping_; }

  /// `out = (A + λI)⁻¹ X` (X n×k) by two triangular solves.
  template <typename DerivedX>
  void solve(const Eigen::MatrixBase<DerivedX>& X, Matrix& out) const {
    require_result();
    const Matrix& L = factor_[active_];
    if (X.rows() != L.rows()) {
      throw ShapeError("kfopt::DampedCholeskyInverse::solve: X is " + detail::shape_of(X) +
                       " but the factor is " + detail::shape_string(L.rows(), L.rows()));
    }
    if (inverse_valid_) {
      // The slot holds the explicit inverse now (see inverse()): one product, 2n²k flops.
      out.noalias() = L * X;
      return;
    }
    out = X;
    L.template triangularView<Eigen::Lower>().solveInPlace(out);
    L.template triangularView<Eigen::Lower>().adjoint().solveInPlace(out);
  }

  /// The explicit inverse `(A + λI)⁻¹`, formed once per factorization as `L⁻ᵀ L⁻¹` (a
  /// triangular inversion and a triangular Gram product, n³·2/3 flops; LAPACK's potri with
  /// the LAPACK backend), then mirrored so that it is exactly symmetric. It is formed in
  /// place of the factor L (no copy, as potri does): afterwards `solve` multiplies by it.
  const Matrix& inverse() const {
    require_result();
    Matrix& M = factor_[active_];
    if (!inverse_valid_) {
      invert_from_factor(M);
      detail::mirror_lower_to_upper(M);
      inverse_valid_ = true;
    }
    return M;
  }

 private:
  void require_result() const {
    if (!has_result_) {
      throw NumericalError(
          "kfopt::DampedCholeskyInverse: no factorization cached (compute() has not succeeded)");
    }
  }

  /// Lower Cholesky factor in place (lower triangle). Success needs a positive, finite
  /// diagonal of L: every entry of L enters some later diagonal entry, so a NaN or Inf
  /// anywhere in L shows there.
  static bool factorize(Matrix& M) {
    if (M.rows() == 0) return true;
    if constexpr (Backend == DecompositionBackend::Eigen) {
      if (!detail::cholesky_lower_inplace<Matrix>(M)) return false;
    } else {
#ifdef KFOPT_USE_LAPACK
      const auto n = detail::lapack::to_int(M.rows(), "kfopt::DampedCholeskyInverse");
      if (detail::lapack::potrf(n, M.data(), n) != 0) return false;
#endif
    }
    return M.diagonal().allFinite() && (M.diagonal().array() > Scalar(0)).all();
  }

  /// `lower(M) ← lower((L Lᵀ)⁻¹)` from the factor L in the lower triangle of M: the
  /// triangular inverse and its Gram product (LAPACK's trtri + lauum, i.e. potri) by kfopt's
  /// recursive kernels, whose products are Eigen's (Eigen backend) or BLAS trmm / syrk
  /// (LAPACK backend; no workspace then).
  void invert_from_factor(Matrix& M) const {
    if (M.rows() == 0) return;
    if constexpr (Backend == DecompositionBackend::Eigen) {
      detail::invert_lower_triangular_inplace<Matrix>(M, work_);
      detail::lower_gram_inplace<Matrix>(M, work_);
    } else {
      // Not potri: kfopt's recursive trtri + lauum with OpenBLAS's trmm and syrk doing the
      // products measured 1.2–1.9× faster than OpenBLAS's potri on one core (n = 256…2048,
      // bench/results/bench_kron.md), with the same flops and the same result to rounding.
      detail::invert_lower_triangular_inplace<Matrix, Backend>(M, work_);
      detail::lower_gram_inplace<Matrix, Backend>(M, work_);
    }
  }

  // L (lower triangle) of the active factorization — or, once inverse() was called, the
  // explicit inverse — and a spare slot.
  mutable Matrix factor_[2];
  int active_ = 0;
  mutable Matrix work_;  // blocks of the recursive triangular kernels (Eigen products)
  Scalar damping_ = Scalar(0);
  Status last_status_ = Status::NotComputed;
  mutable bool inverse_valid_ = false;
  bool has_result_ = false;
};

template <typename Scalar, DecompositionBackend Backend>
DampedCholeskyInverse<Scalar, Backend>& DampedCholeskyInverse<Scalar, Backend>::compute(
    const Eigen::Ref<const Matrix>& A, Scalar damping) {
  constexpr const char* op = "kfopt::DampedCholeskyInverse::compute";
  detail::require_nonnegative(op, "damping", damping);
  // Factorize into the spare slot so that a failure keeps the current factorization. The
  // checks and the copy of A's lower triangle (all the factorization reads) share one pass.
  Matrix& candidate = factor_[1 - active_];
  if (A.rows() == A.cols()) candidate.resize(A.rows(), A.rows());
  const Status input = detail::check_symmetric_factor_tiled(op, "A", A, &candidate);
  if (input != Status::Success) {
    last_status_ = input;
    return *this;
  }
  candidate.diagonal().array() += damping;
  if (!factorize(candidate)) {
    last_status_ = Status::NumericalIssue;
    return *this;
  }
  active_ = 1 - active_;
  damping_ = damping;
  inverse_valid_ = false;
  has_result_ = true;
  last_status_ = Status::Success;
  return *this;
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class DampedCholeskyInverse<float>;
extern template class DampedCholeskyInverse<double>;
#endif

}  // namespace kfopt
