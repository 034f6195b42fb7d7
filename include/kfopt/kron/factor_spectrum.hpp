#pragma once
/// \file factor_spectrum.hpp
/// \brief The spectrum of one Kronecker factor, dense or diagonal, and products in its
/// eigenbasis.
///
/// A dense factor is eigendecomposed once (`F = U Λ Uᵀ`, SymmetricEigenCache, eigenvalues
/// clipped at 0); a diagonal factor (an embedding layer's input factor, which is exactly
/// diagonal for one-hot inputs, or a very wide output layer's gradient factor, approximated
/// by its diagonal: RNN K-FAC §4.1) is its own spectrum with `U = I`, costing O(n) to
/// "decompose" and O(n·k) to apply. Everything damped — `(F + δI)⁻¹`, `(A ⊗ G + λI)⁻¹` — is
/// then a diagonal scaling in the eigenbasis, for any δ or λ, with no new factorization.

#include <Eigen/Core>

#include "kfopt/kron/scaled_congruence.hpp"
#include "kfopt/linalg/symmetric_eigen_cache.hpp"

namespace kfopt {

/// How a Kronecker factor is stored and inverted.
enum class FactorStructure {
  Dense,     ///< full symmetric matrix, eigendecomposed
  Diagonal,  ///< diagonal only (a dimension × 1 column of E[a_i²])
};

/// Eigenvalues (clipped at 0) and, for a dense factor, eigenvectors of one factor.
template <typename Scalar>
class FactorSpectrum {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// An empty spectrum for an n×n factor of the given structure (storage preallocated for Dense).
  explicit FactorSpectrum(Eigen::Index n = 0, FactorStructure structure = FactorStructure::Dense)
      : structure_(structure), cache_(structure == FactorStructure::Dense ? n : 0), n_(n) {}

  /// Decomposes a factor: a symmetric n×n matrix (Dense) or an n×1 column of diagonal
  /// entries (Diagonal). Wrong shapes or a non-symmetric dense factor throw; a non-finite
  /// factor returns NonFiniteInput and keeps the previous spectrum.
  Status compute(const Eigen::Ref<const Matrix>& factor);

  /// Throws (naming `op`) unless `values` (and, for a dense factor, `vectors`) are a valid
  /// spectrum of this factor (SymmetricEigenCache::check_decomposition; a diagonal factor's
  /// values need only be finite and ≥ 0, in coordinate order).
  void check_result(const std::string& op, const Vector& values, const Matrix& vectors) const {
    if (!is_diagonal()) {
      SymmetricEigenCache<Scalar>::check_decomposition(op, values, vectors, n_);
      return;
    }
    detail::require_shape(op.c_str(), "eigenvalues", values, n_, 1);
    if (!values.allFinite() || (n_ > 0 && !(values.minCoeff() >= Scalar(0)))) {
      throw InvalidInputError(op + ": a diagonal factor's eigenvalues must be finite and >= 0");
    }
  }
  /// Installs a spectrum computed earlier (eigenvalues(), and eigenvectors() for a dense
  /// factor; `vectors` is ignored for a diagonal one), bit for bit. All-or-nothing:
  /// check_result first.
  void set_result(const Vector& values, const Matrix& vectors) {
    check_result("kfopt::FactorSpectrum::set_result", values, vectors);
    if (!is_diagonal()) {
      cache_.set_decomposition(values, vectors);
      return;
    }
    diagonal_ = values;
    has_result_ = true;
  }

  /// Dense or Diagonal, as constructed.
  FactorStructure structure() const noexcept { return structure_; }
  /// Whether the factor is kept as its diagonal.
  bool is_diagonal() const noexcept { return structure_ == FactorStructure::Diagonal; }
  /// Whether compute() has succeeded at least once.
  bool has_result() const noexcept {
    return is_diagonal() ? has_result_ : cache_.has_result();
  }
  /// The factor's dimension n (0 before the first compute() of an unsized spectrum).
  Eigen::Index size() const noexcept { return n_; }

