#pragma once
/// \file kronecker_projection.hpp
/// \brief KL-optimal projection of a sum of two Kronecker products onto one Kronecker
/// product (Aitchison 2018, SI §4.3, eq. 32; main text §2.1.3, eq. 23–28).
///
/// Given `Σ = X1 ⊗ Y1 + X2 ⊗ Y2` (X's N×N, Y's M×M; X1, Y1 symmetric positive definite;
/// X2, Y2 symmetric, possibly indefinite; Σ positive definite), find `A ⊗ B` minimizing
/// `KL(N(0, Σ) ‖ N(0, A ⊗ B))`. With the Kronecker trace and determinant identities
/// (SI §4.3),
///
///     2 KL = Tr(A⁻¹X1) Tr(B⁻¹Y1) + Tr(A⁻¹X2) Tr(B⁻¹Y2) + M log|A| + N log|B|
///            − NM − log|Σ|.
///
/// Setting the derivatives with respect to A⁻¹ and B⁻¹ to zero gives the stationarity
/// equations
///
///     A = (1/M) [Tr(B⁻¹Y1) X1 + Tr(B⁻¹Y2) X2],   B = (1/N) [Tr(A⁻¹X1) Y1 + Tr(A⁻¹X2) Y2],
///
/// so A = α1 X1 + α2 X2 and B = β1 Y1 + β2 Y2. Only the product A ⊗ B is determined (A → cA,
/// B → B/c leaves it unchanged).
///
/// Two solvers:
/// - `kronecker_projection_first_order`: the paper's closed form, eq. 32a/32b, accurate when
///   X2 and Y2 are small (`X1⁻¹X2 = O(√ε)`, `Y1⁻¹Y2 = O(√ε)`, eq. 31). Its product A ⊗ B
///   differs from the exact minimizer's by O(ε²) relative, i.e. fourth order in the size
///   of X2, Y2 (the α2, β2 errors are O(ε^{3/2}) and multiply X2, Y2 = O(√ε); the α1β1
///   error is O(ε²)). This is the form used by the Bayesian filter updates eq. 24 and 28.
/// - `KroneckerKlProjection`: the exact minimizer, by alternating exact minimization over
///   one factor given the other (the stationarity equations iterated to convergence).
///
/// `kronecker_kl_objective` evaluates the objective for any pair of factors.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "kfopt/linalg/eigen_decompositions.hpp"
#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// A pair of Kronecker factors `A ⊗ B` and the status of the computation that produced it.
template <typename Scalar>
struct KroneckerPair {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> A;  ///< N×N left factor
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> B;  ///< M×M right factor
  Status status = Status::NotComputed;                      ///< Success: A and B are SPD
};

