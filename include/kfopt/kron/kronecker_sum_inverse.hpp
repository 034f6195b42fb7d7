#pragma once
/// \file kronecker_sum_inverse.hpp
/// \brief Inverses of the two Kronecker-structured matrices that RNN K-FAC needs besides
/// a single Kronecker product (Martens, Ba & Johnson 2018, section 3.5.3 and appendix C):
///
/// - `KroneckerSumInverse`: `(A ⊗ B + C ⊗ D)⁻¹ vec(Z)` for symmetric positive definite
///   A, B and symmetric C, D, by two generalized symmetric eigenproblems (the
///   "decomposition-based technique for inverting A ⊗ B + C ⊗ D" cited after eq. 9, from
///   Martens & Grosse 2015).
/// - `IdentityMinusKroneckerInverse`: `(I − M_A ⊗ M_G)⁻¹ vec(Z)` for symmetric M_A, M_G,
///   the middle factor of Option 2 (eq. 9; appendix C.2, step `Z_2` of the pseudo-code in
///   C.3, with `M_A = Ψ̂_Aᵀ Ψ̂_A`, `M_G = Ψ̂_Gᵀ Ψ̂_G`).
///
/// Both reduce `z ↦ K⁻¹ z` to one `scaled_congruence` product (scaled_congruence.hpp).
///
/// Convention (as everywhere in kfopt, RNN K-FAC eq. 2): `(A ⊗ B) vec(Z) = vec(B Z Aᵀ)`.
/// The factor on the left of ⊗ (A, C, M_A: n×n) acts on the columns of Z, the one on
/// the right (B, D, M_G: p×p) on its rows, so Z is p×n.
///
/// Thread safety: `compute` and `apply` write member workspaces, so one object must not be
/// used by two threads at once; distinct objects are independent. The const accessors may
/// run concurrently with each other, not with `compute` or `apply`.
///
/// Eigensolver: the default backend's (detail::DefaultSymmetricEigenKernel, the same as
/// SymmetricEigenCache's: LAPACK divide and conquer with KFOPT_USE_LAPACK, kfopt's blocked solver from
/// n = 256 on otherwise).
///
/// Allocation: `compute` may allocate (the eigensolvers size their storage). `apply` allocates nothing
/// once it has run with the given sizes, provided Z is a plain matrix or a Map/Block of
/// one (an expression is evaluated into a temporary) and the matrix products stay below
/// Eigen's stack-allocation limit for its GEMM blocking buffers
/// (`EIGEN_STACK_ALLOCATION_LIMIT`, 128 KB by default; beyond that Eigen's GEMM allocates
/// its own packing buffers, as every Eigen product of that size does).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/kron/scaled_congruence.hpp"
#include "kfopt/linalg/symmetric_eigen_cache.hpp"

namespace kfopt {
namespace detail {

/// The state both inverses in this header share: two bases, an entry-wise scale and the
/// workspaces of `scaled_congruence`. Applies `vec(out) = (R ⊗ L) diag(vec(S)) (R ⊗ L)ᵀ
/// vec(Z)` for Z p×n, L p×p, R n×n, S p×n.
template <typename Scalar>
class KroneckerEigenApplier {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  Matrix left;   ///< p×p basis acting on the rows of Z
  Matrix right;  ///< n×n basis acting on the columns of Z
  Matrix scale;  ///< p×n entry-wise factors applied in the eigenbasis
  Status status = Status::NotComputed;

  void reserve(Eigen::Index n, Eigen::Index p) {
    left.resize(p, p);
    right.resize(n, n);
    scale.resize(p, n);
    result_.resize(p, n);
    work_.resize(p, n);
  }

  Eigen::Index n() const noexcept { return right.rows(); }
  Eigen::Index p() const noexcept { return left.rows(); }

