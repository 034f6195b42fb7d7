#pragma once
/// \file validate.hpp
/// \brief Checks used at the public API: shapes, symmetry, finiteness, ranges.
///
/// Every check takes the name of the operation and of the operand so that the message
/// reads like `kfopt::kron_matvec: X is 3x4 but B ⊗ C needs 5x2`. Each throws before
/// anything is written, so a failed call leaves every state unchanged.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"

namespace kfopt {
namespace detail {

/// `rows x cols` of any Eigen expression.
template <typename Derived>
std::string shape_of(const Eigen::EigenBase<Derived>& m) {
  std::ostringstream os;
  os << m.rows() << 'x' << m.cols();
  return os.str();
}

inline std::string shape_string(Eigen::Index rows, Eigen::Index cols) {
  std::ostringstream os;
  os << rows << 'x' << cols;
  return os.str();
}

/// Throws ShapeError unless `m` is square.
template <typename Derived>
void require_square(const char* operation, const char* operand,
                    const Eigen::EigenBase<Derived>& m) {
  if (m.rows() != m.cols()) {
    throw ShapeError(std::string(operation) + ": " + operand + " must be square, got " +
                     shape_of(m));
  }
}

/// Throws ShapeError unless `m` is `rows x cols`.
template <typename Derived>
void require_shape(const char* operation, const char* operand,
                   const Eigen::EigenBase<Derived>& m, Eigen::Index rows, Eigen::Index cols) {
  if (m.rows() != rows || m.cols() != cols) {
    throw ShapeError(std::string(operation) + ": " + operand + " is " + shape_of(m) +
                     " but must be " + shape_string(rows, cols));
  }
}

/// Throws ShapeError unless `m` is non-empty.
template <typename Derived>
void require_nonempty(const char* operation, const char* operand,
                      const Eigen::EigenBase<Derived>& m) {
  if (m.rows() == 0 || m.cols() == 0) {
    throw ShapeError(std::string(operation) + ": " + operand + " is empty (" + shape_of(m) +
                     ")");
  }
}

/// Throws InvalidInputError unless every entry of `m` is finite.
template <typename Derived>
void require_finite(const char* operation, const char* operand,
                    const Eigen::MatrixBase<Derived>& m) {
  if (!m.allFinite()) {
    throw InvalidInputError(std::string(operation) + ": " + operand + " (" + shape_of(m) +
                            ") holds NaN or Inf");
  }
}

/// Whether square `m` is symmetric to the relative tolerance of its scalar type.
template <typename Derived>
bool is_symmetric(const Eigen::MatrixBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  if (m.rows() != m.cols()) return false;
  if (m.size() == 0) return true;
  const Scalar scale = std::max(Scalar(1), m.cwiseAbs().maxCoeff());
  const Scalar asym = (m - m.transpose()).cwiseAbs().maxCoeff();
  return asym <= ScalarTraits<Scalar>::symmetry_tolerance() * scale;
}

/// Throws unless `m` is square (ShapeError), finite and symmetric (InvalidInputError).
template <typename Derived>
void require_symmetric(const char* operation, const char* operand,
                       const Eigen::MatrixBase<Derived>& m) {
  require_square(operation, operand, m);
  require_finite(operation, operand, m);
  if (!is_symmetric(m)) {
    throw InvalidInputError(std::string(operation) + ": " + operand + " (" + shape_of(m) +
                            ") must be symmetric");
  }
}

/// For a factor handed to a decomposition, in the order the error channels require:
/// throws ShapeError unless square; returns Status::NonFiniteInput for NaN/Inf (numerical
/// trouble: the caller keeps its previous result); throws InvalidInputError unless
/// symmetric; otherwise returns Status::Success.
template <typename Derived>
Status check_symmetric_factor(const char* operation, const char* operand,
                              const Eigen::MatrixBase<Derived>& m) {
  require_square(operation, operand, m);
  if (!m.allFinite()) return Status::NonFiniteInput;
  if (!is_symmetric(m)) {
    throw InvalidInputError(std::string(operation) + ": " + operand + " (" + shape_of(m) +
                            ") must be symmetric");
  }
  return Status::Success;
}

/// Throws InvalidInputError unless `value` is finite and `value >= 0`.
template <typename Scalar>
void require_nonnegative(const char* operation, const char* operand, Scalar value) {
  if (!(value >= Scalar(0)) || !std::isfinite(static_cast<double>(value))) {
    std::ostringstream os;
    os << operation << ": " << operand << " must be finite and >= 0, got " << value;
    throw InvalidInputError(os.str());
  }
}

/// For hyperparameter structs: throws HyperparameterError naming the field unless
/// `ok` holds. `range` describes the valid range, e.g. "(0, 1]".
template <typename Value>
void require_hyperparameter(bool ok, const char* algorithm, const char* field, Value value,
                            const char* range) {
  if (!ok) {
    std::ostringstream os;
    os << algorithm << ": hyperparameter " << field << " = " << value << " is outside "
       << range;
    throw HyperparameterError(os.str());
  }
}

/// Copies the lower triangle onto the upper one (after a rank-k update that wrote only one
/// triangle, or to remove rounding asymmetry from a product).
template <typename Derived>
void symmetrize_from_lower(Eigen::MatrixBase<Derived>& m) {
  m.template triangularView<Eigen::StrictlyUpper>() = m.transpose();
}

/// Replaces square `m` by (m + mᵀ)/2 in place.
template <typename Derived>
void symmetrize(Eigen::MatrixBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  const Eigen::Index n = m.rows();
  for (Eigen::Index j = 0; j < n; ++j) {
    for (Eigen::Index i = j + 1; i < n; ++i) {
      const Scalar v = Scalar(0.5) * (m(i, j) + m(j, i));
      m(i, j) = v;
      m(j, i) = v;
    }
  }
}

}  // namespace detail
}  // namespace kfopt