namespace detail {

/// Precision of the scalar recurrences of the projection: at least double.
template <typename Scalar>
using ProjectionReal =
    std::conditional_t<(std::numeric_limits<Scalar>::digits > std::numeric_limits<double>::digits),
                       Scalar, double>;

/// Shapes (X1, X2 N×N; Y1, Y2 M×M; none empty), symmetry and finiteness of the four
/// operands of a Kronecker projection. Throws ShapeError / InvalidInputError.
template <typename DX1, typename DY1, typename DX2, typename DY2>
void require_projection_operands(const char* op, const Eigen::MatrixBase<DX1>& X1,
                                 const Eigen::MatrixBase<DY1>& Y1,
                                 const Eigen::MatrixBase<DX2>& X2,
                                 const Eigen::MatrixBase<DY2>& Y2) {
  require_nonempty(op, "X1", X1);
  require_square(op, "X1", X1);
  require_nonempty(op, "Y1", Y1);
  require_square(op, "Y1", Y1);
  require_shape(op, "X2 (must match X1)", X2, X1.rows(), X1.cols());
  require_shape(op, "Y2 (must match Y1)", Y2, Y1.rows(), Y1.cols());
  require_symmetric(op, "X1", X1);
  require_symmetric(op, "Y1", Y1);
  require_symmetric(op, "X2", X2);
  require_symmetric(op, "Y2", Y2);
}

/// Eigenvalues (ascending) of `L⁻¹ Q L⁻ᵀ` with `P = L Lᵀ` (Cholesky), i.e. the generalized
/// eigenvalues of `Q v = λ P v`, the spectrum of `P⁻¹Q`. Returns false when P is not
/// positive definite or the result is not finite. Cost: N³/3 (Cholesky) + 2N³ (two
/// triangular solves) + about 4N³/3 (tridiagonalization; no eigenvectors).
template <typename Scalar, typename Real>
bool relative_eigenvalues(const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& P,
                          const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& Q,
                          Eigen::LLT<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& llt,
                          Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work,
                          Eigen::SelfAdjointEigenSolver<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& eig,
                          Eigen::Matrix<Real, Eigen::Dynamic, 1>& out) {
  llt.compute(P);
  if (llt.info() != Eigen::Success) return false;
  work = Q;
  llt.matrixL().solveInPlace(work);  // L⁻¹ Q
  work.transposeInPlace();           // Q L⁻ᵀ (Q symmetric)
  llt.matrixL().solveInPlace(work);  // L⁻¹ Q L⁻ᵀ
  symmetrize(work);
  eig.compute(work, Eigen::EigenvaluesOnly);
  if (eig.info() != Eigen::Success || !eig.eigenvalues().allFinite()) return false;
  out = eig.eigenvalues().template cast<Real>();
  return true;
}

/// One exact half-step in whitened coordinates: given the other factor `c1 Z1 + c2 Z2`
/// whose relative spectrum is `nu` (ascending) and the size `n_other` of that factor,
/// sets `(d1, d2) = (1/n_other) (Σ 1/(c1 + c2 ν_j), Σ ν_j/(c1 + c2 ν_j))` — the
/// coefficients `Tr(F⁻¹Z1)/n_other`, `Tr(F⁻¹Z2)/n_other` of the minimizing factor. Returns
/// false when the given factor is not positive definite or the result is not finite.
template <typename Real>
bool projection_half_step(const Eigen::Matrix<Real, Eigen::Dynamic, 1>& nu, Real c1, Real c2,
                          Real& d1, Real& d2) {
  const Eigen::Index n = nu.size();
  // c1 + c2 ν is linear in ν: its minimum over the sorted spectrum is at one end.
  if (!(c1 + c2 * nu(0) > Real(0)) || !(c1 + c2 * nu(n - 1) > Real(0))) return false;
  Real s1 = 0, s2 = 0;
  for (Eigen::Index j = 0; j < n; ++j) {
    const Real w = Real(1) / (c1 + c2 * nu(j));
    s1 += w;
    s2 += nu(j) * w;
  }
  d1 = s1 / static_cast<Real>(n);
  d2 = s2 / static_cast<Real>(n);
  return std::isfinite(d1) && std::isfinite(d2) && d1 > Real(0);
}

/// Whether `c1 Z1 + c2 Z2` is positive definite, given the relative spectrum `nu` of Z2 with
/// respect to Z1 (ascending).
template <typename Real>
bool projection_factor_is_pd(const Eigen::Matrix<Real, Eigen::Dynamic, 1>& nu, Real c1, Real c2) {
  return c1 + c2 * nu(0) > Real(0) && c1 + c2 * nu(nu.size() - 1) > Real(0) &&
         std::isfinite(c1) && std::isfinite(c2);
}

/// Smallest and largest of `(q1 + q2 ν)/(p1 + p2 ν)` over the sorted spectrum `nu`: the
/// eigenvalues of `F⁻¹F'` for `F = p1 Z1 + p2 Z2` (PD) and `F' = q1 Z1 + q2 Z2`. The ratio
/// is a Möbius function of ν with a positive denominator, hence monotone: its extremes are
/// at the two ends of the spectrum.
template <typename Real>
void projection_ratio_range(const Eigen::Matrix<Real, Eigen::Dynamic, 1>& nu, Real p1, Real p2,
                            Real q1, Real q2, Real& lo, Real& hi) {
  const Real first = (q1 + q2 * nu(0)) / (p1 + p2 * nu(0));
  const Real last = (q1 + q2 * nu(nu.size() - 1)) / (p1 + p2 * nu(nu.size() - 1));
  lo = std::min(first, last);
  hi = std::max(first, last);
}

}  // namespace detail