  /// Throws NumericalError without a valid result, ShapeError / InvalidInputError for a
  /// wrong Z. Nothing is written.
  template <typename DerivedZ>
  void check_apply(const char* operation, const Eigen::MatrixBase<DerivedZ>& Z) const {
    if (status != Status::Success) {
      throw NumericalError(std::string(operation) + ": no valid decomposition to apply (" +
                           to_string(status) + ")");
    }
    if (Z.rows() != p() || Z.cols() != n()) {
      throw ShapeError(std::string(operation) + ": Z is " + shape_of(Z) + " but must be " +
                       shape_string(p(), n()) + " (p×n for factors n×n ⊗ p×p)");
    }
    require_finite(operation, "Z", Z);
  }

  /// `L (S ∘ (Lᵀ Z R)) Rᵀ` into an internal buffer (Z may alias the caller's output).
  template <typename DerivedZ>
  const Matrix& run(const Eigen::MatrixBase<DerivedZ>& Z) {
    const Matrix& S = scale;
    scaled_congruence(left, right, Z.derived(),
                      [&S](Eigen::Index i, Eigen::Index j) { return S(i, j); }, result_,
                      work_);
    return result_;
  }

 private:
  Matrix result_;
  Matrix work_;
};

/// The public surface both inverses share (CRTP: `Derived::kName` names the operation in
/// messages): status, shapes, and `apply` in its three forms.
template <typename Scalar, typename Derived>
class KroneckerEigenInverseBase {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// Status of the last `compute`.
  Status info() const noexcept { return core_.status; }

  /// `out = unvec(M⁻¹ vec(Z))`, Z p×n; `out` is resized to p×n and may alias Z. Throws
  /// NumericalError unless `info()` is Success, ShapeError for a wrong Z,
  /// InvalidInputError for a non-finite Z; nothing is written then.
  template <typename DerivedZ>
  void apply(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out) {
    core_.check_apply(apply_name(), Z);
    out = core_.run(Z);
  }

  /// As above, into a fixed-size destination (a Map of user storage, a Block), which must
  /// already be p×n (ShapeError otherwise).
  template <typename DerivedZ>
  void apply(const Eigen::MatrixBase<DerivedZ>& Z, Eigen::Ref<Matrix> out) {
    core_.check_apply(apply_name(), Z);
    require_shape(apply_name(), "out", out, core_.p(), core_.n());
    out = core_.run(Z);
  }

  /// Convenience: returns the result in a new matrix (allocates).
  template <typename DerivedZ>
  Matrix apply(const Eigen::MatrixBase<DerivedZ>& Z) {
    Matrix out;
    apply(Z, out);
    return out;
  }

  /// n: the size of the factors acting on the columns of Z.
  Eigen::Index n() const noexcept { return core_.n(); }
  /// p: the size of the factors acting on the rows of Z.
  Eigen::Index p() const noexcept { return core_.p(); }

 protected:
  /// A result accessor's guard: throws NumericalError unless the last compute succeeded.
  template <typename T>
  const T& checked(const T& value) const {
    if (core_.status != Status::Success) {
      throw NumericalError(std::string(Derived::kName) + ": no valid decomposition to read (" +
                           to_string(core_.status) + ")");
    }
    return value;
  }

  static const char* apply_name() noexcept { return Derived::kApply; }

