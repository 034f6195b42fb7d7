#pragma once
/// \file symmetric_eigen_cache.hpp
/// \brief One symmetric eigendecomposition, reused for every matrix function of a factor.
///
/// K-FAC-style methods need `(A + λI)⁻¹`, `(A + λI)^{-1/2}` and friends for a Kronecker
/// factor A that changes slowly and a damping λ that may change every step (adaptive
/// Levenberg–Marquardt damping, Martens & Grosse 2015 §6.5). With `A = U Λ Uᵀ` computed once,
/// every `f(A) = U f(Λ) Uᵀ` costs only matrix products, and a new λ costs nothing but a new
/// diagonal. Eigenvalues are clipped at 0 (an estimated second moment is PSD; rounding can
/// make its smallest eigenvalues slightly negative, which would turn a damped inverse
/// indefinite), and the clip count is recorded.
///
/// Cost: `compute` is one n×n symmetric eigendecomposition with vectors, amortized over the
/// inverse period T_inv: by default kfopt's Eigen-only SymmetricEigensolver for n ≥ 256
/// (symmetric_eigensolver.hpp: blocked Householder tridiagonalization, explicit Q in WY
/// blocks, implicit QR with exact shifts whose rotations are applied to the vectors in
/// cache-sized chunks; about 6n³ flops, most at cache speed; 0.55–1.4× of LAPACK's syevd
/// on one core at n = 256–2048, see bench/results/bench_kron.md) and Eigen's SelfAdjointEigenSolver below, or LAPACK's
/// divide and conquer (syevd's sytrd + stedc, with kfopt's back-transformation) with the
/// optional backend (lapack_backend.hpp). Applying a
/// function to an n×k block is two n×n×k products (4n²k flops).

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <cmath>
#include <string>

#include "kfopt/linalg/eigen_decompositions.hpp"
#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/lapack_backend.hpp"
#include "kfopt/linalg/symmetric_eigensolver.hpp"

namespace kfopt {

namespace detail {

/// The eigensolver behind SymmetricEigenCache, per backend: `compute(A)` decomposes into
/// internal storage and reports success; `take(values, vectors)` moves a successful result
/// out (the cache commits only then, so a failure keeps its previous decomposition).
template <typename Scalar, DecompositionBackend Backend>
class SymmetricEigenKernel;

/// The Eigen-only backend: kfopt's SymmetricEigensolver (symmetric_eigensolver.hpp) from
/// n = kBlockedFrom on, Eigen's SelfAdjointEigenSolver below (there its one-rotation-at-a-time
/// QR is as fast: the vectors fit in cache and the blocked solver's bookkeeping does not pay;
/// measured crossover near n = 256 in float and double). Both read only the lower triangle.
template <typename Scalar>
class SymmetricEigenKernel<Scalar, DecompositionBackend::Eigen> {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// Smallest n decomposed by SymmetricEigensolver.
  static constexpr Eigen::Index kBlockedFrom = 256;

  SymmetricEigenKernel() = default;
  /// Preallocates the solver that n×n factors use.
  explicit SymmetricEigenKernel(Eigen::Index n)
      : small_(n < kBlockedFrom ? n : 0), blocked_(n >= kBlockedFrom ? n : 0) {}

  bool compute(const Eigen::Ref<const Matrix>& A) {
    use_blocked_ = A.rows() >= kBlockedFrom;
    if (!use_blocked_) {
      small_.compute(A, Eigen::ComputeEigenvectors);
      return small_.info() == Eigen::Success && small_.eigenvalues().allFinite();
    }
    blocked_.compute(A);
    return blocked_.info() == Status::Success && blocked_.eigenvalues().allFinite();
  }
  /// The blocked solver's results are swapped out (it keeps the previous result's storage
  /// for reuse); Eigen's are copied.
  void take(Vector& values, Matrix& vectors) {
    if (!use_blocked_) {
      values = small_.eigenvalues();
      vectors = small_.eigenvectors();
      return;
    }
    values.swap(blocked_.eigenvalues_storage());
    vectors.swap(blocked_.eigenvectors_storage());
  }