/// The closed-form (first-order) KL projection of `Σ = X1 ⊗ Y1 + X2 ⊗ Y2` onto `A ⊗ B`,
/// Aitchison 2018, SI §4.3, eq. 32a/32b:
///
///     A = (1 − τx τy / (2NM)) X1 + (τy / M) X2,
///     B = (1 − τx τy / (2NM)) Y1 + (τx / N) Y2,       τx = Tr(X1⁻¹X2), τy = Tr(Y1⁻¹Y2).
///
/// The traces come from Cholesky solves (no explicit inverse). Valid range: X1, Y1 SPD;
/// X2, Y2 symmetric. Accurate when `‖X1⁻¹X2‖, ‖Y1⁻¹Y2‖ ≪ 1` (eq. 31): the product A ⊗ B
/// then differs from the exact minimizer's (KroneckerKlProjection) by a relative error of
/// fourth order in the size of X2, Y2 (O(ε²) in the paper's ε). For large X2, Y2 the
/// factors may fail to be positive definite even when Σ is.
///
/// Returns `{A, B, status}`: status Success when X1, Y1 and the resulting A, B are all
/// positive definite; NumericalIssue otherwise (A and B are empty if X1 or Y1 is not PD,
/// and hold the closed form if only A or B is not PD).
///
/// Cost: four Cholesky factorizations (X1, Y1, and the PD check of A, B: 2(N³ + M³)/3
/// flops) and two Cholesky solves (2N³ + 2M³ flops). Throws ShapeError / InvalidInputError
/// (naming the operand and shapes) for mismatched, non-symmetric or non-finite operands.
template <typename DX1, typename DY1, typename DX2, typename DY2>
[[nodiscard]] KroneckerPair<typename DX1::Scalar> kronecker_projection_first_order(
    const Eigen::MatrixBase<DX1>& X1, const Eigen::MatrixBase<DY1>& Y1,
    const Eigen::MatrixBase<DX2>& X2, const Eigen::MatrixBase<DY2>& Y2) {
  using Scalar = typename DX1::Scalar;
  static_assert(std::is_same<Scalar, typename DY1::Scalar>::value &&
                    std::is_same<Scalar, typename DX2::Scalar>::value &&
                    std::is_same<Scalar, typename DY2::Scalar>::value,
                "kfopt::kronecker_projection_first_order: X1, Y1, X2, Y2 must share a scalar type");
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Real = detail::ProjectionReal<Scalar>;
  constexpr const char* op = "kfopt::kronecker_projection_first_order";
  detail::require_projection_operands(op, X1, Y1, X2, Y2);

  KroneckerPair<Scalar> result;
  result.status = Status::NumericalIssue;
  const Eigen::LLT<Matrix> llt_x(X1);
  if (llt_x.info() != Eigen::Success) return result;
  const Eigen::LLT<Matrix> llt_y(Y1);
  if (llt_y.info() != Eigen::Success) return result;
  const Real tau_x = static_cast<Real>(llt_x.solve(X2).trace());  // Tr(X1⁻¹X2)
  const Real tau_y = static_cast<Real>(llt_y.solve(Y2).trace());  // Tr(Y1⁻¹Y2)
  const Real n = static_cast<Real>(X1.rows()), m = static_cast<Real>(Y1.rows());
  const Real common = Real(1) - tau_x * tau_y / (Real(2) * n * m);
  if (!std::isfinite(common) || !std::isfinite(tau_x) || !std::isfinite(tau_y)) return result;

  result.A = static_cast<Scalar>(common) * X1 + static_cast<Scalar>(tau_y / m) * X2;
  result.B = static_cast<Scalar>(common) * Y1 + static_cast<Scalar>(tau_x / n) * Y2;
  detail::symmetrize(result.A);
  detail::symmetrize(result.B);
  const bool pd = Eigen::LLT<Matrix>(result.A).info() == Eigen::Success &&
                  Eigen::LLT<Matrix>(result.B).info() == Eigen::Success;
  result.status = pd ? Status::Success : Status::NumericalIssue;
  return result;
}

