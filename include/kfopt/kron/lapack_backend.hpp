#pragma once
/// \file lapack_backend.hpp
/// \brief Which library performs the algebra layer's dense decompositions: Eigen (always
/// available, header-only) or LAPACK (optional, `KFOPT_USE_LAPACK`).
///
/// kfopt's symmetric eigendecompositions (SymmetricEigenCache) and Cholesky inverses
/// (DampedCholeskyInverse) run on Eigen by default. Building with the CMake option
/// `KFOPT_WITH_LAPACK=ON` defines `KFOPT_USE_LAPACK` on the `kfopt::kfopt` target and links
/// LAPACKE (Debian: liblapacke-dev, with OpenBLAS providing LAPACK and BLAS); the default
/// backend of those classes then becomes LAPACK for float and double:
///
/// - eigendecomposition: `dsyevd` / `ssyevd` (divide and conquer, about 4n³/3 flops for
///   the tridiagonal reduction plus a back-transformation that is mostly matrix products;
///   Eigen's `SelfAdjointEigenSolver` uses implicit QR with Givens rotations on the
///   eigenvectors instead, about 2× slower at n = 1024 on one core);
/// - Cholesky inverse: `dpotrf` + `dpotri` / `spotrf` + `spotri` (n³ flops in all).
///
/// Both backends give the same results to rounding (the test tests/kron/test_lapack_backend.cpp
/// checks 1e-10 in double), with the same public behaviour: eigenvalues clipped at 0, a
/// Status for numerical trouble, the previous result kept on failure. Other scalar types
/// (long double) always use Eigen. The backend can also be chosen per object with the second
/// template argument, e.g. `SymmetricEigenCache<double, DecompositionBackend::Eigen>`.
///
/// Workspaces are queried once per size and kept in the object, so a repeated `compute()` of
/// the same size does not allocate (LAPACKE's `_work` entry points are used for that; the
/// matrices are column-major, as Eigen's defaults, so LAPACKE passes them straight through).
///
/// Threads: LAPACK's speed comes from the BLAS underneath. OpenBLAS uses all cores unless
/// told otherwise (`OPENBLAS_NUM_THREADS`, or `openblas_set_num_threads`); kfopt sets no
/// thread count itself (no global mutable settings). See bench/README.md for measurements.

#include <Eigen/Core>
#include <climits>
#include <string>
#include <type_traits>

#include "kfopt/core/error.hpp"

#ifdef KFOPT_USE_LAPACK
#include <lapacke.h>
#endif