 private:
  InitializedEigenSolver<Matrix> small_;  // eigen_decompositions.hpp: safe to move
  SymmetricEigensolver<Scalar> blocked_;
  bool use_blocked_ = false;
};

#ifdef KFOPT_USE_LAPACK
template <typename Scalar>
class SymmetricEigenKernel<Scalar, DecompositionBackend::Lapack> {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  SymmetricEigenKernel() = default;
  explicit SymmetricEigenKernel(Eigen::Index n) : solver_(n) {}

  bool compute(const Eigen::Ref<const Matrix>& A) { return solver_.compute(A); }
  /// Swaps instead of copying: the solver keeps the previous result's storage for reuse.
  void take(Vector& values, Matrix& vectors) {
    values.swap(solver_.values);
    vectors.swap(solver_.vectors);
  }

 private:
  lapack::SplitSymmetricEigenSolver<Scalar> solver_;  // sytrd + stedc + kfopt's back-transformation
};
#endif

/// The default backend's eigensolver (kDefaultDecompositionBackend: LAPACK's sytrd + stedc with
/// KFOPT_USE_LAPACK, kfopt's SymmetricEigensolver from n = 256 on otherwise) for the algebra
/// layer's other symmetric eigenproblems: the RNN K-FAC transition matrices and the
/// Kronecker-sum inverses, whose eigenvalues may be negative and are not clipped.
template <typename Scalar>
using DefaultSymmetricEigenKernel = SymmetricEigenKernel<Scalar, kDefaultDecompositionBackend<Scalar>>;

/// `A = vectors · diag(values) · vectorsᵀ`, values ascending, from the lower triangle of a
/// symmetric A by `kernel`. Returns NumericalIssue, with `values` and `vectors` untouched,
/// when A holds NaN or Inf (checked first: LAPACK's behaviour on them is undefined) or the
/// solver fails.
template <typename Scalar, DecompositionBackend Backend>
Status symmetric_eigen(SymmetricEigenKernel<Scalar, Backend>& kernel,
                       const Eigen::Ref<const typename SymmetricEigenKernel<Scalar, Backend>::Matrix>& A,
                       typename SymmetricEigenKernel<Scalar, Backend>::Vector& values,
                       typename SymmetricEigenKernel<Scalar, Backend>::Matrix& vectors) {
  if (!A.allFinite() || !kernel.compute(A)) return Status::NumericalIssue;
  kernel.take(values, vectors);
  return Status::Success;
}

}  // namespace detail

/// Which side of X a matrix function multiplies: `f(A) X` (Left) or `X f(A)` (Right).
enum class Side { Left, Right };

/// Cached symmetric eigendecomposition `A = U diag(λ) Uᵀ` with λ clipped at 0.
///
/// Behaves like an Eigen decomposition: a preallocating constructor, `compute()` returning
/// `*this`, `info()` returning a Status. A failed `compute()` (non-finite input, solver
/// failure) leaves the previous decomposition in place and reports it through `info()`;
/// wrong use (non-square, non-symmetric input) throws before anything changes.
///
/// Thread safety: const member functions that take an output argument use a member
/// workspace; do not call them concurrently on the same object.
///
/// `Backend` chooses the eigensolver (lapack_backend.hpp): Eigen's by default, LAPACK's
/// divide and conquer (lapack::SplitSymmetricEigenSolver) when the build defines
/// KFOPT_USE_LAPACK. Results agree to rounding.
template <typename Scalar, DecompositionBackend Backend = kDefaultDecompositionBackend<Scalar>>
class SymmetricEigenCache {
  static_assert((detail::require_backend_supported<Scalar, Backend>(), true), "");

 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  SymmetricEigenCache() = default;