/// The KL objective of a pair of factors,
///
///     J(A, B) = Tr(A⁻¹X1) Tr(B⁻¹Y1) + Tr(A⁻¹X2) Tr(B⁻¹Y2) + M log|A| + N log|B|
///             = 2 KL(N(0, Σ) ‖ N(0, A ⊗ B)) + NM + log|Σ|,
///
/// (SI §4.3) for any SPD A (N×N), B (M×M): differences of J are twice differences of the
/// KL divergence, without forming the NM×NM matrices. Writes J to `objective` and returns
/// Success, or returns NumericalIssue (and writes +∞) when A or B is not positive
/// definite. Cost: one Cholesky factorization of A and of B ((N³ + M³)/3 flops) and four
/// Cholesky solves (4N³ + 4M³ flops). Throws ShapeError / InvalidInputError for
/// mismatched, non-symmetric or non-finite operands.
template <typename DA, typename DB, typename DX1, typename DY1, typename DX2, typename DY2>
[[nodiscard]] Status kronecker_kl_objective(const Eigen::MatrixBase<DA>& A,
                                            const Eigen::MatrixBase<DB>& B,
                                            const Eigen::MatrixBase<DX1>& X1,
                                            const Eigen::MatrixBase<DY1>& Y1,
                                            const Eigen::MatrixBase<DX2>& X2,
                                            const Eigen::MatrixBase<DY2>& Y2,
                                            typename DA::Scalar& objective) {
  using Scalar = typename DA::Scalar;
  static_assert(std::is_same<Scalar, typename DB::Scalar>::value &&
                    std::is_same<Scalar, typename DX1::Scalar>::value &&
                    std::is_same<Scalar, typename DY1::Scalar>::value &&
                    std::is_same<Scalar, typename DX2::Scalar>::value &&
                    std::is_same<Scalar, typename DY2::Scalar>::value,
                "kfopt::kronecker_kl_objective: all operands must share a scalar type");
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Real = detail::ProjectionReal<Scalar>;
  constexpr const char* op = "kfopt::kronecker_kl_objective";
  detail::require_projection_operands(op, X1, Y1, X2, Y2);
  detail::require_shape(op, "A (must match X1)", A, X1.rows(), X1.cols());
  detail::require_shape(op, "B (must match Y1)", B, Y1.rows(), Y1.cols());
  detail::require_symmetric(op, "A", A);
  detail::require_symmetric(op, "B", B);

  const Eigen::LLT<Matrix> llt_a(A);
  const Eigen::LLT<Matrix> llt_b(B);
  if (llt_a.info() != Eigen::Success || llt_b.info() != Eigen::Success) {
    objective = std::numeric_limits<Scalar>::infinity();
    return Status::NumericalIssue;
  }
  const Real n = static_cast<Real>(A.rows()), m = static_cast<Real>(B.rows());
  Real logdet_a = 0, logdet_b = 0;
  for (Eigen::Index i = 0; i < A.rows(); ++i)
    logdet_a += Real(2) * std::log(static_cast<Real>(llt_a.matrixLLT()(i, i)));
  for (Eigen::Index j = 0; j < B.rows(); ++j)
    logdet_b += Real(2) * std::log(static_cast<Real>(llt_b.matrixLLT()(j, j)));
  const Real j_value =
      static_cast<Real>(llt_a.solve(X1).trace()) * static_cast<Real>(llt_b.solve(Y1).trace()) +
      static_cast<Real>(llt_a.solve(X2).trace()) * static_cast<Real>(llt_b.solve(Y2).trace()) +
      m * logdet_a + n * logdet_b;
  if (!std::isfinite(j_value)) {
    objective = std::numeric_limits<Scalar>::infinity();
    return Status::NumericalIssue;
  }
  objective = static_cast<Scalar>(j_value);
  return Status::Success;
}

