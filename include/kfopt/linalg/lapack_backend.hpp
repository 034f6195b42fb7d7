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
/// - eigendecomposition: syevd's steps, `dsytrd` / `ssytrd` (tridiagonal reduction, about
///   4n³/3 flops) and `dstedc` / `sstedc` (divide and conquer), with the back-transformation
///   (2n³ flops, matrix products) done by kfopt (SplitSymmetricEigenSolver below: 0.8–0.9×
///   the time of syevd itself);
///   Eigen's `SelfAdjointEigenSolver` uses implicit QR with Givens rotations on the
///   eigenvectors instead, about 2× slower at n = 1024 on one core);
/// - Cholesky inverse: `dpotrf` / `spotrf`, then the inverse from the factor (potri's work,
///   trtri + lauum) by kfopt's recursive kernels with BLAS `trmm` / `syrk` doing the products
///   (damped_cholesky_inverse.hpp: on one core that measured faster than OpenBLAS's potri;
///   n³ flops in all);
/// - factor statistics (factor_moments.hpp): the BLAS symmetric rank-k update `dsyrk` /
///   `ssyrk` (through CBLAS, which OpenBLAS provides) blends a batch's Gram matrix into the
///   moving average in one call.
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
/// thread count itself (no global mutable settings). Measurements: bench/results/bench_kron.md.

#include <Eigen/Core>
#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"

#ifdef KFOPT_USE_LAPACK
#include <cblas.h>
#include <lapacke.h>
#endif

