#pragma once
/// \file kronecker_stein_inverse.hpp
/// \brief `(I − P_A ⊗ P_G)⁻¹ vec(Z)` and `(I − P_Aᵀ ⊗ P_Gᵀ)⁻¹ vec(Z)` for *general* real
/// square P_A (n×n), P_G (p×p): the discrete Stein equations
///
///     X − P_G X P_Aᵀ = Z        and        X − P_Gᵀ X P_A = Z,
///
/// with the convention `(A ⊗ G) vec(X) = vec(G X Aᵀ)` (RNN K-FAC eq. 2).
///
/// RNN K-FAC needs them to *multiply* by the Option-2 Fisher (eq. 9 inverted, appendix
/// A.2): in whitened coordinates `F̂ = E_T[T] ((I − Ψ̂)⁻¹ + (I − Ψ̂ᵀ)⁻¹ − I)` with the
/// non-symmetric Kronecker transition `Ψ̂ = Ψ̂_A ⊗ Ψ̂_G`. (Its *inverse* needs only the
/// symmetric `I − Ψ̂ᵀΨ̂`, see IdentityMinusKroneckerInverse.)
///
/// Method (Bartels–Stewart for the Stein equation): complex Schur forms
/// `P_A = Q_A T_A Q_Aᴴ`, `P_G = Q_G T_G Q_Gᴴ` (T upper triangular, Q unitary). With
/// `X̃ = Q_Gᴴ X Q_A`, `Z̃ = Q_Gᴴ Z Q_A` the equations become triangular,
///
///     X̃ − T_G X̃ T_Aᴴ = Z̃      (solved column by column from the last, each column a
///                                back-substitution with `I − conj(T_A[j,j]) T_G`),
///     X̃ − T_Gᴴ X̃ T_A = Z̃      (from the first column, forward substitutions),
///
/// and `X = Re(Q_G X̃ Q_Aᴴ)`. The divisors are `1 − μ_i ν_j` for the eigenvalues μ of P_G
/// and ν of P_A; the decomposition is refused (Status::NumericalIssue) unless every
/// `|1 − μ_i ν_j| ≥ min_divisor` (the operator is singular or too close to it). In RNN
/// K-FAC the spectral radii are < 1 by construction (appendix B.2, plus clipping).
///
/// Cost: `compute` is two complex Schur decompositions (≈ 25(n³ + p³) flops), amortized;
/// `apply` is four complex-by-real matrix products and two triangular sweeps,
/// O(p²n + pn²) complex multiply-adds (about 4–6× a real Kronecker inverse of the same
/// size); `apply_sum` solves both equations for the price of one pair of transforms.
///
/// Decomposition-style (like Eigen's): `compute` returns `*this`, `info()` a Status; a
/// failed compute leaves the previous decomposition in place. Not thread-safe per object
/// (`apply` writes member workspaces; no allocation once sized).
///
/// Precision: float input is solved in `std::complex<double>` (besides the accuracy,
/// Eigen's SSE kernels load a `std::complex<float>` scalar with a misaligned 8-byte load,
/// which UBSan reports); double and long double are solved in their own precision.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <string>
#include <type_traits>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Which Stein equation KroneckerSteinInverse solves.
enum class SteinSide {
  Plain,       ///< `X − P_G X P_Aᵀ = Z`, i.e. `(I − P_A ⊗ P_G)⁻¹ vec(Z)`
  Transposed,  ///< `X − P_Gᵀ X P_A = Z`, i.e. `(I − P_Aᵀ ⊗ P_Gᵀ)⁻¹ vec(Z)`
};

/// Solver of `(I − P_A ⊗ P_G)⁻¹ vec(Z)` for general real P_A, P_G (see the file comment).
template <typename Scalar_>
class KroneckerSteinInverse {
 public:
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// The working precision: double for float, else Scalar.
  using Real = typename std::conditional<(sizeof(Scalar) < sizeof(double)), double, Scalar>::type;
  /// Dense real matrix of Scalar.
  using RealMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic>;
  /// Complex scalar of Scalar.
  using Complex = std::complex<Real>;
  /// Dense complex matrix.
  using ComplexMatrix = Eigen::Matrix<Complex, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense complex column vector.
  using ComplexVector = Eigen::Matrix<Complex, Eigen::Dynamic, 1>;