/// Where KroneckerKlProjection starts its iteration.
enum class ProjectionStart {
  FirstOrder,  ///< from the closed form eq. 32 (falls back to Leading if its B is not PD)
  Leading,     ///< from A = X1, B = Y1
};

/// Options of KroneckerKlProjection.
struct KroneckerKlProjectionOptions {
  /// Maximum number of iterations (one iteration = an exact A-step then an exact B-step).
  /// Each costs O(N + M) flops (see KroneckerKlProjection), so the limit is cheap.
  /// Range [1, ∞). Default 500.
  int max_iterations = 500;
  /// Stop when one iteration changes the product by at most this much, measured
  /// scale-free as `‖(A ⊗ B)⁻¹(A' ⊗ B') − I‖₂` (largest relative change of an eigenvalue
  /// of A ⊗ B in the common eigenbasis). The recurrence runs in at least double precision
  /// whatever the scalar type, so the same tolerance serves float and double. Range
  /// (0, 1). Default 1e-12.
  double relative_tolerance = 1e-12;
  /// Starting point of the iteration. Default ProjectionStart::FirstOrder.
  ProjectionStart start = ProjectionStart::FirstOrder;

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    detail::require_hyperparameter(max_iterations >= 1, "kfopt::KroneckerKlProjectionOptions",
                                   "max_iterations", max_iterations, "[1, inf)");
    detail::require_hyperparameter(relative_tolerance > 0.0 && relative_tolerance < 1.0,
                                   "kfopt::KroneckerKlProjectionOptions", "relative_tolerance",
                                   relative_tolerance, "(0, 1)");
  }
};