namespace kfopt {

/// The library that performs a dense symmetric eigendecomposition or Cholesky inverse.
enum class DecompositionBackend {
  Eigen,   ///< Eigen's SelfAdjointEigenSolver / LLT plus kfopt's blocked triangular inverse
  Lapack,  ///< LAPACK sytrd + stedc / potrf (+ BLAS-based inverse), BLAS syrk (only with KFOPT_USE_LAPACK, float and double)
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

/// What one pass over a square matrix finds (symmetry_scan).
template <typename Scalar>
struct SymmetryScan {
  bool finite = true;        ///< no NaN or Inf anywhere
  Scalar max_abs = Scalar(0);  ///< max |m_ij| (meaningful when finite)
  Scalar asym = Scalar(0);     ///< max |m_ij − m_ji| (meaningful when finite)
};

/// One pass over square m in pairs of matching `Tile`×`Tile` blocks (lower block (i, j) and
/// upper block (j, i)): the upper block is transposed into a small buffer, then finiteness,
/// max |m_ij| and max |m_ij − m_ji| are vectorized reductions over contiguous columns. With
/// `lower_copy` (n×n), the lower triangle of m is copied into it in the same pass (its strict
/// upper triangle is not written; partly written when the scan stops at a non-finite block).
/// Finiteness is `Σ (0·m_ij) == 0` (0·x is NaN exactly for x = ±Inf or NaN), so no entry
/// is compared as a NaN.
template <Eigen::Index Tile, typename Derived, typename Copy>
SymmetryScan<typename Derived::Scalar> symmetry_scan(const Eigen::MatrixBase<Derived>& m,
                                                     Copy* lower_copy) {
  using Scalar = typename Derived::Scalar;
  const Eigen::Index n = m.rows();
  SymmetryScan<Scalar> scan;
  // The transposed upper block, on the stack (Tile² scalars; a dynamic-size map of it keeps
  // Eigen's reductions free of fixed-size bounds that GCC warns about at -O3).
  alignas(64) Scalar upper_t[Tile * Tile];
  for (Eigen::Index j = 0; j < n; j += Tile) {
    const Eigen::Index w = std::min(Tile, n - j);
    Scalar zero = Scalar(0);
    for (Eigen::Index i = j; i < n; i += Tile) {
      const Eigen::Index h = std::min(Tile, n - i);
      const auto lower = m.block(i, j, h, w);
      Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>, Eigen::Aligned64> ut(
          upper_t, h, w);
      ut = m.block(j, i, w, h).transpose();
      zero += (lower.array() * Scalar(0) + ut.array() * Scalar(0)).sum();
      scan.max_abs =
          std::max(scan.max_abs, lower.cwiseAbs().cwiseMax(ut.cwiseAbs()).maxCoeff());
      scan.asym = std::max(scan.asym, (lower - ut).cwiseAbs().maxCoeff());
      if (lower_copy != nullptr) {
        if (i == j) {
          lower_copy->block(i, j, h, w).template triangularView<Eigen::Lower>() = lower;
        } else {
          lower_copy->block(i, j, h, w) = lower;
        }
      }
    }
    if (!(zero == Scalar(0))) {
      scan.finite = false;
      return scan;
    }
  }
  return scan;
}

/// Block size of check_symmetric_factor_tiled's scan and of mirror_lower_to_upper: a column
/// of an upper block is then one or two cache lines (measured on AVX-512, n = 256…2048:
/// 16 about 1.5–2× faster than 32, and 64 slower again).
inline constexpr Eigen::Index kSymmetryTile = 16;

/// The checks of check_symmetric_factor (core/validate.hpp) in one cache-friendly pass, for
/// the decompositions' hot path: throws ShapeError unless square; returns
/// Status::NonFiniteInput for NaN/Inf; throws InvalidInputError unless symmetric to the
/// scalar type's relative tolerance (`max|m_ij − m_ji| ≤ tol · max(1, max|m_ij|)`, the same
/// test as is_symmetric); otherwise Status::Success. The generic version compares m with
/// mᵀ element by element, whose transposed read strides through memory: at n = 2048 that
/// alone cost about as much as the Cholesky inverse's potri. Here both triangles are read
/// in matching tiles (symmetry_scan).
///
/// With `lower_copy` (an n×n matrix), the lower triangle of m is copied into it in the same
/// pass (what a Cholesky or eigensolver that reads one triangle needs); its strict upper
/// triangle is not written. On a non-Success return it may be partly written.
template <typename Derived, typename Copy = Eigen::Matrix<typename Derived::Scalar,
                                                          Eigen::Dynamic, Eigen::Dynamic>>
Status check_symmetric_factor_tiled(const char* operation, const char* operand,
                                    const Eigen::MatrixBase<Derived>& m,
                                    Copy* lower_copy = nullptr) {
  using Scalar = typename Derived::Scalar;
  require_square(operation, operand, m);
  const SymmetryScan<Scalar> scan = symmetry_scan<kSymmetryTile>(m, lower_copy);
  if (!scan.finite) return Status::NonFiniteInput;
  if (!(scan.asym <=
        ScalarTraits<Scalar>::symmetry_tolerance() * std::max(Scalar(1), scan.max_abs))) {
    throw InvalidInputError(std::string(operation) + ": " + operand + " (" + shape_of(m) +
                            ") must be symmetric");
  }
  return Status::Success;
}

/// Copies the strictly lower triangle of square M onto the upper one, in small tiles (a
/// plain transposed copy strides through memory and costs several times more at n ≥ 1024).
template <typename Matrix, Eigen::Index Tile = kSymmetryTile>
void mirror_lower_to_upper(Matrix& M) {
  constexpr Eigen::Index tile = Tile;
  const Eigen::Index n = M.rows();
  for (Eigen::Index j = 0; j < n; j += tile) {
    const Eigen::Index w = std::min(tile, n - j);
    auto diagonal_tile = M.block(j, j, w, w);
    diagonal_tile.template triangularView<Eigen::StrictlyUpper>() = diagonal_tile.transpose();
    for (Eigen::Index i = j + w; i < n; i += tile) {
      const Eigen::Index h = std::min(tile, n - i);
      M.block(j, i, w, h) = M.block(i, j, h, w).transpose();
    }
  }
}

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
inline lapack_int sytrd(lapack_int n, double* a, double* d, double* e, double* tau, double* work,
                        lapack_int lwork) {
  return LAPACKE_dsytrd_work(LAPACK_COL_MAJOR, 'L', n, a, n, d, e, tau, work, lwork);
}
inline lapack_int sytrd(lapack_int n, float* a, float* d, float* e, float* tau, float* work,
                        lapack_int lwork) {
  return LAPACKE_ssytrd_work(LAPACK_COL_MAJOR, 'L', n, a, n, d, e, tau, work, lwork);
}
inline lapack_int stedc(lapack_int n, double* d, double* e, double* z, double* work,
                        lapack_int lwork, lapack_int* iwork, lapack_int liwork) {
  return LAPACKE_dstedc_work(LAPACK_COL_MAJOR, 'I', n, d, e, z, n, work, lwork, iwork, liwork);
}
inline lapack_int stedc(lapack_int n, float* d, float* e, float* z, float* work,
                        lapack_int lwork, lapack_int* iwork, lapack_int liwork) {
  return LAPACKE_sstedc_work(LAPACK_COL_MAJOR, 'I', n, d, e, z, n, work, lwork, iwork, liwork);
}
inline lapack_int larft(lapack_int m, lapack_int k, const double* v, lapack_int ldv,
                        const double* tau, double* t, lapack_int ldt) {
  return LAPACKE_dlarft_work(LAPACK_COL_MAJOR, 'F', 'C', m, k, v, ldv, tau, t, ldt);
}
inline lapack_int larft(lapack_int m, lapack_int k, const float* v, lapack_int ldv,
                        const float* tau, float* t, lapack_int ldt) {
  return LAPACKE_slarft_work(LAPACK_COL_MAJOR, 'F', 'C', m, k, v, ldv, tau, t, ldt);
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
/// Lower triangle of `C ← alpha·XᵀX + beta·C` for X k×n (column-major, leading dimension
/// ldx) and C n×n (leading dimension ldc): BLAS syrk, lower, transposed.
inline void syrk_lower_t(lapack_int n, lapack_int k, double alpha, const double* x,
                         lapack_int ldx, double beta, double* c, lapack_int ldc) {
  cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, n, k, alpha, x, ldx, beta, c, ldc);
}
inline void syrk_lower_t(lapack_int n, lapack_int k, float alpha, const float* x,
                         lapack_int ldx, float beta, float* c, lapack_int ldc) {
  cblas_ssyrk(CblasColMajor, CblasLower, CblasTrans, n, k, alpha, x, ldx, beta, c, ldc);
}

// Level-3 BLAS on lower-triangular, non-unit matrices (column-major, through CBLAS), for
// kfopt's recursive Cholesky-inverse kernels (damped_cholesky_inverse.hpp) with the LAPACK
// backend.
/// `B ← alpha · op(L) B` (Left) or `B ← alpha · B op(L)` (Right), in place, B m×n, L lower.
inline void trmm_lower(CBLAS_SIDE side, CBLAS_TRANSPOSE trans, lapack_int m, lapack_int n,
                       double alpha, const double* l, lapack_int ldl, double* b, lapack_int ldb) {
  cblas_dtrmm(CblasColMajor, side, CblasLower, trans, CblasNonUnit, m, n, alpha, l, ldl, b, ldb);
}
inline void trmm_lower(CBLAS_SIDE side, CBLAS_TRANSPOSE trans, lapack_int m, lapack_int n,
                       float alpha, const float* l, lapack_int ldl, float* b, lapack_int ldb) {
  cblas_strmm(CblasColMajor, side, CblasLower, trans, CblasNonUnit, m, n, alpha, l, ldl, b, ldb);
}

/// `syevd` with its workspace (the reference the backend's SplitSymmetricEigenSolver is
/// measured and tested against): eigenvalues (ascending) and eigenvectors of a symmetric
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

/// The LAPACK backend's eigensolver: syevd's three steps with the last one done by kfopt.
/// `sytrd` reduces A to tridiagonal T = Qᵀ A Q (Q as n−1 Householder reflectors), `stedc`
/// (divide and conquer, as in syevd) gives T = Z Λ Zᵀ, and the eigenvectors Q Z are formed
/// by applying the reflectors to Z in blocks of 64 in compact-WY form, `Z ← (I − V T Vᵀ) Z`
/// (T from `larft`), whose two products run on kfopt's product kernel
/// (matrix_product_kernel.hpp). That is what syevd's `ormtr` does through reference
/// LAPACK's `larfb`, whose copies and loops took about 13% of syevd's time at n = 1024 in a
/// profile (OpenBLAS 0.3.21, one thread). Same flops; the eigenvalues are stedc's for the
/// same tridiagonal matrix, as in syevd. 0.80–0.87× of syevd's time at n = 256…2048 in a
/// side-by-side probe (bench_kron: `eig/kfopt_lapack` against `eig/lapack`). Interface as
/// SymmetricEigenSolver.
template <typename Scalar>
class SplitSymmetricEigenSolver {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Reflectors per compact-WY block of the back-transformation.
  static constexpr Eigen::Index kBlock = 64;