  /// Eigenvalues, clipped at 0 (ascending for a dense factor; in coordinate order for a
  /// diagonal one).
  const Vector& eigenvalues() const {
    if (!is_diagonal()) return cache_.eigenvalues();
    if (!has_result_) throw NumericalError("kfopt::FactorSpectrum: nothing computed yet");
    return diagonal_;
  }
  /// Eigenvectors of a dense factor (throws for a diagonal one, whose basis is I).
  const Matrix& eigenvectors() const {
    if (is_diagonal()) {
      throw InvalidInputError("kfopt::FactorSpectrum::eigenvectors: a diagonal factor's basis is I");
    }
    return cache_.eigenvectors();
  }
  /// Sum of the clipped eigenvalues (the factor's trace, for π-damping).
  Scalar trace() const { return eigenvalues().sum(); }
  /// Whether `F + shift·I` is safely invertible (smallest eigenvalue above
  /// singular_tolerance · largest; ScalarTraits::invertible_spectrum).
  bool is_invertible(Scalar shift) const {
    const Vector& ev = eigenvalues();
    if (ev.size() == 0) return true;
    return ScalarTraits<Scalar>::invertible_spectrum(ev.minCoeff() + shift, ev.maxCoeff() + shift);
  }
  /// The dense cache behind a dense factor (for inverse roots and other matrix functions).
  const SymmetricEigenCache<Scalar>& eigen_cache() const { return cache_; }

 private:
  FactorStructure structure_;
  SymmetricEigenCache<Scalar> cache_;
  Vector diagonal_;
  Eigen::Index n_;
  bool has_result_ = false;
};

namespace detail {

/// Throws ShapeError unless Z is out×in for `A ⊗ G` with A in×in and G out×out.
template <typename Scalar, typename DerivedZ>
void require_kronecker_operand(const char* op, const FactorSpectrum<Scalar>& a,
                               const FactorSpectrum<Scalar>& g,
                               const Eigen::MatrixBase<DerivedZ>& Z) {
  if (Z.rows() != g.size() || Z.cols() != a.size()) {
    throw ShapeError(std::string(op) + ": Z is " + shape_of(Z) + " but A ⊗ G with A " +
                     shape_string(a.size(), a.size()) + " and G " +
                     shape_string(g.size(), g.size()) + " needs " +
                     shape_string(g.size(), a.size()));
  }
}

}  // namespace detail

/// `out = U_G (S ∘ (U_Gᵀ Z U_A)) U_Aᵀ` with `S(i, j) = scale(i, j)` for the eigenbases of a
/// gradient factor G (Z's rows) and an input factor A (Z's columns); a diagonal factor's
/// side is skipped (its basis is I). With both dense this is scaled_congruence.
template <typename Scalar, typename DerivedZ, typename ScaleFn>
void spectral_kronecker_apply(const FactorSpectrum<Scalar>& a, const FactorSpectrum<Scalar>& g,
                              const Eigen::MatrixBase<DerivedZ>& Z, ScaleFn&& scale,
                              Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out,
                              Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  detail::require_kronecker_operand("kfopt::spectral_kronecker_apply", a, g, Z);
  if (!a.is_diagonal() && !g.is_diagonal()) {
    scaled_congruence<Scalar>(g.eigenvectors(), a.eigenvectors(), Z, scale, out, work);
    return;
  }
  // Into the eigenbasis: out = U_Gᵀ Z U_A, skipping identity sides.
  if (!g.is_diagonal()) {
    out.noalias() = g.eigenvectors().transpose() * Z;
  } else {
    out = Z;
  }
  if (!a.is_diagonal()) {
    work.noalias() = out * a.eigenvectors();
    out.swap(work);
  }
  for (Eigen::Index j = 0; j < out.cols(); ++j) {
    for (Eigen::Index i = 0; i < out.rows(); ++i) out(i, j) *= scale(i, j);
  }
  // And back: out = U_G out U_Aᵀ.
  if (!g.is_diagonal()) {
    work.noalias() = g.eigenvectors() * out;
    out.swap(work);
  }
  if (!a.is_diagonal()) {
    work.noalias() = out * a.eigenvectors().transpose();
    out.swap(work);
  }
}

template <typename Scalar>
Status FactorSpectrum<Scalar>::compute(const Eigen::Ref<const Matrix>& factor) {
  constexpr const char* op = "kfopt::FactorSpectrum::compute";
  if (structure_ == FactorStructure::Dense) {
    if (n_ != 0) detail::require_shape(op, "factor", factor, n_, n_);
    const Status s = cache_.compute(factor).info();
    if (s == Status::Success) n_ = factor.rows();
    return s;
  }
  if (factor.cols() != 1 || (n_ != 0 && factor.rows() != n_)) {
    throw ShapeError(std::string(op) + ": a diagonal factor is given as its diagonal, a " +
                     detail::shape_string(n_ != 0 ? n_ : factor.rows(), 1) +
                     " column, got " + detail::shape_of(factor));
  }
  if (!factor.allFinite()) return Status::NonFiniteInput;
  diagonal_ = factor.col(0).cwiseMax(Scalar(0));
  n_ = factor.rows();
  has_result_ = true;
  return Status::Success;
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class FactorSpectrum<float>;
extern template class FactorSpectrum<double>;
#endif

}  // namespace kfopt