/// The exact KL projection of `Σ = X1 ⊗ Y1 + X2 ⊗ Y2` onto one Kronecker product `A ⊗ B`
/// (Aitchison 2018, SI §4.3: the minimizer of 2KL whose first-order approximation is
/// eq. 32).
///
/// **Algorithm.** Alternating exact minimization: given B, the KL is minimized over A by
/// `A = (1/M)[Tr(B⁻¹Y1) X1 + Tr(B⁻¹Y2) X2]` (positive definite whenever B and Σ are:
/// it is a partial trace of `(I ⊗ B^{-1/2}) Σ (I ⊗ B^{-1/2})`), then given A over B by the
/// mirror equation. Each half-step is an exact minimization, so the KL never increases; the
/// iteration converges linearly (in a handful of iterations unless X2, Y2 are large) to the
/// minimizer, unique up to the scale (2KL + const is the negative log-likelihood of a
/// Kronecker-structured Gaussian covariance with "sample covariance" Σ, which is
/// geodesically convex in (A, B); the iteration is the classical flip-flop). The iterates stay in span{X1, X2} × span{Y1, Y2}, and with
/// `X1 = Lx Lxᵀ`, `Lx⁻¹X2Lx⁻ᵀ = Ux diag(λ) Uxᵀ` (and likewise μ for Y) every trace is a
/// sum over the relative spectra: `Tr(A⁻¹X1) = Σ_i 1/(α1 + α2 λ_i)`,
/// `Tr(A⁻¹X2) = Σ_i λ_i/(α1 + α2 λ_i)`. So the Cholesky factorizations of X1, Y1 and the
/// eigenvalues of the whitened X2, Y2 are computed once per `compute`, and each iteration
/// is a recurrence on the four coefficients (α1, α2, β1, β2), run in at least double
/// precision, instead of two Cholesky factorizations of A and B per iteration.
///
/// **Scale.** After every iteration the free scale is fixed by balancing the mean
/// eigenvalues: `tr(A)/N = tr(B)/M`. Convergence is measured on the scale-free product
/// (see KroneckerKlProjectionOptions::relative_tolerance).
///
/// **Valid range.** X1, Y1 SPD; X2, Y2 symmetric (possibly indefinite); Σ PD, which is
/// checked exactly from the relative spectra (`1 + λ_i μ_j > 0` for all i, j, with a
/// relative margin of ScalarTraits::singular_tolerance).
///
/// **Cost of compute.** Two Cholesky factorizations (N³/3 + M³/3 flops), four triangular
/// solves (2N³ + 2M³), two symmetric eigenvalue computations without vectors (about
/// 4N³/3 + 4M³/3): about 3.7(N³ + M³) flops in all, then O(N + M) per iteration, O(N² + M²)
/// to form A and B, and O(NM) (one log per pair of eigenvalues) for the KL divergence.
/// No NM×NM matrix is formed. No heap allocation after the first compute of a given size
/// (or after the preallocating constructor).
///
/// **Errors.** Wrong use (shapes, non-symmetric or non-finite operands) throws ShapeError /
/// InvalidInputError before anything changes: the previous result, status and iteration
/// count stay intact. Numerical trouble is reported by `info()`:
/// - `NumericalIssue`: X1 or Y1 is not PD, Σ is not PD, or an iterate lost positive
///   definiteness; no result is available (A(), B(), ... throw NumericalError).
/// - `NoConvergence`: `max_iterations` reached; A(), B() hold the last iterate (PD, and
///   with KL no larger than at the starting point).
template <typename Scalar>
class KroneckerKlProjection {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// The hyperparameter struct of this class.
  using Options = KroneckerKlProjectionOptions;

  /// `A = alpha1 X1 + alpha2 X2`, `B = beta1 Y1 + beta2 Y2` (after scale balancing).
  struct Coefficients {
    /// Coefficient of X1 in A.
    Scalar alpha1;
    /// Coefficient of X2 in A.
    Scalar alpha2;
    /// Coefficient of Y1 in B.
    Scalar beta1;
    /// Coefficient of Y2 in B.
    Scalar beta2;
  };

  /// Throws HyperparameterError for invalid options.
  explicit KroneckerKlProjection(const Options& options = Options()) : options_(options) {
    options_.validate();
  }

  /// Preallocates for X's n×n and Y's m×m. Throws HyperparameterError for invalid options.
  KroneckerKlProjection(Eigen::Index n, Eigen::Index m, const Options& options = Options())
      : options_(options),
        A_(n, n),
        B_(m, m),
        llt_x_(n),
        llt_y_(m),
        eig_x_(n),
        eig_y_(m),
        work_x_(n, n),
        work_y_(m, m),
        lambda_(n),
        mu_(m) {
    options_.validate();
  }