  SplitSymmetricEigenSolver() = default;
  /// Preallocates for n×n (the result storage written once, see SymmetricEigenCache).
  explicit SplitSymmetricEigenSolver(Eigen::Index n) {
    reserve(n);
    vectors.setZero();
    values.setZero();
  }

  /// Sizes the result and every workspace for n×n (workspace queries to LAPACK).
  void reserve(Eigen::Index n) {
    constexpr const char* op = "kfopt::SymmetricEigenCache (LAPACK sytrd + stedc)";
    const lapack_int ni = to_int(n, op);
    vectors.resize(n, n);
    values.resize(n);
    if (n == reserved_n_) return;
    Scalar sytrd_query = Scalar(0), stedc_query = Scalar(0);
    lapack_int iwork_query = 0, info = 0;
    reduced_.resize(n, n);
    off_diagonal_.resize(std::max<Eigen::Index>(n, 1));
    tau_.resize(std::max<Eigen::Index>(n, 1));
    if (n > 0) {
      info = sytrd(ni, reduced_.data(), values.data(), off_diagonal_.data(), tau_.data(),
                   &sytrd_query, -1);
      if (info == 0) {
        info = stedc(ni, values.data(), off_diagonal_.data(), vectors.data(), &stedc_query, -1,
                     &iwork_query, -1);
      }
    }
    if (info != 0) {
      throw NumericalError(std::string(op) + ": workspace query failed (info " +
                           std::to_string(info) + ")");
    }
    // The queries return sizes as floating-point numbers; round up generously.
    const double query = std::max(static_cast<double>(sytrd_query),
                                  static_cast<double>(stedc_query));
    work_.resize(std::max<Eigen::Index>(static_cast<Eigen::Index>(query * 1.0001) + 1, 1));
    iwork_.resize(std::max<Eigen::Index>(static_cast<Eigen::Index>(iwork_query), 1));
    const Eigen::Index block = std::min<Eigen::Index>(kBlock, std::max<Eigen::Index>(n, 1));
    block_t_.resize(block, block);
    block_v_.resize(n, block);
    block_w_.resize(block, n);
    block_tw_.resize(block, n);
    reserved_n_ = n;
  }