  /// Preallocates for n×n factors (no allocation in later `compute` of that size; the
  /// result storage is written once here, so that no later compute pays for first-touching
  /// fresh memory pages).
  explicit SymmetricEigenCache(Eigen::Index n)
      : solver_(n),
        eigenvalues_(Vector::Zero(n)),
        eigenvectors_(Matrix::Zero(n, n)),
        workspace_(n, n) {}

  /// Decomposes symmetric A (only its lower triangle is read by the solver; the whole
  /// matrix is checked for symmetry). Throws ShapeError if A is not square and
  /// InvalidInputError if it is not symmetric; a non-finite A sets
  /// `info() == Status::NonFiniteInput` and keeps the previous decomposition.
  SymmetricEigenCache& compute(const Eigen::Ref<const Matrix>& A);

  /// Throws InvalidInputError (naming `op`) unless `values` and `vectors` are a valid
  /// clipped decomposition of an n×n matrix: finite, values ≥ 0 and ascending, vectors n×n
  /// with orthonormal columns (‖VᵀV − I‖_max ≤ √ε·n). ShapeError for wrong shapes. O(n³).
  static void check_decomposition(const std::string& op, const Vector& values,
                                  const Matrix& vectors, Eigen::Index n) {
    detail::require_shape(op.c_str(), "eigenvalues", values, n, 1);
    detail::require_shape(op.c_str(), "eigenvectors", vectors, n, n);
    detail::require_finite(op.c_str(), "eigenvalues", values);
    detail::require_finite(op.c_str(), "eigenvectors", vectors);
    for (Eigen::Index i = 0; i < n; ++i) {
      if (!(values(i) >= Scalar(0)) || (i > 0 && !(values(i) >= values(i - 1)))) {
        throw InvalidInputError(op + ": eigenvalues must be >= 0 and ascending (entry " +
                                std::to_string(i) + " is " +
                                std::to_string(static_cast<double>(values(i))) + ")");
      }
    }
    if (n == 0) return;
    const Matrix gram = vectors.transpose() * vectors - Matrix::Identity(n, n);
    const Scalar tol = std::sqrt(Eigen::NumTraits<Scalar>::epsilon()) * static_cast<Scalar>(n);
    if (!(gram.cwiseAbs().maxCoeff() <= tol)) {
      throw InvalidInputError(op + ": eigenvectors (" + detail::shape_of(vectors) +
                              ") are not orthonormal");
    }
  }

  /// Installs a decomposition computed earlier (a checkpoint's eigenvalues() and
  /// eigenvectors()) as the cached one, bit for bit; all-or-nothing (check_decomposition
  /// first). The clip count is then 0 and the smallest eigenvalue before clipping is
  /// values(0).
  void set_decomposition(const Vector& values, const Matrix& vectors) {
    check_decomposition("kfopt::SymmetricEigenCache::set_decomposition", values, vectors,
                        values.size());
    eigenvalues_ = values;
    eigenvectors_ = vectors;
    clipped_ = 0;
    min_raw_eigenvalue_ = values.size() > 0 ? values(0) : Scalar(0);
    last_status_ = Status::Success;
    has_result_ = true;
  }

  /// Status of the last `compute()`. `Success` means the cached decomposition is of the
  /// last matrix given; otherwise it is of the last matrix that succeeded (if any).
  Status info() const noexcept { return last_status_; }

  /// Whether any decomposition is cached (the last successful one).
  bool has_result() const noexcept { return has_result_; }

  /// Size n of the decomposed matrix.
  Eigen::Index size() const noexcept { return eigenvalues_.size(); }

  /// Eigenvalues in ascending order, clipped at 0.
  const Vector& eigenvalues() const { return checked(eigenvalues_); }

  /// Orthonormal eigenvectors, column i for eigenvalue i.
  const Matrix& eigenvectors() const { return checked(eigenvectors_); }

  /// How many eigenvalues were negative (and set to 0) in the cached decomposition.
  Eigen::Index clipped_count() const noexcept { return clipped_; }