  /// Projects `Σ = X1 ⊗ Y1 + X2 ⊗ Y2` (X's N×N, Y's M×M) onto `A ⊗ B`. See the class
  /// documentation for the algorithm, cost and errors.
  KroneckerKlProjection& compute(const Eigen::Ref<const Matrix>& X1,
                                 const Eigen::Ref<const Matrix>& Y1,
                                 const Eigen::Ref<const Matrix>& X2,
                                 const Eigen::Ref<const Matrix>& Y2) {
    constexpr const char* op = "kfopt::KroneckerKlProjection::compute";
    detail::require_projection_operands(op, X1, Y1, X2, Y2);
    const Eigen::Index n = X1.rows(), m = Y1.rows();
    has_result_ = false;
    iterations_ = 0;
    info_ = Status::NumericalIssue;

    if (!detail::relative_eigenvalues<Scalar, Real>(X1, X2, llt_x_, work_x_, eig_x_, lambda_) ||
        !detail::relative_eigenvalues<Scalar, Real>(Y1, Y2, llt_y_, work_y_, eig_y_, mu_)) {
      return *this;
    }
    // Σ is PD iff 1 + λ_i μ_j > 0 for all i, j; λ μ is extreme at the ends of both spectra.
    const Real l0 = lambda_(0), l1 = lambda_(n - 1), m0 = mu_(0), m1 = mu_(m - 1);
    const Real prod_lo = std::min(std::min(l0 * m0, l0 * m1), std::min(l1 * m0, l1 * m1));
    const Real prod_hi = std::max(std::max(l0 * m0, l0 * m1), std::max(l1 * m0, l1 * m1));
    const Real margin = static_cast<Real>(ScalarTraits<Scalar>::singular_tolerance());
    if (!(Real(1) + prod_lo > margin * (Real(1) + prod_hi))) return *this;

    // Starting point.
    Real a1 = 1, a2 = 0, b1 = 1, b2 = 0;
    bool have_previous = true;  // (a, b) is a PD pair to measure the first change from
    if (options_.start == ProjectionStart::FirstOrder) {
      const Real tx = lambda_.mean(), ty = mu_.mean();  // Tr(X1⁻¹X2)/N, Tr(Y1⁻¹Y2)/M
      const Real common = Real(1) - tx * ty / Real(2);
      if (detail::projection_factor_is_pd(mu_, common, tx)) {
        a1 = common;
        a2 = ty;
        b1 = common;
        b2 = tx;
        have_previous = detail::projection_factor_is_pd(lambda_, a1, a2);
      }
    }
    const Real trace_x1 = static_cast<Real>(X1.trace()), trace_x2 = static_cast<Real>(X2.trace());
    const Real trace_y1 = static_cast<Real>(Y1.trace()), trace_y2 = static_cast<Real>(Y2.trace());

    bool converged = false;
    while (iterations_ < options_.max_iterations) {
      Real na1, na2, nb1, nb2;
      if (!detail::projection_half_step(mu_, b1, b2, na1, na2)) return *this;      // A-step
      if (!detail::projection_half_step(lambda_, na1, na2, nb1, nb2)) return *this;  // B-step
      ++iterations_;
      // Balance tr(A)/N = tr(B)/M (does not change A ⊗ B, nor the next iterate's product).
      const Real mean_a = (na1 * trace_x1 + na2 * trace_x2) / static_cast<Real>(n);
      const Real mean_b = (nb1 * trace_y1 + nb2 * trace_y2) / static_cast<Real>(m);
      if (mean_a > Real(0) && mean_b > Real(0) && std::isfinite(mean_a) && std::isfinite(mean_b)) {
        const Real c = std::sqrt(mean_b / mean_a);
        na1 *= c;
        na2 *= c;
        nb1 /= c;
        nb2 /= c;
      }
      Real change = std::numeric_limits<Real>::infinity();
      if (have_previous) {
        Real ulo, uhi, vlo, vhi;
        detail::projection_ratio_range(lambda_, a1, a2, na1, na2, ulo, uhi);
        detail::projection_ratio_range(mu_, b1, b2, nb1, nb2, vlo, vhi);
        change = std::max(uhi * vhi - Real(1), Real(1) - ulo * vlo);
      }
      a1 = na1;
      a2 = na2;
      b1 = nb1;
      b2 = nb2;
      have_previous = true;
      if (change <= static_cast<Real>(options_.relative_tolerance)) {
        converged = true;
        break;
      }
    }
    if (!detail::projection_factor_is_pd(lambda_, a1, a2) ||
        !detail::projection_factor_is_pd(mu_, b1, b2)) {
      return *this;
    }

    // 2KL = Σ_ij (t_ij − 1 − log t_ij), t_ij = (1 + λ_i μ_j) / ((α1 + α2 λ_i)(β1 + β2 μ_j)):
    // the eigenvalues of (A ⊗ B)⁻¹Σ in the common eigenbasis.
    Real twice_kl = 0;
    for (Eigen::Index j = 0; j < m; ++j) {
      const Real bj = b1 + b2 * mu_(j);
      for (Eigen::Index i = 0; i < n; ++i) {
        const Real d = (Real(1) + lambda_(i) * mu_(j)) / ((a1 + a2 * lambda_(i)) * bj) - Real(1);
        twice_kl += d - std::log1p(d);
      }
    }
    if (!std::isfinite(twice_kl)) return *this;

    A_ = static_cast<Scalar>(a1) * X1 + static_cast<Scalar>(a2) * X2;
    B_ = static_cast<Scalar>(b1) * Y1 + static_cast<Scalar>(b2) * Y2;
    detail::symmetrize(A_);
    detail::symmetrize(B_);
    coefficients_ = Coefficients{static_cast<Scalar>(a1), static_cast<Scalar>(a2),
                                 static_cast<Scalar>(b1), static_cast<Scalar>(b2)};
    kl_ = static_cast<Scalar>(std::max(Real(0), Real(0.5) * twice_kl));
    has_result_ = true;
    info_ = converged ? Status::Success : Status::NoConvergence;
    return *this;
  }