  KroneckerEigenApplier<Scalar> core_;
};

/// Maps Eigen's ComputationInfo of an eigensolver to a kfopt Status.
inline Status status_from_eigen(Eigen::ComputationInfo info) noexcept {
  switch (info) {
    case Eigen::Success: return Status::Success;
    case Eigen::NoConvergence: return Status::NoConvergence;
    default: return Status::NumericalIssue;
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// (A ⊗ B + C ⊗ D)⁻¹
// ---------------------------------------------------------------------------------------

/// Options of KroneckerSumInverse (held by value; checked at construction).
template <typename Scalar>
struct KroneckerSumInverseOptions {
  /// Guard on the eigenbasis divisors `d_ij = 1 + μ_j ν_i`. The decomposition is refused
  /// (`Status::NumericalIssue`) unless every `d_ij > min_relative_divisor · (1 + |μ_j ν_i|)`.
  /// The d_ij are the eigenvalues of the sum relative to `A ⊗ B` (the sum is congruent to
  /// `diag(d)`), so this accepts exactly the sums that are positive definite with margin;
  /// `1 + |μ_j ν_i|` is the scale of the rounding error that the computed d_ij carries
  /// (about epsilon · (1 + |μ_j ν_i|), times the conditioning of A and B). Range [0, 1);
  /// 0 refuses only `d_ij <= 0` (a singular or indefinite sum). Default `sqrt(epsilon)`
  /// (1.5e-8 for double, 3.5e-4 for float): closer to zero, d_ij would keep fewer than
  /// half of the significant digits.
  Scalar min_relative_divisor = std::sqrt(std::numeric_limits<Scalar>::epsilon());

  /// Throws HyperparameterError naming the field unless it is in range.
  void validate() const {
    detail::require_hyperparameter(
        min_relative_divisor >= Scalar(0) && min_relative_divisor < Scalar(1),
        "kfopt::KroneckerSumInverseOptions", "min_relative_divisor", min_relative_divisor,
        "[0, 1)");
  }
};

/// Applies `(A ⊗ B + C ⊗ D)⁻¹ vec(Z)` for symmetric positive definite A (n×n), B (p×p)
/// and symmetric C (n×n), D (p×p), Z p×n, with `(A ⊗ B) vec(Z) = vec(B Z Aᵀ)`.
///
/// Method (Martens & Grosse 2015, used by RNN K-FAC eq. 9 and appendix C): solve the
/// generalized symmetric eigenproblems `C x = μ A x` and `D y = ν B y` with the
/// normalisation `Xᵀ A X = I`, `Xᵀ C X = diag(μ)`, `Yᵀ B Y = I`, `Yᵀ D Y = diag(ν)`. Then
///
///     A ⊗ B + C ⊗ D = (X ⊗ Y)⁻ᵀ (I ⊗ I + diag(μ) ⊗ diag(ν)) (X ⊗ Y)⁻¹,
///     (A ⊗ B + C ⊗ D)⁻¹ vec(Z) = vec( Y ((Yᵀ Z X) ⊘ (1 1ᵀ + ν μᵀ)) Xᵀ ),
///
/// applied with `scaled_congruence(Y, X, Z, 1 / (1 + ν_i μ_j))`. Each generalized problem is
/// reduced to a standard one by the Cholesky factor `A = L Lᵀ`: `L⁻¹ C L⁻ᵀ = V diag(μ) Vᵀ`,
/// `X = L⁻ᵀ V`.
///
/// Valid input: A, B symmetric positive definite (a failed Cholesky gives
/// `Status::NumericalIssue`); C, D symmetric, possibly indefinite, as long as the sum is
/// positive definite with the margin of `KroneckerSumInverseOptions::min_relative_divisor`
/// (otherwise `Status::NumericalIssue`, and `apply` throws rather than return Inf/NaN).
/// Symmetry is checked to `ScalarTraits::symmetry_tolerance()`; only the lower triangles
/// are read.
///
/// Cost: `compute` does per side a Cholesky (n³/3 flops), two triangular solves (2n³), a
/// symmetric eigendecomposition with vectors (about 9n³) and one back-substitution (n³):
/// about 12(n³ + p³) flops, amortized over the steps between refreshes. `apply` is four
/// matrix products, `2(p²n + pn²)` multiply-adds, plus O(pn) for the checks and the
/// entry-wise scaling; no Kronecker product is formed.
///
/// Decomposition-style (like Eigen's): a failed `compute` that throws (wrong shape,
/// non-symmetric or non-finite input) leaves the object exactly as it was; a `compute` that
/// runs but meets numerical trouble sets `info()` and `apply` then throws NumericalError.
template <typename Scalar_>
class KroneckerSumInverse : public detail::KroneckerEigenInverseBase<Scalar_, KroneckerSumInverse<Scalar_>> {
 public:
  /// Name of this class in error messages.
  static constexpr const char* kName = "kfopt::KroneckerSumInverse";
  /// Name of apply() in error messages.
  static constexpr const char* kApply = "kfopt::KroneckerSumInverse::apply";
  /// The implementation shared with the sibling inverse (internal).
  using Base = detail::KroneckerEigenInverseBase<Scalar_, KroneckerSumInverse<Scalar_>>;
  using Base::apply;
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// The hyperparameter struct of this class.
  using Options = KroneckerSumInverseOptions<Scalar>;

  /// An empty object; `info()` is `Status::NotComputed`.
  KroneckerSumInverse() : KroneckerSumInverse(Options()) {}

  /// An empty object with the given options (validated: HyperparameterError).
  explicit KroneckerSumInverse(const Options& options) : options_(options) {
    options_.validate();
  }

  /// Preallocates for A, C n×n and B, D p×p (Z p×n): the bases, scales and `apply`
  /// workspaces (the eigensolvers still size their own storage at the first `compute`).
  /// Throws ShapeError for negative sizes.
  KroneckerSumInverse(Eigen::Index n, Eigen::Index p, const Options& options = Options())
      : KroneckerSumInverse(options) {
    if (n < 0 || p < 0) {
      throw ShapeError("kfopt::KroneckerSumInverse: negative sizes n = " + std::to_string(n) +
                       ", p = " + std::to_string(p));
    }
    reserve(n, p);
  }

  /// Decomposes `A ⊗ B + C ⊗ D` (see the class comment). Throws ShapeError unless A is
  /// n×n, B p×p, C n×n, D p×p (non-empty), InvalidInputError unless all are finite and
  /// symmetric; these leave the object unchanged. Numerical trouble is reported by `info()`.
  template <typename DerivedA, typename DerivedB, typename DerivedC, typename DerivedD>
  KroneckerSumInverse& compute(const Eigen::MatrixBase<DerivedA>& A,
                               const Eigen::MatrixBase<DerivedB>& B,
                               const Eigen::MatrixBase<DerivedC>& C,
                               const Eigen::MatrixBase<DerivedD>& D) {
    constexpr const char* op = "kfopt::KroneckerSumInverse::compute";
    detail::require_nonempty(op, "A", A);
    detail::require_symmetric(op, "A", A);
    detail::require_nonempty(op, "B", B);
    detail::require_symmetric(op, "B", B);
    detail::require_shape(op, "C (must match A)", C, A.rows(), A.cols());
    detail::require_symmetric(op, "C", C);
    detail::require_shape(op, "D (must match B)", D, B.rows(), B.cols());
    detail::require_symmetric(op, "D", D);

    const Eigen::Index n = A.rows(), p = B.rows();
    if (core_.n() != n || core_.p() != p) reserve(n, p);

    // Each side into the staging buffers; committed only if everything succeeds.
    Status status = generalized_eigen(A, C, chol_n_, eig_n_, stage_n_, stage_mu_);
    if (status == Status::Success) {
      status = generalized_eigen(B, D, chol_p_, eig_p_, stage_p_, stage_nu_);
    }
    min_divisor_ratio_ = Scalar(0);
    if (status == Status::Success) status = fill_scale(stage_nu_, stage_mu_);
    if (status == Status::Success) {
      core_.right.swap(stage_n_);
      core_.left.swap(stage_p_);
      mu_.swap(stage_mu_);
      nu_.swap(stage_nu_);
    }
    core_.status = status;
    return *this;
  }



  /// The hyperparameters it was made with.
  const Options& options() const noexcept { return options_; }

  /// Generalized eigenvalues μ of `C x = μ A x` (ascending). Throws NumericalError unless
  /// `info()` is Success (likewise the other accessors of results).
  const Vector& mu() const { return checked(mu_); }
  /// Generalized eigenvalues ν of `D y = ν B y` (ascending).
  const Vector& nu() const { return checked(nu_); }
  /// X (n×n): `Xᵀ A X = I`, `Xᵀ C X = diag(μ)`.
  const Matrix& X() const { return checked(core_.right); }
  /// Y (p×p): `Yᵀ B Y = I`, `Yᵀ D Y = diag(ν)`.
  const Matrix& Y() const { return checked(core_.left); }
  /// `min_ij (1 + μ_j ν_i) / (1 + |μ_j ν_i|)` of the last compute that reached the guard
  /// (0 otherwise): how far the sum is from singular relative to `A ⊗ B`.
  Scalar min_divisor_ratio() const noexcept { return min_divisor_ratio_; }

 private:
  using Base::checked;
  using Base::core_;


  void reserve(Eigen::Index n, Eigen::Index p) {
    core_.reserve(n, p);
    stage_n_.resize(n, n);
    stage_p_.resize(p, p);
    stage_mu_.resize(n);
    stage_nu_.resize(p);
    mu_.resize(n);
    nu_.resize(p);
    chol_n_.resize(n, n);
    chol_p_.resize(p, p);
  }


  /// `Q x = λ P x` with `Xᵀ P X = I` into (basis, values); P positive definite.
  /// (Eigen's GeneralizedSelfAdjointEigenSolver does the same reduction but does not
  /// report a failed Cholesky factorization, hence the explicit steps.)
  template <typename DerivedP, typename DerivedQ>
  static Status generalized_eigen(const Eigen::MatrixBase<DerivedP>& P,
                                  const Eigen::MatrixBase<DerivedQ>& Q, Matrix& chol,
                                  detail::DefaultSymmetricEigenKernel<Scalar>& eig, Matrix& basis,
                                  Vector& values) {
    chol = P;
    // In-place factorization into `chol` (reads and writes its lower triangle only).
    Eigen::LLT<Eigen::Ref<Matrix>> llt(chol);
    if (llt.info() != Eigen::Success) return Status::NumericalIssue;
    // basis = L⁻¹ Q L⁻ᵀ (used as a workspace before it holds the eigenvectors).
    basis = Q.template selfadjointView<Eigen::Lower>();
    llt.matrixL().solveInPlace(basis);
    llt.matrixU().template solveInPlace<Eigen::OnTheRight>(basis);
    // The kernel copies its input before `basis` receives the eigenvectors.
    const Status solved = detail::symmetric_eigen(eig, basis, values, basis);
    if (solved != Status::Success) return solved;
    llt.matrixU().solveInPlace(basis);  // X = L⁻ᵀ V
    if (!basis.allFinite()) return Status::NumericalIssue;
    return Status::Success;
  }

  /// `scale(i, j) = 1 / (1 + ν_i μ_j)` behind the guard of the options.
  Status fill_scale(const Vector& nu, const Vector& mu) {
    const Scalar threshold = options_.min_relative_divisor;
    Scalar min_ratio = std::numeric_limits<Scalar>::infinity();
    // Checked in full before anything is written, so that a refusal keeps `scale` intact.
    for (Eigen::Index j = 0; j < mu.size(); ++j) {
      for (Eigen::Index i = 0; i < nu.size(); ++i) {
        const Scalar product = nu(i) * mu(j);
        const Scalar divisor = Scalar(1) + product;
        const Scalar magnitude = Scalar(1) + std::abs(product);
        if (!(divisor > threshold * magnitude) || !std::isfinite(divisor)) {
          min_divisor_ratio_ = divisor / magnitude;
          return Status::NumericalIssue;
        }
        min_ratio = std::min(min_ratio, divisor / magnitude);
      }
    }
    min_divisor_ratio_ = min_ratio;
    for (Eigen::Index j = 0; j < mu.size(); ++j) {
      for (Eigen::Index i = 0; i < nu.size(); ++i) {
        core_.scale(i, j) = Scalar(1) / (Scalar(1) + nu(i) * mu(j));
      }
    }
    return Status::Success;
  }

  Options options_;
  Vector mu_, nu_;
  Scalar min_divisor_ratio_ = Scalar(0);
  // Staging for compute (committed by swap), Cholesky factors and eigensolvers, kept as
  // members so that repeated computes with the same sizes reuse their storage.
  Matrix stage_n_, stage_p_;
  Vector stage_mu_, stage_nu_;
  Matrix chol_n_, chol_p_;
  detail::DefaultSymmetricEigenKernel<Scalar> eig_n_, eig_p_;
};

// ---------------------------------------------------------------------------------------
// (I − M_A ⊗ M_G)⁻¹
// ---------------------------------------------------------------------------------------

/// Options of IdentityMinusKroneckerInverse (held by value; checked at construction).
template <typename Scalar>
struct IdentityMinusKroneckerOptions {
  /// Whether eigenvalues of M_A and M_G are clipped into `[−max_abs_eigenvalue,
  /// max_abs_eigenvalue]` before the divisors `1 − g_i a_j` are formed (the design's
  /// "μ clipped to ≤ 1"). RNN K-FAC proves the spectra of `Ψ̂ᵀΨ̂`'s factors lie in [0, 1]
  /// (appendix B.2); estimated factors can reach 1 or go slightly negative, and clipping
  /// keeps `|g_i a_j| <= max_abs_eigenvalue² < 1`. The number clipped is reported by
  /// `clipped_count()`. Default true.
  bool clip_eigenvalues = true;

  /// ρ: the largest |eigenvalue| kept when clipping. Range (0, 1). Default
  /// `1 − sqrt(epsilon)` (1 − 1.5e-8 for double, 1 − 3.5e-4 for float), so that the
  /// smallest divisor `1 − ρ² ≈ 2 sqrt(epsilon)` stays well above rounding (about epsilon).
  Scalar max_abs_eigenvalue = Scalar(1) - std::sqrt(std::numeric_limits<Scalar>::epsilon());

  /// Floor on the divisors: the decomposition is refused (`Status::NumericalIssue`) if any
  /// `1 − g_i a_j < min_divisor` (the operator is then singular, indefinite or too close to
  /// it). Range (0, 1]; with clipping it must be at most `(1 − ρ²) / 2` so that clipped
  /// spectra always pass. Default `sqrt(epsilon) / 2`.
  Scalar min_divisor = std::sqrt(std::numeric_limits<Scalar>::epsilon()) / Scalar(2);

  /// Throws HyperparameterError naming the field unless every field is in range.
  void validate() const {
    constexpr const char* name = "kfopt::IdentityMinusKroneckerOptions";
    detail::require_hyperparameter(
        max_abs_eigenvalue > Scalar(0) && max_abs_eigenvalue < Scalar(1), name,
        "max_abs_eigenvalue", max_abs_eigenvalue, "(0, 1)");
    detail::require_hyperparameter(min_divisor > Scalar(0) && min_divisor <= Scalar(1), name,
                                   "min_divisor", min_divisor, "(0, 1]");
    if (clip_eigenvalues) {
      const Scalar limit = (Scalar(1) - max_abs_eigenvalue * max_abs_eigenvalue) / Scalar(2);
      detail::require_hyperparameter(min_divisor <= limit, name, "min_divisor", min_divisor,
                                     "(0, (1 - max_abs_eigenvalue^2) / 2] when clipping");
    }
  }
};

/// Applies `(I − M_A ⊗ M_G)⁻¹ vec(Z)` for symmetric M_A (n×n), M_G (p×p), Z p×n, with
/// `(M_A ⊗ M_G) vec(Z) = vec(M_G Z M_Aᵀ)`.
///
/// This is the `(I − Ψ̂ᵀΨ̂)⁻¹` step of RNN K-FAC Option 2 (eq. 9; appendix C.2, step `Z_2`
/// of C.3) with `M_A = Ψ̂_Aᵀ Ψ̂_A`, `M_G = Ψ̂_Gᵀ Ψ̂_G`. With `M_A = E_A diag(a) E_Aᵀ`,
/// `M_G = E_G diag(g) E_Gᵀ`:
///
///     (I − M_A ⊗ M_G)⁻¹ vec(Z) = vec( E_G ((E_Gᵀ Z E_A) ⊘ (1 1ᵀ − g aᵀ)) E_Aᵀ ),
///
/// applied with `scaled_congruence(E_G, E_A, Z, 1 / (1 − g_i a_j))`.
///
/// Valid input: M_A, M_G symmetric. Spectra in (−1, 1) are the intended range (the paper's
/// [0, 1) plus the negative eigenvalues of estimated factors); with the default options
/// eigenvalues beyond ±ρ are clipped and counted. Without clipping, any spectra are accepted
/// whose divisors all reach `min_divisor` (i.e. `I − M_A ⊗ M_G` positive definite with
/// margin); otherwise `Status::NumericalIssue` and `apply` throws.
///
/// Cost: `compute` is two symmetric eigendecompositions with vectors, about 9(n³ + p³)
/// flops, amortized over the steps between refreshes; `apply` is four matrix products,
/// `2(p²n + pn²)` multiply-adds, plus O(pn).
///
/// Decomposition-style, with the same failure semantics as KroneckerSumInverse.
template <typename Scalar_>
class IdentityMinusKroneckerInverse : public detail::KroneckerEigenInverseBase<Scalar_, IdentityMinusKroneckerInverse<Scalar_>> {
 public:
  /// Name of this class in error messages.
  static constexpr const char* kName = "kfopt::IdentityMinusKroneckerInverse";
  /// Name of apply() in error messages.
  static constexpr const char* kApply = "kfopt::IdentityMinusKroneckerInverse::apply";
  /// The implementation shared with the sibling inverse (internal).
  using Base = detail::KroneckerEigenInverseBase<Scalar_, IdentityMinusKroneckerInverse<Scalar_>>;
  using Base::apply;
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// The hyperparameter struct of this class.
  using Options = IdentityMinusKroneckerOptions<Scalar>;

  /// An empty object; `info()` is `Status::NotComputed`.
  IdentityMinusKroneckerInverse() : IdentityMinusKroneckerInverse(Options()) {}

  /// An empty object with the given options (validated: HyperparameterError).
  explicit IdentityMinusKroneckerInverse(const Options& options) : options_(options) {
    options_.validate();
  }

  /// Preallocates for M_A n×n and M_G p×p (Z p×n), as KroneckerSumInverse does.
  IdentityMinusKroneckerInverse(Eigen::Index n, Eigen::Index p,
                                const Options& options = Options())
      : IdentityMinusKroneckerInverse(options) {
    if (n < 0 || p < 0) {
      throw ShapeError("kfopt::IdentityMinusKroneckerInverse: negative sizes n = " +
                       std::to_string(n) + ", p = " + std::to_string(p));
    }
    reserve(n, p);
  }

  /// Decomposes `I − M_A ⊗ M_G`. Throws ShapeError unless M_A, M_G are square and
  /// non-empty, InvalidInputError unless they are finite and symmetric; these leave the
  /// object unchanged. Numerical trouble is reported by `info()`.
  template <typename DerivedA, typename DerivedG>
  IdentityMinusKroneckerInverse& compute(const Eigen::MatrixBase<DerivedA>& M_A,
                                         const Eigen::MatrixBase<DerivedG>& M_G) {
    constexpr const char* op = "kfopt::IdentityMinusKroneckerInverse::compute";
    detail::require_nonempty(op, "M_A", M_A);
    detail::require_symmetric(op, "M_A", M_A);
    detail::require_nonempty(op, "M_G", M_G);
    detail::require_symmetric(op, "M_G", M_G);

    const Eigen::Index n = M_A.rows(), p = M_G.rows();
    if (core_.n() != n || core_.p() != p) reserve(n, p);

    // The solver reads the lower triangle; copy through a plain matrix so that any
    // expression type is accepted. The eigenvectors land in vectors_n_ / vectors_p_.
    stage_n_ = M_A;
    Status status = detail::symmetric_eigen(eig_n_, stage_n_, stage_a_, vectors_n_);
    if (status == Status::Success) {
      stage_p_ = M_G;
      status = detail::symmetric_eigen(eig_p_, stage_p_, stage_g_, vectors_p_);
    }
    clipped_count_ = 0;
    min_divisor_ = Scalar(0);
    if (status == Status::Success) {
      if (options_.clip_eigenvalues) {
        clipped_count_ = clip(stage_a_) + clip(stage_g_);
      }
      status = fill_scale(stage_g_, stage_a_);
    }
    if (status == Status::Success) {
      core_.right.swap(vectors_n_);
      core_.left.swap(vectors_p_);
      a_.swap(stage_a_);
      g_.swap(stage_g_);
    }
    core_.status = status;
    return *this;
  }



  /// The hyperparameters it was made with.
  const Options& options() const noexcept { return options_; }

  /// Eigenvalues a of M_A as used (after clipping), ascending. Throws
  /// NumericalError unless `info()` is Success (likewise the other accessors of results).
  const Vector& eigenvalues_A() const { return checked(a_); }
  /// Eigenvalues g of M_G as used (after clipping).
  const Vector& eigenvalues_G() const { return checked(g_); }
  /// E_A (n×n, orthogonal): `M_A = E_A diag(a) E_Aᵀ` (before clipping).
  const Matrix& eigenvectors_A() const { return checked(core_.right); }
  /// E_G (p×p, orthogonal).
  const Matrix& eigenvectors_G() const { return checked(core_.left); }
  /// Eigenvalues of M_A and M_G together that the last compute clipped to ±ρ.
  Eigen::Index clipped_count() const noexcept { return clipped_count_; }
  /// `min_ij (1 − g_i a_j)` of the last compute that reached the guard (0 otherwise).
  Scalar min_divisor() const noexcept { return min_divisor_; }

 private:
  using Base::checked;
  using Base::core_;


  void reserve(Eigen::Index n, Eigen::Index p) {
    core_.reserve(n, p);
    stage_n_.resize(n, n);
    stage_p_.resize(p, p);
    stage_a_.resize(n);
    stage_g_.resize(p);
    a_.resize(n);
    g_.resize(p);
  }


  Eigen::Index clip(Vector& values) const { return clip_eigenvalues(values, options_.max_abs_eigenvalue); }

  /// `scale(i, j) = 1 / (1 − g_i a_j)` behind the floor of the options.
  Status fill_scale(const Vector& g, const Vector& a) {
    const Status admitted = check_divisors(g, a, options_.min_divisor, min_divisor_);
    if (admitted != Status::Success) return admitted;
    for (Eigen::Index j = 0; j < a.size(); ++j) {
      for (Eigen::Index i = 0; i < g.size(); ++i) {
        core_.scale(i, j) = Scalar(1) / (Scalar(1) - g(i) * a(j));
      }
    }
    return Status::Success;
  }

 public:
  /// Clips `values` into [−ρ, ρ] in place and returns how many were clipped (what compute
  /// does to both spectra with `clip_eigenvalues` set, ρ = max_abs_eigenvalue).
  static Eigen::Index clip_eigenvalues(Vector& values, Scalar rho) {
    Eigen::Index count = 0;
    for (Eigen::Index i = 0; i < values.size(); ++i) {
      if (values(i) > rho) {
        values(i) = rho;
        ++count;
      } else if (values(i) < -rho) {
        values(i) = -rho;
        ++count;
      }
    }
    return count;
  }

  /// The divisor guard of compute: Success when every `1 − g_i a_j` is finite and at least
  /// `min_divisor`, NumericalIssue otherwise. `smallest` receives the smallest divisor, or
  /// the first one that failed. O(pn).
  static Status check_divisors(const Vector& g, const Vector& a, Scalar min_divisor,
                               Scalar& smallest) {
    Scalar found = std::numeric_limits<Scalar>::infinity();
    for (Eigen::Index j = 0; j < a.size(); ++j) {
      for (Eigen::Index i = 0; i < g.size(); ++i) {
        const Scalar divisor = Scalar(1) - g(i) * a(j);
        if (!(divisor >= min_divisor) || !std::isfinite(divisor)) {
          smallest = divisor;
          return Status::NumericalIssue;
        }
        found = std::min(found, divisor);
      }
    }
    smallest = found;
    return Status::Success;
  }

 private:

  Options options_;
  Vector a_, g_;
  Eigen::Index clipped_count_ = 0;
  Scalar min_divisor_ = Scalar(0);
  Matrix stage_n_, stage_p_;
  Vector stage_a_, stage_g_;
  Matrix vectors_n_, vectors_p_;
  detail::DefaultSymmetricEigenKernel<Scalar> eig_n_, eig_p_;
};

}  // namespace kfopt