  /// `min_divisor` ∈ (0, 1]: the smallest accepted `|1 − μ_i ν_j|`. Default sqrt(ε)/2, as
  /// IdentityMinusKroneckerOptions. HyperparameterError outside the range.
  explicit KroneckerSteinInverse(
      Scalar min_divisor = std::sqrt(std::numeric_limits<Scalar>::epsilon()) / Scalar(2))
      : min_divisor_(min_divisor) {
    detail::require_hyperparameter(min_divisor > Scalar(0) && min_divisor <= Scalar(1),
                                   "kfopt::KroneckerSteinInverse", "min_divisor", min_divisor,
                                   "(0, 1]");
  }

  /// Decomposes P_A (n×n) and P_G (p×p). Throws ShapeError unless both are square and
  /// non-empty, InvalidInputError unless finite (nothing changes then). Numerical trouble
  /// (a Schur iteration that does not converge, a divisor below the floor) is reported by
  /// `info()` and keeps the previous decomposition.
  template <typename DerivedA, typename DerivedG>
  KroneckerSteinInverse& compute(const Eigen::MatrixBase<DerivedA>& P_A,
                                 const Eigen::MatrixBase<DerivedG>& P_G) {
    constexpr const char* op = "kfopt::KroneckerSteinInverse::compute";
    detail::require_nonempty(op, "P_A", P_A);
    detail::require_square(op, "P_A", P_A);
    detail::require_finite(op, "P_A", P_A);
    detail::require_nonempty(op, "P_G", P_G);
    detail::require_square(op, "P_G", P_G);
    detail::require_finite(op, "P_G", P_G);
    // Local solvers: Eigen's ComplexSchur leaves its `info` member uninitialized until a
    // compute, so it is never kept as a (copyable) member.
    const RealMatrix pa = P_A.template cast<Real>(), pg = P_G.template cast<Real>();
    Eigen::ComplexSchur<RealMatrix> schur_a(pa.rows()), schur_g(pg.rows());
    schur_a.compute(pa, true);
    if (schur_a.info() != Eigen::Success) return fail(Status::NoConvergence);
    schur_g.compute(pg, true);
    if (schur_g.info() != Eigen::Success) return fail(Status::NoConvergence);
    const ComplexMatrix& ta = schur_a.matrixT();
    const ComplexMatrix& tg = schur_g.matrixT();
    Real smallest = std::numeric_limits<Real>::infinity();
    for (Eigen::Index j = 0; j < ta.rows(); ++j) {
      for (Eigen::Index i = 0; i < tg.rows(); ++i) {
        // The Plain sweep divides by 1 − conj(ν_j) μ_i, the Transposed one by its complex
        // conjugate 1 − ν_j conj(μ_i): one modulus guards both.
        const Real d = std::abs(Complex(1) - std::conj(ta(j, j)) * tg(i, i));
        if (!(d >= static_cast<Real>(min_divisor_)) || !std::isfinite(d)) {
          min_divisor_seen_ = static_cast<Scalar>(d);
          return fail(Status::NumericalIssue);
        }
        smallest = std::min(smallest, d);
      }
    }
    if (!schur_a.matrixU().allFinite() || !schur_g.matrixU().allFinite() || !ta.allFinite() ||
        !tg.allFinite()) {
      return fail(Status::NumericalIssue);
    }
    qa_ = schur_a.matrixU();
    ta_ = ta;
    qg_ = schur_g.matrixU();
    tg_ = tg;
    min_divisor_seen_ = static_cast<Scalar>(smallest);
    status_ = Status::Success;
    return *this;
  }

  /// Status of the last compute (Success, NotComputed, NoConvergence, NumericalIssue).
  Status info() const noexcept { return status_; }
  /// Whether a decomposition is held (the last successful one).
  bool has_result() const noexcept { return qa_.size() > 0; }
  /// Dimension n of P_A (n×n).
  Eigen::Index n() const noexcept { return qa_.rows(); }
  /// Dimension p of P_G (p×p).
  Eigen::Index p() const noexcept { return qg_.rows(); }
  /// `min |1 − μ_i ν_j|` of the held decomposition (or of the refused one after a failure).
  Scalar min_divisor() const noexcept { return min_divisor_seen_; }

  /// `out = unvec((I − P_A ⊗ P_G)⁻¹ vec(Z))` (Plain) or with the transposes (Transposed).
  /// Z is p×n; `out` (resized) may alias Z. Throws NumericalError without a decomposition,
  /// ShapeError for a wrong Z.
  template <typename DerivedZ>
  void apply(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out, SteinSide side = SteinSide::Plain) {
    check("kfopt::KroneckerSteinInverse::apply", Z);
    to_schur_basis(Z);
    solve(side, zt_, xt_);
    from_schur_basis(xt_, out);
  }