namespace kfopt {

/// The library that performs a dense symmetric eigendecomposition or Cholesky inverse.
enum class DecompositionBackend {
  Eigen,   ///< Eigen's SelfAdjointEigenSolver / LLT plus kfopt's blocked triangular inverse
  Lapack,  ///< LAPACK syevd / potrf + potri (only with KFOPT_USE_LAPACK, float and double)
};

/// Whether this build can use the LAPACK backend (`KFOPT_USE_LAPACK` is defined).
#ifdef KFOPT_USE_LAPACK
inline constexpr bool kLapackBackendAvailable = true;
#else
inline constexpr bool kLapackBackendAvailable = false;
#endif

/// The default backend for a scalar type: LAPACK for float and double when the build
/// enables it, Eigen otherwise.
template <typename Scalar>
inline constexpr DecompositionBackend kDefaultDecompositionBackend =
    (kLapackBackendAvailable &&
     (std::is_same<Scalar, double>::value || std::is_same<Scalar, float>::value))
        ? DecompositionBackend::Lapack
        : DecompositionBackend::Eigen;

namespace detail {

/// Compile-time guard: the LAPACK backend needs KFOPT_USE_LAPACK and float or double.
template <typename Scalar, DecompositionBackend Backend>
constexpr void require_backend_supported() {
  static_assert(Backend != DecompositionBackend::Lapack || kLapackBackendAvailable,
                "kfopt: DecompositionBackend::Lapack needs KFOPT_USE_LAPACK (CMake option "
                "KFOPT_WITH_LAPACK=ON, or -DKFOPT_USE_LAPACK and -llapacke)");
  static_assert(Backend != DecompositionBackend::Lapack || std::is_same<Scalar, double>::value ||
                    std::is_same<Scalar, float>::value,
                "kfopt: DecompositionBackend::Lapack supports float and double only");
}

#ifdef KFOPT_USE_LAPACK
namespace lapack {

/// A matrix dimension as LAPACK's integer (32 bits in the usual LP64 builds).
inline lapack_int to_int(Eigen::Index n, const char* op) {
  if (n < 0 || n > static_cast<Eigen::Index>(INT_MAX)) {
    throw ShapeError(std::string(op) + ": dimension " + std::to_string(n) +
                     " does not fit LAPACK's integer type");
  }
  return static_cast<lapack_int>(n);
}

// Thin overloads over LAPACKE's column-major `_work` entry points (no allocation inside).
inline lapack_int syevd(lapack_int n, double* a, double* w, double* work, lapack_int lwork,
                        lapack_int* iwork, lapack_int liwork) {
  return LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', n, a, n, w, work, lwork, iwork, liwork);
}
inline lapack_int syevd(lapack_int n, float* a, float* w, float* work, lapack_int lwork,
                        lapack_int* iwork, lapack_int liwork) {
  return LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'L', n, a, n, w, work, lwork, iwork, liwork);
}
inline lapack_int potrf(lapack_int n, double* a, lapack_int lda) {
  return LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', n, a, lda);
}
inline lapack_int potrf(lapack_int n, float* a, lapack_int lda) {
  return LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', n, a, lda);
}
inline lapack_int potri(lapack_int n, double* a, lapack_int lda) {
  return LAPACKE_dpotri_work(LAPACK_COL_MAJOR, 'L', n, a, lda);
}
inline lapack_int potri(lapack_int n, float* a, lapack_int lda) {
  return LAPACKE_spotri_work(LAPACK_COL_MAJOR, 'L', n, a, lda);
}

/// `syevd` with its workspace: eigenvalues (ascending) and eigenvectors of a symmetric
/// matrix from its lower triangle. The result lives in this object (`values`, `vectors`)
/// until the caller swaps it out; the workspace is sized once per n.
template <typename Scalar>
class SymmetricEigenSolver {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  SymmetricEigenSolver() = default;
  /// Preallocates for n×n (the result storage written once, see SymmetricEigenCache).
  explicit SymmetricEigenSolver(Eigen::Index n) {
    reserve(n);
    vectors.setZero();
    values.setZero();
  }

  /// Sizes the result and the workspace for n×n (a workspace query to LAPACK).
  void reserve(Eigen::Index n) {
    constexpr const char* op = "kfopt::SymmetricEigenCache (LAPACK syevd)";
    const lapack_int ni = to_int(n, op);
    vectors.resize(n, n);
    values.resize(n);
    if (n == reserved_n_) return;
    Scalar work_query = Scalar(0);
    lapack_int iwork_query = 0;
    lapack_int info = 0;
    if (n > 0) {
      info = syevd(ni, vectors.data(), values.data(), &work_query, -1, &iwork_query, -1);
    }
    if (info != 0) {
      throw NumericalError(std::string(op) + ": workspace query failed (info " +
                           std::to_string(info) + ")");
    }
    // The query returns the size as a floating-point number; round up generously.
    const auto lwork = static_cast<Eigen::Index>(static_cast<double>(work_query) * 1.0001) + 1;
    work_.resize(std::max<Eigen::Index>(lwork, 1));
    iwork_.resize(std::max<Eigen::Index>(static_cast<Eigen::Index>(iwork_query), 1));
    reserved_n_ = n;
  }

  /// Decomposes A (only its lower triangle is read). Returns false when LAPACK reports a
  /// failure (no convergence) or the result is not finite.
  bool compute(const Eigen::Ref<const Matrix>& A) {
    const Eigen::Index n = A.rows();
    if (n != reserved_n_) reserve(n);
    if (n == 0) return true;
    // The result storage may have been swapped out (SymmetricEigenCache takes it by swap,
    // possibly leaving storage of another size here): size it again (no-op when it fits).
    values.resize(n);
    vectors = A;
    const lapack_int info =
        syevd(static_cast<lapack_int>(n), vectors.data(), values.data(), work_.data(),
              static_cast<lapack_int>(work_.size()), iwork_.data(),
              static_cast<lapack_int>(iwork_.size()));
    return info == 0 && values.allFinite();
  }

  Matrix vectors;  ///< eigenvectors (columns) of the last successful compute
  Vector values;   ///< eigenvalues, ascending

 private:
  Vector work_;
  Eigen::Matrix<lapack_int, Eigen::Dynamic, 1> iwork_;
  Eigen::Index reserved_n_ = -1;
};

}  // namespace lapack
#endif  // KFOPT_USE_LAPACK

}  // namespace detail
}  // namespace kfopt