  /// Status of the last compute that did not throw (NotComputed before the first).
  Status info() const noexcept { return info_; }

  /// Whether A(), B(), coefficients() and kl_divergence() hold a result (info() is
  /// Success or NoConvergence).
  bool has_result() const noexcept { return has_result_; }

  /// The left factor A (N×N, SPD). Throws NumericalError when has_result() is false.
  const Matrix& A() const {
    require_result("A");
    return A_;
  }

  /// The right factor B (M×M, SPD). Throws NumericalError when has_result() is false.
  const Matrix& B() const {
    require_result("B");
    return B_;
  }

  /// The coefficients of A and B in span{X1, X2} and span{Y1, Y2}. Throws NumericalError
  /// when has_result() is false.
  Coefficients coefficients() const {
    require_result("coefficients");
    return coefficients_;
  }

  /// `KL(N(0, Σ) ‖ N(0, A ⊗ B))` at the result (≥ 0, zero iff Σ is a Kronecker product),
  /// including the log|Σ| term, computed exactly from the relative spectra. Throws
  /// NumericalError when has_result() is false.
  Scalar kl_divergence() const {
    require_result("kl_divergence");
    return kl_;
  }

  /// Iterations taken by the last compute (0 before the first, or if it failed before
  /// iterating).
  int iterations() const noexcept { return iterations_; }

  /// The hyperparameters it was made with.
  const Options& options() const noexcept { return options_; }

 private:
  using Real = detail::ProjectionReal<Scalar>;
  using RealVector = Eigen::Matrix<Real, Eigen::Dynamic, 1>;

  void require_result(const char* what) const {
    if (!has_result_) {
      throw NumericalError(std::string("kfopt::KroneckerKlProjection::") + what +
                           ": no result (last compute: " + to_string(info_) + ")");
    }
  }

  Options options_;
  Matrix A_, B_;
  detail::InitializedLlt<Matrix> llt_x_, llt_y_;
  detail::InitializedEigenSolver<Matrix> eig_x_, eig_y_;
  Matrix work_x_, work_y_;
  RealVector lambda_, mu_;  // relative spectra of X2 w.r.t. X1 and Y2 w.r.t. Y1 (ascending)
  Coefficients coefficients_{Scalar(0), Scalar(0), Scalar(0), Scalar(0)};
  Scalar kl_ = Scalar(0);
  int iterations_ = 0;
  Status info_ = Status::NotComputed;
  bool has_result_ = false;
};

}  // namespace kfopt