  /// `out = unvec(((I − P_A ⊗ P_G)⁻¹ + (I − P_Aᵀ ⊗ P_Gᵀ)⁻¹) vec(Z))`, sharing the basis
  /// changes of the two solves. Same contract as apply.
  template <typename DerivedZ>
  void apply_sum(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out) {
    check("kfopt::KroneckerSteinInverse::apply_sum", Z);
    to_schur_basis(Z);
    solve(SteinSide::Plain, zt_, xt_);
    solve(SteinSide::Transposed, zt_, xt2_);
    xt_ += xt2_;
    from_schur_basis(xt_, out);
  }

 private:
  KroneckerSteinInverse& fail(Status s) {
    status_ = s;
    return *this;
  }

  template <typename DerivedZ>
  void check(const char* op, const Eigen::MatrixBase<DerivedZ>& Z) const {
    if (!has_result()) {
      throw NumericalError(std::string(op) + ": no decomposition (" + to_string(status_) + ")");
    }
    if (Z.rows() != p() || Z.cols() != n()) {
      throw ShapeError(std::string(op) + ": Z is " + detail::shape_of(Z) + " but must be " +
                       detail::shape_string(p(), n()) + " (p×n for P_A n×n, P_G p×p)");
    }
  }

  // zt_ = Q_Gᴴ Z Q_A.
  template <typename DerivedZ>
  void to_schur_basis(const Eigen::MatrixBase<DerivedZ>& Z) {
    zc_ = Z.template cast<Complex>();
    work_.noalias() = zc_ * qa_;
    zt_.noalias() = qg_.adjoint() * work_;
  }

  // out = Re(Q_G X̃ Q_Aᴴ).
  void from_schur_basis(const ComplexMatrix& xt, Matrix& out) {
    work_.noalias() = qg_ * xt;
    zc_.noalias() = work_ * qa_.adjoint();
    out = zc_.real().template cast<Scalar>();
  }

  // Solves X̃ − T_G X̃ T_Aᴴ = Z̃ (Plain) or X̃ − T_Gᴴ X̃ T_A = Z̃ (Transposed).
  void solve(SteinSide side, const ComplexMatrix& zt, ComplexMatrix& xt) {
    const Eigen::Index n_ = ta_.rows(), p_ = tg_.rows();
    xt.resize(p_, n_);
    rhs_.resize(p_);
    acc_.resize(p_);
    if (side == SteinSide::Plain) {
      // Column j: (I − conj(t_jj) T_G) x_j = z_j + T_G Σ_{k>j} x_k conj(T_A[j,k]).
      for (Eigen::Index j = n_ - 1; j >= 0; --j) {
        const Eigen::Index tail = n_ - 1 - j;
        if (tail > 0) {
          acc_.noalias() = xt.rightCols(tail) * ta_.row(j).tail(tail).adjoint();
          rhs_.noalias() = tg_.template triangularView<Eigen::Upper>() * acc_;
          rhs_ += zt.col(j);
        } else {
          rhs_ = zt.col(j);
        }
        const Complex c = std::conj(ta_(j, j));
        for (Eigen::Index i = p_ - 1; i >= 0; --i) {
          Complex s = rhs_(i);
          for (Eigen::Index k = i + 1; k < p_; ++k) s += c * tg_(i, k) * xt(k, j);
          xt(i, j) = s / (Complex(1) - c * tg_(i, i));
        }
      }
    } else {
      // Column j: (I − t_jj T_Gᴴ) x_j = z_j + T_Gᴴ Σ_{k<j} x_k T_A[k,j].
      for (Eigen::Index j = 0; j < n_; ++j) {
        if (j > 0) {
          acc_.noalias() = xt.leftCols(j) * ta_.col(j).head(j);
          rhs_.noalias() = tg_.adjoint().template triangularView<Eigen::Lower>() * acc_;
          rhs_ += zt.col(j);
        } else {
          rhs_ = zt.col(j);
        }
        const Complex c = ta_(j, j);
        for (Eigen::Index i = 0; i < p_; ++i) {
          Complex s = rhs_(i);
          for (Eigen::Index k = 0; k < i; ++k) s += c * std::conj(tg_(k, i)) * xt(k, j);
          xt(i, j) = s / (Complex(1) - c * std::conj(tg_(i, i)));
        }
      }
    }
  }

  Scalar min_divisor_;
  Scalar min_divisor_seen_ = Scalar(0);
  Status status_ = Status::NotComputed;
  ComplexMatrix qa_, ta_, qg_, tg_;
  ComplexMatrix zc_, work_, zt_, xt_, xt2_;
  ComplexVector rhs_, acc_;
};

}  // namespace kfopt