  /// The smallest eigenvalue before clipping (negative values show rounding or an
  /// indefinite input).
  Scalar min_eigenvalue_before_clipping() const noexcept { return min_raw_eigenvalue_; }

  /// Sum of the clipped eigenvalues (= trace of the PSD part of A), for π-damping.
  Scalar trace() const { return eigenvalues().sum(); }

  /// Whether `A + damping·I` is safely invertible: its smallest eigenvalue exceeds
  /// `singular_tolerance · (λ_max + damping)` (ScalarTraits::invertible_spectrum: relative,
  /// so a uniformly tiny factor is still invertible).
  bool is_invertible(Scalar damping = Scalar(0)) const {
    const Vector& ev = eigenvalues();
    if (ev.size() == 0) return true;
    const Scalar lo = ev(0) + damping;
    const Scalar hi = ev(ev.size() - 1) + damping;
    return ScalarTraits<Scalar>::invertible_spectrum(lo, hi);
  }

  /// `U diag(f(λ_i)) Uᵀ` as a dense matrix. `f` maps a (clipped) eigenvalue to a scalar.
  template <typename Function>
  Matrix matrix_function(Function&& f) const {
    const Matrix& U = eigenvectors();
    Vector fv(size());
    for (Eigen::Index i = 0; i < size(); ++i) fv(i) = f(eigenvalues_(i));
    Matrix out = U * fv.asDiagonal() * U.transpose();
    detail::symmetrize(out);
    return out;
  }

  /// Applies `f(A)` to X without forming it: `out = U f(Λ) Uᵀ X` (Side::Left, X n×k) or
  /// `out = X U f(Λ) Uᵀ` (Side::Right, X k×n). `out` must not alias X.
  template <typename Function, typename DerivedX>
  void apply_function(Function&& f, const Eigen::MatrixBase<DerivedX>& X, Matrix& out,
                      Side side = Side::Left) const {
    const Matrix& U = eigenvectors();
    const Eigen::Index n = size();
    if ((side == Side::Left && X.rows() != n) || (side == Side::Right && X.cols() != n)) {
      throw ShapeError(std::string("kfopt::SymmetricEigenCache::apply: X is ") +
                       detail::shape_of(X) + " but the factor is " +
                       detail::shape_string(n, n) +
                       (side == Side::Left ? " (applied from the left)"
                                           : " (applied from the right)"));
    }
    if (side == Side::Left) {
      workspace_.resize(n, X.cols());
      workspace_.noalias() = U.transpose() * X;
      for (Eigen::Index i = 0; i < n; ++i) workspace_.row(i) *= f(eigenvalues_(i));
      out.resize(n, X.cols());
      out.noalias() = U * workspace_;
    } else {
      workspace_.resize(X.rows(), n);
      workspace_.noalias() = X * U;
      for (Eigen::Index j = 0; j < n; ++j) workspace_.col(j) *= f(eigenvalues_(j));
      out.resize(X.rows(), n);
      out.noalias() = workspace_ * U.transpose();
    }
  }

  /// `out = (A + damping·I)⁻¹ X` (or `X (A + damping·I)⁻¹`). Returns
  /// `Status::NumericalIssue` and leaves `out` untouched when `A + damping·I` is singular
  /// (see is_invertible); throws InvalidInputError for negative or non-finite damping.
  template <typename DerivedX>
  [[nodiscard]] Status apply_damped_inverse(Scalar damping, const Eigen::MatrixBase<DerivedX>& X,
                                            Matrix& out, Side side = Side::Left) const {
    detail::require_nonnegative("kfopt::SymmetricEigenCache::apply_damped_inverse", "damping",
                                damping);
    if (!is_invertible(damping)) return Status::NumericalIssue;
    apply_function([damping](Scalar l) { return Scalar(1) / (l + damping); }, X, out, side);
    return Status::Success;
  }