  /// Decomposes A (only its lower triangle is read). Returns false when LAPACK reports a
  /// failure (no convergence) or the result is not finite.
  bool compute(const Eigen::Ref<const Matrix>& A) {
    const Eigen::Index n = A.rows();
    if (n != reserved_n_) reserve(n);
    if (n == 0) return true;
    values.resize(n);  // the result storage may have been swapped out (see SymmetricEigenSolver)
    vectors.resize(n, n);
    reduced_.template triangularView<Eigen::Lower>() = A;
    const auto ni = static_cast<lapack_int>(n);
    const auto lwork = static_cast<lapack_int>(work_.size());
    if (sytrd(ni, reduced_.data(), values.data(), off_diagonal_.data(), tau_.data(),
              work_.data(), lwork) != 0) {
      return false;
    }
    if (stedc(ni, values.data(), off_diagonal_.data(), vectors.data(), work_.data(), lwork,
              iwork_.data(), static_cast<lapack_int>(iwork_.size())) != 0) {
      return false;
    }
    apply_reflectors();
    return values.allFinite() && vectors.allFinite();
  }

  Matrix vectors;  ///< eigenvectors (columns) of the last successful compute
  Vector values;   ///< eigenvalues, ascending

 private:
  /// vectors ← Q · vectors with Q = H(0) H(1) ⋯ H(n−2) as sytrd('L') stores it: reflector i
  /// is `I − τᵢ vᵢ vᵢᵀ` with vᵢ zero above row i+1, 1 at row i+1, and reduced_(i+2:, i)
  /// below. Blocks from the last to the first; a block of k reflectors starting at j acts on
  /// rows j+1 … n−1 only.
  void apply_reflectors() {
    const Eigen::Index n = vectors.rows(), reflectors = n - 1;
    if (reflectors <= 0) return;
    const Eigen::Index nb = block_t_.rows();
    for (Eigen::Index j = ((reflectors - 1) / nb) * nb; j >= 0; j -= nb) {
      const Eigen::Index k = std::min(nb, reflectors - j), m = n - j - 1;
      larft(static_cast<lapack_int>(m), static_cast<lapack_int>(k), &reduced_(j + 1, j),
            static_cast<lapack_int>(reduced_.outerStride()), tau_.data() + j, block_t_.data(),
            static_cast<lapack_int>(block_t_.outerStride()));
      auto V = block_v_.topLeftCorner(m, k);  // explicit unit lower trapezoid
      for (Eigen::Index c = 0; c < k; ++c) {
        V.col(c).head(c).setZero();
        V(c, c) = Scalar(1);
        V.col(c).tail(m - c - 1) = reduced_.col(j + c).tail(m - c - 1);
      }
      auto Z = vectors.bottomRows(m);
      auto W = block_w_.topRows(k);
      auto TW = block_tw_.topRows(k);
      W.setZero();
      product_accumulate<Scalar>(W, Scalar(1), V.transpose(), Z);  // W = Vᵀ Z
      TW.noalias() = block_t_.topLeftCorner(k, k).template triangularView<Eigen::Upper>() * W;
      product_accumulate<Scalar>(Z, Scalar(-1), V, TW);  // Z −= V T Vᵀ Z
    }
  }

  Matrix reduced_;  // sytrd's output: T's diagonals and the reflectors
  Vector off_diagonal_, tau_, work_;
  Eigen::Matrix<lapack_int, Eigen::Dynamic, 1> iwork_;
  Matrix block_t_, block_v_, block_w_, block_tw_;
  Eigen::Index reserved_n_ = -1;
};

}  // namespace lapack
#endif  // KFOPT_USE_LAPACK

}  // namespace detail
}  // namespace kfopt