  /// `out = (A + damping·I)^{-1/2} X` (or from the right); same contract as
  /// apply_damped_inverse.
  template <typename DerivedX>
  [[nodiscard]] Status apply_inverse_sqrt(Scalar damping, const Eigen::MatrixBase<DerivedX>& X,
                                          Matrix& out, Side side = Side::Left) const {
    detail::require_nonnegative("kfopt::SymmetricEigenCache::apply_inverse_sqrt", "damping",
                                damping);
    if (!is_invertible(damping)) return Status::NumericalIssue;
    apply_function([damping](Scalar l) { return Scalar(1) / std::sqrt(l + damping); }, X, out,
                   side);
    return Status::Success;
  }

  /// Dense `(A + damping·I)⁻¹`. Throws NumericalError when singular (a matrix cannot carry
  /// a status; use apply_damped_inverse to get one instead).
  Matrix damped_inverse(Scalar damping = Scalar(0)) const {
    require_invertible("damped_inverse", damping);
    return matrix_function([damping](Scalar l) { return Scalar(1) / (l + damping); });
  }

  /// Dense `(A + damping·I)^{-1/2}`; throws NumericalError when singular.
  Matrix inverse_sqrt(Scalar damping = Scalar(0)) const {
    require_invertible("inverse_sqrt", damping);
    return matrix_function([damping](Scalar l) { return Scalar(1) / std::sqrt(l + damping); });
  }

  /// Dense `(A + damping·I)^{1/2}` (always defined: eigenvalues are clipped at 0).
  Matrix sqrt(Scalar damping = Scalar(0)) const {
    detail::require_nonnegative("kfopt::SymmetricEigenCache::sqrt", "damping", damping);
    return matrix_function([damping](Scalar l) { return std::sqrt(l + damping); });
  }

 private:
  template <typename T>
  const T& checked(const T& value) const {
    if (!has_result_) {
      throw NumericalError(
          "kfopt::SymmetricEigenCache: no decomposition cached (compute() has not succeeded)");
    }
    return value;
  }

  void require_invertible(const char* what, Scalar damping) const {
    detail::require_nonnegative("kfopt::SymmetricEigenCache", "damping", damping);
    if (!is_invertible(damping)) {
      throw NumericalError(std::string("kfopt::SymmetricEigenCache::") + what +
                           ": A + damping·I is singular (smallest eigenvalue " +
                           std::to_string(static_cast<double>(eigenvalues_(0) + damping)) + ")");
    }
  }

  detail::SymmetricEigenKernel<Scalar, Backend> solver_;
  Vector eigenvalues_;
  Matrix eigenvectors_;
  mutable Matrix workspace_;
  Eigen::Index clipped_ = 0;
  Scalar min_raw_eigenvalue_ = Scalar(0);
  Status last_status_ = Status::NotComputed;
  bool has_result_ = false;
};

template <typename Scalar, DecompositionBackend Backend>
SymmetricEigenCache<Scalar, Backend>& SymmetricEigenCache<Scalar, Backend>::compute(
    const Eigen::Ref<const Matrix>& A) {
  constexpr const char* op = "kfopt::SymmetricEigenCache::compute";
  const Status input = detail::check_symmetric_factor_tiled(op, "A", A);
  if (input != Status::Success) {
    last_status_ = input;
    return *this;
  }
  if (!solver_.compute(A)) {
    last_status_ = Status::NumericalIssue;
    return *this;
  }
  solver_.take(eigenvalues_, eigenvectors_);
  clipped_ = 0;
  min_raw_eigenvalue_ = eigenvalues_.size() > 0 ? eigenvalues_.minCoeff() : Scalar(0);
  for (Eigen::Index i = 0; i < eigenvalues_.size(); ++i) {
    if (eigenvalues_(i) < Scalar(0)) {
      eigenvalues_(i) = Scalar(0);
      ++clipped_;
    }
  }
  last_status_ = Status::Success;
  has_result_ = true;
  return *this;
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class SymmetricEigenCache<float>;
extern template class SymmetricEigenCache<double>;
#endif

}  // namespace kfopt
